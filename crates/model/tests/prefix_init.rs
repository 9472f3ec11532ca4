//! A prefix started from real words (`prefix_init_text`): each layer's key/value prefix is what
//! that layer's key and value projections give for the text's tokens, checked against the
//! encoder's own forward pass (itself checked against transformers in `parity.rs`).

mod common;

use bert_model::classifier::BertClassifier;
use bert_model::load::load_bert;
use bert_model::peft::{PeftConfig, PrefixTuningConfig};
use bert_model::weights::Checkpoint;
use bert_model::{BertConfig, BertExtras, BertInput, BertModel, BertTokenizer};
use burn::prelude::*;
use common::*;

const TEXT: &str = "you won't believe this";

fn tiny(device: &Device) -> (BertModel, BertConfig, BertTokenizer, Checkpoint) {
    let dir = fixtures().join("tiny-bert");
    let config = BertConfig::from_file(&dir.join("config.json")).unwrap();
    let checkpoint = Checkpoint::read(&dir.join("model.safetensors")).unwrap();
    let tokenizer = BertTokenizer::from_dir(&dir, 32).unwrap();
    let model = load_bert(&checkpoint, &config, device).unwrap().model;
    (model, config, tokenizer, checkpoint)
}

fn values(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// The hidden states entering layer `i`: the output of a copy of the model cut to its first
/// `i` layers (no layers: the embeddings).
fn hidden_before(model: &BertModel, i: usize, ids: &[u32], device: &Device) -> Tensor<3> {
    let mut cut = model.clone();
    cut.encoder.layer.truncate(i);
    let n = ids.len();
    let ids: Vec<i64> = ids.iter().map(|&x| i64::from(x)).collect();
    let input = BertInput {
        input_ids: Tensor::from_data(TensorData::new(ids, [1, n]), device),
        token_type_ids: Tensor::zeros([1, n], device),
        attention_mask: Tensor::ones([1, n], device),
    };
    cut.forward(input, &BertExtras::default()).last_hidden_state
}

#[test]
fn layer_key_values_are_the_encoders_own_projections() {
    let device = Device::default();
    let (model, config, tokenizer, _) = tiny(&device);
    let ids = tokenizer.encode(TEXT).unwrap().input_ids;
    let kv = model.layer_key_values(&ids);
    assert_eq!(kv.len(), config.num_hidden_layers);
    for (i, (key, value)) in kv.into_iter().enumerate() {
        assert_eq!(key.dims(), [ids.len(), config.hidden_size]);
        let hidden = hidden_before(&model, i, &ids, &device);
        let attn = &model.encoder.layer[i].attention.self_attn;
        let want = |linear: &bert_model::linear::Linear| {
            let out = linear.forward(hidden.clone());
            values(out.reshape([ids.len(), config.hidden_size]))
        };
        assert_close(&format!("layer {i} key"), &values(key), &want(&attn.key));
        assert_close(
            &format!("layer {i} value"),
            &values(value),
            &want(&attn.value),
        );
    }
}

#[test]
fn a_text_initialised_prefix_repeats_the_texts_key_values_and_trains() {
    let device = Device::default().autodiff();
    let (_, config, tokenizer, checkpoint) = tiny(&device);
    let ids = tokenizer.encode(TEXT).unwrap().input_ids;
    let n = ids.len();
    // More virtual tokens than the text has: its rows repeat, as prompt tuning's text init does.
    let p = n + 3;
    let prefix = PrefixTuningConfig {
        num_virtual_tokens: p,
        prefix_init_text: Some(TEXT.into()),
        ..PrefixTuningConfig::default()
    };
    let peft = PeftConfig::PrefixTuning(prefix);
    let loaded = load_bert(&checkpoint, &config, &device).unwrap();
    let kv = loaded.model.layer_key_values(&ids);
    let model = BertClassifier::new(loaded.model, loaded.classifier, &config, &peft, 2, &device)
        .unwrap()
        .init_with_tokenizer(&peft, &tokenizer)
        .unwrap();
    let Some(bert_model::peft::PeftModule::PrefixEncoder(encoder)) = &model.peft else {
        panic!("no prefix encoder");
    };
    assert!(encoder.embedding.weight.val().is_require_grad());
    let got = encoder.prefix_embeddings();
    let width = 2 * config.num_hidden_layers * config.hidden_size;
    assert_eq!(got.dims(), [p, width]);
    let h = config.hidden_size;
    for row in 0..p {
        let got_row = values(got.clone().narrow(0, row, 1));
        for (i, (key, value)) in kv.iter().enumerate() {
            let src = row % n;
            let k = values(key.clone().narrow(0, src, 1));
            let v = values(value.clone().narrow(0, src, 1));
            let at = 2 * i * h;
            assert_close(
                &format!("row {row} layer {i} key"),
                &got_row[at..at + h],
                &k,
            );
            assert_close(
                &format!("row {row} layer {i} value"),
                &got_row[at + h..at + 2 * h],
                &v,
            );
        }
    }
}

#[test]
fn text_init_is_refused_with_the_projection_or_an_empty_text() {
    for (config, needle) in [
        (
            PrefixTuningConfig {
                prefix_init_text: Some("title".into()),
                ..PrefixTuningConfig::default().with_prefix_projection(true, 16)
            },
            "prefix_projection",
        ),
        (
            PrefixTuningConfig {
                prefix_init_text: Some("  ".into()),
                ..PrefixTuningConfig::default()
            },
            "empty",
        ),
    ] {
        let e = PeftConfig::PrefixTuning(config).validate().unwrap_err();
        assert!(e.contains(needle), "{e}");
    }
}
