//! A run's data: read, labelled, split and tokenised for a new run (and the split and labels
//! written into its directory), or read back from the directory for a resumed one.

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

/// Reads, labels, splits and tokenises the data of a new run, and writes the split and the
/// label file into the run directory.
pub fn prepare(run: &RunDir, config: &TrainConfig, tokenizer: &BertTokenizer) -> Result<Prepared> {
    let columns = config.data.columns();
    let table = Table::read(&config.data.train, &columns, true)?;
    let labels = match &config.data.labels {
        Some(p) => LabelMap::read(p)?,
        None => LabelMap::from_table(&table)?,
    };
    let ids = labels.encode(&table)?;
    let mut dropped = json!({ table.path.display().to_string(): table.dropped_empty.len() });
    report_dropped(&table);

    let (train_rows, valid_table): (Vec<usize>, Table) = match &config.data.valid {
        Some(valid_path) => {
            let valid = Table::read(valid_path, &columns, true)?;
            report_dropped(&valid);
            dropped[valid.path.display().to_string()] = json!(valid.dropped_empty.len());
            ((0..table.rows.len()).collect(), valid)
        }
        None => {
            let split = SplitConfig {
                valid_fraction: config.data.valid_fraction,
                seed: config.data.split_seed,
                max_rows: config.data.max_rows,
            }
            .split(table.rows.len());
            let valid = Table {
                path: table.path.clone(),
                rows: split.valid.iter().map(|&i| table.rows[i].clone()).collect(),
                dropped_empty: vec![],
            };
            (split.train, valid)
        }
    };
    let valid_table = &valid_table;
    let valid_ids = labels.encode(valid_table)?;
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

    let texts = |rows: &mut dyn Iterator<Item = &str>| -> Result<Vec<bert_model::Encoded>> {
        let t: Vec<&str> = rows.collect();
        Ok(tokenizer.encode_batch(&t)?)
    };
    let train_enc = texts(&mut train_rows.iter().map(|&i| table.rows[i].text.as_str()))?;
    let valid_enc = texts(&mut valid_table.rows.iter().map(|r| r.text.as_str()))?;
    let train: Vec<Example> = train_enc
        .into_iter()
        .zip(&train_rows)
        .map(|(encoded, &i)| Example {
            encoded,
            label: ids[i],
        })
        .collect();
    let valid: Vec<Example> = valid_enc
        .into_iter()
        .zip(&valid_ids)
        .map(|(encoded, &label)| Example { encoded, label })
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
    labels.write(&run.labels())?;
    let header = [columns.text.as_str(), columns.label.as_str()];
    let train_records: Vec<Vec<&str>> = train_rows
        .iter()
        .map(|&i| vec![table.rows[i].text.as_str(), labels.name(ids[i])])
        .collect();
    write_csv(&run.train_csv(), &header, &train_records)?;
    let valid_records: Vec<Vec<&str>> = valid_table
        .rows
        .iter()
        .zip(&valid_ids)
        .map(|(r, &l)| vec![r.text.as_str(), labels.name(l)])
        .collect();
    write_csv(&run.valid_csv(), &header, &valid_records)?;

    let count = |ex: &[Example]| -> Vec<usize> {
        (0..labels.len())
            .map(|c| ex.iter().filter(|e| e.label == c).count())
            .collect()
    };
    eprintln!(
        "data: {} train / {} valid examples, labels {:?}",
        train.len(),
        valid.len(),
        labels.names()
    );
    let summary = json!({
        "labels": labels.names(),
        "data": {
            "source": config.data.train.display().to_string(),
            "rows_read": table.rows.len() + table.dropped_empty.len(),
            "dropped_empty_title": dropped,
            "train": train.len(),
            "valid": valid.len(),
            "train_per_class": count(&train),
            "valid_per_class": count(&valid),
        },
    });
    Ok(Prepared {
        labels,
        train,
        valid,
        summary,
    })
}

/// A resumed run trains on the split saved in its directory, not on a re-read of the source.
pub fn prepare_resumed(
    run: &RunDir,
    config: &TrainConfig,
    tokenizer: &BertTokenizer,
) -> Result<Prepared> {
    let columns = config.data.columns();
    let labels = LabelMap::read(&run.labels())?;
    let load = |path: &Path| -> Result<Vec<Example>> {
        let table = Table::read(path, &columns, true)?;
        let ids = labels.encode(&table)?;
        let texts: Vec<&str> = table.rows.iter().map(|r| r.text.as_str()).collect();
        Ok(tokenizer
            .encode_batch(&texts)?
            .into_iter()
            .zip(ids)
            .map(|(encoded, label)| Example { encoded, label })
            .collect())
    };
    let train = load(&run.train_csv())?;
    let valid = load(&run.valid_csv())?;
    Ok(Prepared {
        labels,
        train,
        valid,
        summary: json!({}),
    })
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
