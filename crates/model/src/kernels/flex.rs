//! The kernels on Flex. They compute in `f32`; tensors of another float type are cast there and
//! back.

use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::FloatTensorOps;
use burn::backend::{Bytes, DType, Flex, FloatDType, Shape, TensorMetadata};

use rayon::prelude::*;

use super::{BertKernels, math};

/// The tensor as contiguous `f32` (copied only when strided or of another type), and its dtype.
fn f32_contiguous(tensor: FlexTensor) -> (FlexTensor, DType) {
    let (tensor, dtype) = f32_strided(tensor);
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
    finish(out, dtype)
}

/// The values of `tensor` (from [`f32_contiguous`]) to overwrite in place, when it was `f32`
/// already, starts its buffer and nothing else holds that buffer.
fn unshared_values(tensor: &mut FlexTensor, dtype: DType) -> Option<&mut [f32]> {
    let n = tensor.shape().num_elements();
    if dtype != DType::F32 || tensor.layout().start_offset() != 0 {
        return None;
    }
    tensor
        .try_storage_mut::<f32>()
        .map(|values| &mut values[..n])
}

/// `tensor` as contiguous `f32` that a kernel may overwrite: itself when nothing else holds it
/// (a fresh product or gradient, usually), else a copy. Returns its original dtype too.
fn into_writable(tensor: FlexTensor) -> (FlexTensor, DType) {
    let (mut tensor, dtype) = f32_contiguous(tensor);
    if unshared_values(&mut tensor, dtype).is_some() {
        return (tensor, dtype);
    }
    let copy = values(&tensor).to_vec();
    (output(copy, tensor.shape(), DType::F32), dtype)
}

/// The values of a tensor from [`into_writable`].
fn writable_values(tensor: &mut FlexTensor) -> &mut [f32] {
    unshared_values(tensor, DType::F32).expect("into_writable returns an unshared f32 tensor")
}

