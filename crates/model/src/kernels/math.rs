//! Branch-free `exp` and `erf` for `f32` that the compiler vectorises, and the loops that apply
//! them across a buffer on every core.
//!
//! libm's `erff`/`expf` are scalar calls, so a loop over them runs one element at a time: a
//! training profile of MiniLM on Flex put exact GELU's `erff` at 8-9% of the time. These
//! versions are polynomials with selects instead of branches, so each loop below becomes AVX2 or
//! AVX-512 code (chosen at run time) and splits across rayon's threads when large enough.

use rayon::prelude::*;

/// Elements per parallel task: below twice this a loop stays on the calling thread, where
/// the rayon hand-off would cost more than the work.
const CHUNK: usize = 16 * 1024;

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two (Cephes) so that `x - n ln 2` keeps its low bits.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5 * 2^23`: adding and subtracting it rounds to the nearest integer without a call.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `e^x` within 2 ulp for `x` in `[-87.3, 88.3]`; 0 below that range. Above it the result
/// stays `e^88.3` (callers here only pass `x <= 0`).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let clamped = x.clamp(-87.3, 88.3);
    let n = (clamped * LOG2_E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 { 0.0 } else { y * scale }
}

/// `erf(x)`: a rational minimax approximation on `[-4, 4]` (beyond which `erf` is ±1 in `f32`),
/// as Eigen and XLA use; within 5e-7 of the exact value (the worst case, near |x| = 3.7, is
/// a few units in the last place of a value near ±1).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = ((((((-2.726_142_3e-10 * x2 + 2.770_681_4e-8) * x2 - 2.101_024e-6) * x2
        - 5.692_506_4e-5)
        * x2
        - 7.349_906_3e-4)
        * x2
        - 2.954_6e-3)
        * x2
        - 1.609_603_3e-2)
        * x;
    let q = (((-1.456_607_2e-5 * x2 - 2.133_740_6e-4) * x2 - 1.682_827e-3) * x2 - 7.373_329e-3)
        * x2
        - 1.426_474e-2;
    p / q
}

/// Exact (erf) GELU, `x Φ(x)`, as HF's `gelu`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `d gelu / dx = Φ(x) + x φ(x)`.
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    cdf + x * INV_SQRT_2PI * exp(-0.5 * x * x)
}

/// Runs `body` compiled for the widest vector unit this CPU has (AVX-512, AVX2 + FMA, or the
/// baseline), so the polynomials above vectorise without building for one CPU. `body` (and the
/// element function inside it) must be `#[inline(always)]`: code that is not inlined into the
/// `target_feature` functions below is compiled for the baseline.
#[inline(always)]
fn widest<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        /// The CPU must have every feature this is compiled for.
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        unsafe fn avx512<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        /// # Safety
        /// As `avx512`.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        let has_avx2 =
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        if has_avx2
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: every feature `avx512` is compiled for (avx512f, avx512vl, avx2, fma) was
            // detected on this CPU just above.
            return unsafe { avx512(body) };
        }
        if has_avx2 {
            // SAFETY: both features `avx2` is compiled for (avx2, fma) were detected above.
            return unsafe { avx2(body) };
        }
    }
    body()
}

/// `out[i] = f(x[i])`, vectorised and split across threads. Panics unless the lengths agree.
pub fn map(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync + Send + Copy) {
    assert_eq!(x.len(), out.len(), "map: input and output lengths differ");
    let run = |x: &[f32], out: &mut [f32]| {
        widest(
            #[inline(always)]
            || {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = f(v);
                }
            },
        )
    };
    if x.len() < 2 * CHUNK {
        return run(x, out);
    }
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| run(x, o));
}

/// `x` rounded to bf16 (to nearest, ties to even; NaN stays NaN), as bits, into `out`, on
/// the calling thread. Panics unless the lengths agree.
pub fn to_bf16(x: &[f32], out: &mut [u16]) {
    assert_eq!(
        x.len(),
        out.len(),
        "to_bf16: input and output lengths differ"
    );
    widest(
        #[inline(always)]
        || {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = bf16_bits(v);
            }
        },
    )
}

#[inline(always)]
fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    // Rounding a NaN's low mantissa bits could carry into the sign: any NaN becomes the
    // quiet one.
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        0x7fc0
    } else {
        rounded
    }
}

