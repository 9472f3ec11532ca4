//! Helpers shared by the `trainer` integration tests: fixtures, training data, running the
//! binary and reading what it wrote.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The tiny fixture model's directory, as a `--model` argument.
pub fn tiny() -> String {
    fixtures().join("tiny-bert").display().to_string()
}

fn command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
    cmd.args(args)
        .current_dir(dir)
        .env("HF_HUB_OFFLINE", "1")
        .env("PIP_NO_INDEX", "1")
        .env_remove("BURN_DEVICE")
        .env_remove("TRAINER_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `trainer` in `dir`, offline.
pub fn trainer(dir: &Path, args: &[&str]) -> Output {
    trainer_env(dir, args, &[])
}

pub fn trainer_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(dir, args, env).output().unwrap()
}

/// The same with `stdin` piped in.
pub fn trainer_stdin(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = command(dir, args, &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// Stdout of a successful run.
pub fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed: {stderr}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Stdout of a successful run, as JSON.
pub fn ok_json(out: &Output) -> Value {
    serde_json::from_str(ok(out).trim()).unwrap()
}

/// Stderr of a failed run.
pub fn err(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The last stderr line, `error: ...`, of a failed run (exit 1, no panic), containing every
/// `needle`.
pub fn one_line_error(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected exit 1: {stderr}");
    let line = stderr
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(line.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(line.contains(n), "missing `{n}` in: {line}");
    }
    line.to_string()
}

/// A failure whose whole stderr is that one error line.
pub fn only_error_line(out: &Output, needles: &[&str]) {
    let line = one_line_error(out, needles);
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), line);
}

pub fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The epochs of a run's metrics.json, after checking that each has a finite, positive
/// validation loss.
pub fn finished_epochs(run: &Path) -> Vec<Value> {
    let epochs = json(&run.join("metrics.json"))["epochs"].clone();
    let epochs = epochs.as_array().unwrap().clone();
    for e in &epochs {
        let loss = e["valid"]["loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{e}");
    }
    epochs
}

/// 60 short Chinese titles, two classes, a few empty titles, written with a BOM; a label file;
/// and a prefix-tuning recipe `tiny.toml` on the tiny fixture model (2 epochs, seconds).
pub fn write_data(dir: &Path) {
    let mut csv = String::from("\u{feff}title,label\n");
    for i in 0..60 {
        if i % 2 == 0 {
            csv.push_str(&format!("\"你不会相信, 接下来发生了什么 {i}\",标题党\n"));
        } else {
            csv.push_str(&format!("国务院发布第{i}号通知,非标题党\n"));
        }
    }
    csv.push_str(",标题党\n\"\",非标题党\n");
    std::fs::write(dir.join("zh.csv"), csv).unwrap();
    std::fs::write(dir.join("labels.txt"), "标题党\n非标题党\n").unwrap();
    let config = format!(
        r#"name = "tiny"
[model]
source = "{}"
max_length = 16
[data]
train = "zh.csv"
labels = "labels.txt"
[peft]
method = "prefix-tuning"
num_virtual_tokens = 4
[train]
epochs = 2
batch_size = 8
lr = 0.01
"#,
        tiny()
    );
    std::fs::write(dir.join("tiny.toml"), config).unwrap();
}

/// `n` Chinese titles alternating between two labels (`zh.csv`) and the label file.
pub fn write_titles(dir: &Path, n: usize) {
    let mut csv = String::from("title,label\n");
    for i in 0..n {
        if i % 2 == 0 {
            csv.push_str(&format!("震惊！你绝对想不到的第{i}个秘密,标题党\n"));
        } else {
            csv.push_str(&format!("国务院发布第{i}号通知,非标题党\n"));
        }
    }
    std::fs::write(dir.join("zh.csv"), csv).unwrap();
    std::fs::write(dir.join("labels.txt"), "标题党\n非标题党\n").unwrap();
}

/// A one-epoch run `name` of the tiny model on `zh.csv` with the `[peft]` lines `peft`.
pub fn train_run(dir: &Path, name: &str, peft: &str, seed: u64) {
    let config = format!(
        "name = \"{name}\"\n[model]\nsource = \"{}\"\nmax_length = 16\n[data]\ntrain = \"zh.csv\"\nlabels = \"labels.txt\"\n[peft]\n{peft}\n[train]\nepochs = 1\nbatch_size = 8\nlr = 0.01\nseed = {seed}\n",
        tiny()
    );
    std::fs::write(dir.join(format!("{name}.toml")), config).unwrap();
    let config = format!("{name}.toml");
    ok(&trainer(
        dir,
        &["train", "--config", &config, "--run-dir", name],
    ));
}

/// A copy of the tiny fixture model that a test may edit.
pub fn copy_model(to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join("tiny-bert").join(f), to.join(f)).unwrap();
    }
    to.to_path_buf()
}

/// A copy of a fixture peft adapter directory that a test may edit.
pub fn copy_adapter(name: &str, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    to.to_path_buf()
}

/// Sorted tensor names of a safetensors file.
pub fn safetensor_keys(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut keys: Vec<String> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    keys.sort();
    keys
}