/// An `f32` result (from [`into_writable`] or a kernel's own buffer), cast back to `dtype`.
fn finish(tensor: FlexTensor, dtype: DType) -> FlexTensor {
    if dtype == DType::F32 {
        tensor
    } else {
        Flex::float_cast(tensor, dtype.into())
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
        // Not shared (inference, or nothing kept for a backward pass): overwrite in place.
        if let Some(values) = unshared_values(&mut x, dtype) {
            math::map_in_place(values, math::gelu);
            return x;
        }
        let mut out = vec![0.0; x.shape().num_elements()];
        math::map(values(&x), &mut out, math::gelu);
        output(out, x.shape(), dtype)
    }

    fn gelu_erf_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (x, _) = f32_contiguous(x);
        let (mut grad, dtype) = into_writable(grad);
        math::zip_map_in_place(
            values(&x),
            writable_values(&mut grad),
            #[inline(always)]
            |x, g| g * math::gelu_grad(x),
        );
        finish(grad, dtype)
    }

    fn masked_softmax(scores: FlexTensor, bias: FlexTensor, scale: f32) -> FlexTensor {
        let shape = scores.shape();
        let [batch, heads, queries, keys] = shape.dims::<4>();
        // One bias row per batch item, or (any other broadcastable shape) one per score row.
        let (bias, rows_per_bias) = if bias.shape().dims::<4>() == [batch, 1, 1, keys] {
            (bias, heads * queries)
        } else {
            (Flex::float_expand(bias, shape), 1)
        };
        let (mut scores, dtype) = into_writable(scores);
        let (bias, _) = f32_contiguous(bias);
        let b = values(&bias);
        math::for_rows(
            writable_values(&mut scores),
            keys,
            #[inline(always)]
            |r, row| softmax_row(row, &b[(r / rows_per_bias) * keys..][..keys], scale),
        );
        finish(scores, dtype)
    }

    fn masked_softmax_backward(probs: FlexTensor, grad: FlexTensor, scale: f32) -> FlexTensor {
        let keys = probs.shape().dims::<4>()[3];
        let (probs, _) = f32_contiguous(probs);
        let (mut grad, dtype) = into_writable(grad);
        let p = values(&probs);
        math::for_rows(
            writable_values(&mut grad),
            keys,
            #[inline(always)]
            |r, g| {
                let p = &p[r * keys..][..keys];
                let dot = math::dot(p, g);
                for (g, &p) in g.iter_mut().zip(p) {
                    *g = scale * p * (*g - dot);
                }
            },
        );
        finish(grad, dtype)
    }

    fn linear_with_bias(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let (x, dtype) = f32_contiguous(x);
        let (weight, _) = f32_contiguous(weight);
        let (bias, _) = f32_contiguous(bias);
        let [d_in, d_out] = weight.shape().dims::<2>();
        let rows = x.shape().num_elements() / d_in.max(1);
        let mut out = Vec::with_capacity(rows * d_out);
        for _ in 0..rows {
            out.extend_from_slice(values(&bias));
        }
        let lhs = Matrix::row_major(values(&x), d_in);
        let rhs = Matrix::row_major(values(&weight), d_out);
        // SAFETY: the operands hold rows x d_in and d_in x d_out values; `out` holds rows x d_out.
        unsafe { gemm_into(out.as_mut_ptr(), d_out, [rows, d_out, d_in], lhs, rhs, true) };
        output(out, with_last_dim(x.shape(), d_out), dtype)
    }

    fn linear_backward_x(weight: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (weight, dtype) = f32_contiguous(weight);
        let (grad, _) = f32_contiguous(grad);
        let [d_in, d_out] = weight.shape().dims::<2>();
        let rows = grad.shape().num_elements() / d_out.max(1);
        let mut out = Vec::with_capacity(rows * d_in);
        let lhs = Matrix::row_major(values(&grad), d_out);
        let rhs = Matrix::row_major(values(&weight), d_out).transposed();
        // SAFETY: the capacity holds rows x d_in values, all written by `gemm_into` before `set_len`.
        unsafe {
            gemm_into(out.as_mut_ptr(), d_in, [rows, d_in, d_out], lhs, rhs, false);
            out.set_len(rows * d_in);
        }
        output(out, with_last_dim(grad.shape(), d_in), dtype)
    }

    fn linear_backward_weight(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (x, dtype) = f32_contiguous(x);
        let (grad, _) = f32_contiguous(grad);
        let shape = x.shape();
        let d_in = shape[shape.num_dims() - 1];
        let grad_shape = grad.shape();
        let d_out = grad_shape[grad_shape.num_dims() - 1];
        let rows = shape.num_elements() / d_in.max(1);
        let mut out = Vec::with_capacity(d_in * d_out);
        let lhs = Matrix::row_major(values(&x), d_in).transposed();
        let rhs = Matrix::row_major(values(&grad), d_out);
        // SAFETY: as in `linear_backward_x`.
        unsafe {
            gemm_into(
                out.as_mut_ptr(),
                d_out,
                [d_in, d_out, rows],
                lhs,
                rhs,
                false,
            );
            out.set_len(d_in * d_out);
        }
        output(out, Shape::new([d_in, d_out]), dtype)
    }

    fn linear_backward_bias(grad: FlexTensor) -> FlexTensor {
        let (grad, dtype) = f32_contiguous(grad);
        let d = last_dim(&grad);
        let g = values(&grad);
        let out = math::sum_over_rows(
            g.len() / d.max(1),
            d,
            #[inline(always)]
            |r, acc| {
                for (a, &g) in acc.iter_mut().zip(&g[r * d..][..d]) {
                    *a += g;
                }
            },
        );
        output(out, Shape::new([d]), dtype)
    }

    fn dropout(x: FlexTensor, keep: f64, seed: u64) -> FlexTensor {
        let (mut x, dtype) = into_writable(x);
        math::dropout_in_place(writable_values(&mut x), keep, seed);
        finish(x, dtype)
    }

    fn heads_matmul(lhs: FlexTensor, rhs: FlexTensor, interleave_heads: bool) -> FlexTensor {
        let (lhs, dtype) = f32_strided(lhs);
        let (rhs, _) = f32_strided(rhs);
        let [batch, heads, m, k] = lhs.shape().dims::<4>();
        let n = rhs.shape().dims::<4>()[3];
        let (l, r) = (HeadOperand::new(&lhs), HeadOperand::new(&rhs));
        // Where block (b, h) starts and how far apart its rows are, in `[b, h, m, n]` order or
        // in `[b, m, h, n]` order.
        let (head_stride, row_stride) = if interleave_heads {
            (n, heads * n)
        } else {
            (m * n, n)
        };
        let mut out = Vec::with_capacity(batch * heads * m * n);
        let out_ptr = SendPtr(out.as_mut_ptr());
        let product = |i: usize| {
            let (b, h) = (i / heads, i % heads);
            let start = b * heads * m * n + h * head_stride;
            // SAFETY: each operand addresses an m x k (k x n) matrix through its layout, and
            // block `i` of the output (m rows of n values from `start`, `row_stride` apart) lies
            // in `out`'s capacity and is written by this call only.
            unsafe {
                gemm_into(
                    out_ptr.at(start),
                    row_stride,
                    [m, n, k],
                    l.matrix(b, h),
                    r.matrix(b, h),
                    false,
                )
            };
        };
        if batch * heads * m * n * k >= PARALLEL_THRESHOLD {
            (0..batch * heads).into_par_iter().for_each(product);
        } else {
            (0..batch * heads).for_each(product);
        }
        // SAFETY: every block was written above, and the blocks tile the buffer.
        unsafe { out.set_len(batch * heads * m * n) };
        let shape = Shape::new([batch, heads, m, n]);
        let layout = if interleave_heads {
            let strides = [m * heads * n, n, heads * n, 1].map(|s| s as isize);
            Layout::new(shape, strides.to_vec(), 0)
        } else {
            Layout::contiguous(shape)
        };
        let out = FlexTensor::new(Bytes::from_elems(out), layout, DType::F32);
        finish(out, dtype)
    }

    fn layer_norm_affine(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f32,
    ) -> FlexTensor {
        let (x, dtype) = f32_contiguous(x);
        let (gamma, _) = f32_contiguous(gamma);
        let (beta, _) = f32_contiguous(beta);
        let d = last_dim(&x);
        let (xs, g, b) = (values(&x), values(&gamma), values(&beta));
        let mut out = vec![0.0; xs.len()];
        math::for_rows(
            &mut out,
            d,
            #[inline(always)]
            |r, row| {
                let x = &xs[r * d..][..d];
                let (mean, rstd) = row_stats(x, epsilon);
                for (((o, &x), &g), &b) in row.iter_mut().zip(x).zip(g).zip(b) {
                    *o = (x - mean) * rstd * g + b;
                }
            },
        );
        output(out, x.shape(), dtype)
    }

    fn layer_norm_backward_x(
        x: FlexTensor,
        gamma: FlexTensor,
        grad: FlexTensor,
        epsilon: f32,
    ) -> FlexTensor {
        let (x, dtype) = f32_contiguous(x);
        let (gamma, _) = f32_contiguous(gamma);
        let (grad, _) = f32_contiguous(grad);
        let d = last_dim(&x);
        let (xs, g, gs) = (values(&x), values(&gamma), values(&grad));
        let mut out = vec![0.0; xs.len()];
        // With x̂ = (x − mean) · rstd and gy = grad ⊙ gamma:
        // dx = rstd · (gy − mean(gy) − x̂ · mean(gy ⊙ x̂)).
        math::for_rows(
            &mut out,
            d,
            #[inline(always)]
            |r, row| {
                let (x, grad) = (&xs[r * d..][..d], &gs[r * d..][..d]);
                let (mean, rstd) = row_stats(x, epsilon);
                // `row` holds gy first.
                for ((o, &grad), &g) in row.iter_mut().zip(grad).zip(g) {
                    *o = grad * g;
                }
                let gy_mean = math::sum(row) / d as f32;
                let gy_x_mean = (math::dot(row, x) - mean * math::sum(row)) * rstd / d as f32;
                for (o, &x) in row.iter_mut().zip(x) {
                    *o = rstd * (*o - gy_mean - (x - mean) * rstd * gy_x_mean);
                }
            },
        );
        output(out, x.shape(), dtype)
    }

    fn layer_norm_backward_gamma(x: FlexTensor, grad: FlexTensor, epsilon: f32) -> FlexTensor {
        let (x, dtype) = f32_contiguous(x);
        let (grad, _) = f32_contiguous(grad);
        let d = last_dim(&x);
        let (xs, gs) = (values(&x), values(&grad));
        let out = math::sum_over_rows(
            xs.len() / d.max(1),
            d,
            #[inline(always)]
            |r, acc| {
                let (x, grad) = (&xs[r * d..][..d], &gs[r * d..][..d]);
                let (mean, rstd) = row_stats(x, epsilon);
                for ((a, &x), &g) in acc.iter_mut().zip(x).zip(grad) {
                    *a += g * (x - mean) * rstd;
                }
            },
        );
        output(out, Shape::new([d]), dtype)
    }
}

