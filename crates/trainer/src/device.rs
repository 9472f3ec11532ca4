//! The compute device, from the backend features this binary was built with.

use burn::prelude::*;

/// The first enabled backend, GPUs first (`cuda` when built with it), else the CPU backend;
/// `BURN_DEVICE` (e.g. `flex`, `cuda`) overrides.
pub fn device() -> Device {
    Device::default()
}

/// Human-readable name of the device, for logs and benchmark records.
pub fn describe(device: &Device) -> String {
    format!("{device:?}")
}
