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
            "peft.r=1000",
        ],
    );
    one_line_error(&out, &["peft.r = 1000 exceeds the rank"]);

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

/// `predict --model M --adapter peft-lora` on `args`, in `dir`.
fn predict_lora(dir: &Path, model: &str, adapter: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec![
        "predict",
        "--model",
        model,
        "--adapter",
        adapter.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    trainer(dir, &all)
}

#[test]
fn a_pypi_model_string_never_reaches_a_build() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A source tree whose setup.py leaves a mark if pip ever builds it.
    let project = dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let marker = dir.join("ran");
    std::fs::write(
        project.join("setup.py"),
        format!("open({:?}, 'w').write('x')\n", marker.to_str().unwrap()),
    )
    .unwrap();
    let spec = format!("pypi:x==/../..{}", project.display());
    let out = trainer(dir, &["predict", "--model", &spec, "hi"]);
    one_line_error(&out, &["not a version number"]);
    let out = trainer(dir, &["predict", "--model", "pypi:..", "hi"]);
    one_line_error(&out, &["pypi:NAME"]);

    // The same string in a run's recipe.
    let config = trained_run(dir).join("config.toml");
    let text: String = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .map(|l| match l.starts_with("source = ") {
            true => format!("source = {spec:?}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    assert!(text.contains("pypi:x=="), "{text}");
    std::fs::write(&config, text).unwrap();
    let out = trainer(dir, &["predict", "--run", "r", "hi"]);
    one_line_error(&out, &["not a version number"]);
    assert!(!marker.exists(), "pip built the directory");
}

#[cfg(unix)]
#[test]
fn outputs_to_special_files_write_through_them() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = tiny();
    let adapter = fixtures().join("peft-lora");
    std::fs::write(dir.join("in.csv"), "title\n标题一\n标题二\n").unwrap();
    let score_into = |output: &str| {
        predict_lora(
            dir,
            &model,
            &adapter,
            &["--input", "in.csv", "--output", output],
        )
    };
    // /dev/null stays a device (as root, a rename would have replaced it).
    ok(&score_into("/dev/null"));
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );

    // A FIFO stays a FIFO, and its reader gets the CSV.
    let fifo = dir.join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    ok(&score_into(fifo.to_str().unwrap()));
    let csv = reader.join().unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());

    // A link to a file: the file gets the rows, the link stays.
    std::fs::write(dir.join("real.csv"), "old").unwrap();
    std::os::unix::fs::symlink(dir.join("real.csv"), dir.join("link.csv")).unwrap();
    ok(&score_into("link.csv"));
    assert!(dir.join("link.csv").is_symlink());
    assert_eq!(
        std::fs::read_to_string(dir.join("real.csv"))
            .unwrap()
            .lines()
            .count(),
        3
    );
}

#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    let adapter = fixtures().join("peft-lora");
    let model = tiny();
    // `trainer eval ... --json | true`: the reader is gone before anything is written.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args([
            "eval",
            "--model",
            &model,
            "--adapter",
            adapter.to_str().unwrap(),
            "--labels",
            "labels.txt",
            "--data",
            "zh.csv",
            "--json",
        ])
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Ended by SIGPIPE, as `yes | true` is.
    assert_eq!(out.status.signal(), Some(13), "{:?}: {stderr}", out.status);
}

