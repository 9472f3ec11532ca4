//! `trainer train` / `trainer eval` end to end on the tiny Chinese fixture model (seconds):
//! the run directory, checkpoint round trip, resume, and errors on bad data and configs.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

#[test]
fn train_writes_a_run_that_eval_reproduces_and_resume_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);

    // A straight two-epoch run.
    let out = trainer(
        dir,
        &["train", "--config", "tiny.toml", "--run-dir", "runs/a"],
    );
    let stdout = ok(&out);
    assert_eq!(
        stdout.lines().last(),
        Some("runs/a"),
        "last line is the run dir"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("prefix-tuning: trainable params: 578 || all params: 696,994"),
        "{stderr}"
    );
    assert!(
        stderr.contains("dropped 2 row(s) with an empty title"),
        "{stderr}"
    );
    let run = dir.join("runs/a");
    for f in [
        "config.toml",
        "labels.txt",
        "train.csv",
        "valid.csv",
        "summary.json",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["data"]["train"], 48);
    assert_eq!(summary["data"]["valid"], 12);
    assert_eq!(summary["params"]["trainable"], 578);
    let metrics = json(&run.join("metrics.json"));
    let epochs = metrics["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    for key in ["loss", "accuracy", "macro_f1", "per_class_accuracy"] {
        assert!(!epochs[0]["valid"][key].is_null(), "valid {key}");
    }
    assert!(epochs[0]["train"]["lr"].as_f64().unwrap() > 0.0);

    // A HF peft adapter directory of the same parameters.
    let peft_cfg = json(&run.join("adapter/adapter_config.json"));
    assert_eq!(peft_cfg["peft_type"], "PREFIX_TUNING");
    assert_eq!(peft_cfg["num_virtual_tokens"], 4);
    assert_eq!(
        safetensor_keys(&run.join("adapter/adapter_model.safetensors")),
        [
            "base_model.classifier.bias",
            "base_model.classifier.weight",
            "prompt_embeddings"
        ]
    );

    // Only the trainable parameters are saved.
    assert_eq!(
        safetensor_keys(&run.join("adapter.safetensors")),
        [
            "classifier.bias",
            "classifier.weight",
            "prefix_encoder.embedding.weight"
        ]
    );

    // Checkpoint round trip: eval of the saved parameters reproduces the best epoch's
    // validation figures.
    let best = metrics["best_epoch"].as_u64().unwrap() as usize;
    let best_valid = &epochs[best - 1]["valid"];
    let eval: Value =
        serde_json::from_str(&ok(&trainer(dir, &["eval", "--run", "runs/a", "--json"]))).unwrap();
    assert!((eval["loss"].as_f64().unwrap() - best_valid["loss"].as_f64().unwrap()).abs() < 1e-4);
    assert_eq!(eval["accuracy"], best_valid["accuracy"]);
    assert_eq!(eval["rows"], 12);
    let confusion: u64 = eval["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()))
        .sum();
    assert_eq!(confusion, 12);
    // The temperature fitted on the validation split at the end of training lowers its NLL,
    // and eval applies it: the calibration error it reports is the fitted one.
    let calibration = json(&dir.join("runs/a/calibration.json"));
    let t = calibration["temperature"].as_f64().unwrap();
    assert!(t.is_finite() && t > 0.0, "{calibration}");
    let nll = |k: &str| calibration[k].as_f64().unwrap();
    assert!(
        nll("nll_after") <= nll("nll_before") + 1e-9,
        "{calibration}"
    );
    assert_eq!(eval["calibration"]["temperature"].as_f64().unwrap(), t);
    let ece = eval["calibration"]["ece"].as_f64().unwrap();
    assert!(
        (ece - nll("ece_after")).abs() < 1e-4,
        "{ece} vs {calibration}"
    );
    let brier = eval["calibration"]["brier"].as_f64().unwrap();
    assert!((0.0..=2.0).contains(&brier), "{brier}");
    for label in ["标题党", "非标题党"] {
        for k in ["precision", "recall", "f1", "accuracy", "support"] {
            assert!(!eval["per_class"][label][k].is_null(), "{label} {k}");
        }
    }
    // The report written at the end of training; `trainer report` writes it again the same.
    let report = dir.join("runs/a/report.html");
    let page = std::fs::read_to_string(&report).unwrap();
    assert_eq!(
        page.matches("<svg").count(),
        4,
        "loss, accuracy/F1, PR, reliability"
    );
    assert!(page.contains("precision-recall of \u{201c}标题党\u{201d}"));
    std::fs::remove_file(&report).unwrap();
    let printed = ok(&trainer(dir, &["report", "--run", "runs/a"]));
    assert!(printed.trim().ends_with("report.html"), "{printed}");
    assert_eq!(std::fs::read_to_string(&report).unwrap(), page);
    // Any CSV with the same columns.
    let eval_all: Value = serde_json::from_str(&ok(&trainer(
        dir,
        &["eval", "--run", "runs/a", "--data", "zh.csv", "--json"],
    )))
    .unwrap();
    assert_eq!(eval_all["rows"], 60);
    assert_eq!(eval_all["dropped_empty_title"], 2);

    // The same run interrupted after epoch 1 and resumed ends where the straight run did.
    ok(&trainer(
        dir,
        &[
            "train",
            "--config",
            "tiny.toml",
            "--run-dir",
            "runs/b",
            "--stop-after",
            "1",
        ],
    ));
    assert_eq!(
        json(&dir.join("runs/b/metrics.json"))["epochs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let out = trainer(dir, &["train", "--resume", "--run-dir", "runs/b"]);
    assert_eq!(ok(&out).lines().last(), Some("runs/b"));
    let resumed = json(&dir.join("runs/b/metrics.json"));
    let r_epochs = resumed["epochs"].as_array().unwrap();
    assert_eq!(r_epochs.len(), 2);
    for split in ["train", "valid"] {
        for key in ["loss", "accuracy"] {
            let a = epochs[1][split][key].as_f64().unwrap();
            let b = r_epochs[1][split][key].as_f64().unwrap();
            assert!((a - b).abs() < 1e-5, "epoch 2 {split} {key}: {a} vs {b}");
        }
    }
    assert_eq!(
        std::fs::read(run.join("adapter.safetensors"))
            .unwrap()
            .len(),
        std::fs::read(dir.join("runs/b/adapter.safetensors"))
            .unwrap()
            .len()
    );
}

/// Data-parallel training through burn-train's multi-device strategy. This machine has one
/// CPU, so the two devices are Flex twice: each takes its half of the training split, and one
/// optimizer step follows each round of two batches.
#[test]
fn training_on_two_devices_steps_once_per_round_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    let recipe = std::fs::read_to_string(dir.join("tiny.toml")).unwrap();
    let two = format!("{recipe}devices = [\"flex\", \"flex\"]\n");
    std::fs::write(dir.join("two.toml"), two).unwrap();
    let train = |args: &[&str]| {
        let mut all = vec!["train"];
        all.extend_from_slice(args);
        ok(&trainer(dir, &all))
    };
    train(&[
        "--config",
        "two.toml",
        "--run-dir",
        "a",
        "--stop-after",
        "1",
    ]);
    let summary = json(&dir.join("a/summary.json"));
    // 48 training titles in batches of 8: 6 batches, 3 rounds of one batch per device.
    assert_eq!(summary["data"]["train"], 48);
    assert_eq!(summary["steps"]["per_epoch"], 3, "{summary}");
    assert_eq!(
        summary["device"].as_str().unwrap().matches("flex").count(),
        2
    );
    // Named as the recipe names them, in the summary and in the report.
    assert_eq!(summary["device"], "flex, flex");
    let page = std::fs::read_to_string(dir.join("a/report.html")).unwrap();
    assert!(page.contains("<p>Trained on flex, flex.</p>"));
    train(&["--resume", "--run-dir", "a"]);
    let epochs = finished_epochs(&dir.join("a"));
    assert_eq!(epochs.len(), 2);

    let bad = format!("{recipe}devices = [\"flex\", \"nonsense\"]\n");
    std::fs::write(dir.join("bad.toml"), bad).unwrap();
    let e = err(&trainer(dir, &["train", "--config", "bad.toml"]));
    assert!(
        e.contains("train.devices[1]") && e.contains("nonsense"),
        "{e}"
    );
    let both = format!("{recipe}device = \"flex\"\ndevices = [\"flex\"]\n");
    std::fs::write(dir.join("both.toml"), both).unwrap();
    let e = err(&trainer(dir, &["train", "--config", "both.toml"]));
    assert!(e.contains("train.device and train.devices"), "{e}");
    // DDP needs NCCL, which only CUDA devices have: refused before a run directory exists.
    let ddp = format!("{recipe}devices = [\"flex\", \"flex\"]\nstrategy = \"ddp\"\n");
    std::fs::write(dir.join("ddp.toml"), ddp).unwrap();
    let e = err(&trainer(
        dir,
        &["train", "--config", "ddp.toml", "--run-dir", "ddp"],
    ));
    assert!(
        e.contains("train.strategy = \"ddp\"") && e.contains("not a CUDA device"),
        "{e}"
    );
    assert!(!dir.join("ddp").exists());
    let e = err(&trainer(
        dir,
        &[
            "train",
            "--config",
            "two.toml",
            "--set",
            "train.strategy=all-reduce",
        ],
    ));
    assert!(e.contains("all-reduce") && e.contains("ddp"), "{e}");
}

#[test]
fn half_precision_trains_and_predicts_close_to_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    ok(&trainer(
        dir,
        &[
            "train",
            "--config",
            "tiny.toml",
            "--run-dir",
            "bf16",
            "--set",
            "train.precision=bf16",
        ],
    ));
    let config = std::fs::read_to_string(dir.join("bf16/config.toml")).unwrap();
    assert!(config.contains("precision = \"bf16\""), "{config}");
    for epoch in finished_epochs(&dir.join("bf16")) {
        let loss = epoch["train"]["loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{epoch}");
    }
    // The run predicts in its own precision by default; --precision overrides it.
    let texts = ["You won't believe this", "Senate passes the budget"];
    let probs = |precision: Option<&str>| -> Vec<f64> {
        let mut args = vec!["predict", "--run", "bf16", "--json"];
        if let Some(p) = precision {
            args.extend(["--precision", p]);
        }
        args.extend(texts);
        ok(&trainer(dir, &args))
            .lines()
            .flat_map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let row: Vec<f64> = v["probabilities"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_f64().unwrap())
                    .collect();
                row
            })
            .collect()
    };
    let (own, bf16, f32) = (probs(None), probs(Some("bf16")), probs(Some("f32")));
    assert_eq!(own, bf16);
    assert_eq!(own.len(), 4);
    let diff = own
        .iter()
        .zip(&f32)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 2e-2, "bf16 vs f32: {diff}");
    // On Flex a bf16 run classifies with bf16 products on the CPU's matrix units where it has
    // them (else in f32, saying why): different from f32's figures only then.
    let predict = trainer(dir, &["predict", "--run", "bf16", "x"]);
    let on_units = String::from_utf8_lossy(&predict.stderr).contains("matrix units (oneDNN");
    assert_eq!(diff > 0.0, on_units, "bf16 vs f32: {diff}");
    // `bench --run` loads the run as predict does: in its precision.
    let bench = ok_json(&trainer(
        dir,
        &[
            "bench",
            "--run",
            "bf16",
            "--texts",
            "6",
            "--batch-size",
            "4",
        ],
    ));
    let label = bench["precision"].as_str().unwrap();
    assert_eq!(label.starts_with("bf16 (oneDNN"), on_units, "{bench}");
    for key in ["batched_texts_per_s", "batched_first_pass_texts_per_s"] {
        let rate = bench[key].as_f64().unwrap();
        assert!(rate.is_finite() && rate > 0.0, "{key}: {bench}");
    }

    let e = one_line_error(
        &trainer(dir, &["predict", "--precision", "f8", "--run", "bf16", "x"]),
        &["--precision", "f8"],
    );
    assert!(e.contains("f32, f16, bf16"), "{e}");
    let e = err(&trainer(
        dir,
        &[
            "train",
            "--config",
            "tiny.toml",
            "--set",
            "train.precision=f64",
        ],
    ));
    assert!(e.contains("precision") && e.contains("f64"), "{e}");
    one_line_error(
        &trainer(
            dir,
            &["train", "--config", "tiny.toml", "--precision", "f16"],
        ),
        &["precision f16: training is not supported"],
    );
}

