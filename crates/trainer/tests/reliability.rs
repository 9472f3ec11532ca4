//! Bad input and faults, tried as a careless or hostile user would: each ends in one clean
//! error line (exit 1, never a panic) or a correct result, and a run killed early recovers.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use bert_model::weights::{Checkpoint, RawTensor, write_safetensors};
use common::*;

#[test]
fn device_choice_is_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = tiny();
    let embed = ["embed", "--model", model.as_str(), "标题"];
    for (value, needle) in [
        ("bogus", "unknown device `bogus`"),
        ("cuda", "not compiled"),
        ("", "BURN_DEVICE is set but empty"),
    ] {
        let out = trainer_env(dir, &embed, &[("BURN_DEVICE", value)]);
        one_line_error(&out, &[needle, "flex"]);
    }
    let out = trainer_env(dir, &embed, &[("BURN_DEVICE", "cuda:x")]);
    one_line_error(&out, &["BURN_DEVICE", "`x` is not a device index"]);
    let out = trainer(
        dir,
        &["--device", "nonsense", "embed", "--model", &model, "x"],
    );
    one_line_error(&out, &["--device", "unknown device `nonsense`", "flex"]);
    // A compiled device works, by flag or environment.
    ok(&trainer_env(dir, &embed, &[("BURN_DEVICE", "flex")]));
    ok(&trainer(
        dir,
        &["embed", "--device", "flex", "--model", &model, "x"],
    ));
}

#[test]
fn inputs_that_would_overflow_or_divide_by_zero_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    let model = tiny();

    // 60 virtual tokens + 16 tokens of text overflow the tiny model's 64 positions; nothing
    // is left behind.
    let out = trainer(
        dir,
        &[
            "train",
            "--config",
            "tiny.toml",
            "--set",
            "peft.num_virtual_tokens=60",
            "--run-dir",
            "r",
        ],
    );
    one_line_error(&out, &["60 virtual tokens + max length 16", "64 positions"]);
    assert!(!dir.join("r").exists(), "a failed run leaves no directory");

    let out = trainer(
        dir,
        &[
            "bench",
            "--model",
            &model,
            "--seq-len",
            "65",
            "--iters",
            "1",
        ],
    );
    one_line_error(&out, &["--seq-len 65", "64 positions"]);
    let out = trainer(dir, &["bench", "--model", &model, "--batch-size", "0"]);
    one_line_error(&out, &["--batch-size must be at least 1"]);

    // An impossible LoRA rank.
    let out = trainer(
        dir,
        &[
            "train",
            "--config",
            "tiny.toml",
            "--set",
            "peft.method=lora",
            "--set",
            "peft.r=100000",
        ],
    );
    one_line_error(&out, &["peft.r = 100000 exceeds the rank"]);

    // No rows to train on: a header-only CSV.
    std::fs::write(dir.join("empty.csv"), "title,label\n").unwrap();
    let out = trainer(
        dir,
        &[
            "train",
            "--config",
            "tiny.toml",
            "--set",
            "data.train=empty.csv",
            "--run-dir",
            "e",
        ],
    );
    one_line_error(&out, &["empty.csv", "no training rows"]);
    assert!(!dir.join("e").exists());

    // A model config with a dropout of 1.5 or a negative layer-norm epsilon.
    for (field, value) in [("hidden_dropout_prob", "1.5"), ("layer_norm_eps", "-1")] {
        let copy = copy_model(&dir.join(format!("bad-{field}")));
        let mut config: serde_json::Value = json(&copy.join("config.json"));
        config[field] = serde_json::from_str(value).unwrap();
        std::fs::write(copy.join("config.json"), config.to_string()).unwrap();
        let out = trainer(dir, &["embed", "--model", copy.to_str().unwrap(), "x"]);
        one_line_error(&out, &["config.json", field]);
    }

    // An adapter with more virtual tokens than the positions hold.
    let adapter = copy_adapter("peft-prompt", &dir.join("wide-prompt"));
    let weights = adapter.join("adapter_model.safetensors");
    let mut tensors = Checkpoint::read(&weights).unwrap().tensors;
    let hidden = tensors["prompt_embeddings"].shape[1];
    tensors.insert(
        "prompt_embeddings".into(),
        RawTensor::new(vec![60, hidden], vec![0.01; 60 * hidden]),
    );
    write_safetensors(&weights, &tensors, None).unwrap();
    edit_json(
        &adapter.join("adapter_config.json"),
        "num_virtual_tokens",
        60.into(),
    );
    let out = trainer(
        dir,
        &[
            "predict",
            "--model",
            &model,
            "--adapter",
            adapter.to_str().unwrap(),
            "标题",
        ],
    );
    one_line_error(&out, &["wide-prompt", "60 virtual tokens", "positions"]);
}

fn edit_json(path: &Path, key: &str, value: serde_json::Value) {
    let mut v = json(path);
    v[key] = value;
    std::fs::write(path, v.to_string()).unwrap();
}

/// Rewrites an adapter's tensors through `edit`.
fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, RawTensor>)) {
    let path = dir.join("adapter_model.safetensors");
    let mut tensors = Checkpoint::read(&path).unwrap().tensors;
    edit(&mut tensors);
    write_safetensors(&path, &tensors, None).unwrap();
}

