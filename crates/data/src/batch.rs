//! Tokenised examples, the padding batcher and the epoch loader.
//!
//! Batches are padded to their longest item (dynamic padding), not to `max_length`: headlines
//! are short, and a batch of 12-token titles padded to 32 would spend most of its compute on
//! padding. On a GPU the length is rounded up to a multiple of
//! [`bert_model::tokenizer::length_step`] (within `max_length`), since each new shape there
//! costs a kernel compilation and autotuning; padding is masked, so results do not change.
//!
//! The loader shuffles the training set with a permutation derived from `(seed, epoch)`, not
//! from a generator that advances through the run. Epoch `k` therefore sees the same batches
//! whether the run went straight through or was interrupted and resumed at `k`.
//!
//! With length grouping (HF's `group_by_length`), each window of [`GROUP_WINDOW`] shuffled
//! batches is sorted by token length before it is cut into batches, and the batches are then
//! shuffled: batches hold texts of similar length, so little of their compute goes to padding,
//! while every batch is still a random draw of the epoch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bert_model::classifier::ClassificationBatch;
use bert_model::tokenizer::{Encoded, bucketed_len, length_step, pad_batch_to};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::prelude::*;

use crate::split::permutation;

/// One tokenised, labelled text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub encoded: Encoded,
    pub label: usize,
}

/// Pads a list of examples to the longest one (rounded up on GPUs) and stacks the labels.
#[derive(Debug, Clone, Copy)]
pub struct ClassificationBatcher {
    pub pad_id: u32,
    /// The tokenizer's max length: rounding never pads past it.
    pub max_length: usize,
}

impl ClassificationBatcher {
    /// The padded length of a batch whose longest item has `longest` tokens, on `device`.
    pub fn padded_len(&self, longest: usize, device: &Device) -> usize {
        bucketed_len(longest, length_step(device), self.max_length)
    }
}

impl Batcher<Example, ClassificationBatch> for ClassificationBatcher {
    fn batch(&self, items: Vec<Example>, device: &Device) -> ClassificationBatch {
        let encoded: Vec<Encoded> = items.iter().map(|e| e.encoded.clone()).collect();
        let labels: Vec<i64> = items.iter().map(|e| e.label as i64).collect();
        let longest = encoded.iter().map(Encoded::len).max().unwrap_or(0);
        let len = self.padded_len(longest, device);
        ClassificationBatch {
            input: pad_batch_to(&encoded, self.pad_id, len, device),
            labels: Tensor::from_data(TensorData::new(labels, [items.len()]), device),
        }
    }
}

/// Batches per window sorted by length in [`EpochLoader::grouped_by_length`] (HF's megabatch
/// of 50 batches).
pub const GROUP_WINDOW: usize = 50;

/// A [`DataLoader`] over tokenised examples with per-epoch seeded shuffling.
pub struct EpochLoader {
    items: Arc<Vec<Example>>,
    batcher: ClassificationBatcher,
    batch_size: usize,
    shuffle_seed: Option<u64>,
    group_by_length: bool,
    reseed: Option<u64>,
    /// Epochs started so far; the next `iter()` is epoch `epochs + 1`.
    epochs: Arc<AtomicUsize>,
    device: Device,
}

impl EpochLoader {
    pub fn new(
        items: Vec<Example>,
        batcher: ClassificationBatcher,
        batch_size: usize,
        device: &Device,
    ) -> Self {
        assert!(batch_size > 0, "batch size must be positive");
        Self {
            items: Arc::new(items),
            batcher,
            batch_size,
            shuffle_seed: None,
            group_by_length: false,
            reseed: None,
            epochs: Arc::new(AtomicUsize::new(0)),
            device: device.clone(),
        }
    }

    /// Shuffle every epoch with a permutation seeded by `(seed, epoch)`.
    pub fn shuffled(mut self, seed: u64) -> Self {
        self.shuffle_seed = Some(seed);
        self
    }

    /// Batches of texts of similar length (see the module docs); with [`EpochLoader::shuffled`]
    /// the windows and the batch order are seeded by `(seed, epoch)` too.
    pub fn grouped_by_length(mut self, on: bool) -> Self {
        self.group_by_length = on;
        self
    }

    /// Reseed the device's random generator with `(seed, epoch)` as each epoch starts, so the
    /// dropout masks of epoch `k` are the same whether or not the run was resumed in between.
    /// (burn-train has no epoch-start hook; the loader is the one component that sees every
    /// epoch begin.)
    pub fn reseeding_device(mut self, seed: u64) -> Self {
        self.reseed = Some(seed);
        self
    }

    /// Continue a run: the next epoch served is `completed + 1`.
    pub fn starting_after_epoch(self, completed: usize) -> Self {
        self.epochs.store(completed, Ordering::SeqCst);
        self
    }

