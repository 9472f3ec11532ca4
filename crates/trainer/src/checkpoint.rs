//! Resume checkpoints that survive a crash or a full disk.
//!
//! burn-train saves the model, optimizer and scheduler of an epoch through three checkpointers
//! (`checkpoint/{model,optim,scheduler}-<epoch>.bpk`) and deletes older epochs as its strategy
//! says. Its file checkpointer writes in place, so a kill or ENOSPC mid-write leaves a truncated
//! newest file that `--resume` then picks. Here every file is written to a temp file and renamed
//! (old file or new, never half), and an older epoch is only deleted once a later epoch is
//! complete on disk in all three files: a failed write leaves the previous epoch resumable.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};
use bert_model::classifier::BertClassifier;
use burn::module::Module;
use burn::optim::OptimizerRecord;
use burn::optim::lr_scheduler::LrSchedulerRecord;
use burn::store::ModuleRecord;
use burn::train::checkpoint::{Checkpoint, Checkpointer, CheckpointerError};

/// The files of one resume state.
pub const PARTS: [&str; 3] = ["model", "optim", "scheduler"];

/// One of the three checkpointers; they share the list of deletions still waiting for a later
/// complete epoch.
pub struct AtomicCheckpointer {
    dir: PathBuf,
    name: &'static str,
    pending: Arc<Mutex<Vec<(&'static str, usize)>>>,
}

/// The model, optimizer and scheduler checkpointers of a run's `checkpoint/` directory.
pub fn checkpointers(dir: &Path) -> [AtomicCheckpointer; 3] {
    let pending = Arc::new(Mutex::new(Vec::new()));
    PARTS.map(|name| AtomicCheckpointer {
        dir: dir.to_path_buf(),
        name,
        pending: pending.clone(),
    })
}

/// `checkpoint/<part>-<epoch>.bpk`.
pub fn path(dir: &Path, part: &str, epoch: usize) -> PathBuf {
    dir.join(format!("{part}-{epoch}.bpk"))
}

/// The newest epoch whose three files are all on disk.
pub fn last_complete(dir: &Path) -> Option<usize> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("model-")?
                .strip_suffix(".bpk")?
                .parse()
                .ok()
        })
        .filter(|&n| complete(dir, n))
        .max()
}

fn complete(dir: &Path, epoch: usize) -> bool {
    PARTS.iter().all(|p| path(dir, p, epoch).is_file())
}

/// Checks the resume state of `epoch` before burn-train loads it (it panics on a record it
/// cannot read or apply): the model checkpoint must fit `model`, the optimizer's must hold
/// state, and the schedule's must be `steps` steps in, the steps of `epoch` epochs of this
/// run's data. Each failure is an error naming the file.
pub fn check_resumable(
    dir: &Path,
    epoch: usize,
    model: &BertClassifier,
    steps: usize,
) -> Result<()> {
    check_model(dir, epoch, model)?;
    let file = path(dir, "optim", epoch);
    let optim = read(&file, OptimizerRecord::load)?;
    if optim.is_empty() {
        bail!(
            "cannot resume: {} holds no optimizer state; start a new run",
            file.display()
        );
    }
    let file = path(dir, "scheduler", epoch);
    let schedule = read(&file, LrSchedulerRecord::load)?;
    // burn-train's scheduler record nests the one scheduler's under its group index.
    match schedule.record("0").scalar::<u64>("step") {
        Some(s) if usize::try_from(s) == Ok(steps) => Ok(()),
        Some(s) => bail!(
            "cannot resume: {} is {s} steps into the schedule, but {epoch} epoch(s) of this \
             run's data are {steps} steps; start a new run",
            file.display()
        ),
        None => bail!(
            "cannot resume: {} holds no schedule step; start a new run",
            file.display()
        ),
    }
}

/// Checks that the model checkpoint of `epoch` reads and fits `model` (every parameter there,
/// of the same shape, and nothing else).
pub fn check_model(dir: &Path, epoch: usize, model: &BertClassifier) -> Result<()> {
    let file = path(dir, "model", epoch);
    let record = read(&file, ModuleRecord::load)?;
    let applied = quietly(|| model.clone().try_load_record(record).map(drop));
    match applied {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!(
            "cannot resume: {} does not fit this run's model ({}); start a new run",
            file.display(),
            shorten(&e.to_string())
        ),
        Err(_) => bail!(
            "cannot resume: {} does not fit this run's model; start a new run",
            file.display()
        ),
    }
}