#[test]
fn adapters_whose_tensors_disagree_with_their_config_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = tiny();
    let predict = |adapter: &Path| {
        trainer(
            dir,
            &[
                "predict",
                "--model",
                &model,
                "--adapter",
                adapter.to_str().unwrap(),
                "标题",
            ],
        )
    };
    // The fixture itself loads.
    ok(&predict(&fixtures().join("peft-lora")));

    let a = copy_adapter("peft-lora", &dir.join("no-b"));
    edit_tensors(&a, |t| {
        let key = t
            .keys()
            .find(|k| k.ends_with("lora_B.weight"))
            .unwrap()
            .clone();
        t.remove(&key);
    });
    one_line_error(&predict(&a), &["has lora_A but no lora_B"]);

    let a = copy_adapter("peft-lora", &dir.join("no-lora"));
    edit_tensors(&a, |t| t.retain(|k, _| !k.contains("lora_")));
    one_line_error(&predict(&a), &["no LoRA tensors"]);

    let a = copy_adapter("peft-lora", &dir.join("targets"));
    edit_json(
        &a.join("adapter_config.json"),
        "target_modules",
        serde_json::json!(["query"]),
    );
    one_line_error(&predict(&a), &["target_modules", "value"]);

    let a = copy_adapter("peft-lora", &dir.join("rank"));
    edit_json(&a.join("adapter_config.json"), "r", 3.into());
    one_line_error(&predict(&a), &["`r` in adapter_config.json is 3"]);

    let a = copy_adapter("peft-lora", &dir.join("alpha"));
    edit_json(&a.join("adapter_config.json"), "lora_alpha", (-1.0).into());
    one_line_error(&predict(&a), &["lora_alpha"]);

    let a = copy_adapter("peft-prompt", &dir.join("tokens"));
    edit_json(
        &a.join("adapter_config.json"),
        "num_virtual_tokens",
        5.into(),
    );
    one_line_error(&predict(&a), &["num_virtual_tokens", "holds"]);
}

/// Everything a run has written after its setup (config, labels, split, summary): what is left
/// when a run is killed inside its first epoch.
fn keep_only_setup(run: &Path) {
    for entry in std::fs::read_dir(run).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if [
            "config.toml",
            "labels.txt",
            "train.csv",
            "valid.csv",
            "summary.json",
        ]
        .contains(&name.as_str())
        {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            std::fs::remove_dir_all(entry.path()).unwrap();
        } else {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
}

#[test]
fn a_run_killed_in_its_first_epoch_resumes_to_the_straight_result() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    let train = |run: &str, extra: &[&str]| {
        let mut args = vec!["train", "--config", "tiny.toml", "--run-dir", run];
        args.extend_from_slice(extra);
        trainer(dir, &args)
    };
    ok(&train("a", &[]));
    ok(&train("b", &[]));
    keep_only_setup(&dir.join("b"));

    // A fresh train may not reuse it (it holds a run), and says how to continue.
    one_line_error(&train("b", &[]), &["--resume"]);
    let out = trainer(dir, &["train", "--resume", "--run-dir", "b"]);
    assert_eq!(ok(&out).lines().last(), Some("b"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("starting epoch 1 again"));
    let straight = json(&dir.join("a/metrics.json"));
    let resumed = json(&dir.join("b/metrics.json"));
    for epoch in 0..2 {
        for split in ["train", "valid"] {
            for key in ["loss", "accuracy"] {
                let a = straight["epochs"][epoch][split][key].as_f64().unwrap();
                let b = resumed["epochs"][epoch][split][key].as_f64().unwrap();
                assert!(
                    (a - b).abs() < 1e-5,
                    "epoch {} {split} {key}: {a} vs {b}",
                    epoch + 1
                );
            }
        }
    }

    // Killed while setting up (no config.toml yet): --resume says to start again, and a
    // fresh train into the directory clears the leftovers.
    keep_only_setup(&dir.join("b"));
    std::fs::remove_file(dir.join("b/config.toml")).unwrap();
    one_line_error(
        &trainer(dir, &["train", "--resume", "--run-dir", "b"]),
        &["no config.toml", "start it again"],
    );
    ok(&train("b", &["--set", "train.epochs=1"]));
}

#[test]
fn runs_load_from_any_directory_and_names_stay_under_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("project");
    std::fs::create_dir_all(&dir).unwrap();
    write_data(&dir);
    copy_model(&dir.join("model"));
    // A relative model path is recorded absolute: the run evaluates from elsewhere.
    ok(&trainer(
        &dir,
        &[
            "train",
            "--config",
            "tiny.toml",
            "--set",
            "model.source=model",
            "--set",
            "train.epochs=1",
            "--run-dir",
            "r",
        ],
    ));
    let run = dir.join("r");
    ok(&trainer(
        tmp.path(),
        &["eval", "--run", run.to_str().unwrap(), "--json"],
    ));

    let out = trainer(
        &dir,
        &["train", "--config", "tiny.toml", "--set", "name=../../x"],
    );
    one_line_error(&out, &["plain directory name"]);
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn predict_output_is_complete_with_normal_permissions_and_trimmed_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = tiny();
    let adapter = fixtures().join("peft-prompt");
    std::fs::write(dir.join("in.csv"), " title , label\n标题一,a\n标题二,b\n").unwrap();
    ok(&trainer(
        dir,
        &[
            "predict",
            "--model",
            &model,
            "--adapter",
            adapter.to_str().unwrap(),
            "--input",
            "in.csv",
            "--output",
            "out.csv",
        ],
    ));
    let out = std::fs::read_to_string(dir.join("out.csv")).unwrap();
    let header = out.lines().next().unwrap();
    assert!(
        header.starts_with("title,label,predicted_label,score"),
        "{header}"
    );
    assert_eq!(out.lines().count(), 3);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        std::fs::write(dir.join("plain"), "").unwrap();
        assert_eq!(mode(&dir.join("out.csv")), mode(&dir.join("plain")));
    }
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "temp files left: {names:?}"
    );

    // An OS error is said once.
    let out = trainer(
        dir,
        &["predict", "--model", &model, "--adapter", "missing", "x"],
    );
    let line = one_line_error(&out, &["missing"]);
    assert_eq!(line.matches("No such file").count(), 1, "{line}");
}
