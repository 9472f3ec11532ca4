//! Linear layers whose products run in bf16 on the CPU's matrix units, for inference on Flex.
//!
//! AMX tiles (and AVX512-BF16 instructions) multiply bf16 several times faster than AVX-512
//! FMA multiplies f32. A [`PackedLinear`] holds a layer's weight converted to bf16 once, in the
//! blocked layout oneDNN's matmul reads, and its bias in f32; each product converts the
//! activations to bf16 (round to nearest even) and accumulates in f32. Everything between the
//! products (layer norms, softmax, GELU, attention's own products) stays f32.
//!
//! Rows are multiplied in chunks of at most [`MAX_CHUNK_ROWS`], padded to a multiple of
//! [`TILE_ROWS`]: a oneDNN primitive is made for one row count, so this bounds how many exist
//! (one per padded count and weight shape, each made once, about a millisecond each).

use std::cell::RefCell;
use std::fmt;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::math;
use super::onednn::{OneDnn, Packed};

/// Rows of an AMX tile: chunks are padded to a multiple of it.
const TILE_ROWS: usize = 16;
/// Rows of the largest product one primitive makes.
const MAX_CHUNK_ROWS: usize = 512;
/// The largest side of a packed weight: oneDNN's dimensions are `i64`, and its sizes must not
/// overflow with [`MAX_CHUNK_ROWS`] rows.
const MAX_DIM: usize = 1 << 24;
/// Weight and bias values compared with the live tensors before each product (see
/// [`PackedLinear::matches`]).
const SAMPLES: usize = 64;

/// bf16 products on this machine's matrix units: oneDNN loaded, with a bf16 implementation in
/// hardware.
#[derive(Clone, Copy)]
pub struct MatrixUnits {
    dnn: &'static OneDnn,
}

impl fmt::Debug for MatrixUnits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MatrixUnits(oneDNN {})", self.dnn.version)
    }
}

impl MatrixUnits {
    /// The machine's bf16 matrix units, or why they cannot be used: oneDNN 2.x is not
    /// installed, or this CPU has neither AMX nor AVX512-BF16 (oneDNN would emulate bf16,
    /// slower than the f32 products).
    pub fn bf16() -> Result<Self, String> {
        let dnn = OneDnn::get()?;
        let probe = dnn.matmul([TILE_ROWS, 64, 64])?;
        if !probe.on_bf16_hardware() {
            return Err(format!(
                "this CPU has no bf16 matrix unit (AMX or AVX512-BF16): oneDNN {} would \
                 emulate bf16 ({}), which is slower than f32",
                dnn.version, probe.implementation
            ));
        }
        Ok(Self { dnn })
    }

    /// What multiplies, for messages: `oneDNN 2.6.3, brg:avx512_core_amx_bf16`.
    pub fn describe(&self) -> String {
        let implementation = self
            .dnn
            .matmul([TILE_ROWS, 64, 64])
            .map(|m| m.implementation.clone())
            .unwrap_or_default();
        format!("oneDNN {}, {implementation}", self.dnn.version)
    }

    /// `weight` (`d_in x d_out`, row-major) and `bias` (`d_out`) packed for bf16 products;
    /// an error when the sizes do not match or oneDNN has no bf16 hardware path for the shape.
    pub fn pack(
        &self,
        weight: &[f32],
        bias: &[f32],
        dims: [usize; 2],
    ) -> Result<PackedLinear, String> {
        let [d_in, d_out] = dims;
        let fits = (1..=MAX_DIM).contains(&d_in)
            && (1..=MAX_DIM).contains(&d_out)
            && d_in.checked_mul(d_out) == Some(weight.len())
            && bias.len() == d_out;
        if !fits {
            return Err(format!(
                "{} weights and {} bias values are not a {d_in} x {d_out} linear (each side at \
                 most {MAX_DIM})",
                weight.len(),
                bias.len()
            ));
        }
        let matmul = self.dnn.matmul([TILE_ROWS, d_in, d_out])?;
        if !matmul.on_bf16_hardware() {
            return Err(format!(
                "no bf16 hardware path for a {d_in} x {d_out} product ({})",
                matmul.implementation
            ));
        }
        Ok(PackedLinear {
            dnn: self.dnn,
            dims,
            weight: matmul.pack(weight, dims)?,
            bias: bias.to_vec(),
            samples: sample_positions(weight.len()).map(|i| weight[i]).collect(),
        })
    }
}

/// A linear layer's weight in bf16, packed for the matrix units, and its bias in f32: a
/// snapshot, taken after the last change to the weights. Burn's module operations (`map`,
/// `load_record`, an optimizer step) carry it along unchanged, so each product first checks
/// the live bias and a sample of the live weight against it ([`Self::matches`]) and the caller
/// multiplies in f32 when they differ.
pub struct PackedLinear {
    dnn: &'static OneDnn,
    dims: [usize; 2],
    weight: Packed,
    bias: Vec<f32>,
    /// The weight's values at [`sample_positions`], as packed.
    samples: Vec<f32>,
}

impl fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [d_in, d_out] = self.dims;
        write!(
            f,
            "PackedLinear({d_in} x {d_out}, {} bytes)",
            self.weight.bytes()
        )
    }
}

impl PackedLinear {
    /// `[d_in, d_out]`.
    pub fn dims(&self) -> [usize; 2] {
        self.dims
    }