#[test]
fn bad_data_and_configs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);

    let e = err(&trainer(
        dir,
        &[
            "train",
            "--config",
            "tiny.toml",
            "--set",
            "train.lerning_rate=1",
        ],
    ));
    assert!(e.contains("lerning_rate"), "{e}");

    std::fs::write(dir.join("labels.txt"), "标题党\n其他\n").unwrap();
    let e = err(&trainer(
        dir,
        &["train", "--config", "tiny.toml", "--run-dir", "r1"],
    ));
    assert!(e.contains("zh.csv:3: unknown label `非标题党`"), "{e}");

    write_data(dir);
    let mut bytes = std::fs::read(dir.join("zh.csv")).unwrap();
    bytes.extend_from_slice(b"\xff\xfe bad,\xe6\xa0\x87\xe9\xa2\x98\xe5\x85\x9a\n");
    std::fs::write(dir.join("zh.csv"), bytes).unwrap();
    let e = err(&trainer(
        dir,
        &["train", "--config", "tiny.toml", "--run-dir", "r2"],
    ));
    assert!(
        e.contains("zh.csv:64: invalid UTF-8 in column `title`"),
        "{e}"
    );

    let e = err(&trainer(dir, &["train", "--config", "missing.toml"]));
    assert!(e.contains("missing.toml"), "{e}");
    let e = err(&trainer(dir, &["eval", "--run", "nowhere"]));
    assert!(e.contains("nowhere is not a run directory"), "{e}");
    let e = err(&trainer(dir, &["report", "--run", "nowhere"]));
    assert!(e.contains("nowhere is not a run directory"), "{e}");
    let e = err(&trainer(
        dir,
        &["train", "--resume", "--run-dir", "nowhere"],
    ));
    assert!(e.contains("nowhere"), "{e}");
}

