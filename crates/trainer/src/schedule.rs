//! The learning-rate schedule of the reference: linear warmup from 0, then linear decay to 0
//! (transformers' `get_linear_schedule_with_warmup`).
//!
//! The Learner asks the scheduler for a rate before each optimizer step, so step `s` (0-based)
//! trains at `lr * f(s)` exactly as in transformers, where the first step runs at rate 0 when
//! there is warmup.

use burn::optim::LearningRate;
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearWarmup {
    pub lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// Steps taken so far.
    pub step: usize,
}

impl LinearWarmup {
    /// `warmup_ratio` of `total_steps`, rounded up as transformers' Trainer does.
    pub fn new(lr: f64, warmup_ratio: f64, total_steps: usize) -> Self {
        Self {
            lr,
            warmup_steps: (warmup_ratio * total_steps as f64).ceil() as usize,
            total_steps,
            step: 0,
        }
    }

    /// The rate at 0-based step `s`.
    pub fn at(&self, s: usize) -> f64 {
        let factor = if s < self.warmup_steps {
            s as f64 / self.warmup_steps.max(1) as f64
        } else {
            let left = self.total_steps.saturating_sub(s) as f64;
            (left / self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64).max(0.0)
        };
        self.lr * factor
    }
}

impl LrScheduler for LinearWarmup {
    fn step(&mut self) -> LearningRate {
        let lr = self.at(self.step);
        self.step += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step as u64)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(step) = record.scalar::<u64>("step") {
            self.step = step as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_transformers_linear_schedule() {
        // transformers: lambda(s) = s/w for s < w, else (T - s)/(T - w).
        let mut s = LinearWarmup::new(1.0, 0.06, 100);
        assert_eq!(s.warmup_steps, 6);
        let lrs: Vec<f64> = (0..100).map(|_| s.step()).collect();
        assert_eq!(lrs[0], 0.0);
        assert!((lrs[3] - 0.5).abs() < 1e-12);
        assert_eq!(lrs[6], 1.0);
        assert!((lrs[53] - 47.0 / 94.0).abs() < 1e-12);
        assert!((lrs[99] - 1.0 / 94.0).abs() < 1e-12);

        // The step count survives a checkpoint.
        let mut resumed = LinearWarmup::new(1.0, 0.06, 100);
        resumed.load_record(s.to_record());
        assert_eq!(resumed.step, 100);
    }
}
