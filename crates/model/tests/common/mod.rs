//! Helpers shared by the model crate's tests: the committed fixtures (made by
//! `tests/fixtures/make_fixtures.py` with transformers + peft) and comparisons against them.
#![allow(dead_code)]

use std::path::PathBuf;

use bert_model::bert::BertInput;
use burn::prelude::*;
use serde_json::Value;

/// The numerical tolerance against transformers + peft.
pub const TOL: f32 = 1e-4;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// `tests/fixtures/expected.json`: the inputs and transformers' / peft's outputs.
pub fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A nested JSON array of numbers, flattened.
pub fn flat(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("not a number: {other}"),
    }
}

/// A nested JSON array of integers, flattened.
pub fn ints(v: &Value) -> Vec<i64> {
    match v {
        Value::Array(items) => items.iter().flat_map(ints).collect(),
        Value::Number(n) => vec![n.as_i64().unwrap()],
        other => panic!("not an int: {other}"),
    }
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Fails unless `actual` is within [`TOL`] of `expected` everywhere.
pub fn assert_close(name: &str, actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len(), "{name}: length");
    let worst = max_diff(actual, expected);
    assert!(worst <= TOL, "{name}: max abs diff {worst} > {TOL}");
}

/// The fixture's padded batch, exactly as HF tokenised it.
pub fn fixture_input(exp: &Value, device: &Device) -> BertInput {
    let b = exp["input_ids"].as_array().unwrap().len();
    let ids = ints(&exp["input_ids"]);
    let l = ids.len() / b;
    let types = ints(&exp["token_type_ids"]);
    let mask: Vec<f32> = ints(&exp["attention_mask"])
        .iter()
        .map(|&x| x as f32)
        .collect();
    BertInput {
        input_ids: Tensor::from_data(TensorData::new(ids, [b, l]), device),
        token_type_ids: Tensor::from_data(TensorData::new(types, [b, l]), device),
        attention_mask: Tensor::from_data(TensorData::new(mask, [b, l]), device),
    }
}