/// Every method trains from the CLI, and its run's peft adapter directory, applied to the base
/// model with `--model --adapter`, evaluates exactly as the run itself (LoRA merged on load).
#[test]
fn every_method_trains_and_its_peft_adapter_evaluates_like_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    let base = fixtures().join("tiny-bert");
    let methods: [(&str, &[&str]); 6] = [
        (
            "prompt",
            &["peft.method=prompt-tuning", "peft.num_virtual_tokens=4"],
        ),
        (
            "prompt-text",
            &[
                "peft.method=prompt-tuning",
                "peft.num_virtual_tokens=4",
                "peft.prompt_tuning_init=text",
                "peft.prompt_tuning_init_text=标题党",
            ],
        ),
        (
            "p-tuning",
            &[
                "peft.method=p-tuning",
                "peft.num_virtual_tokens=4",
                "peft.encoder_hidden_size=8",
            ],
        ),
        (
            "p-tuning-lstm",
            &[
                "peft.method=p-tuning",
                "peft.num_virtual_tokens=4",
                "peft.encoder_hidden_size=8",
                "peft.encoder_reparameterization_type=lstm",
                "peft.encoder_num_layers=2",
                "peft.encoder_dropout=0.1",
            ],
        ),
        (
            "lora",
            &[
                "peft.method=lora",
                "peft.target_modules=[\"query\", \"value\", \"dense\"]",
            ],
        ),
        ("full", &["peft.method=full", "train.lr=1e-3"]),
    ];
    for (name, sets) in methods {
        // `--set peft.method=...` replaces the method; the prefix-only key must go.
        let config = std::fs::read_to_string(dir.join("tiny.toml"))
            .unwrap()
            .replace("method = \"prefix-tuning\"\nnum_virtual_tokens = 4\n", "")
            .replace("epochs = 2", "epochs = 1");
        std::fs::write(dir.join(format!("{name}.toml")), config).unwrap();
        let run = format!("runs/{name}");
        let cfg = format!("{name}.toml");
        let mut args = vec!["train", "--config", &cfg, "--run-dir", &run];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = trainer(dir, &args);
        ok(&out);
        let by_run = ok_json(&trainer(dir, &["eval", "--run", &run, "--json"]));
        check_export(dir, name, &run, &by_run);
        let adapter = dir.join(&run).join("adapter");
        if name == "full" {
            assert!(!adapter.exists(), "full fine-tuning has no peft adapter");
            continue;
        }
        let cfg = json(&adapter.join("adapter_config.json"));
        assert_eq!(
            cfg["peft_type"],
            match name {
                "prompt" | "prompt-text" => "PROMPT_TUNING",
                "p-tuning" | "p-tuning-lstm" => "P_TUNING",
                _ => "LORA",
            }
        );
        if name == "p-tuning-lstm" {
            // What Python needs to rebuild the encoder for further training.
            assert_eq!(cfg["encoder_reparameterization_type"], "LSTM");
            assert_eq!(cfg["encoder_num_layers"], 2);
            assert_eq!(cfg["encoder_dropout"], 0.1);
        }
        let by_adapter = ok_json(&trainer(
            dir,
            &[
                "eval",
                "--model",
                base.to_str().unwrap(),
                "--adapter",
                adapter.to_str().unwrap(),
                "--labels",
                &format!("{run}/labels.txt"),
                "--max-length",
                "16",
                "--data",
                &format!("{run}/valid.csv"),
                "--json",
            ],
        ));
        assert_same_eval(&format!("{name} adapter"), &by_run, &by_adapter);
    }
}

