//! Kernels for the operations Flex runs slowly, as a Burn backend extension.
//!
//! [`gelu`] (exact, erf-based), [`masked_softmax`] (attention's scale + mask + softmax in one
//! pass), [`linear`] (bias and matrix product in one `gemm` call), [`layer_norm`],
//! [`heads_matmul`] / [`merged_heads_matmul`] (attention's products on the heads' strided views)
//! and [`dropout`] (the mask drawn as it is applied) go through the crate's `BertKernels` backend
//! extension on Flex, with or without autodiff, and through Burn's generic tensor ops on every
//! other backend, so the model code calls one function and each backend gets its best path. Each
//! kernel has a hand-written backward pass (`autodiff.rs`) and is checked against the generic
//! ops, values and gradients, in this module's tests; the parity fixtures against transformers +
//! peft run through them too.
//!
//! The Flex kernels multiply with `gemm` through raw pointers, so operands that do not fit
//! together would be read out of bounds rather than refused. Each function here therefore
//! checks its operands' shapes on every backend and panics, naming both shapes, when they do
//! not fit: a mismatch is a bug in the calling model code, not bad user input. The Flex
//! implementation checks again, next to each `unsafe` block, what that block relies on.

// Without Flex no backend registers the kernels: the trait's dispatch and the host math stay
// unused, and every call takes the generic path.
#![cfg_attr(
    not(feature = "flex"),
    allow(dead_code, unused_imports, unused_variables)
)]

mod autodiff;
#[cfg(feature = "flex")]
mod flex;
pub(crate) mod math;
mod onednn;
mod packed;

pub use packed::{MatrixUnits, PackedLinear};

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DispatchDevice, backend_extension};
use burn::prelude::*;
use burn::tensor::activation;