    /// The item order of 1-based `epoch`, before any length grouping.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        match self.shuffle_seed {
            Some(seed) => permutation(self.items.len(), epoch_seed(seed, epoch)),
            None => (0..self.items.len()).collect(),
        }
    }

    /// The batches (item indices) of 1-based `epoch`.
    pub fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let order = self.order(epoch);
        if !self.group_by_length {
            return order
                .chunks(self.batch_size)
                .map(<[usize]>::to_vec)
                .collect();
        }
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for window in order.chunks(self.batch_size * GROUP_WINDOW) {
            batches.extend(self.length_batches(window));
        }
        if let Some(seed) = self.shuffle_seed {
            let shuffled = permutation(batches.len(), epoch_seed(seed ^ 0x6C65_6E67, epoch));
            let mut slots: Vec<Option<Vec<usize>>> = batches.into_iter().map(Some).collect();
            batches = shuffled.iter().filter_map(|&i| slots[i].take()).collect();
        }
        batches
    }

    /// One window's batches of similar length. Each class is sorted by length on its own
    /// and batch `j` takes the `j`-th length slice of every class: batches keep the window's
    /// class mix (a batch of one class would pull the head one way per step, as headline
    /// length and clickbait go together) while their lengths stay close.
    fn length_batches(&self, window: &[usize]) -> Vec<Vec<usize>> {
        let n = window.len().div_ceil(self.batch_size);
        let mut by_class: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for &i in window {
            by_class.entry(self.items[i].label).or_default().push(i);
        }
        let mut batches = vec![Vec::with_capacity(self.batch_size); n];
        for members in by_class.values_mut() {
            // Stable: equal lengths keep their shuffled order.
            members.sort_by_key(|&i| self.items[i].encoded.len());
            let m = members.len();
            for (j, batch) in batches.iter_mut().enumerate() {
                batch.extend_from_slice(&members[j * m / n..(j + 1) * m / n]);
            }
        }
        for batch in &mut batches {
            batch.sort_by_key(|&i| self.items[i].encoded.len());
        }
        batches.retain(|b| !b.is_empty());
        batches
    }

    fn with_items(&self, items: Arc<Vec<Example>>, device: &Device) -> Self {
        Self {
            items,
            batcher: self.batcher,
            batch_size: self.batch_size,
            shuffle_seed: self.shuffle_seed,
            group_by_length: self.group_by_length,
            reseed: self.reseed,
            // Its own count from here: the parts of a loader split across devices each draw
            // epoch `n` as the whole loader would have.
            epochs: Arc::new(AtomicUsize::new(self.epochs.load(Ordering::SeqCst))),
            device: device.clone(),
        }
    }
}

/// The seed of epoch `epoch`'s draws from a run's seed.
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

struct EpochIter<'a> {
    loader: &'a EpochLoader,
    batches: std::vec::IntoIter<Vec<usize>>,
    /// Items served so far.
    position: usize,
}

impl Iterator for EpochIter<'_> {
    type Item = Result<ClassificationBatch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.batches.next()?;
        let items = batch
            .iter()
            .map(|&i| self.loader.items[i].clone())
            .collect();
        self.position += batch.len();
        Some(Ok(self.loader.batcher.batch(items, &self.loader.device)))
    }
}

impl DataLoaderIterator<ClassificationBatch> for EpochIter<'_> {
    fn progress(&self) -> Progress {
        Progress::new(self.position, self.loader.items.len(), Some("items".into()))
    }
}