/// Two `eval --json` reports of the same classifier loaded two ways agree.
fn assert_same_eval(what: &str, expected: &Value, got: &Value) {
    let (a, b) = (
        expected["loss"].as_f64().unwrap(),
        got["loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-5, "{what}: loss {b}, the run's {a}");
    assert_eq!(expected["confusion"], got["confusion"], "{what}");
}

/// `trainer export`: LoRA (merged) and full runs become a plain HF classifier directory that
/// evaluates exactly as the run when loaded back with `--model DIR`; the virtual-token methods
/// are refused with a pointer to their peft adapter.
fn check_export(dir: &Path, name: &str, run: &str, by_run: &Value) {
    let out_dir = dir.join(format!("exported-{name}"));
    let output = out_dir.to_str().unwrap();
    let out = trainer(dir, &["export", "--run", run, "--output", output]);
    if !matches!(name, "lora" | "full") {
        let e = err(&out);
        assert!(e.contains("peft adapter"), "{name}: {e}");
        assert!(!out_dir.exists(), "{name}: nothing is left behind");
        return;
    }
    ok(&out);
    let config = json(&out_dir.join("config.json"));
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    let labels = std::fs::read_to_string(dir.join(run).join("labels.txt")).unwrap();
    let first = labels.lines().next().unwrap();
    assert_eq!(config["id2label"]["0"], first);
    assert_eq!(config["label2id"][first], 0);
    let keys = safetensor_keys(&out_dir.join("model.safetensors"));
    assert!(keys.contains(&"bert.encoder.layer.1.attention.self.query.weight".to_string()));
    assert!(keys.contains(&"bert.embeddings.LayerNorm.weight".to_string()));
    assert!(keys.contains(&"classifier.weight".to_string()));
    assert!(keys.iter().all(|k| !k.contains("lora")), "{keys:?}");
    assert!(out_dir.join("tokenizer.json").is_file());

    let by_export = ok_json(&trainer(
        dir,
        &[
            "eval",
            "--model",
            output,
            "--max-length",
            "16",
            "--data",
            &format!("{run}/valid.csv"),
            "--json",
        ],
    ));
    // The export's head has the run's temperature folded in: its raw loss is the calibrated
    // one, so the calibrated figures are what must agree.
    assert_eq!(by_run["confusion"], by_export["confusion"], "{name} export");
    for key in ["ece", "brier"] {
        let (a, b) = (
            by_run["calibration"][key].as_f64().unwrap(),
            by_export["calibration"][key].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() < 1e-5,
            "{name} export: {key} {b}, the run's {a}"
        );
    }
    let e = err(&trainer(dir, &["export", "--run", run, "--output", output]));
    assert!(e.contains("already exists"), "{e}");
}

/// Adapters saved by Python peft (fixtures) evaluate here with peft's loss on the fixture texts.
#[test]
fn python_peft_adapters_evaluate_with_peft_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exp = json(&fixtures().join("expected.json"));
    let names = ["标题党", "非标题党"];
    let mut csv = String::from("title,label\n");
    for (i, t) in exp["texts"].as_array().unwrap().iter().enumerate() {
        csv.push_str(&format!("\"{}\",{}\n", t.as_str().unwrap(), names[i % 2]));
    }
    std::fs::write(dir.join("texts.csv"), csv).unwrap();
    std::fs::write(dir.join("labels.txt"), names.join("\n")).unwrap();
    for case in exp["peft_adapters"].as_array().unwrap() {
        let adapter = fixtures().join(case["dir"].as_str().unwrap());
        // peft's mean cross-entropy from its logits, labels 0, 1, 0, 1.
        let logits = case["logits"].as_array().unwrap();
        let want: f64 = logits
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let row: Vec<f64> = row
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                let max = row.iter().cloned().fold(f64::MIN, f64::max);
                let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                lse - row[i % 2]
            })
            .sum::<f64>()
            / logits.len() as f64;
        let got = ok_json(&trainer(
            dir,
            &[
                "eval",
                "--model",
                fixtures().join("tiny-bert").to_str().unwrap(),
                "--adapter",
                adapter.to_str().unwrap(),
                "--labels",
                "labels.txt",
                "--data",
                "texts.csv",
                "--json",
            ],
        ));
        let loss = got["loss"].as_f64().unwrap();
        assert!(
            (loss - want).abs() < 1e-4,
            "{}: {loss} vs peft {want}",
            adapter.display()
        );
    }
    // Without --labels the names are LABEL_i, so this CSV's labels are unknown: named.
    let e = err(&trainer(
        dir,
        &[
            "eval",
            "--model",
            fixtures().join("tiny-bert").to_str().unwrap(),
            "--adapter",
            fixtures().join("peft-lora").to_str().unwrap(),
            "--data",
            "texts.csv",
        ],
    ));
    assert!(e.contains("unknown label") && e.contains("LABEL_0"), "{e}");
}

