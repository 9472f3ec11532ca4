//! HF peft adapter directories: adapters saved by Python peft 0.12 load here and give peft's
//! logits (fixtures from `tests/fixtures/make_fixtures.py`); adapters written here read back
//! the same; mismatches are errors that name the field.

mod common;

use bert_model::classifier::BertClassifier;
use bert_model::load::load_bert;
use bert_model::peft::adapter;
use bert_model::weights::Checkpoint;
use bert_model::{BertConfig, params};
use burn::prelude::*;
use common::*;
use serde_json::Value;

fn classifier_with(dir: &std::path::Path, device: &Device) -> (BertClassifier, BertConfig) {
    let base = fixtures().join("tiny-bert");
    let config = BertConfig::from_file(&base.join("config.json")).unwrap();
    let a = adapter::read(dir, &config).unwrap();
    let loaded = load_bert(
        &Checkpoint::read(&base.join("model.safetensors")).unwrap(),
        &config,
        device,
    )
    .unwrap();
    let model =
        BertClassifier::new(loaded.model, None, &config, &a.peft, a.num_labels, device).unwrap();
    (params::apply(model, &a.tensors).unwrap().valid(), config)
}

fn logits(model: &BertClassifier, exp: &Value, device: &Device) -> Vec<f32> {
    model
        .forward(fixture_input(exp, device))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

#[test]
fn peft_adapters_load_and_round_trip() {
    let device = Device::default();
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let mut seen = Vec::new();
    for case in exp["peft_adapters"].as_array().unwrap() {
        let dir = fixtures().join(case["dir"].as_str().unwrap());
        let (model, config) = classifier_with(&dir, &device);
        let got = logits(&model, &exp, &device);
        let diff = max_diff(&got, &flat(&case["logits"]));
        assert!(
            diff < 1e-4,
            "{}: logits differ from peft by {diff}",
            dir.display()
        );
        // The probabilities peft reports, which `predict` prints.
        let probs =
            burn::tensor::activation::softmax(model.forward(fixture_input(&exp, &device)), 1);
        let diff = max_diff(
            &probs.into_data().try_to_vec::<f32>().unwrap(),
            &flat(&case["probabilities"]),
        );
        assert!(
            diff < 1e-4,
            "{}: probabilities differ by {diff}",
            dir.display()
        );
        seen.push(case["peft_type"].as_str().unwrap().to_string());

        // Written here, read back: the same classifier.
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("adapter");
        let peft = adapter::read(&dir, &config).unwrap().peft;
        assert!(
            model
                .write_adapter(&out, &peft, &config, "tiny-bert")
                .unwrap()
        );
        let (again, _) = classifier_with(&out, &device);
        let diff = logits(&again, &exp, &device)
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-6, "round trip changed logits by {diff}");
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(adapter::CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(written["peft_type"], peft.peft_type().unwrap().as_str());
        assert_eq!(written["task_type"], "SEQ_CLS");
        assert_eq!(written["token_dim"].as_u64().unwrap_or(32), 32);
    }
    seen.dedup();
    assert_eq!(
        seen,
        [
            "PREFIX_TUNING",
            "PROMPT_TUNING",
            "P_TUNING",
            "LORA",
            "P_TUNING"
        ]
    );
}

/// LoRA folded into the base weights gives the same logits, without the adapter modules.
#[test]
fn merged_lora_matches_unmerged() {
    let device = Device::default();
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    for dir in ["peft-lora", "peft-lora-dense"] {
        let (model, _) = classifier_with(&fixtures().join(dir), &device);
        let before = logits(&model, &exp, &device);
        let lora_tensors = params::collect(&model, |p| p.starts_with("lora_model.")).len();
        assert!(lora_tensors >= 8, "{dir}: {lora_tensors}");
        let merged = model.merged();
        assert_eq!(
            params::collect(&merged, |p| p.starts_with("lora_model.")).len(),
            0
        );
        let diff = max_diff(&before, &logits(&merged, &exp, &device));
        assert!(diff < 1e-5, "{dir}: merging changed logits by {diff}");
    }
}

#[test]
fn lora_and_prompt_adapter_errors_name_the_field() {
    let config = BertConfig::from_file(&fixtures().join("tiny-bert/config.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let edit = |src: &str, key: &str, value: Value| {
        let src = fixtures().join(src);
        let dir = tmp
            .path()
            .join(format!("{key}-{}", src.display().to_string().len()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            src.join(adapter::WEIGHTS_FILE),
            dir.join(adapter::WEIGHTS_FILE),
        )
        .unwrap();
        let mut cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(src.join(adapter::CONFIG_FILE)).unwrap())
                .unwrap();
        cfg[key] = value;
        std::fs::write(dir.join(adapter::CONFIG_FILE), cfg.to_string()).unwrap();
        adapter::read(&dir, &config).unwrap_err().to_string()
    };
    let e = edit("peft-lora", "use_dora", true.into());
    assert!(e.contains("`use_dora`"), "{e}");
    let e = edit("peft-lora", "bias", "all".into());
    assert!(e.contains("`bias`: \"all\""), "{e}");
    let e = edit("peft-lora", "rank_pattern", serde_json::json!({"query": 4}));
    assert!(e.contains("`rank_pattern`"), "{e}");
    // A LoRA config over prompt-tuning weights: the tensors do not fit the declared type.
    let e = edit("peft-prompt", "peft_type", "LORA".into());
    assert!(
        e.contains("missing tensor `base_model.model.classifier.weight`"),
        "{e}"
    );
    let e = edit("peft-lora", "peft_type", "PROMPT_TUNING".into());
    assert!(
        e.contains("missing tensor `base_model.classifier.weight`"),
        "{e}"
    );
    let e = edit("peft-prompt", "token_dim", 64.into());
    assert!(e.contains("`token_dim`: 64"), "{e}");
}

#[test]
fn unsupported_or_mismatched_adapters_name_the_field() {
    let config = BertConfig::from_file(&fixtures().join("tiny-bert/config.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("peft-prefix");
    let edit = |key: &str, value: Value| {
        let dir = tmp.path().join(key);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            src.join(adapter::WEIGHTS_FILE),
            dir.join(adapter::WEIGHTS_FILE),
        )
        .unwrap();
        let mut cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(src.join(adapter::CONFIG_FILE)).unwrap())
                .unwrap();
        cfg[key] = value;
        std::fs::write(dir.join(adapter::CONFIG_FILE), cfg.to_string()).unwrap();
        adapter::read(&dir, &config).unwrap_err().to_string()
    };
    let e = edit("peft_type", "IA3".into());
    assert!(e.contains("`peft_type`: IA3 is not supported"), "{e}");
    let e = edit("num_layers", 12.into());
    assert!(
        e.contains("`num_layers`: 12, but the base model has 2"),
        "{e}"
    );
    let e = edit("token_dim", 768.into());
    assert!(e.contains("`token_dim`"), "{e}");
    let e = edit("task_type", "CAUSAL_LM".into());
    assert!(e.contains("`task_type`: CAUSAL_LM"), "{e}");
    let e = adapter::read(&tmp.path().join("nowhere"), &config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
}