impl DataLoader<ClassificationBatch> for EpochLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<ClassificationBatch> + 'a> {
        let epoch = self.epochs.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(seed) = self.reseed {
            self.device
                .seed(seed ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        }
        Box::new(EpochIter {
            loader: self,
            batches: self.batches(epoch).into_iter(),
            position: 0,
        })
    }

    fn num_items(&self) -> usize {
        self.items.len()
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<ClassificationBatch>> {
        Arc::new(self.with_items(self.items.clone(), device))
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<ClassificationBatch>> {
        let items = self.items[start..end.min(self.items.len())].to_vec();
        Arc::new(self.with_items(Arc::new(items), &self.device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(len: usize, label: usize) -> Example {
        tagged(100, len, label)
    }

    /// An example whose first token id is `first`, so batches can be traced back to items.
    fn tagged(first: u32, len: usize, label: usize) -> Example {
        Example {
            encoded: Encoded {
                input_ids: (0..len as u32).map(|i| i + first).collect(),
                token_type_ids: vec![0; len],
            },
            label,
        }
    }

    #[test]
    fn batches_pad_to_the_longest_item() {
        let device = Device::default();
        // A max length equal to the longest item: no rounding up, on any device.
        let b = ClassificationBatcher {
            pad_id: 0,
            max_length: 5,
        }
        .batch(vec![example(3, 1), example(5, 0), example(2, 1)], &device);
        assert_eq!(b.input.input_ids.dims(), [3, 5]);
        assert_eq!(b.input.attention_mask.dims(), [3, 5]);
        let mask: Vec<f32> = b.input.attention_mask.into_data().try_to_vec().unwrap();
        assert_eq!(
            mask,
            [
                1., 1., 1., 0., 0., //
                1., 1., 1., 1., 1., //
                1., 1., 0., 0., 0.
            ]
        );
        let ids: Vec<i64> = b.input.input_ids.into_data().iter::<i64>().collect();
        assert_eq!(&ids[..5], [100, 101, 102, 0, 0]);
        let labels: Vec<i64> = b.labels.into_data().iter::<i64>().collect();
        assert_eq!(labels, [1, 0, 1]);
    }

    #[test]
    fn epoch_orders_are_seeded_and_resumable() {
        let device = Device::default();
        let items: Vec<Example> = (0..10)
            .map(|i| tagged(i as u32, 1 + i % 4, i % 2))
            .collect();
        let loader = EpochLoader::new(
            items.clone(),
            ClassificationBatcher {
                pad_id: 0,
                max_length: 512,
            },
            4,
            &device,
        )
        .shuffled(5);
        let sizes: Vec<usize> = loader.iter().map(|b| b.unwrap().labels.dims()[0]).collect();
        assert_eq!(sizes, [4, 4, 2]);
        let (e1, e2) = (loader.order(1), loader.order(2));
        assert_ne!(e1, e2);
        // A resumed loader serves epoch 2 first, in epoch 2's order.
        let resumed = EpochLoader::new(
            items,
            ClassificationBatcher {
                pad_id: 0,
                max_length: 512,
            },
            4,
            &device,
        )
        .shuffled(5)
        .starting_after_epoch(1);
        let mut it = resumed.iter();
        let first = it.next().unwrap().unwrap();
        let first_ids: Vec<i64> = first
            .input
            .input_ids
            .narrow(1, 0, 1)
            .into_data()
            .iter::<i64>()
            .collect();
        let expect: Vec<i64> = e2[..4].iter().map(|&i| i as i64).collect();
        assert_eq!(first_ids, expect);
        assert_eq!(it.progress().items_processed, 4);
    }

    #[test]
    fn length_grouped_batches_hold_similar_lengths_and_are_seeded() {
        let device = Device::default();
        // 1000 items of lengths 1..=40 in a scrambled order.
        let items: Vec<Example> = (0..1000)
            .map(|i| tagged(i as u32, 1 + (i * 7919) % 40, i % 2))
            .collect();
        let loader = |seed| {
            EpochLoader::new(
                items.clone(),
                ClassificationBatcher {
                    pad_id: 0,
                    max_length: 512,
                },
                8,
                &device,
            )
            .shuffled(seed)
            .grouped_by_length(true)
        };
        let a = loader(3);
        let batches = a.batches(1);
        // Every item once; as many batches as without grouping, each of about 8 (the classes
        // are split in proportion), with the window's class mix.
        let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(batches.len(), 125);
        assert!(
            batches.iter().all(|b| (7..=9).contains(&b.len())),
            "{batches:?}"
        );
        for b in &batches {
            let ones = b.iter().filter(|&&i| items[i].label == 1).count();
            assert!((3..=5).contains(&ones), "a batch of one class: {b:?}");
        }
        // Padding: within a batch, lengths differ by little (the whole set spans 1..40).
        let len = |i: usize| items[i].encoded.len();
        let spread: usize = batches
            .iter()
            .map(|b| {
                b.iter().map(|&i| len(i)).max().unwrap() - b.iter().map(|&i| len(i)).min().unwrap()
            })
            .sum();
        assert!(
            spread < batches.len() * 4,
            "mean spread {}",
            spread as f64 / batches.len() as f64
        );
        // The batch order is shuffled (not sorted by length) and seeded by (seed, epoch).
        let first_lengths: Vec<usize> = batches.iter().take(10).map(|b| len(b[0])).collect();
        assert!(
            first_lengths.windows(2).any(|w| w[0] > w[1]),
            "{first_lengths:?}"
        );
        assert_eq!(loader(3).batches(1), batches);
        assert_ne!(a.batches(2), batches);
        assert_ne!(loader(4).batches(1), batches);
        // Served in that order, and the same after a resume.
        let resumed = loader(3).starting_after_epoch(1);
        let first = resumed.iter().next().unwrap().unwrap();
        let ids: Vec<i64> = first
            .input
            .input_ids
            .narrow(1, 0, 1)
            .into_data()
            .iter::<i64>()
            .collect();
        let want: Vec<i64> = a.batches(2)[0].iter().map(|&i| i as i64).collect();
        assert_eq!(ids, want);
    }
}