/// Reads a record with `load`, as an error naming `file` whether the reader fails or panics.
fn read<R, E: std::fmt::Display>(
    file: &Path,
    load: impl FnOnce(PathBuf) -> Result<R, E>,
) -> Result<R> {
    if !file.is_file() {
        bail!("cannot resume: {} is missing", file.display());
    }
    match quietly(|| load(file.to_path_buf())) {
        Ok(Ok(record)) => Ok(record),
        Ok(Err(e)) => bail!(
            "cannot resume: cannot read {} ({}); it is damaged: start a new run",
            file.display(),
            shorten(&e.to_string())
        ),
        Err(_) => bail!(
            "cannot resume: cannot read {}; it is damaged: start a new run",
            file.display()
        ),
    }
}

/// Runs `f`, turning a panic into an `Err` without the panic hook's report: the caller reports
/// it as one line naming the file. Only used before training starts, while no other thread
/// could panic meanwhile.
fn quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result
}

/// A library message cut to a readable length (a list of every missing tensor can be long).
fn shorten(message: &str) -> String {
    const MAX: usize = 200;
    let line = message.lines().next().unwrap_or_default();
    match line.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

impl AtomicCheckpointer {
    /// Deletes what is waiting once a later epoch is complete.
    fn sweep(&self) -> Result<(), CheckpointerError> {
        let newest = last_complete(&self.dir);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut result = Ok(());
        pending.retain(|&(part, epoch)| {
            if newest.is_none_or(|n| n <= epoch) {
                return true;
            }
            let file = path(&self.dir, part, epoch);
            match std::fs::remove_file(&file) {
                Ok(()) => false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => {
                    result = Err(CheckpointerError::Unknown(format!(
                        "cannot delete {}: {e}",
                        file.display()
                    )));
                    true
                }
            }
        });
        result
    }
}

impl<R: Checkpoint> Checkpointer<R> for AtomicCheckpointer {
    fn save(&self, epoch: usize, record: R) -> Result<(), CheckpointerError> {
        let file = path(&self.dir, self.name, epoch);
        let bytes = record
            .checkpoint_into_bytes()
            .map_err(CheckpointerError::Record)?;
        bert_model::fsutil::write_atomic(&file, &bytes)
            .map_err(|e| CheckpointerError::Unknown(e.to_string()))?;
        self.sweep()
    }

    fn delete(&self, epoch: usize) -> Result<(), CheckpointerError> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((self.name, epoch));
        self.sweep()
    }

    fn restore(&self, epoch: usize) -> Result<R, CheckpointerError> {
        let file = path(&self.dir, self.name, epoch);
        R::load(file.clone())
            .map_err(|e| CheckpointerError::Unknown(format!("cannot read {}: {e}", file.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_epoch_goes_only_once_a_later_one_is_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let [model, optim, scheduler] = checkpointers(dir);
        for part in PARTS {
            std::fs::write(path(dir, part, 1), b"epoch 1").unwrap();
        }
        assert_eq!(last_complete(dir), Some(1));
        // Epoch 2: the model is written and epoch 1 is due for deletion, but the optimizer's
        // write fails (here: never happens), so epoch 1 must stay whole.
        std::fs::write(path(dir, "model", 2), b"epoch 2").unwrap();
        Checkpointer::<()>::delete(&model, 1).unwrap();
        Checkpointer::<()>::delete(&scheduler, 1).unwrap();
        assert_eq!(last_complete(dir), Some(1));
        assert!(path(dir, "model", 1).is_file());
        // Once epoch 2 is complete, the waiting deletions happen.
        std::fs::write(path(dir, "optim", 2), b"epoch 2").unwrap();
        std::fs::write(path(dir, "scheduler", 2), b"epoch 2").unwrap();
        Checkpointer::<()>::delete(&optim, 1).unwrap();
        assert_eq!(last_complete(dir), Some(2));
        for part in PARTS {
            assert!(!path(dir, part, 1).exists(), "{part}-1 left behind");
        }
    }

    #[test]
    fn a_failed_write_names_the_file_and_keeps_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        // A directory where the file should go makes the rename fail.
        let dir = tmp.path();
        std::fs::create_dir_all(path(dir, "model", 3)).unwrap();
        let [model, _, _] = checkpointers(dir);
        let e = Checkpointer::<()>::save(&model, 3, ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("model-3.bpk"), "{e}");
        let leftovers: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}