/// `x[i] = f(x[i])` in place.
pub fn map_in_place(x: &mut [f32], f: impl Fn(f32) -> f32 + Sync + Send + Copy) {
    let run = |x: &mut [f32]| {
        widest(
            #[inline(always)]
            || {
                for v in x.iter_mut() {
                    *v = f(*v);
                }
            },
        )
    };
    if x.len() < 2 * CHUNK {
        return run(x);
    }
    x.par_chunks_mut(CHUNK).for_each(run);
}

/// `b[i] = f(a[i], b[i])`. Panics unless the lengths agree.
pub fn zip_map_in_place(
    a: &[f32],
    b: &mut [f32],
    f: impl Fn(f32, f32) -> f32 + Sync + Send + Copy,
) {
    assert_eq!(a.len(), b.len(), "zip_map_in_place: lengths differ");
    let run = |a: &[f32], b: &mut [f32]| {
        widest(
            #[inline(always)]
            || {
                for (b, &a) in b.iter_mut().zip(a) {
                    *b = f(a, *b);
                }
            },
        )
    };
    if a.len() < 2 * CHUNK {
        return run(a, b);
    }
    b.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK))
        .for_each(|(b, a)| run(a, b));
}

/// Calls `f(row_index, row)` on every row of `out` (`row_len` elements each), in parallel
/// across groups of rows when there is enough work.
pub fn for_rows(
    out: &mut [f32],
    row_len: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send + Copy,
) {
    if row_len == 0 {
        return;
    }
    let rows_per_task = (CHUNK / row_len).max(1);
    let run = |first: usize, rows: &mut [f32]| {
        widest(
            #[inline(always)]
            || {
                for (i, row) in rows.chunks_mut(row_len).enumerate() {
                    f(first + i, row);
                }
            },
        )
    };
    if out.len() < 2 * CHUNK {
        return run(0, out);
    }
    out.par_chunks_mut(rows_per_task * row_len)
        .enumerate()
        .for_each(|(task, rows)| run(task * rows_per_task, rows));
}

/// `x ⊙ mask` in place, where each mask element is `1 / keep` with probability `keep`, else 0:
/// dropout's mask drawn as it is applied (wyrand, two elements per 64-bit draw). Each run of
/// [`CHUNK`] elements has its own stream seeded from `seed` and its position, so the mask
/// depends only on `seed` and the length, not on the threads, and the backward pass recreates
/// it from the seed instead of keeping it.
pub fn dropout_in_place(x: &mut [f32], keep: f64, seed: u64) {
    let threshold = (keep * 4_294_967_296.0) as u64;
    let scale = (1.0 / keep) as f32;
    let run = |stream: usize, x: &mut [f32]| {
        let mut state = seed ^ (stream as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let factor = |bits: u64| if bits < threshold { scale } else { 0.0 };
        for pair in x.chunks_mut(2) {
            let r = wyrand(&mut state);
            pair[0] *= factor(r & 0xFFFF_FFFF);
            if let Some(second) = pair.get_mut(1) {
                *second *= factor(r >> 32);
            }
        }
    };
    if x.len() < 2 * CHUNK {
        x.chunks_mut(CHUNK).enumerate().for_each(|(i, x)| run(i, x));
    } else {
        x.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, x)| run(i, x));
    }
}

/// wyrand: a 64-bit generator with good statistical quality at about a nanosecond a draw.
fn wyrand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0xa076_1d64_78bd_642f);
    let t = u128::from(*state) * u128::from(*state ^ 0xe703_7ed1_a0b4_28db);
    ((t >> 64) ^ t) as u64
}

/// `Σ_r f(r)` for `r` in `0..rows`, where `f(r, acc)` adds row `r`'s contribution into `acc`
/// (`len` values): column sums of something computed per row, split across threads by groups
/// of rows, each with its own accumulator.
pub fn sum_over_rows(
    rows: usize,
    len: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send + Copy,
) -> Vec<f32> {
    let run = |rows: std::ops::Range<usize>| {
        let mut acc = vec![0.0; len];
        widest(
            #[inline(always)]
            || {
                for r in rows {
                    f(r, &mut acc);
                }
            },
        );
        acc
    };
    let rows_per_task = (CHUNK / len.max(1)).max(1);
    if rows * len < 2 * CHUNK {
        return run(0..rows);
    }
    (0..rows.div_ceil(rows_per_task))
        .into_par_iter()
        .map(|task| run(task * rows_per_task..((task + 1) * rows_per_task).min(rows)))
        .reduce(
            || vec![0.0; len],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        )
}