/// Every tensor of a safetensors file, as f32 values by name.
fn safetensor_values(path: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            assert_eq!(v["dtype"], "F32", "{k}");
            let [a, b] = [0, 1].map(|i| v["data_offsets"][i].as_u64().unwrap() as usize);
            let values = data[a..b]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (k.clone(), values)
        })
        .collect()
}

/// The default recipe's features on the tiny model: LoRA with dropout on query and value, a
/// fresh head (the default model has none), length-grouped batches over more than one window,
/// warmup and weight decay. A run stopped after epoch 1 and resumed ends with the straight
/// run's adapter, tensor for tensor.
#[test]
fn resume_between_epochs_is_exact_with_the_default_recipes_features() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Three labels: the tiny model's own head has two, so the head is a fresh one, as on the
    // default model (which has none).
    let mut csv = String::from("title,label\n");
    let labels = ["标题党", "非标题党", "其他"];
    for i in 0..1000 {
        let title = match i % 3 {
            0 => format!("震惊！你绝对想不到的第{i}个秘密"),
            1 => format!("国务院发布第{i}号通知"),
            _ => format!("第{i}届运动会今日开幕{}", "，观众".repeat(i % 4)),
        };
        csv.push_str(&format!("{title},{}\n", labels[i % 3]));
    }
    std::fs::write(dir.join("zh.csv"), csv).unwrap();
    std::fs::write(dir.join("labels.txt"), labels.join("\n")).unwrap();
    let config = format!(
        r#"name = "lora"
[model]
source = "{}"
max_length = 16
[data]
train = "zh.csv"
labels = "labels.txt"
[peft]
method = "lora"
r = 8
lora_alpha = 16.0
lora_dropout = 0.1
target_modules = ["query", "value"]
[train]
epochs = 2
batch_size = 8
lr = 2e-3
weight_decay = 0.01
warmup_ratio = 0.06
group_by_length = true
"#,
        tiny()
    );
    std::fs::write(dir.join("lora.toml"), config).unwrap();
    let train = |args: &[&str]| {
        let mut all = vec!["train"];
        all.extend_from_slice(args);
        ok(&trainer(dir, &all))
    };
    train(&["--config", "lora.toml", "--run-dir", "straight"]);
    train(&[
        "--config",
        "lora.toml",
        "--run-dir",
        "resumed",
        "--stop-after",
        "1",
    ]);
    train(&["--resume", "--run-dir", "resumed"]);
    let a = safetensor_values(&dir.join("straight/adapter.safetensors"));
    let b = safetensor_values(&dir.join("resumed/adapter.safetensors"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    // The fresh head's bias trains from the first step, not only once a resume reloads it.
    assert!(
        a["classifier.bias"].iter().any(|&v| v != 0.0),
        "{:?}",
        a["classifier.bias"]
    );
    for (name, x) in &a {
        let diff = x
            .iter()
            .zip(&b[name])
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(diff <= 1e-6, "{name}: differs by {diff}");
    }
    let (ma, mb) = (
        finished_epochs(&dir.join("straight")),
        finished_epochs(&dir.join("resumed")),
    );
    for split in ["train", "valid"] {
        for key in ["loss", "accuracy", "macro_f1"] {
            assert_eq!(
                ma[1][split][key], mb[1][split][key],
                "epoch 2 {split} {key}"
            );
        }
    }
}

/// `--resume` continues the run's own recipe from readable files, or says which key or file
/// stands in the way (one line, no panic, nothing written).
#[test]
fn resume_refuses_another_recipe_and_damaged_run_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    ok(&trainer(
        dir,
        &[
            "train",
            "--config",
            "tiny.toml",
            "--run-dir",
            "r",
            "--stop-after",
            "1",
        ],
    ));
    let run = dir.join("r");
    let resume = |sets: &[&str]| {
        let mut args = vec!["train", "--resume", "--run-dir", "r"];
        for s in sets {
            args.extend(["--set", s]);
        }
        trainer(dir, &args)
    };
    let summary = std::fs::read(run.join("summary.json")).unwrap();
    let metrics = std::fs::read(run.join("metrics.json")).unwrap();

    // Another recipe given on the command line.
    one_line_error(
        &resume(&["peft.method=lora"]),
        &["--resume: the recipe differs", "at peft.method;"],
    );
    one_line_error(
        &resume(&["train.lr=0.02", "train.epochs=3"]),
        &["at train.epochs, train.lr;"],
    );
    one_line_error(
        &trainer(
            dir,
            &["train", "--resume", "--run-dir", "r", "--precision", "bf16"],
        ),
        &["--resume: the run trains in f32, not bf16"],
    );
    // The run's config.toml edited since the run started.
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let edited = config.replace("num_virtual_tokens = 4", "num_virtual_tokens = 5");
    assert_ne!(edited, config);
    std::fs::write(run.join("config.toml"), &edited).unwrap();
    one_line_error(
        &resume(&[]),
        &["config.toml was edited", "peft.num_virtual_tokens"],
    );
    // A run without that record (an older one) meets its checkpoint: it does not fit.
    let mut old: Value = serde_json::from_slice(&summary).unwrap();
    old.as_object_mut().unwrap().remove("recipe").unwrap();
    std::fs::write(run.join("summary.json"), old.to_string()).unwrap();
    one_line_error(&resume(&[]), &["model-1.bpk does not fit this run's model"]);
    std::fs::write(run.join("config.toml"), &config).unwrap();
    std::fs::write(run.join("summary.json"), &summary).unwrap();

    // Truncated checkpoint files, each named.
    for part in ["model", "optim", "scheduler"] {
        let file = run.join(format!("checkpoint/{part}-1.bpk"));
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() / 8]).unwrap();
        one_line_error(&resume(&[]), &[&format!("{part}-1.bpk")]);
        std::fs::write(&file, &bytes).unwrap();
    }
    // A damaged metrics.json (the epochs the run keeps its best from) or summary.json (the
    // data counts): named, and left as they are.
    std::fs::write(run.join("metrics.json"), b"{\"epochs\": [").unwrap();
    one_line_error(&resume(&[]), &["metrics.json is not valid JSON"]);
    std::fs::write(run.join("metrics.json"), b"{}").unwrap();
    one_line_error(
        &resume(&[]),
        &["metrics.json has no readable per-epoch record"],
    );
    std::fs::write(run.join("metrics.json"), &metrics).unwrap();
    std::fs::write(run.join("summary.json"), b"{\"data\": ").unwrap();
    one_line_error(&resume(&[]), &["summary.json is not valid JSON"]);
    assert_eq!(
        std::fs::read(run.join("summary.json")).unwrap(),
        b"{\"data\": "
    );
    std::fs::write(run.join("summary.json"), &summary).unwrap();

    // Where it trains may change; then the run finishes, its summary whole.
    let out = resume(&["train.device=\"flex\""]);
    assert_eq!(ok(&out).lines().last(), Some("r"));
    let done = json(&run.join("summary.json"));
    assert_eq!(done["data"]["train"], 48, "{done}");
    assert!(done["best_epoch"].as_u64().is_some(), "{done}");
    assert_eq!(finished_epochs(&run).len(), 2);
}

