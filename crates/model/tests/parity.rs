//! Parity with HF transformers / peft on the committed tiny fixtures
//! (`tests/fixtures/make_fixtures.py` generated them; no Python is needed here).

mod common;

use bert_model::bert::{BertExtras, BertForSequenceClassification};
use bert_model::load::{KeyLayout, load_bert};
use bert_model::peft::prefix::{PrefixEncoder, PrefixTuningConfig};
use bert_model::pooling::{Pooling, pool};
use bert_model::tokenizer::{BertTokenizer, Encoded, pad_batch};
use bert_model::weights::Checkpoint;
use bert_model::{BertConfig, Pretrained};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorData;
use common::*;

fn device() -> Device {
    Device::default()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn classifier_model(device: &Device) -> (BertForSequenceClassification, BertConfig) {
    let dir = fixtures().join("tiny-bert");
    let config = BertConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = Checkpoint::read(&dir.join("model.safetensors")).unwrap();
    let loaded = load_bert(&ckpt, &config, device).unwrap();
    assert_eq!(loaded.layout, KeyLayout::Prefixed);
    let mut model = BertForSequenceClassification::new(&config, 2, device);
    model.bert = loaded.model;
    model.classifier = loaded.classifier.expect("fixture has a classifier");
    (model, config)
}

#[test]
fn encoder_pooler_and_logits_match_transformers() {
    let device = device();
    let exp = expected();
    let (model, _) = classifier_model(&device);
    let input = fixture_input(&exp, &device);
    let out = model.bert.forward(input.clone(), &BertExtras::default());
    assert_close(
        "last_hidden_state",
        &values(out.last_hidden_state.clone()),
        &flat(&exp["last_hidden_state"]),
    );
    assert_close(
        "pooler_output",
        &values(out.pooler_output.clone().unwrap()),
        &flat(&exp["pooler_output"]),
    );
    let mean = pool(&out, input.attention_mask.clone(), Pooling::Mean).unwrap();
    assert_close("mean_pooled", &values(mean), &flat(&exp["mean_pooled"]));
    let logits = model.forward(input, &BertExtras::default());
    assert_close("logits", &values(logits), &flat(&exp["logits"]));
}

#[test]
fn bare_pytorch_bin_checkpoint_matches_too() {
    let device = device();
    let exp = expected();
    let dir = fixtures().join("tiny-bert-bare");
    let config = BertConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = Checkpoint::read(&dir.join("pytorch_model.bin")).unwrap();
    let loaded = load_bert(&ckpt, &config, &device).unwrap();
    assert_eq!(loaded.layout, KeyLayout::Bare);
    assert!(loaded.classifier.is_none());
    let out = loaded
        .model
        .forward(fixture_input(&exp, &device), &BertExtras::default());
    assert_close(
        "last_hidden_state",
        &values(out.last_hidden_state),
        &flat(&exp["last_hidden_state"]),
    );
}

#[test]
fn tokenizers_match_hf_on_chinese_text() {
    let exp = expected();
    let json = BertTokenizer::from_dir(&fixtures().join("tiny-bert"), 32).unwrap();
    // tiny-bert-bare has vocab.txt only: the WordPiece pipeline is assembled here.
    let vocab = BertTokenizer::from_dir(&fixtures().join("tiny-bert-bare"), 32).unwrap();
    let zh = BertTokenizer::from_dir(&fixtures().join("zh-vocab"), 32).unwrap();
    for case in exp["tokenized"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        for (name, tok) in [
            ("tokenizer.json", &json),
            ("vocab.txt", &vocab),
            ("zh-vocab", &zh),
        ] {
            assert_eq!(tok.encode(text).unwrap().input_ids, want, "{name}: {text}");
        }
    }
}

#[test]
fn padding_batch_equals_hf_padding() {
    let device = device();
    let exp = expected();
    let tok = BertTokenizer::from_dir(&fixtures().join("tiny-bert"), 32).unwrap();
    let texts: Vec<&str> = exp["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let encoded: Vec<Encoded> = tok.encode_batch(&texts).unwrap();
    let input = pad_batch(&encoded, tok.pad_id(), &device);
    let ids: Vec<i64> = input.input_ids.into_data().iter::<i64>().collect();
    let want: Vec<i64> = ints(&exp["input_ids"]);
    assert_eq!(ids, want);
    let mask = values(input.attention_mask);
    let want: Vec<f32> = ints(&exp["attention_mask"])
        .into_iter()
        .map(|x| x as f32)
        .collect();
    assert_eq!(mask, want);
}

#[test]
fn prefix_attention_matches_peft() {
    let device = device();
    let exp = expected();
    let case = &exp["prefix_tuning"];
    let (model, config) = classifier_model(&device);
    let p = case["num_virtual_tokens"].as_u64().unwrap() as usize;
    let mut encoder = PrefixEncoder::new(
        &PrefixTuningConfig::new().with_num_virtual_tokens(p),
        &config,
        &device,
    );
    let weight = flat(&case["prefix_embedding"]);
    let width = weight.len() / p;
    encoder.embedding.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(weight, [p, width]),
        &device,
    ));
    let input = fixture_input(&exp, &device);
    let batch = input.input_ids.dims()[0];
    let extras = BertExtras {
        prefix: Some(encoder.forward(batch)),
        ..BertExtras::default()
    };
    // The classifier's path runs the last layer for the pooled position only; the full
    // forward pass pools the same row.
    let full = model.bert.forward(input.clone(), &extras).pooler_output;
    let pooled = model.bert.pooled(input.clone(), &extras);
    assert_close("pooled", &values(pooled.unwrap()), &values(full.unwrap()));
    let logits = model.forward(input, &extras);
    assert_close("prefix logits", &values(logits), &flat(&case["logits"]));
}

