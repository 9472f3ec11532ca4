//! The compute device: a checked choice among the backends this binary was built with.
//!
//! `--device` (any command), `BURN_DEVICE`, or a recipe's `train.device` (for `train`, when
//! neither of the others is set) names one: `flex`, `cpu`, `ndarray`, `cuda[:N]`, `wgpu`,
//! `vulkan` or `metal` (each of the last three `[:N]` for the N-th discrete GPU, or `:cpu` for a
//! software adapter such as Mesa's llvmpipe). Without any, the first compiled backend in the
//! order GPU, then CPU is used. A name that is unknown, or whose backend was not compiled in, is
//! an error listing what this build has (Burn's own `Device::default()` panics on those).
//!
//! `main` decides it once ([`DeviceChoice::resolve`]) and hands it to the command, which passes
//! the device down to what it calls: which device a function computes on is in its arguments.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use bert_model::kernels::{self, MatrixUnits};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Which adapter of a wgpu graphics API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    /// wgpu's choice (a high-power GPU first; `CUBECL_WGPU_DEFAULT_DEVICE` overrides it).
    Default,
    /// The N-th discrete GPU.
    Discrete(usize),
    /// A CPU (software) adapter, such as Mesa's llvmpipe.
    Cpu,
}

impl Adapter {
    #[allow(dead_code)] // Unused in builds without a wgpu backend.
    fn kind(self) -> burn::tensor::DeviceKind {
        use burn::tensor::DeviceKind;
        match self {
            Self::Default => DeviceKind::DefaultDevice,
            Self::Discrete(i) => DeviceKind::DiscreteGpu(i),
            Self::Cpu => DeviceKind::Cpu,
        }
    }
}

/// One device of a compiled backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// Burn's pure-Rust CPU backend (the default build).
    Flex,
    /// CubeCL's CPU runtime.
    Cpu,
    /// The (deprecated) ndarray CPU backend.
    NdArray,
    /// An NVIDIA GPU by index.
    Cuda(usize),
    /// A GPU through wgpu, on whichever graphics API the machine offers.
    Wgpu(Adapter),
    /// A GPU through wgpu on Vulkan, SPIR-V shaders.
    Vulkan(Adapter),
    /// A GPU through wgpu on Metal, MSL shaders.
    Metal(Adapter),
}