/// Counts that multiply into the step total are bounded before anything runs.
#[test]
fn huge_epoch_and_batch_counts_are_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    for (set, key) in [
        ("train.epochs=9223372036854775807", "train.epochs"),
        ("train.epochs=4611686018427387904", "train.epochs"),
        ("train.batch_size=9223372036854775807", "train.batch_size"),
    ] {
        one_line_error(
            &trainer(dir, &["train", "--config", "tiny.toml", "--set", set]),
            &[key],
        );
    }
    assert!(!dir.join("runs").exists(), "nothing is created");
}

/// Two runs started at the same instant: into one `--run-dir`, one trains and the other is
/// refused at once, naming the directory; without `--run-dir`, each gets its own.
#[test]
fn one_run_directory_takes_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    let start = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args(args)
            .current_dir(dir)
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("BURN_DEVICE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let same = ["train", "--config", "tiny.toml", "--run-dir", "same"];
    let (a, b) = (start(&same), start(&same));
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let (done, refused): (Vec<_>, Vec<_>) = outs.iter().partition(|o| o.status.success());
    assert_eq!((done.len(), refused.len()), (1, 1), "{outs:?}");
    only_error_line(
        refused[0],
        &["same is in use by another trainer process", "same/.lock"],
    );
    assert_eq!(finished_epochs(&dir.join("same")).len(), 2);

    let fresh = ["train", "--config", "tiny.toml"];
    let (a, b) = (start(&fresh), start(&fresh));
    let mut dirs: Vec<String> = [a, b]
        .map(|c| {
            ok(&c.wait_with_output().unwrap())
                .lines()
                .last()
                .unwrap()
                .to_string()
        })
        .to_vec();
    dirs.sort();
    assert_eq!(dirs, ["runs/tiny", "runs/tiny-2"]);
}

