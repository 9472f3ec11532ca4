//! Batches split by rows across the host's cores.
//!
//! Inference rows are independent, so on the CPU a batch runs fastest as one part per core,
//! each part's whole forward pass on its own thread: the matrix products stay on that thread
//! (no fork and join around each product) and the work between them (layer norms, softmax,
//! copies), which one product-level split leaves mostly serial, runs on every core too. On a
//! GPU the batch stays whole: the device is the parallel part.

use std::cell::Cell;

use burn::prelude::*;
use rayon::prelude::*;

use crate::kernels::is_host;

/// A part gets at least this many rows: fewer leave each thread's products too small to run
/// near the core's peak, and one text is faster as a single part.
pub const MIN_PART_ROWS: usize = 8;

thread_local! {
    static ONE_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the matrix products it makes on this thread kept on this thread.
pub fn on_one_thread<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ONE_THREAD.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(ONE_THREAD.with(|c| c.replace(true)));
    f()
}

/// Whether [`on_one_thread`] is in effect on this thread.
pub fn one_thread() -> bool {
    ONE_THREAD.with(Cell::get)
}

/// How many parts a batch of `rows` rows runs as on `device`: one per thread of the host's
/// pool while each gets [`MIN_PART_ROWS`], else (and on every other device) one.
pub fn parts(device: &Device, rows: usize) -> usize {
    if !is_host(device) {
        return 1;
    }
    rayon::current_num_threads()
        .min(rows / MIN_PART_ROWS)
        .max(1)
}

/// `f` over the [`parts`] of `items` (contiguous, in order), each on its own thread with its
/// products kept there; the results in the items' order.
pub fn map_parts<T: Sync, R: Send>(
    device: &Device,
    items: &[T],
    f: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    let parts = parts(device, items.len());
    if parts <= 1 {
        return vec![f(items)];
    }
    let size = items.len().div_ceil(parts);
    items
        .par_chunks(size)
        .map(|part| on_one_thread(|| f(part)))
        .collect()
}

/// [`map_parts`] for a fallible `f`: the results in the items' order, or the first part's error.
pub fn try_map_parts<T: Sync, R: Send, E: Send>(
    device: &Device,
    items: &[T],
    f: impl Fn(&[T]) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    map_parts(device, items, f).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_keep_order_and_run_on_one_thread_each() {
        let device = Device::default();
        let items: Vec<usize> = (0..37).collect();
        let out = map_parts(&device, &items, |part| (part.to_vec(), one_thread()));
        let joined: Vec<usize> = out.iter().flat_map(|(p, _)| p.clone()).collect();
        assert_eq!(joined, items);
        let expected = rayon::current_num_threads().clamp(1, 37 / MIN_PART_ROWS);
        assert_eq!(out.len(), expected);
        assert!(out.iter().all(|(_, one)| *one == (expected > 1)));
        assert!(!one_thread(), "the flag is restored");
        let failing = |part: &[usize]| {
            if part.contains(&30) {
                Err(30)
            } else {
                Ok(part.len())
            }
        };
        assert_eq!(try_map_parts(&device, &items, failing), Err(30));
    }

    #[test]
    fn small_batches_stay_whole() {
        let device = Device::default();
        assert_eq!(parts(&device, 1), 1);
        assert_eq!(parts(&device, MIN_PART_ROWS * 2 - 1), 1);
        assert_eq!(map_parts(&device, &[1, 2, 3], <[i32]>::len), vec![3]);
    }
}