impl DeviceSpec {
    /// Backend names this binary was built with, in default-preference order.
    pub fn compiled() -> Vec<&'static str> {
        let mut names = Vec::new();
        if cfg!(feature = "cuda") {
            names.push("cuda");
        }
        if cfg!(feature = "metal") {
            names.push("metal");
        }
        if cfg!(feature = "vulkan") {
            names.push("vulkan");
        }
        if cfg!(feature = "wgpu") {
            names.push("wgpu");
        }
        if cfg!(feature = "cpu") {
            names.push("cpu");
        }
        if cfg!(feature = "flex") {
            names.push("flex");
        }
        if cfg!(feature = "ndarray") {
            names.push("ndarray");
        }
        names
    }

    fn backend(&self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Cpu => "cpu",
            Self::NdArray => "ndarray",
            Self::Cuda(_) => "cuda",
            Self::Wgpu(_) => "wgpu",
            Self::Vulkan(_) => "vulkan",
            Self::Metal(_) => "metal",
        }
    }

    /// wgpu looks for its adapter when a device is first used, and CubeCL panics in its device
    /// thread when there is none (no Vulkan, Metal or DX12 driver). Asking wgpu first turns that
    /// into an error that names the device.
    fn check_adapter(&self, device: &Device) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Self::Cuda(i) = *self {
            match crate::cuda_driver::device_count() {
                Ok(n) if i < n => {}
                Ok(n) => bail!("device `{self}`: the CUDA driver sees {n} GPU(s)"),
                Err(why) => bail!("device `{self}`: {why}"),
            }
            crate::cuda_driver::find_libdevice()
                .map_err(|why| anyhow::anyhow!("device `{self}`: {why}"))?;
        }
        #[cfg(any(feature = "wgpu", feature = "vulkan", feature = "metal"))]
        {
            use burn::tensor::DeviceType;
            let (api, adapter) = match *self {
                #[cfg(feature = "wgpu")]
                Self::Wgpu(a) => (DeviceType::Wgpu, a),
                #[cfg(feature = "vulkan")]
                Self::Vulkan(a) => (DeviceType::Vulkan, a),
                #[cfg(feature = "metal")]
                Self::Metal(a) => (DeviceType::Metal, a),
                #[allow(unreachable_patterns)]
                _ => return Ok(()),
            };
            let found = Device::enumerate(api);
            let ok = match adapter {
                Adapter::Default => !found.is_empty(),
                Adapter::Discrete(_) | Adapter::Cpu => found.contains(device),
            };
            if !ok {
                bail!(
                    "device `{self}`: wgpu found {} (install the GPU's Vulkan driver, or Mesa's \
                     `mesa-vulkan-drivers` for a software adapter, named `{}:cpu`)",
                    match found.len() {
                        0 => "no adapter".to_string(),
                        n => format!("no such adapter among its {n}"),
                    },
                    self.backend()
                );
            }
        }
        let _ = device;
        Ok(())
    }

    /// The Burn device; `Err` when its backend is not compiled into this binary.
    pub fn device(&self) -> Result<Device> {
        let device = match self {
            #[cfg(feature = "flex")]
            Self::Flex => Some(Device::flex()),
            #[cfg(feature = "cpu")]
            Self::Cpu => Some(Device::cpu()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Self::NdArray => Some(Device::ndarray()),
            #[cfg(feature = "cuda")]
            Self::Cuda(i) => Some(Device::cuda(*i)),
            #[cfg(feature = "wgpu")]
            Self::Wgpu(a) => Some(Device::wgpu(a.kind())),
            #[cfg(feature = "vulkan")]
            Self::Vulkan(a) => Some(Device::vulkan(a.kind())),
            #[cfg(feature = "metal")]
            Self::Metal(a) => Some(Device::metal(a.kind())),
            #[allow(unreachable_patterns)]
            _ => None,
        };
        match device {
            Some(d) => {
                self.check_adapter(&d)?;
                Ok(d)
            }
            None => bail!(
                "device `{self}` is not compiled into this binary (it has: {}); rebuild with \
                 `--features {}`",
                Self::compiled().join(", "),
                self.backend()
            ),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::Wgpu(a) | Self::Vulkan(a) | Self::Metal(a) => match a {
                Adapter::Default => f.write_str(self.backend()),
                Adapter::Discrete(i) => write!(f, "{}:{i}", self.backend()),
                Adapter::Cpu => write!(f, "{}:cpu", self.backend()),
            },
            other => f.write_str(other.backend()),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, adapter) = match lower.split_once(':') {
            Some((n, "cpu")) if matches!(n, "wgpu" | "vulkan" | "metal") => (n, Some(Adapter::Cpu)),
            Some((n, i)) => match i.parse::<usize>() {
                Ok(i) => (n, Some(Adapter::Discrete(i))),
                Err(_) => bail!("device `{s}`: `{i}` is not a device index (e.g. cuda:0)"),
            },
            None => (lower.as_str(), None),
        };
        let index = match adapter {
            Some(Adapter::Discrete(i)) => Some(i),
            _ => None,
        };
        let adapter = adapter.unwrap_or(Adapter::Default);
        let spec = match (name, index) {
            ("cuda", _) if adapter == Adapter::Cpu => {
                bail!("device `{s}`: cuda has no cpu adapter")
            }
            ("cuda", i) => Self::Cuda(i.unwrap_or(0)),
            ("wgpu", _) => Self::Wgpu(adapter),
            ("vulkan", _) => Self::Vulkan(adapter),
            ("metal", _) => Self::Metal(adapter),
            ("flex", None) => Self::Flex,
            ("cpu", None) => Self::Cpu,
            ("ndarray", None) => Self::NdArray,
            ("flex" | "cpu" | "ndarray", Some(_)) => {
                bail!("device `{s}`: the {name} backend has one device (no `:N`)")
            }
            _ => bail!(
                "unknown device `{s}` (known: flex, cpu, ndarray, cuda[:N], wgpu|vulkan|metal[:N|:cpu]; \
                 this binary has: {})",
                Self::compiled().join(", ")
            ),
        };
        Ok(spec)
    }
}

/// The float type of parameters and activations. `f32` is the default and what every parity
/// test holds to; `f16` and `bf16` halve the memory of weights and activations where a backend
/// computes in them (GPUs). The fused Flex kernels compute in `f32` and round their outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Precision {
    fn dtype(self) -> burn::tensor::FloatDType {
        use burn::tensor::FloatDType;
        match self {
            Self::F32 => FloatDType::F32,
            Self::F16 => FloatDType::F16,
            Self::Bf16 => FloatDType::BF16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => bail!("unknown precision `{s}` (known: f32, f16, bf16)"),
        }
    }
}

/// A device with the name it was chosen by: what the user reads (`flex`, `wgpu:0`, `cuda:1`)
/// and what Burn computes on.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedDevice {
    pub spec: DeviceSpec,
    pub device: Device,
}

