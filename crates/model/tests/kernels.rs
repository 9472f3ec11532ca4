//! The public kernels refuse operands whose shapes do not fit together, naming both shapes, on
//! whatever backend runs them: on Flex their products read through raw pointers, so a mismatch
//! must stop before it reaches them. (`gelu` and `dropout` take one tensor: nothing to mismatch.)

use bert_model::kernels;
use burn::prelude::*;

fn ones<const D: usize>(shape: [usize; D]) -> Tensor<D> {
    Tensor::ones(shape, &Device::default())
}

#[test]
#[should_panic(expected = "kernels::linear: x [2, 5] does not end in weight [3, 4]'s d_in")]
fn linear_refuses_an_input_that_does_not_end_in_d_in() {
    kernels::linear(ones([2, 5]), ones([3, 4]), Some(ones([4])));
}

#[test]
#[should_panic(expected = "kernels::linear: x [2, 5] does not end in weight [3, 4]'s d_in")]
fn linear_without_bias_refuses_an_input_that_does_not_end_in_d_in() {
    kernels::linear(ones([2, 5]), ones([3, 4]), None);
}

#[test]
#[should_panic(expected = "kernels::linear: bias [3] is not weight [3, 4]'s d_out")]
fn linear_refuses_a_short_bias() {
    kernels::linear(ones([2, 2, 3]), ones([3, 4]), Some(ones([3])));
}

#[test]
#[should_panic(expected = "kernels::linear: bias [1] is not weight [3, 4]'s d_out")]
fn linear_refuses_a_bias_that_would_only_broadcast() {
    kernels::linear(ones([2, 3]), ones([3, 4]), Some(ones([1])));
}

#[test]
#[should_panic(
    expected = "kernels::heads_matmul: lhs [2, 3, 4, 5] and rhs [2, 3, 6, 7] differ in the inner"
)]
fn heads_matmul_refuses_another_inner_dimension() {
    kernels::heads_matmul(ones([2, 3, 4, 5]), ones([2, 3, 6, 7]));
}

#[test]
#[should_panic(
    expected = "kernels::merged_heads_matmul: lhs [2, 3, 4, 5] and rhs [2, 3, 4, 7] differ in"
)]
fn merged_heads_matmul_refuses_another_inner_dimension() {
    kernels::merged_heads_matmul(ones([2, 3, 4, 5]), ones([2, 3, 4, 7]));
}

#[test]
fn heads_matmul_broadcasts_other_batch_and_heads_as_matmul_does() {
    let device = Device::default();
    let lhs = Tensor::<4>::random([2, 3, 4, 5], burn::tensor::Distribution::Default, &device);
    let rhs = Tensor::<4>::random([1, 1, 5, 6], burn::tensor::Distribution::Default, &device);
    let ours = kernels::heads_matmul(lhs.clone(), rhs.clone());
    let reference = lhs.clone().matmul(rhs.clone());
    assert_eq!(ours.dims(), [2, 3, 4, 6]);
    ours.to_data()
        .assert_approx_eq::<f32>(&reference.to_data(), Default::default());
    let merged = kernels::merged_heads_matmul(lhs, rhs);
    let reference = reference.swap_dims(1, 2).reshape([2, 4, 18]);
    merged
        .to_data()
        .assert_approx_eq::<f32>(&reference.to_data(), Default::default());
}

#[test]
#[should_panic(
    expected = "kernels::layer_norm: gamma [4] or beta Some([5]) is not x [2, 5]'s last dimension"
)]
fn layer_norm_refuses_a_gamma_of_another_length() {
    kernels::layer_norm(ones([2, 5]), ones([4]), Some(ones([5])), 1e-12);
}

#[test]
#[should_panic(
    expected = "kernels::layer_norm: gamma [5] or beta Some([1]) is not x [2, 5]'s last dimension"
)]
fn layer_norm_refuses_a_beta_of_another_length() {
    kernels::layer_norm(ones([2, 5]), ones([5]), Some(ones([1])), 1e-12);
}

#[test]
#[should_panic(
    expected = "masked_softmax: bias [2, 1, 1, 6] does not broadcast to scores [2, 3, 4, 5]"
)]
fn masked_softmax_refuses_a_bias_that_does_not_broadcast() {
    kernels::masked_softmax(ones([2, 3, 4, 5]), ones([2, 1, 1, 6]), 0.125);
}

#[test]
#[should_panic(
    expected = "masked_softmax: bias [2, 3, 4, 5] does not broadcast to scores [2, 1, 4, 5]"
)]
fn masked_softmax_refuses_a_bias_larger_than_the_scores() {
    kernels::masked_softmax(ones([2, 1, 4, 5]), ones([2, 3, 4, 5]), 0.125);
}
