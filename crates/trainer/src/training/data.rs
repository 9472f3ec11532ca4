//! A run's data: read, labelled and split for a new run ([`check`], before the model loads, so
//! bad data is reported without waiting for it), or read back from the directory for a resumed
//! one ([`check_resumed`]); then tokenised, and a new run's split and labels written into its
//! directory ([`Checked::tokenize`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bert_data::csv::write_csv;
use bert_data::{Example, LabelMap, SplitConfig, Table};
use bert_model::BertTokenizer;
use serde_json::json;

use crate::config::TrainConfig;
use crate::run::RunDir;

/// The data of a run, tokenised.
pub struct Prepared {
    pub labels: LabelMap,
    pub train: Vec<Example>,
    pub valid: Vec<Example>,
    /// Data counts for summary.json (empty for a resumed run, whose summary exists).
    pub summary: serde_json::Value,
}

/// A fresh run may go into a directory that does not exist or is empty, or one left by a run
/// killed while setting up (no config.toml, only the files setup writes), which is cleared.
pub fn check_run_dir_free(dir: &Path) -> Result<()> {
    const SETUP: [&str; 4] = ["labels.txt", "train.csv", "valid.csv", "summary.json"];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut leftovers = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // This process's own lock, taken before the check.
        if name == crate::run::LOCK_FILE {
            continue;
        }
        // A temp file of an interrupted atomic write starts with a dot.
        if !(SETUP.contains(&name.as_str()) || name.starts_with('.')) {
            let hint = if RunDir::new(dir).config().is_file() {
                "continue it with --resume, or choose another --run-dir"
            } else {
                "choose another --run-dir"
            };
            bail!(
                "{} already holds files ({name}, ...); {hint}",
                dir.display()
            );
        }
        leftovers.push(entry.path());
    }
    for path in leftovers {
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// The run directory a new run created, removed again unless [`CreatedDir::keep`] is called
/// (a run that fails while setting up leaves nothing behind).
pub struct CreatedDir {
    path: Option<PathBuf>,
}

impl CreatedDir {
    /// Creates `path` (and its parents) if it does not exist. Only the process whose
    /// `create_dir` succeeded owns it: of two runs started at once, the other one finds it
    /// existing and never removes it.
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        match std::fs::create_dir(path) {
            Ok(()) => Ok(Self::created(path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {
                Ok(Self { path: None })
            }
            Err(e) => bail!("cannot create {}: {e}", path.display()),
        }
    }

    /// A directory this process has just created.
    pub fn created(path: &Path) -> Self {
        Self {
            path: Some(path.to_path_buf()),
        }
    }

    pub fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for CreatedDir {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// A run's data read and checked, before any model is loaded: every label known, the split
/// made, the counts known. [`Checked::tokenize`] turns it into [`Prepared`] once the tokenizer
/// is there.
pub struct Checked {
    pub labels: LabelMap,
    /// (text, class) of the training and the validation split.
    pub train: Vec<(String, usize)>,
    pub valid: Vec<(String, usize)>,
    /// Data counts for summary.json (empty for a resumed run, whose summary exists).
    pub summary: serde_json::Value,
    /// The columns a new run writes its split with (`None`: resumed, its split is written).
    write_columns: Option<[String; 2]>,
}

/// Reads, labels and splits the data of a new run: an unknown label, a malformed row or an
/// empty split is an error here, before the model loads.
pub fn check(config: &TrainConfig) -> Result<Checked> {
    let columns = config.data.columns();
    let table = Table::read(&config.data.train, &columns, true)?;
    let labels = match &config.data.labels {
        Some(p) => LabelMap::read(p)?,
        None => LabelMap::from_table(&table)?,
    };
    let hint = label_hint(config);
    let ids = labels.encode_with_hint(&table, &hint)?;
    let mut dropped = json!({ table.path.display().to_string(): table.dropped_empty.len() });
    report_dropped(&table);

    let (train_rows, valid): (Vec<usize>, Vec<(String, usize)>) = match &config.data.valid {
        Some(valid_path) => {
            let valid = Table::read(valid_path, &columns, true)?;
            report_dropped(&valid);
            dropped[valid.path.display().to_string()] = json!(valid.dropped_empty.len());
            let valid_ids = labels.encode_with_hint(&valid, &hint)?;
            let valid = valid.rows.into_iter().map(|r| r.text).zip(valid_ids);
            ((0..table.rows.len()).collect(), valid.collect())
        }
        None => {
            let split = SplitConfig {
                valid_fraction: config.data.valid_fraction,
                seed: config.data.split_seed,
                max_rows: config.data.max_rows,
            }
            .split(table.rows.len());
            let valid = split
                .valid
                .iter()
                .map(|&i| (table.rows[i].text.clone(), ids[i]))
                .collect();
            (split.train, valid)
        }
    };
    let (train_rows, valid) = match config.data.holdout_fraction {
        Some(fraction) => {
            let held = SplitConfig {
                valid_fraction: fraction,
                seed: config.data.split_seed,
                max_rows: None,
            }
            .split(train_rows.len());
            eprintln!(
                "data: choosing on a held-out {} of the {} training rows (data.holdout_fraction); \
                 the {} validation rows are not used",
                held.valid.len(),
                train_rows.len(),
                valid.len()
            );
            let rows = |picked: &[usize]| -> Vec<usize> {
                picked.iter().map(|&k| train_rows[k]).collect()
            };
            let holdout = rows(&held.valid)
                .into_iter()
                .map(|i| (table.rows[i].text.clone(), ids[i]))
                .collect();
            (rows(&held.train), holdout)
        }
        None => (train_rows, valid),
    };
    if let Some(max) = config.data.max_rows
        && max < table.rows.len()
    {
        eprintln!(
            "data: using a seeded sample of {} of the {} rows of {} (data.max_rows)",
            max,
            table.rows.len(),
            table.path.display()
        );
    }
    let rows_read = table.rows.len() + table.dropped_empty.len();
    let mut rows: Vec<Option<String>> = table.rows.into_iter().map(|r| Some(r.text)).collect();
    let train: Vec<(String, usize)> = train_rows
        .iter()
        .map(|&i| (rows[i].take().unwrap_or_default(), ids[i]))
        .collect();

    if train.is_empty() || valid.is_empty() {
        let (which, path) = match &config.data.valid {
            Some(v) if !train.is_empty() => ("validation", v.display().to_string()),
            _ => ("training", config.data.train.display().to_string()),
        };
        bail!(
            "{path}: no {which} rows ({} train / {} valid after dropping empty titles and \
             splitting): a run needs at least one of each",
            train.len(),
            valid.len()
        );
    }
    let count = |split: &[(String, usize)]| -> Vec<usize> {
        (0..labels.len())
            .map(|c| split.iter().filter(|(_, l)| *l == c).count())
            .collect()
    };
    eprintln!(
        "data: {} train / {} valid examples, labels {:?}",
        train.len(),
        valid.len(),
        labels.names()
    );
    let mut summary = json!({
        "labels": labels.names(),
        "data": {
            "source": config.data.train.display().to_string(),
            "rows_read": rows_read,
            "dropped_empty_title": dropped,
            "train": train.len(),
            "valid": valid.len(),
            "train_per_class": count(&train),
            "valid_per_class": count(&valid),
        },
    });
    if let Some(fraction) = config.data.holdout_fraction {
        summary["data"]["valid_is_holdout_of_train"] = json!(fraction);
    }
    Ok(Checked {
        labels,
        train,
        valid,
        summary,
        write_columns: Some([columns.text, columns.label]),
    })
}

/// What an unknown label can be fixed with: the recipe's `data.labels`, a label file.
fn label_hint(config: &TrainConfig) -> String {
    match &config.data.labels {
        Some(p) => format!(
            "the labels of data.labels = {:?}; to train on others, set data.labels to a file \
             that lists them, one per line (in the recipe or with --set data.labels=FILE)",
            p.display().to_string()
        ),
        None => format!(
            "the labels found in {}, as data.labels is not set; to allow others, set \
             data.labels to a file that lists every label, one per line",
            config.data.train.display()
        ),
    }
}

/// A resumed run trains on the split saved in its directory, not on a re-read of the source.
pub fn check_resumed(run: &RunDir, config: &TrainConfig) -> Result<Checked> {
    let columns = config.data.columns();
    let labels = LabelMap::read(&run.labels())?;
    let load = |path: &Path| -> Result<Vec<(String, usize)>> {
        let table = Table::read(path, &columns, true)?;
        let ids = labels.encode(&table)?;
        Ok(table.rows.into_iter().map(|r| r.text).zip(ids).collect())
    };
    let train = load(&run.train_csv())?;
    let valid = load(&run.valid_csv())?;
    Ok(Checked {
        labels,
        train,
        valid,
        summary: json!({}),
        write_columns: None,
    })
}

impl Checked {
    /// Tokenises the data; a new run's label file and split are written into `run`.
    pub fn tokenize(self, run: &RunDir, tokenizer: &BertTokenizer) -> Result<Prepared> {
        let Self {
            labels,
            train,
            valid,
            summary,
            write_columns,
        } = self;
        let examples = |split: &[(String, usize)]| -> Result<Vec<Example>> {
            let texts: Vec<&str> = split.iter().map(|(t, _)| t.as_str()).collect();
            Ok(tokenizer
                .encode_batch(&texts)?
                .into_iter()
                .zip(split)
                .map(|(encoded, &(_, label))| Example { encoded, label })
                .collect())
        };
        let (train_examples, valid_examples) = (examples(&train)?, examples(&valid)?);
        if let Some([text, label]) = &write_columns {
            labels.write(&run.labels())?;
            let header = [text.as_str(), label.as_str()];
            for (path, split) in [(run.train_csv(), &train), (run.valid_csv(), &valid)] {
                let records: Vec<Vec<&str>> = split
                    .iter()
                    .map(|(t, l)| vec![t.as_str(), labels.name(*l)])
                    .collect();
                write_csv(&path, &header, &records)?;
            }
        }
        Ok(Prepared {
            train: train_examples,
            valid: valid_examples,
            labels,
            summary,
        })
    }
}

fn report_dropped(table: &Table) {
    let n = table.dropped_empty.len();
    if n > 0 {
        let shown: Vec<String> = table
            .dropped_empty
            .iter()
            .take(10)
            .map(u64::to_string)
            .collect();
        eprintln!(
            "data: dropped {n} row(s) with an empty title from {} (lines {}{})",
            table.path.display(),
            shown.join(", "),
            if n > 10 { ", ..." } else { "" }
        );
    }
}
