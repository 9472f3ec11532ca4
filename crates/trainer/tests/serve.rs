//! `trainer serve` on 127.0.0.1 with port 0: endpoints, two adapters sharing one base model
//! answering differently, micro-batched concurrent clients, limits and malformed requests as
//! JSON 4xx errors, a graceful stop on SIGTERM, what hostile or vanished clients cannot do:
//! hold the queue, the connections or the shutdown, and the metrics that show all of it.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{train_run as train, write_titles};
use serde_json::{Value, json};

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// SIGTERM; the exit status and everything the server wrote on stderr.
    fn stop(&mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.unwrap().success());
        // Bounded, so that a server that does not stop fails the test instead of hanging it.
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("the server did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            pipe.read_to_string(&mut stderr).unwrap();
        }
        (status, stderr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn serve(dir: &Path, extra: &[&str]) -> Server {
    serve_env(dir, extra, &[])
}

fn serve_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
    cmd.env_remove("TRAINER_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .args(["serve", "--run", "a"])
        .args(if extra.contains(&"--addr") {
            &[][..]
        } else {
            &["--addr", "127.0.0.1:0"][..]
        })
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Server { child, addr }
}

/// One HTTP/1.1 request; (status, JSON body).
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    http_with(addr, method, path, "", body)
}

/// The same with extra header lines (each ending in `\r\n`).
fn http_with(addr: &str, method: &str, path: &str, headers: &str, body: &[u8]) -> (u16, Value) {
    let (status, _, value) = exchange(addr, method, path, headers, body);
    (status, value)
}

/// One HTTP/1.1 request; (status, response head, JSON body).
fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, String, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    read_response(s)
}

/// Reads a response until the server closes the connection (20 s at most); (status, head,
/// JSON body).
fn read_response(s: TcpStream) -> (u16, String, Value) {
    let (status, head, body) = read_text(s);
    let value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    (status, head, value)
}

/// The same with the body as text.
fn read_text(mut s: TcpStream) -> (u16, String, String) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut response = Vec::new();
    s.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response: {text:?}"));
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// `GET /metrics` with extra header lines; (status, head, body).
fn get_metrics(addr: &str, headers: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    read_text(s)
}

/// A `/metrics` scrape checked for the text format's rules: 200 with its content type, every
/// sample after its family's `# HELP` and `# TYPE` lines, and histogram buckets cumulative,
/// ending with `+Inf` equal to `_count`. The samples by series (name and labels as written).
fn scrape(addr: &str, headers: &str) -> BTreeMap<String, f64> {
    let (status, head, body) = get_metrics(addr, headers);
    assert_eq!(status, 200, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = Vec::new();
    let mut samples = BTreeMap::new();
    // Per histogram series (name and labels but `le`): its buckets in order.
    let mut buckets: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for line in body.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            helped.push(help.split(' ').next().unwrap().to_string());
            continue;
        }
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            assert_eq!(helped.last().map(String::as_str), Some(name), "{line}");
            assert!(types.insert(name.into(), kind.into()).is_none(), "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(name.starts_with("trainer_serve_"), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            .unwrap_or(name);
        assert!(
            types.contains_key(family) && helped.last().map(String::as_str) == Some(family),
            "{line} is not under its family's TYPE line"
        );
        if let Some(base) = name.strip_suffix("_bucket") {
            let labels = &series[name.len()..];
            let (rest, le) = labels
                .trim_start_matches('{')
                .trim_end_matches('}')
                .rsplit_once("le=")
                .unwrap_or_else(|| panic!("{line}"));
            let rest = rest.trim_end_matches(',');
            let count = if rest.is_empty() {
                format!("{base}_count")
            } else {
                format!("{base}_count{{{rest}}}")
            };
            buckets
                .entry(count)
                .or_default()
                .push((le.trim_matches('"').to_string(), value));
        }
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "{line} twice"
        );
    }
    assert!(!buckets.is_empty(), "{body}");
    for (count, bs) in &buckets {
        assert!(bs.windows(2).all(|w| w[0].1 <= w[1].1), "{count}: {bs:?}");
        let (le, last) = bs.last().unwrap();
        assert_eq!(le, "+Inf", "{count}: {bs:?}");
        assert_eq!(Some(last), samples.get(count), "{count}: {bs:?}");
    }
    samples
}