/// The size of the last dimension.
fn last_dim(tensor: &FlexTensor) -> usize {
    let shape = tensor.shape();
    shape[shape.num_dims() - 1]
}

/// The mean of a row and `1 / sqrt(var + epsilon)` (biased variance, as PyTorch's layer norm).
#[inline(always)]
fn row_stats(x: &[f32], epsilon: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = math::sum(x) / n;
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += (c[i] - mean) * (c[i] - mean);
        }
    }
    let var = (acc.iter().sum::<f32>() + tail) / n;
    (mean, 1.0 / (var + epsilon).sqrt())
}

/// `shape` with its last dimension replaced.
fn with_last_dim(shape: Shape, last: usize) -> Shape {
    let mut dims = shape.to_vec();
    if let Some(d) = dims.last_mut() {
        *d = last;
    }
    Shape::from(dims)
}

/// `tensor` as `f32`, strided or not (cast, and so made contiguous, only from another type).
fn f32_strided(tensor: FlexTensor) -> (FlexTensor, DType) {
    let dtype = tensor.dtype();
    if dtype == DType::F32 {
        (tensor, dtype)
    } else {
        (Flex::float_cast(tensor, FloatDType::F32), dtype)
    }
}

/// A rank-4 `f32` tensor read as one matrix per batch item and head, through its strides.
struct HeadOperand<'a> {
    values: &'a [f32],
    offset: isize,
    strides: [isize; 4],
}