/// The operations with a fused kernel. `bias` of [`Self::masked_softmax`] is broadcast to the
/// scores (`[batch, 1, 1, keys]` for an attention mask) and gets no gradient.
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub(crate) trait BertKernels: Backend {
    /// `x Φ(x)`, HF's exact `gelu`.
    fn gelu_erf(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `grad · (Φ(x) + x φ(x))`.
    fn gelu_erf_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `softmax(scores · scale + bias)` over the last dimension of `[batch, heads, q, keys]`.
    fn masked_softmax(
        scores: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;
    /// The gradient of the scores from the probabilities and their gradient:
    /// `scale · p ⊙ (grad − Σ grad ⊙ p)`.
    fn masked_softmax_backward(
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;
    /// `x · weight + bias` over the last dimension: `x` is `[..., d_in]`, `weight`
    /// `[d_in, d_out]`, `bias` `[d_out]`.
    fn linear_with_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// [`Self::linear_with_bias`] with the product in bf16 through `packed` (the same weight
    /// and bias, packed by [`MatrixUnits::pack`]) where the backend can; otherwise, and for
    /// autodiff, exactly [`Self::linear_with_bias`].
    fn linear_packed(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        packed: std::sync::Arc<PackedLinear>,
    ) -> FloatTensor<Self>;
    /// `grad · weightᵀ`: the gradient of [`Self::linear_with_bias`]'s input.
    fn linear_backward_x(weight: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `xᵀ · grad` over all leading dimensions: the gradient of [`Self::linear_with_bias`]'s weight.
    fn linear_backward_weight(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `grad` summed over all leading dimensions: the gradient of [`Self::linear_with_bias`]'s bias
    /// (and of [`Self::layer_norm_affine`]'s).
    fn linear_backward_bias(grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `x ⊙ mask`, the mask drawn from `seed` ([`math::dropout_in_place`]); its own backward,
    /// since the gradient is `grad ⊙ mask` with the same mask.
    fn dropout(x: FloatTensor<Self>, keep: f64, seed: u64) -> FloatTensor<Self>;
    /// `lhs · rhs` for each of the leading two dimensions (`[batch, heads, m, k]` by
    /// `[batch, heads, k, n]`), reading strided views (split heads, transposes) in place. With
    /// `interleave_heads` the `[batch, heads, m, n]` output is laid out as `[batch, m, heads, n]`
    /// in memory, so that merging the heads back is a view.
    fn heads_matmul(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        interleave_heads: bool,
    ) -> FloatTensor<Self>;
    /// `(x − mean) / sqrt(var + epsilon) · gamma + beta` over the last dimension.
    fn layer_norm_affine(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self>;
    /// The gradient of [`Self::layer_norm_affine`]'s input.
    fn layer_norm_backward_x(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self>;
    /// The gradient of [`Self::layer_norm_affine`]'s `gamma`: `grad ⊙ x̂` summed over the leading
    /// dimensions.
    fn layer_norm_backward_gamma(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self>;
}

/// Whether `device` (or the device an autodiff device wraps) computes on the host CPU.
pub fn is_host(device: &Device) -> bool {
    #[allow(clippy::match_like_matches_macro)]
    match device.as_dispatch().clone().inner() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => true,
        #[cfg(feature = "ndarray")]
        DispatchDevice::NdArray(_) => true,
        _ => false,
    }
}

/// Whether the fused kernels (and [`packed_linear`]'s bf16 products) run on `device`: Flex.
pub fn has_kernels(device: &Device) -> bool {
    #[allow(clippy::match_like_matches_macro)]
    match device.as_dispatch().clone().inner() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => true,
        _ => false,
    }
}

/// Exact (erf) GELU.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !has_kernels(&x.device()) {
        return activation::gelu(x);
    }
    Tensor::from_dispatch(<burn::backend::Dispatch as BertKernels>::gelu_erf(
        x.into_dispatch(),
    ))
}

/// `x · weight + bias` (Burn's `[d_in, d_out]` weight layout), as `burn::tensor::module::linear`.
/// On Flex the bias is written first and the product accumulated onto it by one `gemm` call:
/// Flex's own matmul zeroes its output, copies it to realign it and adds the bias in another pass.
///
/// # Panics
/// When `x`'s last dimension is not `d_in` or `bias` is not `[d_out]`.
pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let (x_dims, [d_in, d_out]) = (x.dims(), weight.dims());
    assert!(
        x_dims.last() == Some(&d_in),
        "kernels::linear: x {x_dims:?} does not end in weight {:?}'s d_in",
        [d_in, d_out]
    );
    if let Some(bias) = &bias {
        assert!(
            bias.dims() == [d_out],
            "kernels::linear: bias {:?} is not weight {:?}'s d_out",
            bias.dims(),
            [d_in, d_out]
        );
    }
    let bias = match bias {
        Some(bias) if has_kernels(&x.device()) => bias,
        bias => return burn::tensor::module::linear(x, weight, bias),
    };
    Tensor::from_dispatch(<burn::backend::Dispatch as BertKernels>::linear_with_bias(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// [`linear`] with the product in bf16 on the CPU's matrix units through `packed`, made from
/// the same `weight` and `bias` by [`MatrixUnits::pack`]: on Flex without autodiff. Elsewhere,
/// and when oneDNN fails, the `f32` [`linear`].
///
/// # Panics
/// As [`linear`].
pub fn packed_linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Tensor<1>,
    packed: &std::sync::Arc<PackedLinear>,
) -> Tensor<D> {
    if !has_kernels(&x.device()) || packed.dims() != weight.dims() {
        return linear(x, weight, Some(bias));
    }
    let (x_dims, [d_in, d_out]) = (x.dims(), weight.dims());
    assert!(
        x_dims.last() == Some(&d_in) && bias.dims() == [d_out],
        "kernels::packed_linear: x {x_dims:?}, weight {:?} and bias {:?} do not fit",
        [d_in, d_out],
        bias.dims()
    );
    Tensor::from_dispatch(<burn::backend::Dispatch as BertKernels>::linear_packed(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        packed.clone(),
    ))
}

/// `n` values, each `1 / keep` with probability `keep`, else 0: the mask the host backends
/// apply for `seed`.
pub fn bernoulli_mask(n: usize, keep: f64, seed: u64) -> Vec<f32> {
    let mut mask = vec![1.0; n];
    math::dropout_in_place(&mut mask, keep, seed);
    mask
}

/// Inverted dropout with a mask drawn from `seed` on the host (as [`bernoulli_mask`]), for
/// host backends: fused into one pass over `x` on Flex
/// (and recreated from the seed for the backward pass), multiplied in as a tensor elsewhere.
pub fn dropout<const D: usize>(x: Tensor<D>, keep: f64, seed: u64) -> Tensor<D> {
    if !has_kernels(&x.device()) {
        let shape = x.shape();
        let mask = bernoulli_mask(shape.num_elements(), keep, seed);
        let mask = Tensor::<D>::from_data(TensorData::new(mask, shape), &x.device());
        return x * mask;
    }
    Tensor::from_dispatch(<burn::backend::Dispatch as BertKernels>::dropout(
        x.into_dispatch(),
        keep,
        seed,
    ))
}

/// `lhs · rhs` per batch item and head, as `Tensor::matmul` on `[batch, heads, m, k]` by
/// `[batch, heads, k, n]`: attention's scores. On Flex each product is one `gemm` call on
/// the operands' strides, and the output is not zeroed and copied before it is written.
/// Operands whose batch or heads differ (broadcasting) go through `Tensor::matmul`.
///
/// # Panics
/// When the operands' inner dimensions (`k`) differ.
pub fn heads_matmul(lhs: Tensor<4>, rhs: Tensor<4>) -> Tensor<4> {
    if !heads_kernel_runs("heads_matmul", &lhs, &rhs) {
        return lhs.matmul(rhs);
    }
    heads_kernel(lhs, rhs, false)
}

/// [`heads_matmul`] with the heads merged back: `[batch, m, heads · n]`, attention's context.
/// On Flex the product is written in that order, so the merge copies nothing.
///
/// # Panics
/// As [`heads_matmul`].
pub fn merged_heads_matmul(lhs: Tensor<4>, rhs: Tensor<4>) -> Tensor<3> {
    let [batch, heads, m, _] = lhs.dims();
    let n = rhs.dims()[3];
    let out = if heads_kernel_runs("merged_heads_matmul", &lhs, &rhs) {
        heads_kernel(lhs, rhs, true)
    } else {
        lhs.matmul(rhs)
    };
    out.swap_dims(1, 2).reshape([batch, m, heads * n])
}

/// Whether [`BertKernels::heads_matmul`] runs for these operands: Flex, same batch and heads
/// (others broadcast through `Tensor::matmul`). Panics, for `kernel`, when the inner dimensions
/// differ, which no path can multiply.
fn heads_kernel_runs(kernel: &str, lhs: &Tensor<4>, rhs: &Tensor<4>) -> bool {
    let (l, r) = (lhs.dims(), rhs.dims());
    assert!(
        l[3] == r[2],
        "kernels::{kernel}: lhs {l:?} and rhs {r:?} differ in the inner dimension"
    );
    has_kernels(&lhs.device()) && [l[0], l[1], l[3]] == [r[0], r[1], r[2]]
}

fn heads_kernel(lhs: Tensor<4>, rhs: Tensor<4>, interleave_heads: bool) -> Tensor<4> {
    Tensor::from_dispatch(<burn::backend::Dispatch as BertKernels>::heads_matmul(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
        interleave_heads,
    ))
}

/// Layer normalisation over the last dimension, as `burn::tensor::module::layer_norm`.
///
/// # Panics
/// When `gamma` or `beta` is not `[d]`, `d` being `x`'s last dimension.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    epsilon: f64,
) -> Tensor<D> {
    let x_dims = x.dims();
    let d = x_dims.last().copied();
    let (gamma_dims, beta_dims) = (gamma.dims(), beta.as_ref().map(Tensor::dims));
    assert!(
        Some(gamma_dims[0]) == d && beta_dims.is_none_or(|[b]| Some(b) == d),
        "kernels::layer_norm: gamma {gamma_dims:?} or beta {beta_dims:?} is not x {x_dims:?}'s \
         last dimension"
    );
    let beta = match beta {
        Some(beta) if has_kernels(&x.device()) => beta,
        beta => return burn::tensor::module::layer_norm(x, gamma, beta, epsilon),
    };
    Tensor::from_dispatch(<burn::backend::Dispatch as BertKernels>::layer_norm_affine(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon as f32,
    ))
}

/// `softmax(scores · scale + bias, dim 3)`, the attention probabilities; `bias` is a mask,
/// broadcast over heads and queries, and gets no gradient.
///
/// # Panics
/// When `bias` does not broadcast to `scores` (each of its dimensions is the scores' or 1).
pub fn masked_softmax(scores: Tensor<4>, bias: Tensor<4>, scale: f64) -> Tensor<4> {
    let (s, b) = (scores.dims(), bias.dims());
    assert!(
        s.iter().zip(&b).all(|(s, b)| b == s || *b == 1),
        "kernels::masked_softmax: bias {b:?} does not broadcast to scores {s:?}"
    );
    if !has_kernels(&scores.device()) {
        return activation::softmax(scores * scale + bias.detach(), 3);
    }
    Tensor::from_dispatch(<burn::backend::Dispatch as BertKernels>::masked_softmax(
        scores.into_dispatch(),
        bias.into_dispatch(),
        scale as f32,
    ))
}

#[cfg(all(test, feature = "flex"))]
mod tests;
