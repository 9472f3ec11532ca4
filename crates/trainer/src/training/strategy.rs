//! How several devices share training: burn-train's multi-device strategy, on any backend, or
//! its distributed data parallel, whose gradient all-reduce only the CUDA backend has (NCCL).
//! Burn 0.22 has no collective across machines: both run on the devices of one machine.

use anyhow::{Result, bail};
use burn::prelude::*;
use burn::tensor::distributed::{DistributedConfig, ReduceOperation};
use burn::train::{ExecutionStrategy, MultiDeviceOptim};

use crate::config::Strategy;
use crate::device::{DeviceSpec, NamedDevice};

/// Refuses a strategy the devices cannot run, before the model is loaded: Burn panics in a
/// worker thread when an all-reduce has no transport.
pub fn check(strategy: Strategy, devices: &[NamedDevice]) -> Result<()> {
    if strategy != Strategy::Ddp {
        return Ok(());
    }
    if let Some(other) = devices
        .iter()
        .find(|d| !matches!(d.spec, DeviceSpec::Cuda(_)))
    {
        bail!(
            "train.strategy = \"ddp\" all-reduces gradients with NCCL, which only the cuda \
             backend has, and {other} is not a CUDA device: use train.strategy = \
             \"multi-device\" (the default), which trains on several devices of any backend"
        );
    }
    nccl()
}

#[cfg(feature = "cuda")]
fn nccl() -> Result<()> {
    crate::cuda_driver::find_nccl().map_err(|e| anyhow::anyhow!("train.strategy = \"ddp\": {e}"))
}

/// Without the `cuda` feature no CUDA device can be named, so [`check`] never gets here.
#[cfg(not(feature = "cuda"))]
fn nccl() -> Result<()> {
    bail!("train.strategy = \"ddp\" needs a build with --features cuda")
}

/// burn-train's execution strategy for `devices`; `None` is its single-device loop.
pub fn execution(strategy: Strategy, devices: &[NamedDevice]) -> Option<ExecutionStrategy> {
    let all: Vec<Device> = devices.iter().map(|d| d.device.clone()).collect();
    match strategy {
        // Summed, as the multi-device strategy sums its devices' gradients: the same recipe
        // takes the same steps under either.
        Strategy::Ddp => Some(ExecutionStrategy::ddp(
            all,
            DistributedConfig {
                all_reduce_op: ReduceOperation::Sum,
            },
        )),
        Strategy::MultiDevice if all.len() > 1 => Some(ExecutionStrategy::multi(
            all,
            MultiDeviceOptim::OptimMainDevice,
        )),
        Strategy::MultiDevice => None,
    }
}

/// How many of `items` training examples to use: all, except under DDP, where every rank must
/// take the same number of batches (ranks step together, and one with an extra batch would
/// wait for the others forever), so the split is cut to a multiple of the device count.
pub fn usable_items(strategy: Strategy, items: usize, devices: usize) -> usize {
    match strategy {
        Strategy::Ddp if devices > 1 => items - items % devices,
        _ => items,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddp_is_refused_off_cuda_and_shares_are_equal() {
        let flex = NamedDevice::new(DeviceSpec::Flex).unwrap();
        let e = check(Strategy::Ddp, std::slice::from_ref(&flex))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train.strategy = \"ddp\"") && e.contains("flex"),
            "{e}"
        );
        assert!(e.contains("multi-device"), "{e}");
        check(Strategy::MultiDevice, std::slice::from_ref(&flex)).unwrap();
        assert!(execution(Strategy::MultiDevice, std::slice::from_ref(&flex)).is_none());
        assert!(execution(Strategy::MultiDevice, &[flex.clone(), flex]).is_some());

        assert_eq!(usable_items(Strategy::Ddp, 101, 2), 100);
        assert_eq!(usable_items(Strategy::Ddp, 101, 1), 101);
        assert_eq!(usable_items(Strategy::Ddp, 1, 2), 0);
        assert_eq!(usable_items(Strategy::MultiDevice, 101, 2), 101);
    }
}