/// A misspelt `--set` key is one error line that blames the override, not the recipe file,
/// and suggests the key meant; an error in the file itself names the file.
#[test]
fn a_misspelt_set_key_is_one_error_line_naming_the_override() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    let out = trainer(
        dir,
        &["train", "--config", "tiny.toml", "--set", "train.epoch=1"],
    );
    only_error_line(
        &out,
        &[
            "error: --set train.epoch=1: `train`: unknown field `epoch`, expected one of `epochs`",
            "did you mean `train.epochs`?",
        ],
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("tiny.toml"));
    only_error_line(
        &trainer(
            dir,
            &[
                "train",
                "--config",
                "tiny.toml",
                "--set",
                "train.strategy=fast",
            ],
        ),
        &["error: --set train.strategy=fast: `train.strategy`: unknown variant `fast`"],
    );
    std::fs::write(dir.join("bad.toml"), "[train]\nepoch = 1\n").unwrap();
    only_error_line(
        &trainer(
            dir,
            &["train", "--config", "bad.toml", "--set", "train.lr=0.01"],
        ),
        &[
            "bad.toml: `train`: unknown field `epoch`",
            "did you mean `train.epochs`?",
        ],
    );
    assert!(!dir.join("runs").exists(), "nothing is created");
}

/// Writes `name` with the given line end: a header, then rows holding escaped quotes, a
/// quoted newline and a quoted comma, then `bad` on physical line 7, then more good rows.
fn write_tricky_csv(dir: &Path, name: &str, end: &str, bad: &str) {
    let lines = [
        "title,label",
        "\"他说\"\"好\"\"\",标题党",
        "\"两行",
        "标题\",非标题党",
        "国务院发布第1号通知,非标题党",
        "\"a, \"\"b\"\"\",标题党",
        bad,
        "国务院发布第2号通知,非标题党",
        "震惊！你绝对想不到,标题党",
    ];
    std::fs::write(dir.join(name), lines.join(end) + end).unwrap();
}

/// Bad data is reported before the model loads (here a model that cannot load at all), at
/// the physical line of the bad row whatever the line ends and quoting before it, and an
/// unknown label says which labels are expected and that `data.labels` sets them.
#[test]
fn bad_data_is_named_at_its_physical_line_before_the_model_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    let train = |data: &str, extra: &[&str]| {
        let set_data = format!("data.train={data}");
        let mut args = vec![
            "train",
            "--config",
            "tiny.toml",
            "--run-dir",
            "r",
            "--set",
            "model.source=/nonexistent",
            "--set",
            &set_data,
        ];
        for e in extra {
            args.extend(["--set", e]);
        }
        let out = trainer(dir, &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !stderr.contains("/nonexistent"),
            "the model was loaded: {stderr}"
        );
        assert!(
            !dir.join("r").exists(),
            "a failed setup leaves no directory"
        );
        out
    };
    for (i, end) in ["\r\n", "\n", "\r"].into_iter().enumerate() {
        let name = format!("labels-{i}.csv");
        write_tricky_csv(dir, &name, end, "坏消息,1");
        one_line_error(
            &train(&name, &[]),
            &[&format!(
                "{name}:7: unknown label `1` (expected one of: 标题党, 非标题党; the labels \
                 of data.labels = \"labels.txt\"; to train on others, set data.labels to a \
                 file that lists them, one per line (in the recipe or with --set \
                 data.labels=FILE))"
            )],
        );
        let name = format!("rows-{i}.csv");
        write_tricky_csv(dir, &name, end, "坏消息,标题党,多余");
        one_line_error(
            &train(&name, &[]),
            &[&format!(
                "{name}:7: malformed CSV: 3 fields where the header has 2"
            )],
        );
    }
    // Without data.labels, the labels are the training data's: a validation file with
    // another label says so.
    let recipe = std::fs::read_to_string(dir.join("tiny.toml")).unwrap();
    std::fs::write(
        dir.join("tiny.toml"),
        recipe.replace("labels = \"labels.txt\"\n", ""),
    )
    .unwrap();
    write_tricky_csv(dir, "valid.csv", "\r\n", "坏消息,其他");
    one_line_error(
        &train("zh.csv", &["data.valid=valid.csv"]),
        &[
            "valid.csv:7: unknown label `其他` (expected one of: 标题党, 非标题党; the labels \
             found in zh.csv, as data.labels is not set; to allow others, set data.labels to a \
             file that lists every label, one per line)",
        ],
    );
}

