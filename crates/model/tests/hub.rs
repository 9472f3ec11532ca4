//! Hub model ids against a tiny model served by a local HTTP server on 127.0.0.1.
//!
//! One test function in its own binary: it sets HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE, which are
//! process-wide, so it must not run beside other tests.

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
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
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
}
