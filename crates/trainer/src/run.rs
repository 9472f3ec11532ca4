//! The run directory: everything a training run leaves behind (loaded back as a
//! [`crate::classifier::Classifier`]).
//!
//! ```text
//! runs/<name>/
//!   config.toml            the resolved recipe (base model source, method, data, schedule)
//!   labels.txt             the label map used (index = line)
//!   train.csv, valid.csv   the exact split trained and validated on
//!   summary.json           data counts (incl. dropped rows), parameter counts, best epoch
//!   metrics.json           per-epoch train/valid metrics, machine-readable
//!   adapter.safetensors    the best epoch's trainable parameters only
//!   adapter/               the same as a HF peft adapter (adapter_config.json +
//!                          adapter_model.safetensors), loadable by `PeftModel.from_pretrained`
//!   threshold.json         the decision threshold from `trainer eval --save-threshold`
//!   calibration.json       the temperature fitted on the validation split
//!   report.html            charts and tables of the run (`trainer report`)
//!   checkpoint/            burn-train's resume state (model, optimizer, schedule) of the
//!                          last epoch and of the best one
//!   .lock                  locked by the process training the run, so no other one writes it
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bert_model::Pretrained;
use bert_model::classifier::BertClassifier;
use bert_model::params::ModulePath;
use burn::module::{ModuleMapper, Param};
use burn::prelude::*;

use crate::config::TrainConfig;

#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn labels(&self) -> PathBuf {
        self.root.join("labels.txt")
    }
    pub fn train_csv(&self) -> PathBuf {
        self.root.join("train.csv")
    }
    pub fn valid_csv(&self) -> PathBuf {
        self.root.join("valid.csv")
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.json")
    }
    pub fn adapter(&self) -> PathBuf {
        self.root.join("adapter.safetensors")
    }
    /// The best epoch as a HF peft adapter directory.
    pub fn peft_adapter(&self) -> PathBuf {
        self.root.join("adapter")
    }
    /// The decision threshold chosen by `trainer eval --save-threshold`.
    pub fn threshold(&self) -> PathBuf {
        self.root.join("threshold.json")
    }
    pub fn calibration(&self) -> PathBuf {
        self.root.join("calibration.json")
    }
    pub fn report(&self) -> PathBuf {
        self.root.join("report.html")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoint")
    }

    /// The lock file that marks the directory as in use by a training process.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }

    /// A fresh directory under `runs/` for `name`: `runs/<name>`, or `runs/<name>-2`, ... when
    /// taken, so a new run never mixes its files with an old one. The directory is created
    /// here, atomically, so two runs started at once never pick the same one.
    pub fn fresh(base: &Path, name: &str) -> Result<Self> {
        let name = if name.is_empty() { "run" } else { name };
        std::fs::create_dir_all(base)
            .with_context(|| format!("cannot create {}", base.display()))?;
        let mut candidate = base.join(name);
        let mut i = 2;
        loop {
            match std::fs::create_dir(&candidate) {
                Ok(()) => return Ok(Self::new(candidate)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    candidate = base.join(format!("{name}-{i}"));
                    i += 1;
                }
                Err(e) => bail!("cannot create {}: {e}", candidate.display()),
            }
        }
    }

    /// Takes the run directory for this process (an exclusive lock on its `.lock` file, held
    /// until the returned value is dropped): two processes writing one run would mix their
    /// files, so the second is refused at once.
    pub fn lock(&self) -> Result<RunLock> {
        let path = self.lock_file();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "{} is in use by another trainer process (it holds {}); wait for it to end, \
                 or train into another directory",
                self.root.display(),
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                bail!("cannot lock {}: {e}", path.display())
            }
        }
    }
}

/// The name of a run directory's lock file.
pub const LOCK_FILE: &str = ".lock";

/// A run directory held by this process; the lock goes with the file when dropped (or when the
/// process ends, however it ends).
pub struct RunLock {
    _file: std::fs::File,
}

/// The classifier of `config` on top of a pretrained BERT, with the method's initial weights
/// (prompt tuning's text init reads the tokenizer).
pub fn build_model(
    pretrained: &Pretrained,
    config: &TrainConfig,
    num_labels: usize,
    device: &Device,
) -> Result<BertClassifier> {
    let model = BertClassifier::new(
        pretrained.loaded.model.clone(),
        pretrained.loaded.classifier.clone(),
        &pretrained.config,
        &config.peft,
        num_labels,
        device,
    )?;
    Ok(config
        .peft
        .method()
        .init_with_tokenizer(model, &pretrained.tokenizer)?)
}

/// `model` with gradients on exactly the parameters the method trains (`is_trainable`, which
/// also decides what the parameter counts and the adapter hold). The optimizer updates only
/// what tracks gradients, and a parameter whose value was replaced after its creation (the
/// fresh head's zero bias, set through `Param::map`) keeps Burn's trainable flag without the
/// tracking until a checkpoint reload restores it: it would train only after a resume, and a
/// resumed run would not reproduce a straight one.
pub fn trainable_only(model: BertClassifier, config: &TrainConfig) -> BertClassifier {
    struct RequireGrad<'a> {
        path: ModulePath,
        config: &'a TrainConfig,
    }
    impl ModuleMapper for RequireGrad<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.set_require_grad(self.config.peft.is_trainable(&self.path.path()))
        }
    }
    model.map(&mut RequireGrad {
        path: ModulePath::default(),
        config,
    })
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    bert_model::fsutil::write_atomic(path, text.as_bytes())?;
    Ok(())
}