#[test]
fn non_finite_weights_and_scores_are_never_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = tiny();

    // A NaN in the base weights.
    let nan_model = copy_model(&dir.join("nan-model"));
    let path = nan_model.join("model.safetensors");
    let mut tensors = Checkpoint::read(&path).unwrap().tensors;
    let key = tensors
        .keys()
        .find(|k| k.contains("word_embeddings"))
        .unwrap()
        .clone();
    tensors.get_mut(&key).unwrap().data[5] = f32::NAN;
    write_safetensors(&path, &tensors, None).unwrap();
    let out = trainer(dir, &["embed", "--model", nan_model.to_str().unwrap(), "x"]);
    one_line_error(&out, &["model.safetensors", "NaN or infinite"]);

    // An infinity in an adapter's head.
    let a = copy_adapter("peft-lora", &dir.join("inf-head"));
    edit_tensors(&a, |t| {
        let key = t.keys().find(|k| k.contains("classifier")).unwrap().clone();
        t.get_mut(&key).unwrap().data[0] = f32::INFINITY;
    });
    one_line_error(
        &predict_lora(dir, &model, &a, &["标题"]),
        &["NaN or infinite"],
    );

    // Finite factors whose product overflows (1e30 x 1e30): refused, not answered with a
    // label.
    let a = copy_adapter("peft-lora", &dir.join("huge-update"));
    edit_tensors(&a, |t| {
        for (key, tensor) in t.iter_mut() {
            if key.contains("lora_") {
                tensor.data.iter_mut().for_each(|x| *x = 1e30);
            }
        }
    });
    let out = predict_lora(dir, &model, &a, &["--json", "标题"]);
    one_line_error(&out, &["NaN or infinite outputs"]);
    assert!(out.stdout.is_empty(), "nothing answered");

    // lora_alpha far beyond any recipe.
    let a = copy_adapter("peft-lora", &dir.join("alpha"));
    edit_json(&a.join("adapter_config.json"), "lora_alpha", 1e308.into());
    one_line_error(
        &predict_lora(dir, &model, &a, &["标题"]),
        &["lora_alpha", "at most"],
    );
}

#[test]
fn sizes_are_bounded_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    let model = tiny();
    let train = |sets: &[&str]| {
        let mut args = vec!["train", "--config", "tiny.toml", "--run-dir", "r"];
        for s in sets {
            args.extend(["--set", s]);
        }
        trainer(dir, &args)
    };
    for (sets, needle) in [
        (
            &["peft.num_virtual_tokens=1000000000"][..],
            "peft.num_virtual_tokens must be between 1 and",
        ),
        (
            &[
                "peft.prefix_projection=true",
                "peft.encoder_hidden_size=1000000000",
            ][..],
            "peft.encoder_hidden_size must be between 1 and",
        ),
        (
            &[
                "peft.method=p-tuning",
                "peft.encoder_reparameterization_type=lstm",
                "peft.encoder_num_layers=100000",
            ][..],
            "peft.encoder_num_layers must be between 1 and",
        ),
        (
            &["train.batch_size=100000000"][..],
            "train.batch_size must be between 1 and",
        ),
        (
            &["train.epochs=1000000000"][..],
            "train.epochs must be between 1 and",
        ),
    ] {
        one_line_error(&train(sets), &[needle]);
        assert!(!dir.join("r").exists());
    }
    let out = trainer(
        dir,
        &["bench", "--model", &model, "--batch-size", "1000000"],
    );
    one_line_error(&out, &["--batch-size must be at most"]);

    // Files that never end.
    #[cfg(unix)]
    {
        std::fs::write(dir.join("zero.toml"), "base = \"/dev/zero\"\n").unwrap();
        let out = trainer(dir, &["train", "--config", "zero.toml"]);
        one_line_error(&out, &["/dev/zero", "device"]);
        let out = trainer(dir, &["train", "--config", "/dev/zero"]);
        one_line_error(&out, &["/dev/zero", "device"]);
        let out = trainer(dir, &["embed", "--model", &model, "--input", "/dev/zero"]);
        one_line_error(&out, &["/dev/zero", "device"]);
    }

    // One 20 MB line on stdin: scored from its first megabyte, as a short text would be.
    let adapter = fixtures().join("peft-lora");
    let long = "标题 ".repeat(5_000_000);
    let out = {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args([
                "predict",
                "--model",
                &model,
                "--adapter",
                adapter.to_str().unwrap(),
            ])
            .current_dir(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            pipe.write_all(long.as_bytes()).unwrap();
            pipe.write_all("\n标题\n".as_bytes()).unwrap();
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    };
    let stdout = ok(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout:.200}");
    // The label and score of the long text equal those of its start.
    let short = ok(&predict_lora(
        dir,
        &model,
        &adapter,
        &[&"标题 ".repeat(100)],
    ));
    let fields = |l: &str| {
        l.split('\t')
            .take(2)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(fields(lines[0]), fields(short.lines().next().unwrap()));
}

#[test]
fn a_tokenizer_larger_than_the_embedding_table_is_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = copy_model(&dir.join("big-vocab"));
    std::fs::remove_file(model.join("tokenizer.json")).unwrap();
    let mut vocab = std::fs::read_to_string(fixtures().join("tiny-bert/vocab.txt")).unwrap();
    for i in 0..5000 {
        vocab.push_str(&format!("extra{i}\n"));
    }
    std::fs::write(model.join("vocab.txt"), vocab).unwrap();
    let out = trainer(
        dir,
        &["embed", "--model", model.to_str().unwrap(), "extra4999"],
    );
    one_line_error(&out, &["vocab.txt", "embedding table", "rows"]);
}