impl<'a> HeadOperand<'a> {
    fn new(tensor: &'a FlexTensor) -> Self {
        let s = tensor.layout().strides();
        Self {
            values: tensor.storage::<f32>(),
            offset: tensor.layout().start_offset() as isize,
            strides: [s[0], s[1], s[2], s[3]],
        }
    }

    fn matrix(&self, b: usize, h: usize) -> Matrix {
        let start = self.offset + b as isize * self.strides[0] + h as isize * self.strides[1];
        Matrix {
            // SAFETY (of later reads): the layout keeps every addressed element in `values`.
            ptr: self.values.as_ptr().wrapping_offset(start),
            row_stride: self.strides[2],
            col_stride: self.strides[3],
        }
    }
}

/// An output pointer shared by threads that write disjoint blocks.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

// SAFETY: the threads holding copies write disjoint ranges (see `heads_matmul`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// A matrix operand of [`gemm_into`]: a pointer and its row and column strides, in elements.
#[derive(Clone, Copy)]
struct Matrix {
    ptr: *const f32,
    row_stride: isize,
    col_stride: isize,
}

impl Matrix {
    fn row_major(values: &[f32], cols: usize) -> Self {
        Self {
            ptr: values.as_ptr(),
            row_stride: cols as isize,
            col_stride: 1,
        }
    }

    fn transposed(self) -> Self {
        Self {
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// Below this many multiply-adds the attention products of a batch run on the calling thread
/// (Flex's own threshold): handing a one-text product to the thread pool costs more than it saves.
const PARALLEL_THRESHOLD: usize = 192 * 192 * 192;

/// Fewer output rows than this keep a matrix product on one thread whatever its size: the
/// products of one text (~15 rows) are faster there than split across the pool.
const PARALLEL_MIN_ROWS: usize = 32;

/// `out = lhs · rhs` (`[m, n, k]`: `m x k` by `k x n`; `out` is `m x n`, rows `out_row_stride` apart), or
/// `out += lhs · rhs` when `accumulate`.
///
/// # Safety
/// `lhs` and `rhs` must address `m x k` and `k x n` readable values through their strides, and
/// `out` must be valid for those `m x n` values; without `accumulate` they are only written.
unsafe fn gemm_into(
    out: *mut f32,
    out_row_stride: usize,
    [m, n, k]: [usize; 3],
    lhs: Matrix,
    rhs: Matrix,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                // SAFETY: `out` addresses m rows of n values.
                unsafe { std::ptr::write_bytes(out.add(row * out_row_stride), 0, n) };
            }
        }
        return;
    }
    let parallelism = if !crate::parallel::one_thread()
        && m >= PARALLEL_MIN_ROWS
        && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_THRESHOLD
    {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm::<f32>(
            m,
            n,
            k,
            out,
            1,
            out_row_stride as isize,
            accumulate,
            lhs.ptr,
            lhs.col_stride,
            lhs.row_stride,
            rhs.ptr,
            rhs.col_stride,
            rhs.row_stride,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    };
}

/// One row of `softmax(scores * scale + bias)`, in place.
#[inline(always)]
fn softmax_row(row: &mut [f32], bias: &[f32], scale: f32) {
    for (o, &b) in row.iter_mut().zip(bias) {
        *o = *o * scale + b;
    }
    let max = math::max(row);
    for o in row.iter_mut() {
        *o = math::exp(*o - max);
    }
    let inv = 1.0 / math::sum(row);
    for o in row.iter_mut() {
        *o *= inv;
    }
}