/// One sample of a scrape.
fn sample(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
}

fn classify(addr: &str, body: Value) -> (u16, Value) {
    http(addr, "POST", "/v1/classify", body.to_string().as_bytes())
}

#[test]
fn serve_endpoints_adapters_limits_and_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_titles(dir, 40);
    train(
        dir,
        "a",
        "method = \"prefix-tuning\"\nnum_virtual_tokens = 4",
        1,
    );
    train(dir, "b", "method = \"lora\"", 2);

    let server = serve(
        dir,
        &[
            "--adapter",
            "lora=b",
            "--adapter",
            "peft=b/adapter",
            "--max-texts",
            "4",
            "--max-text-chars",
            "40",
            "--max-body-bytes",
            "2000",
        ],
    );
    let addr = server.addr.clone();

    assert_eq!(
        http(&addr, "GET", "/healthz", b""),
        (200, json!({"status": "ok"}))
    );
    let (status, adapters) = http(&addr, "GET", "/v1/adapters", b"");
    assert_eq!(status, 200);
    assert_eq!(adapters["default"], "a");
    let names: Vec<&str> = adapters["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "lora", "peft"]);
    assert_eq!(adapters["adapters"][1]["method"], "lora");
    assert_eq!(
        adapters["adapters"][2]["labels"],
        json!(["LABEL_0", "LABEL_1"])
    );

    let texts = json!(["震惊！第一个秘密", "国务院发布通知"]);
    let (status, a) = classify(&addr, json!({"texts": texts}));
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["adapter"], "a");
    let results = a["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        let p: Vec<f64> = r["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        assert!(["标题党", "非标题党"].contains(&r["label"].as_str().unwrap()));
    }
    // Two adapters on the same base answer differently; the same adapter loaded from its run
    // directory and from its peft adapter directory answers the same, up to the run's
    // temperature (calibration.json), which a peft adapter directory does not carry.
    let (_, lora) = classify(&addr, json!({"texts": texts, "adapter": "lora"}));
    let (_, peft) = classify(&addr, json!({"texts": texts, "adapter": "peft"}));
    assert_eq!(lora["adapter"], "lora");
    assert_ne!(
        a["results"][0]["probabilities"],
        lora["results"][0]["probabilities"]
    );
    let t = common::json(&dir.join("b/calibration.json"))["temperature"]
        .as_f64()
        .unwrap();
    for i in 0..2 {
        let p: Vec<f64> = (0..2)
            .map(|k| peft["results"][i]["probabilities"][k].as_f64().unwrap())
            .collect();
        let scaled: Vec<f64> = p.iter().map(|q| (q.ln() / t).exp()).collect();
        for k in 0..2 {
            let x = lora["results"][i]["probabilities"][k].as_f64().unwrap();
            let y = scaled[k] / scaled.iter().sum::<f64>();
            assert!((x - y).abs() < 1e-5, "{x} vs {y} (temperature {t})");
        }
    }

    // Concurrent clients are micro-batched and each gets its own answers.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let adapter = if i % 2 == 0 { "a" } else { "lora" };
                classify(
                    &addr,
                    json!({"texts": ["震惊！第一个秘密", "国务院发布通知"], "adapter": adapter}),
                )
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (status, got) = h.join().unwrap();
        assert_eq!(status, 200);
        let want = if i % 2 == 0 { &a } else { &lora };
        for r in 0..2 {
            for k in 0..2 {
                let x = got["results"][r]["probabilities"][k].as_f64().unwrap();
                let y = want["results"][r]["probabilities"][k].as_f64().unwrap();
                assert!((x - y).abs() < 1e-5, "client {i}: {x} vs {y}");
            }
        }
    }

    // Errors: JSON bodies with a status that says what is wrong.
    let (status, e) = http(&addr, "POST", "/v1/classify", b"{\"texts\": [");
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("invalid JSON"), "{e}");
    let (status, e) = classify(&addr, json!({"texts": ["x"], "adapter": "nope"}));
    assert_eq!(status, 404);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("unknown adapter `nope`"),
        "{e}"
    );
    let (status, e) = classify(&addr, json!({"texts": []}));
    assert_eq!(status, 400, "{e}");
    let (status, e) = classify(&addr, json!({"texts": ["a", ""]}));
    assert_eq!(
        (status, e["error"].as_str().unwrap()),
        (400, "texts[1] is empty")
    );
    let (status, e) = classify(&addr, json!({"texts": ["a", "b", "c", "d", "e"]}));
    assert_eq!(status, 413);
    assert!(e["error"].as_str().unwrap().contains("limit is 4"), "{e}");
    let (status, e) = classify(&addr, json!({"texts": ["长".repeat(41)]}));
    assert_eq!(status, 413);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("more than 40 characters"),
        "{e}"
    );
    let (status, e) = classify(&addr, json!({"texts": ["x".repeat(3000)]}));
    assert_eq!(status, 413);
    assert_eq!(e["error"], "request body too large");
    let (status, e) = classify(&addr, json!({"text": ["x"]}));
    assert_eq!(status, 400);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `text`"),
        "{e}"
    );

    // SIGTERM: the server stops cleanly.
    let mut server = server;
    let (status, stderr) = server.stop();
    assert!(status.success(), "{status:?}");
    assert!(stderr.contains("stopped"), "{stderr}");
}

