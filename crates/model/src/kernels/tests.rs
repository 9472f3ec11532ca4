//! Each kernel against Burn's generic ops on the same inputs: values, and gradients through
//! autodiff, at `f32` precision.

use super::*;
use burn::tensor::Distribution;

fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 3.0), device)
}

fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// A mask bias with the last `pad` keys of every other batch item masked, as `bert::mask_bias`.
fn mask_bias(batch: usize, keys: usize, pad: usize, device: &Device) -> Tensor<4> {
    let values: Vec<f32> = (0..batch)
        .flat_map(|b| {
            (0..keys).map(move |k| {
                if b % 2 == 1 && k >= keys - pad {
                    f32::MIN
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::<1>::from_floats(values.as_slice(), device).reshape([batch, 1, 1, keys])
}

#[test]
fn gelu_matches_burns_exact_gelu_in_value_and_gradient() {
    let device = Device::default().autodiff();
    // Large enough to take the parallel path, with odd sizes for the vector tails.
    for shape in [[3, 5, 7], [4, 33, 1537]] {
        let x = random(shape, &device).require_grad();
        let ours = gelu(x.clone());
        let reference = activation::gelu(x.clone());
        assert!(max_diff(ours.clone(), reference.clone()) < 1e-5);
        let weights = random(shape, &device);
        let g_ours = x.grad(&(ours * weights.clone()).sum().backward()).unwrap();
        let g_ref = x.grad(&(reference * weights).sum().backward()).unwrap();
        let diff = max_diff(g_ours, g_ref);
        assert!(diff < 1e-5, "gradient differs by {diff}");
    }
}

#[test]
fn gelu_without_autodiff_overwrites_only_unshared_inputs() {
    let device = Device::default();
    let x = random([64, 300], &device);
    let before = x.to_data();
    // Shared: `kept` must come through unchanged.
    let kept = x.clone();
    let out = gelu(x);
    kept.to_data().assert_eq(&before, true);
    assert!(max_diff(out, activation::gelu(kept.clone())) < 1e-5);
    // Not shared: computed in place, same values.
    let unshared = gelu(Tensor::<2>::from_data(before.clone(), &device));
    assert!(max_diff(unshared, activation::gelu(kept.clone())) < 1e-5);
    // A strided view is read through its layout.
    let t = kept.clone().transpose();
    assert!(max_diff(gelu(t.clone()), activation::gelu(t)) < 1e-5);
}

#[test]
fn masked_softmax_matches_scale_mask_softmax_in_value_and_gradient() {
    let device = Device::default().autodiff();
    for [batch, heads, queries, keys, pad] in [[2, 3, 5, 7, 2], [8, 12, 32, 52, 20]] {
        let scores = random([batch, heads, queries, keys], &device).require_grad();
        let bias = mask_bias(batch, keys, pad, &device);
        let scale = 0.125;
        let ours = masked_softmax(scores.clone(), bias.clone(), scale);
        let reference = activation::softmax(scores.clone() * scale + bias, 3);
        assert!(max_diff(ours.clone(), reference.clone()) < 1e-6);
        let weights = random([batch, heads, queries, keys], &device);
        let g_ours = scores
            .grad(&(ours * weights.clone()).sum().backward())
            .unwrap();
        let g_ref = scores
            .grad(&(reference * weights).sum().backward())
            .unwrap();
        let diff = max_diff(g_ours, g_ref);
        assert!(diff < 1e-5, "gradient differs by {diff}");
    }
}

#[test]
fn masked_softmax_takes_a_full_bias_and_strided_scores() {
    let device = Device::default();
    let scores = random([2, 3, 4, 5], &device).swap_dims(2, 3);
    let bias = random([2, 3, 5, 4], &device);
    let ours = masked_softmax(scores.clone(), bias.clone(), 0.5);
    let reference = activation::softmax(scores * 0.5 + bias, 3);
    assert!(max_diff(ours, reference) < 1e-6);
}

#[test]
fn linear_matches_burns_linear_in_value_and_gradients() {
    let device = Device::default().autodiff();
    // One product below the threshold for threads, one above, and a frozen weight.
    for ([batch, seq, d_in, d_out], frozen) in [
        ([2, 3, 5, 7], false),
        ([4, 33, 96, 200], false),
        ([3, 4, 6, 2], true),
    ] {
        let x = random([batch, seq, d_in], &device).require_grad();
        let mut weight = random([d_in, d_out], &device);
        let bias = random([d_out], &device).require_grad();
        if !frozen {
            weight = weight.require_grad();
        }
        let ours = linear(x.clone(), weight.clone(), Some(bias.clone()));
        let reference = burn::tensor::module::linear(x.clone(), weight.clone(), Some(bias.clone()));
        assert!(max_diff(ours.clone(), reference.clone()) < 1e-3);
        let weights = random([batch, seq, d_out], &device);
        let g_ours = (ours * weights.clone()).sum().backward();
        let g_ref = (reference * weights).sum().backward();
        let diff = max_diff(x.grad(&g_ours).unwrap(), x.grad(&g_ref).unwrap());
        assert!(diff < 1e-3, "input gradient differs by {diff}");
        let diff = max_diff(bias.grad(&g_ours).unwrap(), bias.grad(&g_ref).unwrap());
        assert!(diff < 1e-3, "bias gradient differs by {diff}");
        match (weight.grad(&g_ours), weight.grad(&g_ref)) {
            (Some(ours), Some(reference)) => {
                let diff = max_diff(ours, reference);
                assert!(diff < 1e-3, "weight gradient differs by {diff}");
            }
            (None, None) => assert!(frozen),
            _ => panic!("the weight's gradient exists on one side only"),
        }
    }
}

#[test]
fn linear_reads_a_transposed_weight_and_an_empty_batch() {
    let device = Device::default();
    let x = random([5, 8], &device);
    let weight = random([3, 8], &device).transpose();
    let bias = random([3], &device);
    let ours = linear(x.clone(), weight.clone(), Some(bias.clone()));
    let reference = burn::tensor::module::linear(x, weight.clone(), Some(bias.clone()));
    assert!(max_diff(ours, reference) < 1e-4);
    let empty = linear(Tensor::<2>::zeros([0, 8], &device), weight, Some(bias));
    assert_eq!(empty.dims(), [0, 3]);
}

#[test]
fn layer_norm_matches_burns_layer_norm_in_value_and_gradients() {
    let device = Device::default().autodiff();
    for [batch, seq, d] in [[2, 3, 5], [8, 33, 384]] {
        let x = random([batch, seq, d], &device).require_grad();
        let gamma = random([d], &device).require_grad();
        let beta = random([d], &device).require_grad();
        let eps = 1e-12;
        let ours = layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), eps);
        let reference =
            burn::tensor::module::layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), eps);
        assert!(max_diff(ours.clone(), reference.clone()) < 1e-4);
        let weights = random([batch, seq, d], &device);
        let g_ours = (ours * weights.clone()).sum().backward();
        let g_ref = (reference * weights).sum().backward();
        for (name, ours, reference) in [
            ("input", x.grad(&g_ours), x.grad(&g_ref)),
            (
                "gamma",
                gamma.grad(&g_ours).map(|g| g.unsqueeze()),
                gamma.grad(&g_ref).map(|g| g.unsqueeze()),
            ),
            (
                "beta",
                beta.grad(&g_ours).map(|g| g.unsqueeze()),
                beta.grad(&g_ref).map(|g| g.unsqueeze()),
            ),
        ] {
            let diff = max_diff(ours.unwrap(), reference.unwrap());
            assert!(diff < 1e-3, "{name} gradient differs by {diff}");
        }
    }
}

#[test]
fn heads_matmul_matches_matmul_on_views_in_value_and_gradients() {
    let device = Device::default().autodiff();
    // Split heads (a strided view) against a transposed view, as attention's scores are; the
    // second shape takes the parallel path.
    for [batch, heads, seq, dim] in [[2, 3, 5, 4], [8, 12, 32, 32]] {
        let q = random([batch, seq, heads * dim], &device).require_grad();
        let k = random([batch, heads, seq, dim], &device).require_grad();
        let split = |x: Tensor<3>| x.reshape([batch, seq, heads, dim]).swap_dims(1, 2);
        let ours = heads_matmul(split(q.clone()), k.clone().swap_dims(2, 3));
        let reference = split(q.clone()).matmul(k.clone().swap_dims(2, 3));
        assert!(max_diff(ours.clone(), reference.clone()) < 1e-3);
        let weights = random([batch, heads, seq, seq], &device);
        let g_ours = (ours * weights.clone()).sum().backward();
        let g_ref = (reference * weights).sum().backward();
        let diff = max_diff(q.grad(&g_ours).unwrap(), q.grad(&g_ref).unwrap());
        assert!(diff < 1e-3, "left gradient differs by {diff}");
        let diff = max_diff(k.grad(&g_ours).unwrap(), k.grad(&g_ref).unwrap());
        assert!(diff < 1e-3, "right gradient differs by {diff}");

        // The context product, heads merged back, and the gradients through the merge.
        let p = random([batch, heads, seq, seq], &device).require_grad();
        let v = random([batch, heads, seq, dim], &device).require_grad();
        let ours = merged_heads_matmul(p.clone(), v.clone());
        let reference =
            p.clone()
                .matmul(v.clone())
                .swap_dims(1, 2)
                .reshape([batch, seq, heads * dim]);
        assert!(max_diff(ours.clone(), reference.clone()) < 1e-3);
        let weights = random([batch, seq, heads * dim], &device);
        let g_ours = (ours * weights.clone()).sum().backward();
        let g_ref = (reference * weights).sum().backward();
        for (name, ours, reference) in [
            ("probs", p.grad(&g_ours), p.grad(&g_ref)),
            ("values", v.grad(&g_ours), v.grad(&g_ref)),
        ] {
            let diff = max_diff(ours.unwrap(), reference.unwrap());
            assert!(diff < 1e-3, "{name} gradient differs by {diff}");
        }
    }
}

#[test]
fn linear_on_few_rows_matches_burns_linear() {
    let device = Device::default();
    // Row counts around the 8-row passes; 64 columns (two strips); one large enough for threads.
    for [rows, d_in, d_out] in [
        [1, 5, 64],
        [7, 33, 64],
        [8, 16, 32],
        [13, 40, 96],
        [32, 384, 1536],
    ] {
        let x = random([rows, d_in], &device);
        let weight = random([d_in, d_out], &device);
        let bias = random([d_out], &device);
        let ours = linear(x.clone(), weight.clone(), Some(bias.clone()));
        let reference = burn::tensor::module::linear(x, weight, Some(bias));
        let diff = max_diff(ours, reference);
        assert!(diff < 1e-2, "{rows} rows: differs by {diff}");
    }
}

#[test]
fn dropout_applies_the_seeds_mask_and_recreates_it_for_the_gradient() {
    let device = Device::default().autodiff();
    // Below and above the size at which the mask is drawn on several threads.
    for shape in [[3, 5, 7], [4, 33, 1537]] {
        let n = shape.iter().product();
        let mask = super::bernoulli_mask(n, 0.9, 11);
        let mask = Tensor::<1>::from_floats(mask.as_slice(), &device).reshape(shape);
        let x = random(shape, &device).require_grad();
        let ours = dropout(x.clone(), 0.9, 11);
        assert_eq!(max_diff(ours.clone(), x.clone() * mask.clone()), 0.0);
        let weights = random(shape, &device);
        let grad = x.grad(&(ours * weights.clone()).sum().backward()).unwrap();
        assert_eq!(max_diff(grad, (weights * mask).inner()), 0.0);
        // Another seed, another mask.
        assert!(max_diff(dropout(x.clone(), 0.9, 12), dropout(x, 0.9, 11)) > 0.0);
    }
}

/// The Flex kernels themselves, called with operands that do not fit: each refuses, naming the
/// shapes, before its `unsafe` product reads or writes anything.
mod flex_checks {
    use burn::backend::flex::{FlexTensor, Layout};
    use burn::backend::{Bytes, DType, Flex, Shape};

    use super::super::BertKernels;

    fn flex<const D: usize>(shape: [usize; D]) -> FlexTensor {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
        FlexTensor::new(
            Bytes::from_elems(values),
            Layout::contiguous(Shape::new(shape)),
            DType::F32,
        )
    }

    #[test]
    #[should_panic(expected = "linear_with_bias: x [2, 3], weight [3, 4] and bias [3] do not fit")]
    fn linear_refuses_a_short_bias() {
        Flex::linear_with_bias(flex([2, 3]), flex([3, 4]), flex([3]));
    }

    #[test]
    #[should_panic(expected = "linear_with_bias: x [2, 5], weight [3, 4] and bias [4] do not fit")]
    fn linear_refuses_an_input_of_another_width() {
        Flex::linear_with_bias(flex([2, 5]), flex([3, 4]), flex([4]));
    }

    #[test]
    #[should_panic(expected = "expected a matrix, got a tensor of shape [1, 3, 4]")]
    fn linear_refuses_a_weight_that_is_not_a_matrix() {
        Flex::linear_with_bias(flex([2, 3]), flex([1, 3, 4]), flex([4]));
    }

    #[test]
    #[should_panic(expected = "linear_backward_x: weight [3, 4] and grad [2, 5] differ in d_out")]
    fn linear_backward_x_refuses_a_gradient_of_another_width() {
        Flex::linear_backward_x(flex([3, 4]), flex([2, 5]));
    }

    #[test]
    #[should_panic(
        expected = "linear_backward_weight: x [2, 3] and grad [7, 4] differ in their leading"
    )]
    fn linear_backward_weight_refuses_a_gradient_of_other_rows() {
        Flex::linear_backward_weight(flex([2, 3]), flex([7, 4]));
    }

    #[test]
    #[should_panic(
        expected = "heads_matmul: lhs [2, 3, 4, 5] and rhs [2, 3, 6, 7] differ in batch, heads"
    )]
    fn heads_matmul_refuses_another_inner_dimension() {
        Flex::heads_matmul(flex([2, 3, 4, 5]), flex([2, 3, 6, 7]), false);
    }

    #[test]
    #[should_panic(
        expected = "heads_matmul: lhs [2, 3, 4, 5] and rhs [1, 3, 5, 7] differ in batch, heads"
    )]
    fn heads_matmul_refuses_another_batch() {
        Flex::heads_matmul(flex([2, 3, 4, 5]), flex([1, 3, 5, 7]), true);
    }

    #[test]
    #[should_panic(expected = "heads_matmul: expected 4 dimensions, got shape [3, 4, 5]")]
    fn heads_matmul_refuses_another_rank() {
        Flex::heads_matmul(flex([3, 4, 5]), flex([2, 3, 5, 7]), false);
    }

    #[test]
    #[should_panic(expected = "address values outside a buffer of 4")]
    fn heads_matmul_refuses_a_layout_beyond_its_buffer() {
        // Two rows of four values, the second at offset 4 of a four-value buffer.
        let layout = Layout::new(Shape::new([1, 1, 2, 4]), vec![8, 8, 4, 1], 0);
        let lhs = FlexTensor::new(Bytes::from_elems(vec![1.0f32; 4]), layout, DType::F32);
        Flex::heads_matmul(lhs, flex([1, 1, 4, 3]), false);
    }
}

