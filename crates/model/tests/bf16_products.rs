//! bf16 products on the CPU's matrix units (oneDNN on AMX or AVX512-BF16): the packed linear
//! against the f32 one within bf16's rounding, at row counts below, at and across the chunk
//! sizes, with NaN kept; the fixture's encoder against transformers; training untouched.
//!
//! Tolerance: bf16 keeps 8 significant bits, so each rounded operand is within 2^-9 of its
//! value and each term of a product within 2^-8 (accumulation is f32): an output may differ
//! from f32 by at most 2^-8 · Σ|x·w| (asserted with a 2x margin for f32's own rounding).
//!
//! A machine without oneDNN 2.x or a bf16 matrix unit skips these tests with a line saying
//! why, unless `BERT_REQUIRE_MATRIX_UNITS` is set (CI sets it where the CPU has them).

use std::sync::Arc;

mod common;

use bert_model::bert::BertExtras;
use bert_model::config::BertConfig;
use bert_model::kernels::{self, MatrixUnits};
use bert_model::linear::Linear;
use bert_model::load::load_bert;
use bert_model::parallel;
use bert_model::weights::Checkpoint;
use burn::prelude::*;
use common::*;

fn units() -> Option<MatrixUnits> {
    match MatrixUnits::bf16() {
        Ok(units) => Some(units),
        Err(why) if std::env::var_os("BERT_REQUIRE_MATRIX_UNITS").is_some() => {
            panic!("BERT_REQUIRE_MATRIX_UNITS is set, but: {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), &Device::default())
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Asserts each packed output within 2 · 2^-8 · Σ|x·w| of the f32 one.
fn assert_within_bf16(
    x: &[f32],
    w: &[f32],
    [d_in, d_out]: [usize; 2],
    f32s: &[f32],
    bf16s: &[f32],
) {
    for (i, (a, b)) in f32s.iter().zip(bf16s).enumerate() {
        let (row, col) = (i / d_out, i % d_out);
        let scale: f32 = (0..d_in)
            .map(|k| (x[row * d_in + k] * w[k * d_out + col]).abs())
            .sum();
        let bound = 2.0 * scale / 256.0 + 1e-6;
        assert!(
            (a - b).abs() <= bound,
            "row {row} col {col}: f32 {a} against bf16 {b} (bound {bound})"
        );
    }
}

#[test]
fn a_packed_linear_is_the_f32_linear_within_bf16_rounding() {
    let Some(units) = units() else { return };
    let [d_in, d_out] = [96, 80];
    let (w, b) = (values(d_in * d_out, 1), values(d_out, 2));
    let packed = Arc::new(units.pack(&w, &b, [d_in, d_out]).unwrap());
    let (weight, bias) = (tensor(w.clone(), [d_in, d_out]), tensor(b, [d_out]));
    // One row, part of a tile, a tile, across tiles, across chunks (and threads), many chunks.
    for rows in [1, 7, 16, 33, 700, 1100] {
        let x = values(rows * d_in, 3 + rows as u64);
        let input = tensor(x.clone(), [rows, d_in]);
        let f32s = host(kernels::linear(
            input.clone(),
            weight.clone(),
            Some(bias.clone()),
        ));
        let bf16s = host(kernels::packed_linear(
            input.clone(),
            weight.clone(),
            bias.clone(),
            &packed,
        ));
        assert_eq!(bf16s.len(), rows * d_out);
        assert_within_bf16(&x, &w, [d_in, d_out], &f32s, &bf16s);
        let on_one_thread = parallel::on_one_thread(|| {
            host(kernels::packed_linear(
                input,
                weight.clone(),
                bias.clone(),
                &packed,
            ))
        });
        assert_within_bf16(&x, &w, [d_in, d_out], &f32s, &on_one_thread);
    }
    // A batch of sequences, as the encoder passes them.
    let x = values(3 * 300 * d_in, 9);
    let input = tensor(x.clone(), [3, 300, d_in]);
    let f32s = kernels::linear(input.clone(), weight.clone(), Some(bias.clone()));
    let bf16s = kernels::packed_linear(input, weight, bias, &packed);
    assert_eq!(bf16s.dims(), [3, 300, d_out]);
    assert_within_bf16(
        &x,
        &w,
        [d_in, d_out],
        &host(f32s.reshape([900, d_out])),
        &host(bf16s.reshape([900, d_out])),
    );
}

#[test]
fn nan_in_a_row_stays_in_that_row() {
    let Some(units) = units() else { return };
    let [d_in, d_out] = [64, 32];
    let (w, b) = (values(d_in * d_out, 4), values(d_out, 5));
    let packed = Arc::new(units.pack(&w, &b, [d_in, d_out]).unwrap());
    let mut x = values(4 * d_in, 6);
    x[2 * d_in + 5] = f32::NAN;
    let out = host(kernels::packed_linear(
        tensor(x, [4, d_in]),
        tensor(w, [d_in, d_out]),
        tensor(b, [d_out]),
        &packed,
    ));
    for (row, values) in out.chunks(d_out).enumerate() {
        if row == 2 {
            assert!(values.iter().all(|v| v.is_nan()), "{values:?}");
        } else {
            assert!(
                values.iter().all(|v| v.is_finite()),
                "row {row}: {values:?}"
            );
        }
    }
}

#[test]
fn packing_refuses_sizes_that_do_not_fit_and_linears_without_bias() {
    let Some(units) = units() else { return };
    let err = units.pack(&[0.0; 6], &[0.0; 3], [2, 3]).err();
    assert!(err.is_none(), "{err:?}");
    assert!(units.pack(&[0.0; 5], &[0.0; 3], [2, 3]).is_err());
    assert!(units.pack(&[0.0; 6], &[0.0; 2], [2, 3]).is_err());
    assert!(units.pack(&[], &[], [0, 3]).is_err());
    let linear = Linear {
        bias: None,
        ..Linear::new(4, 3, &Device::default())
    };
    let (linear, result) = linear.packed_for(&units);
    assert!(result.is_err() && linear.packed.is_none());
}

/// The tiny fixture's encoder (2 layers, hidden 32) with every linear packed, against
/// transformers' f32 outputs: within 2e-2 (bf16 through twelve products and the layer norms
/// between them), where the f32 encoder is within 1e-4.
#[test]
fn the_packed_encoder_matches_transformers_within_bf16_rounding() {
    let Some(units) = units() else { return };
    let device = Device::default();
    let dir = fixtures().join("tiny-bert");
    let config = BertConfig::from_file(&dir.join("config.json")).unwrap();
    let checkpoint = Checkpoint::read(&dir.join("model.safetensors")).unwrap();
    let model = load_bert(&checkpoint, &config, &device).unwrap().model;
    let total = model.linears().len();
    let (packed, packing) = model.packed_for(&units);
    assert_eq!(
        (packing.packed, packing.total),
        (total, total),
        "{packing:?}"
    );
    let exp = expected();
    let out = packed.forward(fixture_input(&exp, &device), &BertExtras::default());
    for (name, actual) in [
        ("last_hidden_state", out.last_hidden_state.into_data()),
        ("pooler_output", out.pooler_output.unwrap().into_data()),
    ] {
        let (actual, expected) = (actual.try_to_vec::<f32>().unwrap(), flat(&exp[name]));
        let worst = max_diff(&actual, &expected);
        assert!(worst < 2e-2, "{name}: max |bf16 - transformers| = {worst}");
        assert!(
            worst > TOL / 100.0,
            "{name}: the packed encoder multiplied in f32"
        );
    }
}

#[test]
fn training_multiplies_in_f32_whatever_was_packed() {
    let Some(units) = units() else { return };
    let device = Device::default().autodiff();
    let linear = Linear::new(8, 4, &device);
    let (packed, result) = linear.clone().packed_for(&units);
    result.unwrap();
    let x = Tensor::<2>::from_data(TensorData::new(values(24, 7), [3, 8]), &device).require_grad();
    let (plain, through_packed) = (linear.forward(x.clone()), packed.forward(x.clone()));
    assert_eq!(
        plain.clone().into_data().try_to_vec::<f32>().unwrap(),
        through_packed
            .clone()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    );
    let grads = through_packed.sum().backward();
    assert!(x.grad(&grads).is_some());
}

/// Burn's module operations carry the packed snapshot along (it is not a parameter): after the
/// weights change under it, products see the mismatch and run in f32 on the live weights.
#[test]
fn a_stale_snapshot_is_not_used() {
    let Some(units) = units() else { return };
    let device = Device::default();
    let (linear, result) = Linear::new(64, 48, &device).packed_for(&units);
    result.unwrap();
    let x = tensor(values(5 * 64, 11), [5, 64]);
    let changed = Linear {
        weight: linear.weight.clone().map(|w| w * 2.0),
        bias: linear.bias.clone(),
        packed: linear.packed.clone(),
    };
    let plain = Linear {
        packed: None,
        ..changed.clone()
    };
    assert_eq!(
        host(changed.forward(x.clone())),
        host(plain.forward(x.clone()))
    );
    let new_bias = Linear {
        bias: linear.bias.clone().map(|b| b.map(|b| b + 1.0)),
        ..linear.clone()
    };
    let plain = Linear {
        packed: None,
        ..new_bias.clone()
    };
    assert_eq!(host(new_bias.forward(x.clone())), host(plain.forward(x)));
}

#[test]
fn absurd_sizes_are_errors_not_allocations() {
    let Some(units) = units() else { return };
    assert!(
        units
            .pack(&[0.0; 4], &[0.0; 4], [(1 << 62) + 1, 4])
            .is_err()
    );
    assert!(units.pack(&[0.0; 4], &[0.0; 4], [1, 1 << 40]).is_err());
    let packed = units.pack(&[0.5; 4], &[0.0; 4], [1, 4]).unwrap();
    assert!(packed.forward(&[1.0; 3], 2).is_err());
    assert!(packed.forward(&[], usize::MAX).is_err());
    assert_eq!(packed.forward(&[], 0).unwrap(), Vec::<f32>::new());
}
