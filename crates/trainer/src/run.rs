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
    /// The run's resolved recipe (`config.toml`); a directory without one is not a run.
    pub fn read_config(&self) -> Result<TrainConfig> {
        let path = self.config();
        if !path.is_file() {
            return Err(self.not_a_run());
        }
        let text = bert_model::fsutil::read_small_text(&path)?;
        toml::from_str(&text).with_context(|| format!("{}: invalid run config", path.display()))
    }
    /// The one message for a directory that holds no run, whichever command was given it.
    pub fn not_a_run(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "{} is not a run directory (no config.toml; `trainer train` prints the run directory \
             on its last line)",
            self.root.display()
        )
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

/// Writes `value` as pretty JSON, atomically: a run's JSON files (summary, metrics, threshold,
/// calibration) are read back by later commands, so none is ever seen half written.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    bert_model::fsutil::write_atomic(path, text.as_bytes())?;
    Ok(())
}