impl NamedDevice {
    /// The device `spec` names, checked as [`DeviceSpec::device`] does.
    pub fn new(spec: DeviceSpec) -> Result<Self> {
        Ok(Self {
            spec,
            device: spec.device()?,
        })
    }

    /// The name and Burn's own form of the device (`wgpu (Wgpu(DefaultDevice))`), for logs
    /// where the adapter Burn picked matters.
    pub fn describe(&self) -> String {
        format!("{} ({:?})", self.spec, self.device)
    }
}

impl fmt::Display for NamedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.spec.fmt(f)
    }
}

/// What the command line chose to compute on, decided once in `main` and handed to the
/// command: the device, whether it was named, and `--precision`.
#[derive(Debug, Clone)]
pub struct DeviceChoice {
    /// The command's device: named by `--device` or `BURN_DEVICE`, else the first compiled one
    /// that is present.
    pub main: NamedDevice,
    /// Whether `main` was named (`--device`, `BURN_DEVICE`) rather than defaulted: a named
    /// device wins over a recipe's `train.device` / `train.devices`.
    pub named: bool,
    /// `--precision`, when given: it overrides a recipe's or a run's own.
    pub precision: Option<Precision>,
}

impl DeviceChoice {
    /// The choice from `--device` (first) or `BURN_DEVICE`, and `--precision`; every error
    /// names where the bad value came from and the compiled backends.
    pub fn resolve(flag: Option<&str>, precision: Option<&str>) -> Result<Self> {
        let precision = match precision {
            Some(p) => Some(p.parse().context("--precision")?),
            None => None,
        };
        let env = std::env::var("BURN_DEVICE");
        let named = flag.is_some() || std::env::var_os("BURN_DEVICE").is_some();
        let main = match (flag, env) {
            (Some(f), _) => f
                .parse::<DeviceSpec>()
                .and_then(NamedDevice::new)
                .map_err(|e| e.context("--device"))?,
            (None, Ok(v)) => {
                if v.trim().is_empty() {
                    bail!(
                        "BURN_DEVICE is set but empty: unset it or name a device (this binary \
                         has: {})",
                        DeviceSpec::compiled().join(", ")
                    );
                }
                v.parse::<DeviceSpec>()
                    .and_then(NamedDevice::new)
                    .map_err(|e| e.context("BURN_DEVICE"))?
            }
            (None, Err(_)) => preferred_present()?,
        };
        Ok(Self {
            main,
            named,
            precision,
        })
    }

    /// The command's device, as Burn takes it.
    pub fn device(&self) -> &Device {
        &self.main.device
    }

    /// The devices to train on, the first the main one: the one named by `--device` or
    /// `BURN_DEVICE`, else the recipe's `train.devices` or `train.device`, else the preferred
    /// compiled one.
    pub fn for_training(
        &self,
        device: Option<&str>,
        devices: &[String],
    ) -> Result<Vec<NamedDevice>> {
        if self.named {
            return Ok(vec![self.main.clone()]);
        }
        let named = |name: &str, key: String| -> Result<NamedDevice> {
            let spec = name
                .parse::<DeviceSpec>()
                .map_err(|e| e.context(key.clone()))?;
            NamedDevice::new(spec).map_err(|e| e.context(key))
        };
        match (device, devices) {
            (_, [_, ..]) => devices
                .iter()
                .enumerate()
                .map(|(i, d)| named(d, format!("train.devices[{i}]")))
                .collect(),
            (Some(name), []) => Ok(vec![named(name, "train.device".into())?]),
            (None, []) => Ok(vec![self.main.clone()]),
        }
    }

    /// Sets the float type of `devices` before anything is created on them: `--precision` if
    /// given, else `own` (a recipe's or a run's `train.precision`). Returns the one in effect.
    /// Burn fixes a device's float type at its first tensor, so this runs before any model is
    /// loaded.
    pub fn set_precision(&self, devices: &[NamedDevice], own: Precision) -> Result<Precision> {
        let precision = self.precision.unwrap_or(own);
        if precision == Precision::F32 {
            return Ok(precision);
        }
        for named in devices
            .iter()
            .filter(|d| d.device.settings().float_dtype != precision.dtype())
        {
            named
                .device
                .clone()
                .configure(precision.dtype())
                .map_err(|e| match e {
                    burn::tensor::DeviceError::UnsupportedDType { .. } => anyhow::anyhow!(
                        "precision {precision}: not supported by {} (use f32{})",
                        named.describe(),
                        if precision == Precision::Bf16 {
                            " or f16"
                        } else {
                            ""
                        }
                    ),
                    burn::tensor::DeviceError::AlreadyInitialized { .. } => anyhow::anyhow!(
                        "precision {precision}: {} is already in use in another precision (one \
                         precision per process)",
                        named.describe()
                    ),
                })?;
        }
        Ok(precision)
    }

