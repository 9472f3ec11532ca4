//! Property tests of the readers of user files: safetensors checkpoints, model config.json and
//! peft adapter directories. Any bytes give a value or a clean error naming the file, never a
//! panic.

mod common;

use std::path::{Path, PathBuf};

use bert_model::BertConfig;
use bert_model::peft::adapter;
use bert_model::weights::Checkpoint;
use common::fixtures;
use proptest::prelude::*;

/// A safetensors file: an 8-byte little-endian header length, a header that is often JSON
/// describing tensors, then data; each part possibly inconsistent with the others.
fn safetensors_like() -> impl Strategy<Value = Vec<u8>> {
    let dtype = prop_oneof![
        Just("F32"),
        Just("F16"),
        Just("BF16"),
        Just("I64"),
        Just("U8"),
        Just("F64"),
        Just("X")
    ];
    let tensor = (
        dtype,
        proptest::collection::vec(0usize..5, 0..4),
        0usize..64,
        0usize..64,
    );
    let header = proptest::collection::btree_map("[a-z.]{1,8}", tensor, 0..4).prop_map(|m| {
        let mut o = serde_json::Map::new();
        for (k, (dtype, shape, a, b)) in m {
            o.insert(
                k,
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [a, b]}),
            );
        }
        serde_json::Value::Object(o).to_string().into_bytes()
    });
    let header = prop_oneof![header, proptest::collection::vec(any::<u8>(), 0..32)];
    (
        header,
        proptest::collection::vec(any::<u8>(), 0..96),
        any::<Option<u64>>(),
    )
        .prop_map(|(h, data, claimed)| {
            let n = claimed.map_or(h.len() as u64, |c| c % 512);
            let mut out = n.to_le_bytes().to_vec();
            out.extend(h);
            out.extend(data);
            out
        })
}

fn bert_config() -> BertConfig {
    BertConfig::from_file(&fixtures().join("tiny-bert/config.json")).unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn any_safetensors_reads_or_fails_cleanly(bytes in safetensors_like()) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "model.safetensors", &bytes);
        match Checkpoint::read(&path) {
            Ok(c) => {
                for t in c.tensors.values() {
                    prop_assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
                }
            }
            Err(e) => prop_assert!(e.to_string().contains("model.safetensors"), "{}", e),
        }
    }

    #[test]
    fn any_model_config_reads_or_fails_cleanly(
        edits in proptest::collection::vec(("[a-z_]{3,28}", prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
            "[a-z]{0,6}".prop_map(serde_json::Value::from),
            Just(serde_json::json!({"0": "a", "2": "b"})),
        ]), 0..4),
        field in prop_oneof![
            Just("hidden_dropout_prob"), Just("layer_norm_eps"), Just("vocab_size"),
            Just("max_position_embeddings"), Just("num_attention_heads"), Just("id2label"),
            Just("pad_token_id"), Just("hidden_size"),
        ],
        value in prop_oneof![any::<f64>().prop_map(serde_json::Value::from), any::<i32>().prop_map(serde_json::Value::from)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join("tiny-bert/config.json")).unwrap(),
        ).unwrap();
        config[field] = value;
        for (k, v) in edits {
            config[k] = v;
        }
        let path = write(dir.path(), "config.json", config.to_string().as_bytes());
        match BertConfig::from_file(&path) {
            Ok(c) => {
                prop_assert!(c.layer_norm_eps > 0.0 && (0.0..1.0).contains(&c.hidden_dropout_prob));
                prop_assert!(c.hidden_size % c.num_attention_heads == 0);
            }
            Err(e) => prop_assert!(e.to_string().contains("config.json"), "{}", e),
        }
    }

    /// A peft adapter config with arbitrary field values next to real adapter weights.
    #[test]
    fn any_adapter_config_reads_or_fails_cleanly(
        fixture in prop_oneof![Just("peft-lora"), Just("peft-prompt"), Just("peft-prefix"), Just("peft-p-tuning")],
        edits in proptest::collection::vec((prop_oneof![
            Just("peft_type"), Just("r"), Just("lora_alpha"), Just("lora_dropout"),
            Just("target_modules"), Just("num_virtual_tokens"), Just("token_dim"),
            Just("num_layers"), Just("task_type"), Just("bias"),
        ], prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
            Just(serde_json::json!("LORA")),
            Just(serde_json::json!(["query"])),
            Just(serde_json::json!("none")),
        ]), 0..3),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let src = fixtures().join(fixture);
        std::fs::copy(src.join("adapter_model.safetensors"), dir.path().join("adapter_model.safetensors")).unwrap();
        let mut config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(src.join("adapter_config.json")).unwrap(),
        ).unwrap();
        for (k, v) in edits {
            config[k] = v;
        }
        write(dir.path(), "adapter_config.json", config.to_string().as_bytes());
        if let Err(e) = adapter::read(dir.path(), &bert_config()) {
            let e = e.to_string();
            prop_assert!(e.contains("adapter_config.json") || e.contains("adapter_model.safetensors"), "{}", e);
        }
    }
}