/// Reads from `s` until the server closes it; how long that took.
fn time_to_close(mut s: TcpStream) -> Duration {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
    }
}

#[test]
fn stalled_clients_and_keys_do_not_take_the_service_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_titles(dir, 16);
    train(
        dir,
        "a",
        "method = \"prefix-tuning\"\nnum_virtual_tokens = 4",
        1,
    );
    std::fs::write(dir.join("keys.txt"), "# one key per line\nk1\n\nk2\n").unwrap();
    let mut server = serve_env(
        dir,
        &[
            "--header-timeout-secs",
            "1",
            "--max-connections",
            "3",
            "--shutdown-grace-secs",
            "2",
            "--api-key-file",
            "keys.txt",
        ],
        &[],
    );
    let addr = server.addr.clone();
    let key = "Authorization: Bearer k2\r\n";

    // Keys: /healthz is open, everything else needs one of the file's keys.
    assert_eq!(http(&addr, "GET", "/healthz", b"").0, 200);
    assert_eq!(http(&addr, "GET", "/v1/adapters", b"").0, 401);
    assert_eq!(
        http_with(
            &addr,
            "GET",
            "/v1/adapters",
            "Authorization: Bearer k3\r\n",
            b""
        )
        .0,
        401
    );
    assert_eq!(http_with(&addr, "GET", "/v1/adapters", key, b"").0, 200);

    // Half a header, or nothing at all: dropped after the 1 s header timeout.
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let silent = TcpStream::connect(&addr).unwrap();
    assert!(time_to_close(half) < Duration::from_secs(5));
    assert!(time_to_close(silent) < Duration::from_secs(5));

    // The connection cap: with 3 idle connections open, a 4th is still served at once, and the
    // oldest idle one is closed to make room (long before the 1 s header timeout).
    let mut open: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    assert_eq!(http(&addr, "GET", "/healthz", b"").0, 200);
    assert!(start.elapsed() < Duration::from_millis(500));
    assert!(time_to_close(open.remove(0)) < Duration::from_millis(300));
    drop(open);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(http(&addr, "GET", "/healthz", b"").0, 200);

    // SIGTERM with a stalled client open: the server still stops, cleanly and promptly.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let start = Instant::now();
    let (status, stderr) = server.stop();
    assert!(status.success(), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    assert!(stderr.contains("status=401"), "{stderr}");
}