    /// The precision for inference on the command's device: `--precision`, else `own`. bf16
    /// on Flex keeps the tensors f32 ([`Self::matrix_units`] then multiplies the linears in
    /// bf16); anything else is [`Self::set_main_precision`].
    pub fn set_inference_precision(&self, own: Precision) -> Result<Precision> {
        if self.precision.unwrap_or(own) == Precision::Bf16 && kernels::has_kernels(self.device()) {
            return Ok(Precision::Bf16);
        }
        self.set_main_precision(own)
    }

    /// The CPU's bf16 matrix units when `precision` (from [`Self::set_inference_precision`]) is
    /// bf16 on Flex. One line on stderr says what multiplies, or why f32 does.
    pub fn matrix_units(&self, precision: Precision) -> Option<MatrixUnits> {
        if precision != Precision::Bf16 || !kernels::has_kernels(self.device()) {
            return None;
        }
        match MatrixUnits::bf16() {
            Ok(units) => {
                eprintln!(
                    "bf16 products on the CPU's matrix units ({})",
                    units.describe()
                );
                Some(units)
            }
            Err(why) => {
                eprintln!(
                    "note: bf16 on {}: {why}; multiplying in f32",
                    self.main.describe()
                );
                None
            }
        }
    }

    /// [`DeviceChoice::set_precision`] of the command's own device.
    pub fn set_main_precision(&self, own: Precision) -> Result<Precision> {
        self.set_precision(std::slice::from_ref(&self.main), own)
    }
}

/// The first compiled backend whose device is present (a `cuda` build on a machine without an
/// NVIDIA GPU runs on the CPU, saying so once); a device that was named is never replaced.
fn preferred_present() -> Result<NamedDevice> {
    let mut skipped = Vec::new();
    for name in DeviceSpec::compiled() {
        let spec: DeviceSpec = name.parse()?;
        match NamedDevice::new(spec) {
            Ok(device) => {
                if let Some(why) = skipped.first() {
                    eprintln!("note: {why}; using {spec} (--device or BURN_DEVICE to choose)");
                }
                return Ok(device);
            }
            Err(e) => skipped.push(format!("{e:#}")),
        }
    }
    match skipped.pop() {
        Some(why) => bail!("{why}"),
        None => bail!("this binary was built without a backend feature (flex, cpu, cuda)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_are_named() {
        assert_eq!("flex".parse::<DeviceSpec>().unwrap(), DeviceSpec::Flex);
        assert_eq!(
            " CUDA:1 ".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cuda(1)
        );
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        let e = format!("{:#}", "bogus".parse::<DeviceSpec>().unwrap_err());
        assert!(
            e.contains("unknown device `bogus`") && e.contains("flex"),
            "{e}"
        );
        let e = format!("{:#}", "cuda:x".parse::<DeviceSpec>().unwrap_err());
        assert!(e.contains("device index"), "{e}");
        let e = format!("{:#}", "flex:2".parse::<DeviceSpec>().unwrap_err());
        assert!(e.contains("one device"), "{e}");
    }

    #[cfg(feature = "flex")]
    #[test]
    fn a_named_device_wins_over_the_recipe_and_devices_keep_their_names() {
        let flex = NamedDevice::new(DeviceSpec::Flex).unwrap();
        assert_eq!(flex.to_string(), "flex");
        assert!(flex.describe().starts_with("flex ("), "{}", flex.describe());
        let choice = |named| DeviceChoice {
            main: flex.clone(),
            named,
            precision: None,
        };
        let recipe = ["flex".to_string(), "flex".to_string()];
        assert_eq!(
            choice(true).for_training(Some("flex"), &recipe).unwrap(),
            std::slice::from_ref(&flex)
        );
        let two = choice(false).for_training(None, &recipe).unwrap();
        let names: Vec<String> = two.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["flex", "flex"]);
        assert_eq!(
            choice(false).for_training(None, &[]).unwrap(),
            std::slice::from_ref(&flex)
        );
        let e = format!(
            "{:#}",
            choice(false).for_training(Some("bogus"), &[]).unwrap_err()
        );
        assert!(e.contains("train.device") && e.contains("bogus"), "{e}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_backend_not_compiled_in_is_an_error_listing_the_compiled_ones() {
        let e = format!("{:#}", DeviceSpec::Cuda(0).device().unwrap_err());
        assert!(e.contains("not compiled") && e.contains("flex"), "{e}");
        assert!(e.contains("--features cuda"), "{e}");
    }
}