/// A debug build of `train` says so, once, at the start, with the release command; a release
/// build says nothing about it.
#[test]
fn a_debug_build_says_at_the_start_that_release_trains_faster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    std::fs::write(dir.join("labels.txt"), "a\nb\n").unwrap();
    let out = trainer(dir, &["train", "--config", "tiny.toml", "--run-dir", "r"]);
    one_line_error(&out, &["unknown label"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let notes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("debug build"))
        .collect();
    if cfg!(debug_assertions) {
        assert_eq!(notes.len(), 1, "{stderr}");
        assert_eq!(stderr.lines().next(), Some(notes[0]), "{stderr}");
        assert!(
            notes[0].contains("`cargo run --release -p trainer`") && notes[0].contains("3x faster"),
            "{stderr}"
        );
    } else {
        assert!(notes.is_empty(), "{stderr}");
    }
}

/// A run that lands in `runs/<name>-2` (the README's `runs/<name>` is taken) ends by naming
/// that directory in the commands that use it; stdout's last line is the directory itself.
#[test]
fn train_ends_with_the_actual_run_directory_to_use() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    std::fs::create_dir_all(dir.join("runs/tiny")).unwrap();
    let out = trainer(
        dir,
        &["train", "--config", "tiny.toml", "--set", "train.epochs=1"],
    );
    let stdout = ok(&out);
    assert_eq!(stdout.lines().last(), Some("runs/tiny-2"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(4).collect();
    assert_eq!(
        tail,
        [
            "  trainer serve --run runs/tiny-2",
            "  trainer eval --run runs/tiny-2",
            "  trainer predict --run runs/tiny-2 \"a headline\"",
            "the run is in runs/tiny-2; use it with:",
        ],
        "{stderr}"
    );
    // The command it names works.
    let predicted = ok(&trainer(
        dir,
        &["predict", "--run", "runs/tiny-2", "a headline"],
    ));
    assert!(!predicted.trim().is_empty());
}

/// `data.holdout_fraction` chooses on a slice of the training split: the validation split's rows
/// are neither trained on nor evaluated, so a recipe chosen this way can be measured on them.
/// The same run starts its prefix from a text (`peft.prefix_init_text`).
#[test]
fn a_holdout_of_the_training_split_takes_the_validation_splits_place() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_titles(dir, 100);
    train_run(
        dir,
        "plain",
        "method = \"prefix-tuning\"\nnum_virtual_tokens = 4",
        1,
    );
    let config = format!(
        "name = \"held\"\n[model]\nsource = \"{}\"\nmax_length = 16\n[data]\ntrain = \"zh.csv\"\n\
         labels = \"labels.txt\"\nholdout_fraction = 0.25\n[peft]\nmethod = \"prefix-tuning\"\n\
         num_virtual_tokens = 6\nprefix_init_text = \"震惊！你绝对想不到\"\n[train]\nepochs = 1\n\
         batch_size = 8\nlr = 0.01\n",
        tiny()
    );
    std::fs::write(dir.join("held.toml"), config).unwrap();
    let out = trainer(
        dir,
        &["train", "--config", "held.toml", "--run-dir", "held"],
    );
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("choosing on a held-out 20 of the 80 training rows"),
        "{stderr}"
    );
    let titles = |run: &str, file: &str| -> std::collections::BTreeSet<String> {
        let text = std::fs::read_to_string(dir.join(run).join(file)).unwrap();
        text.lines().skip(1).map(str::to_owned).collect()
    };
    let (train, valid) = (titles("held", "train.csv"), titles("held", "valid.csv"));
    assert_eq!((train.len(), valid.len()), (60, 20));
    let plain_train = titles("plain", "train.csv");
    assert!(train.union(&valid).all(|t| plain_train.contains(t)));
    assert!(train.is_disjoint(&valid));
    let summary = json(&dir.join("held/summary.json"));
    assert_eq!(summary["data"]["valid"], 20);
    assert_eq!(summary["data"]["valid_is_holdout_of_train"], 0.25);
}