/// A run trained once, shared by the decision-file checks.
fn trained_run(dir: &Path) -> std::path::PathBuf {
    write_data(dir);
    ok(&trainer(
        dir,
        &[
            "train",
            "--config",
            "tiny.toml",
            "--set",
            "train.epochs=1",
            "--run-dir",
            "r",
        ],
    ));
    dir.join("r")
}

#[test]
fn decision_files_and_recorded_settings_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = trained_run(dir);
    let predict = || trainer(dir, &["predict", "--run", "r", "标题"]);
    ok(&predict());

    let threshold = |value: serde_json::Value| {
        serde_json::json!({"label": "标题党", "threshold": value, "target_precision": 0.9,
                           "precision": 0.9, "recall": 0.5, "data": "v.csv"})
        .to_string()
    };
    for bad in [serde_json::json!(2.0), serde_json::json!(-0.5)] {
        std::fs::write(run.join("threshold.json"), threshold(bad)).unwrap();
        one_line_error(
            &predict(),
            &["threshold.json", "threshold must be between 0 and 1"],
        );
    }
    std::fs::remove_file(run.join("threshold.json")).unwrap();

    let calibration = json(&run.join("calibration.json"));
    for bad in [1e308, 1e-300, 0.0, -1.0] {
        let mut c = calibration.clone();
        c["temperature"] = bad.into();
        std::fs::write(run.join("calibration.json"), c.to_string()).unwrap();
        one_line_error(
            &predict(),
            &["calibration.json", "temperature must be between"],
        );
    }
    std::fs::write(run.join("calibration.json"), calibration.to_string()).unwrap();

    let out = trainer(
        dir,
        &[
            "eval",
            "--run",
            "r",
            "--target-precision=-1",
            "--save-threshold",
        ],
    );
    one_line_error(&out, &["--target-precision must be between 0 and 1"]);
    assert!(!run.join("threshold.json").exists());

    // The trained parameters without the head.
    let adapter = run.join("adapter.safetensors");
    let saved = std::fs::read(&adapter).unwrap();
    let mut tensors = Checkpoint::read(&adapter).unwrap().tensors;
    tensors.retain(|k, _| !k.starts_with("classifier"));
    write_safetensors(&adapter, &tensors, None).unwrap();
    one_line_error(
        &predict(),
        &["adapter.safetensors", "missing", "classifier"],
    );
    std::fs::write(&adapter, saved).unwrap();

    // A hand-edited setting that the adapter was not trained with.
    let config = run.join("config.toml");
    let recipe = std::fs::read_to_string(&config).unwrap();
    assert!(recipe.contains("num_virtual_tokens = 4"), "{recipe}");
    std::fs::write(
        &config,
        recipe.replace("num_virtual_tokens = 4", "num_virtual_tokens = 5"),
    )
    .unwrap();
    one_line_error(&predict(), &["num_virtual_tokens", "adapter_config.json"]);
    std::fs::write(&config, recipe).unwrap();
    ok(&predict());
}

