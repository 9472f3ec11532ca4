//! The kernels on Flex. They compute in `f32`; tensors of another float type are cast there and
//! back.

use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::FloatTensorOps;
use burn::backend::{Bytes, DType, Flex, FloatDType, Shape, TensorMetadata};

use super::{BertKernels, math};

/// The tensor as contiguous `f32` (copied only when strided or of another type), and its dtype.
fn f32_contiguous(tensor: FlexTensor) -> (FlexTensor, DType) {
    let dtype = tensor.dtype();
    let tensor = if dtype == DType::F32 {
        tensor
    } else {
        Flex::float_cast(tensor, FloatDType::F32)
    };
    let tensor = if tensor.as_slice::<f32>().is_some() {
        tensor
    } else {
        tensor.to_contiguous()
    };
    (tensor, dtype)
}

/// A new tensor of `values`, cast to `dtype`.
fn output(values: Vec<f32>, shape: Shape, dtype: DType) -> FlexTensor {
    let out = FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    );
    if dtype == DType::F32 {
        out
    } else {
        Flex::float_cast(out, dtype.into())
    }
}

fn values(tensor: &FlexTensor) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .expect("f32_contiguous returns contiguous f32")
}

impl BertKernels for Flex {
    fn gelu_erf(x: FlexTensor) -> FlexTensor {
        let (mut x, dtype) = f32_contiguous(x);
        let n = x.shape().num_elements();
        // Not shared (inference, or nothing kept for a backward pass): overwrite in place.
        if dtype == DType::F32
            && x.layout().start_offset() == 0
            && let Some(values) = x.try_storage_mut::<f32>()
        {
            math::map_in_place(&mut values[..n], math::gelu);
            return x;
        }
        let mut out = vec![0.0; n];
        math::map(values(&x), &mut out, math::gelu);
        output(out, x.shape(), dtype)
    }

    fn gelu_erf_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (x, dtype) = f32_contiguous(x);
        let (grad, _) = f32_contiguous(grad);
        let mut out = vec![0.0; x.shape().num_elements()];
        math::zip_map(
            values(&x),
            values(&grad),
            &mut out,
            #[inline(always)]
            |x, g| g * math::gelu_grad(x),
        );
        output(out, x.shape(), dtype)
    }

    fn masked_softmax(scores: FlexTensor, bias: FlexTensor, scale: f32) -> FlexTensor {
        let shape = scores.shape();
        let [batch, heads, queries, keys] = shape.dims::<4>();
        // One bias row per batch item, or (any other broadcastable shape) one per score row.
        let (bias, rows_per_bias) = if bias.shape().dims::<4>() == [batch, 1, 1, keys] {
            (bias, heads * queries)
        } else {
            (Flex::float_expand(bias, shape.clone()), 1)
        };
        let (scores, dtype) = f32_contiguous(scores);
        let (bias, _) = f32_contiguous(bias);
        let (s, b) = (values(&scores), values(&bias));
        let mut out = vec![0.0; s.len()];
        math::for_rows(
            &mut out,
            keys,
            #[inline(always)]
            |r, row| {
                let bias = &b[(r / rows_per_bias) * keys..][..keys];
                softmax_row(&s[r * keys..][..keys], bias, scale, row);
            },
        );
        output(out, shape, dtype)
    }

    fn masked_softmax_backward(probs: FlexTensor, grad: FlexTensor, scale: f32) -> FlexTensor {
        let shape = probs.shape();
        let keys = shape.dims::<4>()[3];
        let (probs, dtype) = f32_contiguous(probs);
        let (grad, _) = f32_contiguous(grad);
        let (p, g) = (values(&probs), values(&grad));
        let mut out = vec![0.0; p.len()];
        math::for_rows(
            &mut out,
            keys,
            #[inline(always)]
            |r, row| {
                let (p, g) = (&p[r * keys..][..keys], &g[r * keys..][..keys]);
                let dot: f32 = p.iter().zip(g).map(|(p, g)| p * g).sum();
                for ((o, &p), &g) in row.iter_mut().zip(p).zip(g) {
                    *o = scale * p * (g - dot);
                }
            },
        );
        output(out, shape, dtype)
    }
}

/// One row of `softmax(scores * scale + bias)`.
#[inline(always)]
fn softmax_row(scores: &[f32], bias: &[f32], scale: f32, out: &mut [f32]) {
    for ((o, &s), &b) in out.iter_mut().zip(scores).zip(bias) {
        *o = s * scale + b;
    }
    let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for o in out.iter_mut() {
        *o = math::exp(*o - max);
    }
    let inv = 1.0 / out.iter().sum::<f32>();
    for o in out.iter_mut() {
        *o *= inv;
    }
}