#[test]
fn heads_matmul_reads_views_with_negative_strides() {
    let device = Device::default();
    let lhs = random([2, 3, 5, 4], &device).flip([2, 3]);
    let rhs = random([2, 3, 4, 6], &device).flip([1]);
    let ours = heads_matmul(lhs.clone(), rhs.clone());
    assert!(max_diff(ours, lhs.matmul(rhs)) < 1e-4);
}

#[test]
fn linear_keeps_the_rows_of_an_empty_product() {
    let device = Device::default().autodiff();
    // A zero-width input: the output is the bias on each of its rows, and the input's gradient
    // has its rows too, as has the weight's gradient of a zero-width output.
    for [rows, d_in, d_out] in [[3, 0, 4], [3, 4, 0]] {
        let x = random([rows, d_in], &device).require_grad();
        let weight = random([d_in, d_out], &device).require_grad();
        let bias = random([d_out], &device).require_grad();
        let ours = linear(x.clone(), weight.clone(), Some(bias.clone()));
        let reference = burn::tensor::module::linear(x.clone(), weight.clone(), Some(bias));
        assert_eq!(ours.dims(), [rows, d_out]);
        ours.to_data().assert_eq(&reference.to_data(), true);
        let grads = ours.sum().backward();
        let x_grad = x.grad(&grads).expect("the input's gradient");
        assert_eq!(x_grad.dims(), [rows, d_in]);
        x_grad.to_data().assert_eq(
            &Tensor::<2>::zeros([rows, d_in], &Device::default()).to_data(),
            true,
        );
        let weight_grad = weight.grad(&grads).expect("the weight's gradient");
        assert_eq!(weight_grad.dims(), [d_in, d_out]);
    }
}