/// Scoring faults come from the `TRAINER_TEST_FAULTS` hook, which only debug builds have.
#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "scoring faults are injected only in debug builds: cargo test -p trainer --test serve"
)]
fn a_request_whose_scoring_panics_gets_500_and_the_service_recovers() {
    let tmp = one_run();
    let mut server = serve_env(tmp.path(), &[], &[("TRAINER_TEST_FAULTS", "panic")]);
    let addr = server.addr.clone();
    let key = "";

    // A request whose scoring panics gets 500; the service goes on answering.
    let body = json!({"texts": ["__panic__"]}).to_string();
    let (status, e) = http_with(&addr, "POST", "/v1/classify", key, body.as_bytes());
    assert_eq!(status, 500, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("inference failed"),
        "{e}"
    );
    let body = json!({"texts": ["秘密标题"]}).to_string();
    let (status, r) = http_with(&addr, "POST", "/v1/classify", key, body.as_bytes());
    assert_eq!(status, 200, "{r}");
    let mut healthy = false;
    for _ in 0..50 {
        if http(&addr, "GET", "/healthz", b"") == (200, json!({"status": "ok"})) {
            healthy = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(healthy, "/healthz never came back");
    let m = scrape(&addr, key);
    assert_eq!(sample(&m, "trainer_serve_inference_restarts_total"), 1.0);
    assert_eq!(sample(&m, "trainer_serve_inference_up"), 1.0);
    let failed = r#"trainer_serve_requests_total{route="/v1/classify",code="500",adapter="a"}"#;
    assert_eq!(sample(&m, failed), 1.0);

    let (status, stderr) = server.stop();
    assert!(status.success(), "{status:?}");
    // One line per request, with adapter and count but never the texts.
    assert!(
        stderr.contains("request POST /v1/classify adapter=a texts=1 status=500"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("秘密标题") && !stderr.contains("__panic__"),
        "{stderr}"
    );
}

#[test]
fn serving_beyond_loopback_without_a_key_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_titles(dir, 16);
    train(dir, "a", "method = \"lora\"", 1);
    let mut server = serve(dir, &["--addr", "0.0.0.0:0"]);
    let (_, stderr) = server.stop();
    assert!(stderr.contains("warning: listening on 0.0.0.0"), "{stderr}");
    assert!(stderr.contains("without an API key"), "{stderr}");
}

/// A trained run `a` in a fresh directory, for a server to load.
fn one_run() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_titles(tmp.path(), 16);
    train(tmp.path(), "a", "method = \"lora\"", 1);
    tmp
}

#[test]
fn metrics_count_requests_in_prometheus_text_behind_the_key() {
    let tmp = one_run();
    // An adapter name with each character a label value must have escaped.
    let odd = "an \"odd\" \\name\nhere";
    let server = serve(
        tmp.path(),
        &["--api-key", "k", "--adapter", &format!("{odd}=a")],
    );
    let addr = server.addr.clone();
    let key = "Authorization: Bearer k\r\n";

    // Only /healthz is open.
    let (status, _, body) = get_metrics(&addr, "");
    assert_eq!(status, 401, "{body}");
    assert_eq!(get_metrics(&addr, "Authorization: Bearer nope\r\n").0, 401);
    assert_eq!(http(&addr, "GET", "/healthz", b"").0, 200);

    let post = |body: Value| {
        http_with(
            &addr,
            "POST",
            "/v1/classify",
            key,
            body.to_string().as_bytes(),
        )
        .0
    };
    assert_eq!(post(json!({"texts": ["秘密标题", "国务院发布通知"]})), 200);
    assert_eq!(post(json!({"texts": ["第三"], "adapter": odd})), 200);
    assert_eq!(post(json!({"texts": []})), 400);
    assert_eq!(post(json!({"texts": ["x"], "adapter": "nope"})), 404);

    let m = scrape(&addr, key);
    let odd = r#"an \"odd\" \\name\nhere"#;
    let requests = |route: &str, code: u16, adapter: &str| {
        sample(
            &m,
            &format!(
                "trainer_serve_requests_total{{route=\"{route}\",code=\"{code}\",adapter=\"{adapter}\"}}"
            ),
        )
    };
    assert_eq!(requests("/v1/classify", 200, "a"), 1.0);
    assert_eq!(requests("/v1/classify", 200, odd), 1.0);
    assert_eq!(requests("/v1/classify", 400, ""), 1.0);
    assert_eq!(requests("/v1/classify", 404, ""), 1.0);
    assert_eq!(requests("/metrics", 401, ""), 2.0);
    assert_eq!(requests("/healthz", 200, ""), 1.0);
    let texts = |adapter: &str| {
        sample(
            &m,
            &format!("trainer_serve_texts_classified_total{{adapter=\"{adapter}\"}}"),
        )
    };
    assert_eq!((texts("a"), texts(odd)), (2.0, 1.0));
    // One forward pass per request, sent one after another.
    assert_eq!(sample(&m, "trainer_serve_batch_texts_count"), 2.0);
    assert_eq!(sample(&m, "trainer_serve_batch_texts_sum"), 3.0);
    assert_eq!(
        sample(&m, r#"trainer_serve_batch_texts_bucket{le="1"}"#),
        1.0
    );
    let latency = |route: &str, part: &str| {
        sample(
            &m,
            &format!("trainer_serve_request_duration_seconds_{part}{{route=\"{route}\"}}"),
        )
    };
    assert_eq!(latency("/v1/classify", "count"), 4.0);
    assert!(latency("/v1/classify", "sum") > 0.0);
    // The two refused scrapes; this one is counted once answered.
    assert_eq!(latency("/metrics", "count"), 2.0);
    assert_eq!(latency("other", "count"), 0.0);
    assert_eq!(sample(&m, "trainer_serve_inference_up"), 1.0);
    assert_eq!(sample(&m, "trainer_serve_queued_texts"), 0.0);
    assert_eq!(sample(&m, "trainer_serve_queue_capacity_texts"), 4096.0);
    assert!(sample(&m, "trainer_serve_open_connections") >= 1.0);
    for zero in [
        "trainer_serve_queue_full_total",
        "trainer_serve_dropped_jobs_total",
        "trainer_serve_connections_shed_total",
        "trainer_serve_connections_refused_total",
        "trainer_serve_inference_restarts_total",
    ] {
        assert_eq!(sample(&m, zero), 0.0, "{zero}");
    }
    let m = scrape(&addr, key);
    let series = r#"trainer_serve_requests_total{route="/metrics",code="200",adapter=""}"#;
    assert_eq!(sample(&m, series), 1.0);
}

/// Sends `raw` on a new connection and leaves it open.
fn send(addr: &str, raw: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    s
}

/// A complete `/v1/classify` request for `texts`, as raw bytes.
fn classify_request(addr: &str, texts: &[&str]) -> String {
    let body = json!({ "texts": texts }).to_string();
    format!(
        "POST /v1/classify HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "scoring faults are injected only in debug builds: cargo test -p trainer --test serve"
)]
fn work_of_vanished_clients_is_dropped_and_shutdown_keeps_to_its_grace() {
    let tmp = one_run();
    // Each `__slow__` text makes its batch take 1 s; one request per batch.
    let mut server = serve_env(
        tmp.path(),
        &["--max-batch", "1", "--shutdown-grace-secs", "1"],
        &[("TRAINER_TEST_FAULTS", "slow=1000")],
    );
    let addr = server.addr.clone();

    // One slow request keeps the inference thread busy while five clients queue 2 s of work
    // each and hang up: none of it is scored, so the next request is answered at once.
    let busy = {
        let addr = addr.clone();
        std::thread::spawn(move || classify(&addr, json!({"texts": ["__slow__"]})))
    };
    std::thread::sleep(Duration::from_millis(200));
    let vanished: Vec<TcpStream> = (0..5)
        .map(|_| send(&addr, &classify_request(&addr, &["__slow__", "__slow__"])))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(vanished);
    assert_eq!(busy.join().unwrap().0, 200);
    let start = Instant::now();
    assert_eq!(classify(&addr, json!({"texts": ["秘密标题"]})).0, 200);
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    let m = scrape(&addr, "");
    assert_eq!(sample(&m, "trainer_serve_dropped_jobs_total"), 5.0);
    assert_eq!(
        sample(&m, "trainer_serve_texts_classified_total{adapter=\"a\"}"),
        2.0
    );

    // SIGTERM while a 30 s batch is being scored and more wait behind it: the process still
    // exits within the 1 s grace and a small margin, dropping that work.
    let stuck = send(&addr, &classify_request(&addr, &["__slow__"; 30]));
    let queued = send(&addr, &classify_request(&addr, &["__slow__"]));
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let (status, stderr) = server.stop();
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    drop((stuck, queued));
    assert!(
        stderr.contains("queued requests whose clients had gone, unscored"),
        "{stderr}"
    );
    assert!(stderr.contains("exiting without it"), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "scoring faults are injected only in debug builds: cargo test -p trainer --test serve"
)]
fn a_full_queue_or_a_busy_cap_answers_503_with_retry_after_at_once() {
    let tmp = one_run();
    let server = serve_env(
        tmp.path(),
        &[
            "--max-batch",
            "1",
            "--max-texts",
            "4",
            "--max-queued-texts",
            "4",
            "--max-connections",
            "3",
        ],
        &[("TRAINER_TEST_FAULTS", "slow=1500")],
    );
    let addr = server.addr.clone();
    let later = |texts: Value| {
        let addr = addr.clone();
        std::thread::spawn(move || classify(&addr, json!({ "texts": texts })))
    };

    // 1 text being scored for 1.5 s and 2 queued behind it: 2 more would go over the 4.
    let slow = later(json!(["__slow__"]));
    std::thread::sleep(Duration::from_millis(200));
    let queued = later(json!(["国务院发布通知", "秘密标题"]));
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let body = json!({"texts": ["a", "b"]}).to_string();
    let (status, head, e) = exchange(&addr, "POST", "/v1/classify", "", body.as_bytes());
    assert_eq!(status, 503, "{e}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert!(start.elapsed() < Duration::from_millis(500));

    // With all 3 connections waiting on inference, a 4th is told 503 and closed at once.
    let third = later(json!(["第三"]));
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let (status, head, _) = read_response(TcpStream::connect(&addr).unwrap());
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("Retry-After: 1"), "{head}");
    assert!(start.elapsed() < Duration::from_millis(500));

    // The admitted ones are answered, and the room is given back.
    for h in [slow, queued, third] {
        let (status, r) = h.join().unwrap();
        assert_eq!(status, 200, "{r}");
    }
    assert_eq!(
        classify(&addr, json!({"texts": ["a", "b", "c", "d"]})).0,
        200
    );

    // Each refusal is counted, and with --max-batch 1 every forward pass is one text.
    let m = scrape(&addr, "");
    assert_eq!(sample(&m, "trainer_serve_queue_full_total"), 1.0);
    assert_eq!(sample(&m, "trainer_serve_connections_refused_total"), 1.0);
    let refused = r#"trainer_serve_requests_total{route="/v1/classify",code="503",adapter="a"}"#;
    assert_eq!(sample(&m, refused), 1.0);
    assert_eq!(sample(&m, "trainer_serve_batch_texts_count"), 8.0);
    assert_eq!(
        sample(&m, r#"trainer_serve_batch_texts_bucket{le="1"}"#),
        8.0
    );
}

#[test]
fn oversized_and_stalled_bodies_are_answered_and_stalled_clients_are_shed() {
    let tmp = one_run();
    let server = serve(
        tmp.path(),
        &[
            "--max-connections",
            "3",
            "--max-body-bytes",
            "1000",
            "--body-timeout-secs",
            "2",
            "--header-timeout-secs",
            "30",
        ],
    );
    let addr = server.addr.clone();

    // A declared Content-Length of 10^12: 413 at once, without waiting for any of the body.
    let start = Instant::now();
    let s = send(
        &addr,
        "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
    );
    let (status, _, e) = read_response(s);
    assert_eq!(
        (status, e["error"].as_str()),
        (413, Some("request body too large"))
    );
    assert!(start.elapsed() < Duration::from_secs(1));

    // Three clients stall mid-body and fill the cap; a new client is still served at once,
    // and the oldest stalled one is closed to make room.
    let stall = "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"texts\"";
    let stalled_at = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..3)
        .map(|_| {
            let s = send(&addr, stall);
            std::thread::sleep(Duration::from_millis(50));
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    assert_eq!(classify(&addr, json!({"texts": ["秘密标题"]})).0, 200);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(time_to_close(stalled.remove(0)) < Duration::from_millis(300));

    // The others get 408 when their 2 s to send the body are up, not the 30 s header time.
    for s in stalled {
        let (status, _, e) = read_response(s);
        assert_eq!(status, 408, "{e}");
        assert!(e["error"].as_str().unwrap().contains("body"), "{e}");
    }
    let waited = stalled_at.elapsed();
    assert!(waited < Duration::from_secs(4), "{waited:?}");

    let m = scrape(&addr, "");
    assert_eq!(sample(&m, "trainer_serve_connections_shed_total"), 1.0);
    let requests = |code: u16| {
        sample(
            &m,
            &format!(
                "trainer_serve_requests_total{{route=\"/v1/classify\",code=\"{code}\",adapter=\"\"}}"
            ),
        )
    };
    assert_eq!((requests(413), requests(408)), (1.0, 2.0));
}

#[test]
fn nonsense_numbers_are_refused_before_listening() {
    let huge = u64::MAX.to_string();
    for flags in [
        &["--header-timeout-secs", &huge][..],
        &["--request-timeout-secs", "0"],
        &["--body-timeout-secs", &huge],
        &["--shutdown-grace-secs", &huge],
        &["--max-batch", "0"],
        &["--max-connections", "0"],
        &["--max-texts", &huge],
        &["--max-body-bytes", "0"],
        &["--max-texts", "300", "--max-queued-texts", "200"],
    ] {
        // No run to load: a flag that got past the checks would fail on that instead.
        let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args(["serve", "--run", "no-such-run", "--addr", "127.0.0.1:0"])
            .args(flags)
            .env_remove("TRAINER_API_KEY")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?}");
        assert!(out.stdout.is_empty(), "{flags:?}");
        let first = stderr.lines().next().unwrap_or("");
        assert!(
            first.starts_with("error:") && first.contains(flags[flags.len() - 2]),
            "{flags:?}: {stderr}"
        );
    }
}

/// Under a run's decision threshold each result says so: `threshold`, `positive` and
/// `p_positive`, the probability the threshold was compared with; an adapter without one
/// answers as before.
#[test]
fn serve_results_show_the_threshold_in_force() {
    let tmp = one_run();
    let dir = tmp.path();
    std::fs::write(
        dir.join("a/threshold.json"),
        json!({"label": "标题党", "threshold": 0.0001, "target_precision": 0.9,
               "precision": 0.9, "recall": 0.5, "data": "v.csv"})
        .to_string(),
    )
    .unwrap();
    let server = serve(dir, &["--adapter", "plain=a/adapter", "--max-batch", "4"]);
    let texts = json!(["震惊！第一个秘密", "国务院发布通知"]);
    let (status, a) = classify(&server.addr, json!({"texts": texts}));
    assert_eq!(status, 200, "{a}");
    for r in a["results"].as_array().unwrap() {
        // Threshold 0.0001: every text is flagged, whatever its score.
        assert_eq!(r["label"], "标题党", "{r}");
        assert_eq!(r["positive"], "标题党", "{r}");
        assert_eq!(r["threshold"].as_f64().unwrap() as f32, 0.0001, "{r}");
        assert_eq!(r["p_positive"], r["probabilities"][0], "{r}");
        assert_eq!(r["score"], r["probabilities"][0], "{r}");
    }
    let (status, plain) = classify(&server.addr, json!({"texts": texts, "adapter": "plain"}));
    assert_eq!(status, 200, "{plain}");
    for r in plain["results"].as_array().unwrap() {
        for key in ["threshold", "positive", "p_positive"] {
            assert!(r.get(key).is_none(), "{r}");
        }
    }
}
