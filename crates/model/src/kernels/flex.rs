//! The kernels on Flex. They compute in `f32`; tensors of another float type are cast there and
//! back.

use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::FloatTensorOps;
use burn::backend::{Bytes, DType, Flex, FloatDType, Shape, TensorMetadata};

use rayon::prelude::*;

use std::sync::Arc;

use super::{BertKernels, PackedLinear, math};

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
        let [d_in, d_out] = matrix_dims(&weight);
        let (rows, x_last) = rows_and_last(&x);
        assert!(
            x_last == d_in && bias.shape().as_slice() == [d_out],
            "linear_with_bias: x {:?}, weight {:?} and bias {:?} do not fit",
            x.shape().as_slice(),
            [d_in, d_out],
            bias.shape().as_slice()
        );
        let mut out = Vec::with_capacity(elements(&[rows, d_out]));
        for _ in 0..rows {
            out.extend_from_slice(values(&bias));
        }
        let lhs = Matrix::row_major(values(&x), d_in);
        let rhs = Matrix::row_major(values(&weight), d_out);
        // SAFETY: checked above: `x` is `rows x d_in` contiguous values and `weight` `d_in x
        // d_out`, and `out` holds `rows` copies of the `d_out` bias values, `rows x d_out`
        // initialised values for `gemm_into` to read and accumulate onto.
        unsafe { gemm_into(out.as_mut_ptr(), d_out, [rows, d_out, d_in], lhs, rhs, true) };
        output(out, with_last_dim(x.shape(), d_out), dtype)
    }

    fn linear_packed(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        packed: Arc<PackedLinear>,
    ) -> FlexTensor {
        let (x, dtype) = f32_contiguous(x);
        let (rows, d_in) = rows_and_last(&x);
        let [packed_in, d_out] = packed.dims();
        let (weight, weight_dtype) = f32_contiguous(weight);
        let (bias, _) = f32_contiguous(bias);
        let current = weight_dtype == DType::F32
            && matrix_dims(&weight) == packed.dims()
            && packed.matches(values(&weight), values(&bias));
        if dtype == DType::F32 && d_in == packed_in && current {
            // On an error from oneDNN the product is made in f32 below instead.
            if let Ok(out) = packed.forward(values(&x), rows) {
                return output(out, with_last_dim(x.shape(), d_out), dtype);
            }
        }
        // `x` is f32 here; the result goes back to the input's type.
        finish(Self::linear_with_bias(x, weight, bias), dtype)
    }

    fn linear_backward_x(weight: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (weight, dtype) = f32_contiguous(weight);
        let (grad, _) = f32_contiguous(grad);
        let [d_in, d_out] = matrix_dims(&weight);
        let (rows, grad_last) = rows_and_last(&grad);
        assert!(
            grad_last == d_out,
            "linear_backward_x: weight {:?} and grad {:?} differ in d_out",
            [d_in, d_out],
            grad.shape().as_slice()
        );
        let len = elements(&[rows, d_in]);
        let mut out = Vec::with_capacity(len);
        let lhs = Matrix::row_major(values(&grad), d_out);
        let rhs = Matrix::row_major(values(&weight), d_out).transposed();
        // SAFETY: checked above: `grad` is `rows x d_out` contiguous values and `weight` `d_in x
        // d_out` (read transposed); `out`'s capacity holds the `rows x d_in` values, which
        // `gemm_into` writes, all of them, without reading them before `set_len`.
        unsafe {
            gemm_into(out.as_mut_ptr(), d_in, [rows, d_in, d_out], lhs, rhs, false);
            out.set_len(len);
        }
        output(out, with_last_dim(grad.shape(), d_in), dtype)
    }

    fn linear_backward_weight(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (x, dtype) = f32_contiguous(x);
        let (grad, _) = f32_contiguous(grad);
        let ((rows, d_in), (_, d_out)) = (rows_and_last(&x), rows_and_last(&grad));
        let (x_shape, grad_shape) = (x.shape(), grad.shape());
        assert!(
            x_shape.as_slice()[..x_shape.num_dims() - 1]
                == grad_shape.as_slice()[..grad_shape.num_dims() - 1],
            "linear_backward_weight: x {:?} and grad {:?} differ in their leading dimensions",
            x_shape.as_slice(),
            grad_shape.as_slice()
        );
        let len = elements(&[d_in, d_out]);
        let mut out = Vec::with_capacity(len);
        let lhs = Matrix::row_major(values(&x), d_in).transposed();
        let rhs = Matrix::row_major(values(&grad), d_out);
        // SAFETY: checked above: `x` is `rows x d_in` contiguous values (read transposed) and
        // `grad`, with the same leading dimensions, `rows x d_out`; `out`'s capacity holds the
        // `d_in x d_out` values, which `gemm_into` writes, all of them, before `set_len`.
        unsafe {
            gemm_into(
                out.as_mut_ptr(),
                d_out,
                [d_in, d_out, rows],
                lhs,
                rhs,
                false,
            );
            out.set_len(len);
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
        let (l, r) = (HeadOperand::new(&lhs), HeadOperand::new(&rhs));
        let [batch, heads, m, k] = l.dims;
        let n = r.dims[3];
        assert!(
            [batch, heads, k] == [r.dims[0], r.dims[1], r.dims[2]],
            "heads_matmul: lhs {:?} and rhs {:?} differ in batch, heads or the inner dimension",
            l.dims,
            r.dims
        );
        let len = elements(&[batch, heads, m, n]);
        // Where block (b, h) starts and how far apart its rows are, in `[b, h, m, n]` order or
        // in `[b, m, h, n]` order.
        let (head_stride, row_stride) = if interleave_heads {
            (n, heads * n)
        } else {
            (m * n, n)
        };
        let mut out = Vec::with_capacity(len);
        let out_ptr = SendPtr(out.as_mut_ptr());
        let product = |i: usize| {
            let (b, h) = (i / heads, i % heads);
            let start = b * heads * m * n + h * head_stride;
            // SAFETY: `HeadOperand::new` checked that each operand's layout addresses only
            // values inside its buffer, so `l.matrix(b, h)` (`r.matrix(b, h)`) reads an `m x k`
            // (`k x n`) matrix in bounds, `k` being the same for both (checked above). Block
            // `i` of the output, `m` rows of `n` values from `start`, `row_stride` apart, lies
            // in `out`'s capacity of `batch x heads x m x n` values and is written by this call
            // only: the blocks of distinct `(b, h)` are disjoint in either order.
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
        if len.saturating_mul(k) >= PARALLEL_THRESHOLD {
            (0..batch * heads).into_par_iter().for_each(product);
        } else {
            (0..batch * heads).for_each(product);
        }
        // SAFETY: `gemm_into` wrote every value of every block above (without `accumulate` it
        // reads none), and the `batch x heads` blocks of `m x n` values tile the `len` values.
        unsafe { out.set_len(len) };
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

/// The dimensions of a weight matrix; panics unless it has two.
fn matrix_dims(tensor: &FlexTensor) -> [usize; 2] {
    let shape = tensor.shape();
    match shape.as_slice() {
        &[rows, cols] => [rows, cols],
        dims => panic!("expected a matrix, got a tensor of shape {dims:?}"),
    }
}

/// The number of rows (the product of all dimensions but the last, so a zero-width last
/// dimension still counts its rows) and the last dimension.
fn rows_and_last(tensor: &FlexTensor) -> (usize, usize) {
    let shape = tensor.shape();
    let (last, leading) = shape
        .split_last()
        .expect("a kernel operand has at least one dimension");
    (elements(leading), *last)
}

/// The number of elements of `dims`; panics when it does not fit in `usize`, where an
/// unchecked product would wrap and size an output buffer too small for what is written to it.
fn elements(dims: &[usize]) -> usize {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .unwrap_or_else(|| panic!("a tensor of shape {dims:?} has more than usize::MAX elements"))
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
    dims: [usize; 4],
    strides: [isize; 4],
}

impl<'a> HeadOperand<'a> {
    /// Panics unless `tensor` has four dimensions and its layout (start offset, dimensions and
    /// strides, any sign) addresses only values inside its buffer: [`Self::matrix`]'s reads
    /// rely on that, and a layout is only data that nothing else checks against the buffer.
    fn new(tensor: &'a FlexTensor) -> Self {
        let layout = tensor.layout();
        let (shape, s) = (layout.shape().as_slice(), layout.strides());
        let (&[d0, d1, d2, d3], &[s0, s1, s2, s3]) = (shape, s) else {
            panic!("heads_matmul: expected 4 dimensions, got shape {shape:?}, strides {s:?}")
        };
        let (dims, strides) = ([d0, d1, d2, d3], [s0, s1, s2, s3]);
        let values = tensor.storage::<f32>();
        let offset = layout.start_offset();
        if !dims.contains(&0) {
            // The lowest and highest element addressed; i128 holds every term and their sum.
            let (mut low, mut high) = (offset as i128, offset as i128);
            for (&d, &s) in dims.iter().zip(&strides) {
                let reach = (d as i128 - 1) * s as i128;
                if reach < 0 {
                    low += reach;
                } else {
                    high += reach;
                }
            }
            assert!(
                low >= 0 && high < values.len() as i128,
                "heads_matmul: shape {dims:?}, strides {strides:?} and offset {offset} address \
                 values outside a buffer of {}",
                values.len()
            );
        }
        Self {
            values,
            offset: offset as isize,
            dims,
            strides,
        }
    }

    /// Batch item `b`'s head `h`, a `dims[2] x dims[3]` matrix; `b` and `h` must be within
    /// `dims[0]` and `dims[1]` for its reads to stay in the bounds [`Self::new`] checked.
    fn matrix(&self, b: usize, h: usize) -> Matrix {
        debug_assert!(b < self.dims[0] && h < self.dims[1]);
        let start = self.offset + b as isize * self.strides[0] + h as isize * self.strides[1];
        Matrix {
            // Only an address: `gemm_into`'s callers state why what it reads through it is in
            // bounds (`wrapping_offset` keeps computing it free of undefined behaviour).
            ptr: self.values.as_ptr().wrapping_offset(start),
            row_stride: self.strides[2],
            col_stride: self.strides[3],
        }
    }
}

/// An output pointer shared by threads that write disjoint blocks.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

// SAFETY: a `SendPtr` is an address into one output buffer that outlives the threads using it
// (`heads_matmul` joins them before `set_len`), and each thread writes only its own block, the
// blocks being disjoint; nothing reads through it.
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`: shared copies only compute addresses of disjoint blocks.
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
/// `out` must be valid for writes of the `m x n` values (`m` rows `out_row_stride` apart), with
/// no other reference to them during the call; with `accumulate` it must also be valid for
/// reads and those values initialised. Without `accumulate` they are only written, so `out` may
/// point into a `Vec`'s spare capacity, whose first `m x n` values are then initialised.
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
                // SAFETY: by the function's contract `out` is valid for writes of `m` rows of
                // `n` values, `out_row_stride` apart.
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
    // SAFETY: the function's contract: `lhs` and `rhs` address `m x k` and `k x n` readable
    // values, `out` `m x n` writable ones (readable and initialised when `accumulate`, the only
    // case in which `gemm` reads them: `read_dst` is `accumulate`).
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