#[test]
fn export_carries_the_temperature_and_the_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    ok(&trainer(
        dir,
        &[
            "train",
            "--config",
            "tiny.toml",
            "--set",
            "train.epochs=1",
            "--set",
            "peft.method=lora",
            "--run-dir",
            "r",
        ],
    ));
    let run = dir.join("r");
    // A temperature far from 1 and a threshold that overrides the argmax for some titles.
    let mut c = json(&run.join("calibration.json"));
    c["temperature"] = 3.0.into();
    std::fs::write(run.join("calibration.json"), c.to_string()).unwrap();
    std::fs::write(
        run.join("threshold.json"),
        serde_json::json!({"label": "标题党", "threshold": 0.5001, "target_precision": 0.9,
                           "precision": 0.9, "recall": 0.5, "data": "v.csv"})
        .to_string(),
    )
    .unwrap();
    ok(&trainer(
        dir,
        &["export", "--run", "r", "--output", "exported"],
    ));
    let config = json(&dir.join("exported/config.json"));
    assert_eq!(config["decision_threshold"]["label"], "标题党");
    assert_eq!(config["calibration_temperature_folded"], 3.0);
    let titles = [
        "你不会相信, 接下来发生了什么 1",
        "国务院发布第2号通知",
        "标题",
    ];
    let scores = |model: &[&str]| {
        let mut args = vec!["predict", "--json"];
        args.extend_from_slice(model);
        args.extend_from_slice(&titles);
        ok(&trainer(dir, &args))
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let by_run = scores(&["--run", "r"]);
    let by_export = scores(&["--model", "exported", "--max-length", "16"]);
    for (a, b) in by_run.iter().zip(&by_export) {
        assert_eq!(a["label"], b["label"], "{a} / {b}");
        let (x, y) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
        assert!((x - y).abs() < 1e-4, "{a} / {b}");
    }
}

#[test]
fn a_report_draws_any_metrics_file_in_bounded_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = trained_run(dir);
    let metrics = json(&run.join("metrics.json"));
    for epoch in [
        serde_json::json!(1e6),
        serde_json::json!(9_999),
        serde_json::json!(-3),
    ] {
        let mut m = metrics.clone();
        m["epochs"][0]["epoch"] = epoch.clone();
        std::fs::write(run.join("metrics.json"), m.to_string()).unwrap();
        let started = std::time::Instant::now();
        ok(&trainer(dir, &["report", "--run", "r"]));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "epoch {epoch}: {:?}",
            started.elapsed()
        );
        let html = std::fs::read_to_string(run.join("report.html")).unwrap();
        assert!(
            html.len() < 2_000_000,
            "epoch {epoch}: {} bytes",
            html.len()
        );
    }
}

/// Every command that takes a run says the same thing when the directory holds none, and
/// `eval` reads a CSV with other column names through its own flags.
#[test]
fn a_missing_run_reads_the_same_everywhere_and_eval_takes_other_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = trained_run(dir);
    let run = run.to_str().unwrap();
    let missing = "runs/en-lora";
    let want = format!("{missing} is not a run directory (no config.toml");
    let adapter = format!("lora={missing}");
    for args in [
        vec!["predict", "--run", missing, "text"],
        vec!["eval", "--run", missing],
        vec!["export", "--run", missing, "--output", "out"],
        vec!["report", "--run", missing],
        vec!["serve", "--run", missing],
        vec!["serve", "--run", run, "--adapter", adapter.as_str()],
    ] {
        let e = err(&trainer(dir, &args));
        assert!(e.contains(&want), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{args:?}: {e}");
    }

    let valid = std::fs::read_to_string(dir.join(run).join("valid.csv")).unwrap();
    let renamed = valid.replacen("title,label", "headline,class", 1);
    std::fs::write(dir.join("renamed.csv"), renamed).unwrap();
    let e = err(&trainer(
        dir,
        &["eval", "--run", run, "--data", "renamed.csv"],
    ));
    assert!(
        e.contains("no column named `title`") && e.contains("--text-column"),
        "{e}"
    );
    let flags = [
        "eval",
        "--run",
        run,
        "--data",
        "renamed.csv",
        "--text-column",
        "headline",
        "--label-column",
        "class",
        "--json",
    ];
    let same: serde_json::Value = serde_json::from_str(&ok(&trainer(dir, &flags))).unwrap();
    let own: serde_json::Value =
        serde_json::from_str(&ok(&trainer(dir, &["eval", "--run", run, "--json"]))).unwrap();
    assert_eq!(same["accuracy"], own["accuracy"]);
    assert_eq!(same["confusion"], own["confusion"]);
}