#[test]
fn pretrained_loads_a_local_directory() {
    let device = device();
    let dir = fixtures().join("tiny-bert");
    let p = Pretrained::load(dir.to_str().unwrap(), 32, &device).unwrap();
    assert_eq!(p.config.num_hidden_layers, 2);
    assert_eq!(
        p.config.labels().unwrap().unwrap(),
        vec!["标题党", "非标题党"]
    );
    assert!(p.model().pooler.is_some());
}

#[test]
fn bad_inputs_give_errors_that_name_the_problem() {
    let device = device();
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny-bert");
    let copy = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "vocab.txt",
        ] {
            std::fs::copy(src.join(f), d.join(f)).unwrap();
        }
        d
    };
    let err = |dir: &std::path::Path| {
        Pretrained::load(dir.to_str().unwrap(), 32, &device)
            .unwrap_err()
            .to_string()
    };

    let missing = tmp.path().join("does-not-exist");
    let e = err(&missing);
    assert!(e.contains("does-not-exist"), "{e}");

    let d = copy("no-weights");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let e = err(&d);
    assert!(e.contains("no weights"), "{e}");

    let d = copy("corrupt");
    std::fs::write(
        d.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{bad",
    )
    .unwrap();
    let e = err(&d);
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );

    let d = copy("wrong-hidden");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"hidden_size\": 32", "\"hidden_size\": 64"),
    )
    .unwrap();
    let e = err(&d);
    assert!(
        e.contains("bert.embeddings.word_embeddings.weight") && e.contains("[21128, 64]"),
        "{e}"
    );

    let d = copy("not-bert");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"model_type\": \"bert\"", "\"model_type\": \"gpt2\""),
    )
    .unwrap();
    let e = err(&d);
    assert!(e.contains("config.json") && e.contains("gpt2"), "{e}");

    // Same tensors, unknown key names.
    let d = copy("renamed");
    let ckpt = Checkpoint::read(&d.join("model.safetensors")).unwrap();
    let renamed = ckpt
        .tensors
        .into_iter()
        .map(|(k, v)| (k.replace("bert.", "encoder_model."), v))
        .collect();
    bert_model::weights::write_safetensors(&d.join("model.safetensors"), &renamed, None).unwrap();
    let e = err(&d);
    assert!(e.contains("unknown key layout"), "{e}");
}