    /// Whether `weight` and `bias` (row-major `d_in x d_out`, and `d_out`) are what was packed,
    /// as far as the whole bias and [`SAMPLES`] of the weight's values spread over it tell
    /// (bit for bit): a changed layer, whose bias or weights all move, is caught without
    /// reading all of it.
    pub fn matches(&self, weight: &[f32], bias: &[f32]) -> bool {
        let [d_in, d_out] = self.dims;
        let same = |a: &f32, b: &f32| a.to_bits() == b.to_bits();
        weight.len() == d_in * d_out
            && bias.len() == d_out
            && bias.iter().zip(&self.bias).all(|(a, b)| same(a, b))
            && sample_positions(weight.len())
                .zip(&self.samples)
                .all(|(i, b)| same(&weight[i], b))
    }

    /// `x · weight + bias` for `x` of `rows x d_in` values (row-major): `rows x d_out`
    /// values, or an error from oneDNN (the caller then multiplies in f32). Rows are split
    /// across the rayon pool unless the caller keeps its products on one thread
    /// ([`crate::parallel::on_one_thread`]).
    pub fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        let [d_in, d_out] = self.dims;
        if rows.checked_mul(d_in) != Some(x.len()) {
            return Err(format!("{} values are not {rows} rows of {d_in}", x.len()));
        }
        let threads = if crate::parallel::one_thread() {
            1
        } else {
            rayon::current_num_threads()
        };
        let chunk = chunk_rows(rows, threads);
        let padded = padded_rows(rows, chunk);
        let limit = isize::MAX as usize / std::mem::size_of::<f32>();
        if padded
            .checked_mul(d_out.max(d_in))
            .is_none_or(|n| n > limit)
        {
            return Err(format!(
                "{rows} rows of {d_out} values do not fit in memory"
            ));
        }
        let mut out: Vec<f32> = Vec::with_capacity(padded * d_out);
        let spare = &mut out.spare_capacity_mut()[..padded * d_out];
        let parts = x.chunks(chunk * d_in).zip(spare.chunks_mut(chunk * d_out));
        if threads > 1 && rows > chunk {
            parts
                .collect::<Vec<_>>()
                .into_par_iter()
                .try_for_each(|(x, dst)| self.chunk(x, dst))?;
        } else {
            for (x, dst) in parts {
                self.chunk(x, dst)?;
            }
        }
        // SAFETY: the chunks cover the first `padded * d_out` values of the capacity and each
        // `chunk` call returned Ok, so oneDNN wrote every one of them; `rows <= padded`.
        unsafe { out.set_len(rows * d_out) };
        Ok(out)
    }

    /// One chunk: `x`'s rows converted to bf16 (padded with zero rows to `dst`'s row count)
    /// and multiplied into `dst`.
    fn chunk(&self, x: &[f32], dst: &mut [MaybeUninit<f32>]) -> Result<(), String> {
        let [d_in, d_out] = self.dims;
        let rows = dst.len() / d_out;
        let matmul = self.dnn.matmul([rows, d_in, d_out])?;
        thread_local! {
            static SRC: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
        }
        SRC.with_borrow_mut(|src| {
            src.resize(rows * d_in, 0);
            math::to_bf16(x, &mut src[..x.len()]);
            src[x.len()..].fill(0);
            matmul.run(src, &self.weight, &self.bias, dst)
        })
    }
}

/// Evenly spread positions in a weight of `n` values (all of them for a small one).
fn sample_positions(n: usize) -> impl Iterator<Item = usize> {
    let step = n.div_ceil(SAMPLES).max(1);
    (0..n).step_by(step)
}

/// Rows per chunk: at most [`MAX_CHUNK_ROWS`], a multiple of [`TILE_ROWS`], and (for more
/// than a few tiles of rows) at least one chunk per thread.
fn chunk_rows(rows: usize, threads: usize) -> usize {
    let min_parts = if rows >= 4 * TILE_ROWS { threads } else { 1 };
    let parts = rows.div_ceil(MAX_CHUNK_ROWS).max(min_parts).max(1);
    rows.div_ceil(parts)
        .next_multiple_of(TILE_ROWS)
        .clamp(TILE_ROWS, MAX_CHUNK_ROWS)
}

/// Rows written: every chunk full but the last, which is padded to a multiple of
/// [`TILE_ROWS`].
fn padded_rows(rows: usize, chunk: usize) -> usize {
    if rows == 0 {
        return 0;
    }
    let full = (rows - 1) / chunk * chunk;
    full + (rows - full).next_multiple_of(TILE_ROWS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_tile_multiples_bounded_and_cover_the_rows() {
        for threads in [1, 2, 16] {
            for rows in [
                0, 1, 15, 16, 17, 63, 64, 100, 511, 512, 513, 4096, 4097, 100_000,
            ] {
                let chunk = chunk_rows(rows, threads);
                assert!(
                    chunk.is_multiple_of(TILE_ROWS)
                        && (TILE_ROWS..=MAX_CHUNK_ROWS).contains(&chunk)
                );
                let padded = padded_rows(rows, chunk);
                assert!(
                    padded >= rows && padded < rows + TILE_ROWS,
                    "{rows} {chunk} {padded}"
                );
                // The last chunk (what `chunks_mut` leaves) is a whole number of tiles.
                let last = padded - (rows.max(1) - 1) / chunk * chunk;
                assert!(last.is_multiple_of(TILE_ROWS) && last <= chunk);
            }
        }
        assert_eq!(chunk_rows(4096, 2), 512);
        assert_eq!(chunk_rows(128, 2), 64);
        assert_eq!(chunk_rows(32, 2), 32);
    }
}