/// `Σ x[i] · y[i]` with sixteen partial sums, so that the loop vectorises (a single running sum
/// must be added in order).
#[inline(always)]
pub fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (xc, yc) = (x.chunks_exact(16), y.chunks_exact(16));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for i in 0..16 {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest of `x` (`-inf` when empty), with sixteen running maxima so that it vectorises.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..16 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// `Σ x[i]`, vectorised as [`dot`].
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for a in chunks {
        for i in 0..16 {
            acc[i] += a[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> impl Iterator<Item = f32> {
        (-200_000..=200_000).map(|i| i as f32 * 1e-4)
    }

    #[test]
    fn bf16_rounds_to_nearest_even_as_the_half_crate_does() {
        let values: Vec<f32> = grid()
            .chain([0.0, -0.0, f32::MAX, f32::MIN, f32::MIN_POSITIVE, 1e-40])
            .chain([f32::INFINITY, f32::NEG_INFINITY])
            .chain([1.0 + f32::EPSILON * 64.0, 1.0 + f32::EPSILON * 192.0])
            .collect();
        let mut bits = vec![0; values.len()];
        to_bf16(&values, &mut bits);
        for (v, b) in values.iter().zip(&bits) {
            assert_eq!(*b, half::bf16::from_f32(*v).to_bits(), "{v:e}");
        }
        let nans = [
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7fff_ffff),
            f32::from_bits(0xff80_0001),
        ];
        let mut bits = [0; 4];
        to_bf16(&nans, &mut bits);
        assert!(
            bits.iter().all(|b| half::bf16::from_bits(*b).is_nan()),
            "{bits:x?}"
        );
    }

    #[test]
    fn erf_is_within_float_precision_of_libm() {
        let worst = grid()
            .chain([-1e30, -9.0, 9.0, 1e30])
            .map(|x| (erf(x) as f64 - libm::erf(x as f64)).abs())
            .fold(0.0, f64::max);
        assert!(worst < 5e-7, "max |erf - libm::erf| = {worst:e}");
    }

    #[test]
    fn exp_is_within_float_precision_of_libm() {
        let worst = (-870_000..=883_000)
            .map(|i| i as f32 * 1e-4)
            .map(|x| {
                let exact = libm::exp(x as f64);
                ((exp(x) as f64 - exact) / exact).abs()
            })
            .fold(0.0, f64::max);
        assert!(worst < 3e-7, "max relative error {worst:e}");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn gelu_and_its_gradient_match_the_exact_formulas() {
        for x in grid().step_by(7) {
            let xd = x as f64;
            let cdf = 0.5 * (1.0 + libm::erf(xd / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!(
                (gelu(x) as f64 - xd * cdf).abs() < 1e-6 * (1.0 + xd.abs()),
                "gelu({x})"
            );
            assert!(
                (gelu_grad(x) as f64 - (cdf + xd * pdf)).abs() < 1e-6,
                "gelu'({x})"
            );
        }
    }

    #[test]
    fn parallel_loops_cover_every_element_once() {
        let n = 5 * CHUNK + 123;
        let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut out = vec![0.0; n];
        map(&x, &mut out, |v| v + 1.0);
        assert!(out.iter().enumerate().all(|(i, &v)| v == i as f32 + 1.0));
        let mut y = x.clone();
        map_in_place(&mut y, |v| v * 2.0);
        assert!(y.iter().enumerate().all(|(i, &v)| v == 2.0 * i as f32));
        let mut diff = y.clone();
        zip_map_in_place(&x, &mut diff, |a, b| b - a);
        assert_eq!(diff, x);
        let row = 37;
        let mut rows = vec![0.0; row * 3001];
        for_rows(&mut rows, row, |r, values| values.fill(r as f32));
        assert!(
            rows.chunks(row)
                .enumerate()
                .all(|(r, v)| v.iter().all(|&x| x == r as f32))
        );
    }
}
