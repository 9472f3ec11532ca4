//! Where a run goes wrong: its most confident mistakes (for the report and `eval --errors`),
//! and accuracy by text length and by a column of the data.
//!
//! Items are decided as `predict` decides them ([`crate::decision::decide`]): by the run's saved
//! threshold on its positive label when it has one, else the most probable label.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::decision::decide;
use crate::evaluation::{Evaluation, clipped};
use crate::threshold::Threshold;

/// How many mistakes of each kind the report shows.
pub const REPORT_MISTAKES: usize = 15;

/// How many values of a column get a row of their own (the rest are "other").
pub const TOP_VALUES: usize = 20;

/// Bytes of a column value kept as its group's name.
const KEPT_VALUE_BYTES: usize = 200;

/// One wrongly decided item.
#[derive(Debug, Clone, PartialEq)]
pub struct Mistake {
    /// Its place in the evaluation (input order).
    pub index: usize,
    pub truth: usize,
    pub predicted: usize,
    /// The probability of the predicted label.
    pub p_predicted: f32,
    /// The probability of the positive label, when there is one.
    pub p_positive: Option<f32>,
}

/// The most confident mistakes, most confident first.
#[derive(Debug, Clone, PartialEq)]
pub enum Mistakes {
    /// Two labels, one of them positive: flagged wrongly (highest p(positive) first) and missed
    /// (lowest p(positive) first).
    Binary {
        positive: usize,
        false_positives: Vec<Mistake>,
        false_negatives: Vec<Mistake>,
    },
    /// More labels, or no positive one: every mistake, by the predicted label's probability.
    Overall(Vec<Mistake>),
}

/// The decided label of every item.
pub fn decisions(eval: &Evaluation, threshold: Option<&(usize, Threshold)>) -> Vec<usize> {
    eval.probabilities
        .iter()
        .map(|p| decide(threshold, p))
        .collect()
}

/// Up to `n` of each kind of mistake in `decided` (from [`decisions`]).
pub fn mistakes(
    eval: &Evaluation,
    decided: &[usize],
    positive: Option<usize>,
    n: usize,
) -> Mistakes {
    let probs = &eval.probabilities;
    let make = |i: usize| Mistake {
        index: i,
        truth: eval.targets[i],
        predicted: decided[i],
        p_predicted: probs[i][decided[i]],
        p_positive: positive.map(|p| probs[i][p]),
    };
    let wrong = (0..decided.len()).filter(|&i| decided[i] != eval.targets[i]);
    let most = |mut items: Vec<Mistake>, key: &dyn Fn(&Mistake) -> f32| {
        // Stable: ties keep input order.
        items.sort_by(|a, b| key(b).total_cmp(&key(a)));
        items.truncate(n);
        items
    };
    let labels = probs.first().map_or(0, Vec::len);
    match positive {
        Some(p) if labels == 2 => {
            let (fp, fn_): (Vec<usize>, Vec<usize>) = wrong.partition(|&i| decided[i] == p);
            let p_pos = |m: &Mistake| m.p_positive.unwrap_or(0.0);
            Mistakes::Binary {
                positive: p,
                false_positives: most(fp.into_iter().map(make).collect(), &p_pos),
                false_negatives: most(fn_.into_iter().map(make).collect(), &|m| -p_pos(m)),
            }
        }
        _ => Mistakes::Overall(most(wrong.map(make).collect(), &|m| m.p_predicted)),
    }
}

impl Mistakes {
    /// `{"false_positives": [{"text", "label", "predicted", "p_positive"}...],
    /// "false_negatives": [...]}`, or `{"mistakes": [{"text", "label", "predicted",
    /// "p_predicted"}...]}`; `label` is the true label.
    pub fn to_json(&self, eval: &Evaluation, labels: &[String]) -> Value {
        let text = |m: &Mistake| eval.texts.get(m.index).map_or("", String::as_str);
        let name = |i: usize| labels.get(i).map_or("?", String::as_str);
        match self {
            Self::Binary {
                positive,
                false_positives,
                false_negatives,
            } => {
                let list = |items: &[Mistake]| -> Vec<Value> {
                    items
                        .iter()
                        .map(|m| {
                            json!({"text": text(m), "label": name(m.truth),
                                "predicted": name(m.predicted), "p_positive": m.p_positive})
                        })
                        .collect()
                };
                json!({
                    "positive": name(*positive),
                    "false_positives": list(false_positives),
                    "false_negatives": list(false_negatives),
                })
            }
            Self::Overall(items) => {
                let list: Vec<Value> = items
                    .iter()
                    .map(|m| {
                        json!({"text": text(m), "label": name(m.truth),
                            "predicted": name(m.predicted), "p_predicted": m.p_predicted})
                    })
                    .collect();
                json!({ "mistakes": list })
            }
        }
    }
}

/// A group of items and how many of them were decided right.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub rows: usize,
    pub correct: usize,
}

impl Group {
    fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            rows: 0,
            correct: 0,
        }
    }

    pub fn accuracy(&self) -> Option<f64> {
        (self.rows > 0).then(|| self.correct as f64 / self.rows as f64)
    }
}

/// The upper bounds (inclusive) of the length buckets, and whether a last open bucket
/// (`>` the last bound) follows: four buckets 8 tokens wide (wider for a long max length, a
/// sixteenth of it rounded up to 8), cut at the max length.
pub fn length_bounds(max_length: Option<usize>) -> (Vec<usize>, bool) {
    let width = max_length.map_or(8, |m| m.div_ceil(16).next_multiple_of(8).max(8));
    let mut bounds = Vec::new();
    for k in 1..=4 {
        let b = k * width;
        match max_length {
            Some(m) if b >= m => {
                bounds.push(m);
                return (bounds, false);
            }
            _ => bounds.push(b),
        }
    }
    (bounds, true)
}

/// Rows and correct decisions by token length (`lengths` and `correct` per item).
pub fn by_length(lengths: &[u32], correct: &[bool], max_length: Option<usize>) -> Vec<Group> {
    let (bounds, open) = length_bounds(max_length);
    let mut groups: Vec<Group> = Vec::new();
    let mut low = 1;
    for &b in &bounds {
        groups.push(Group::new(if low == b {
            b.to_string()
        } else {
            format!("{low}-{b}")
        }));
        low = b + 1;
    }
    if open {
        groups.push(Group::new(format!(">{}", low - 1)));
    }
    for (&len, &ok) in lengths.iter().zip(correct) {
        let len = len as usize;
        let g = bounds
            .iter()
            .position(|&b| len <= b)
            .unwrap_or(groups.len() - 1);
        groups[g].rows += 1;
        groups[g].correct += usize::from(ok);
    }
    groups
}

/// One column of a data CSV, for the rows [`bert_data::Table`] keeps (those with a text), in
/// order: each row's value as an index into the distinct values.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub values: Vec<String>,
    pub of_row: Vec<u32>,
}

/// The header of the CSV at `path` (trimmed, as `Table` reads it).
fn header(reader: &mut csv::Reader<&[u8]>, path: &Path) -> Result<Vec<String>> {
    let header = reader
        .byte_headers()
        .map_err(|e| anyhow::anyhow!("{}: malformed CSV: {e}", path.display()))?;
    Ok(header
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_string())
        .collect())
}

fn csv_reader(bytes: &[u8]) -> csv::Reader<&[u8]> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(bytes)
}

/// The columns of the CSV at `path` other than `known` (the text and label columns).
pub fn other_columns(path: &Path, known: &[&str]) -> Result<Vec<String>> {
    // Only the header is needed: the first 64 KiB hold it.
    let mut bytes = Vec::new();
    {
        use std::io::Read;
        std::fs::File::open(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .take(64 << 10)
            .read_to_end(&mut bytes)?;
    }
    let mut reader = csv_reader(&bytes);
    Ok(header(&mut reader, path)?
        .into_iter()
        .filter(|h| !h.is_empty() && !known.contains(&h.as_str()))
        .collect())
}

/// Column `name` of the CSV at `path` whose text column is `text` (rows without text are
/// skipped, as `Table` skips them). A missing column is a one-line error naming the columns
/// there are.
pub fn read_column(path: &Path, text: &str, name: &str) -> Result<Column> {
    let bytes = bert_model::fsutil::read_limited(path, bert_model::fsutil::MAX_DATA_FILE)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut reader = csv_reader(&bytes);
    let columns = header(&mut reader, path)?;
    let find = |n: &str| columns.iter().position(|h| h == n);
    let Some(col) = find(name) else {
        bail!(
            "--by-column {name}: no such column in {} (columns: {})",
            path.display(),
            columns.join(", ")
        );
    };
    let Some(text_col) = find(text) else {
        bail!("{}: no text column `{text}`", path.display());
    };
    let mut column = Column {
        name: name.to_string(),
        values: Vec::new(),
        of_row: Vec::new(),
    };
    let mut index: HashMap<String, u32> = HashMap::new();
    let mut record = csv::ByteRecord::new();
    while reader
        .read_byte_record(&mut record)
        .map_err(|e| anyhow::anyhow!("{}: malformed CSV: {e}", path.display()))?
    {
        let field = |i: usize| String::from_utf8_lossy(record.get(i).unwrap_or_default());
        if field(text_col).trim().is_empty() {
            continue;
        }
        let value = clipped(field(col).trim().to_string(), KEPT_VALUE_BYTES);
        let next = u32::try_from(column.values.len()).unwrap_or(u32::MAX);
        let id = *index.entry(value).or_insert_with_key(|v| {
            column.values.push(v.clone());
            next
        });
        column.of_row.push(id);
    }
    Ok(column)
}

/// Rows and correct decisions by the column's value: the [`TOP_VALUES`] most frequent values
/// (ties by name), the rest together as `other`.
pub fn by_column(column: &Column, correct: &[bool]) -> Vec<Group> {
    let mut groups: Vec<Group> = column.values.iter().map(Group::new).collect();
    for (&v, &ok) in column.of_row.iter().zip(correct) {
        let g = &mut groups[v as usize];
        g.rows += 1;
        g.correct += usize::from(ok);
    }
    groups.sort_by(|a, b| b.rows.cmp(&a.rows).then_with(|| a.name.cmp(&b.name)));
    if groups.len() > TOP_VALUES {
        let rest = groups.split_off(TOP_VALUES);
        let mut other = Group::new(format!("other ({} values)", rest.len()));
        for g in rest {
            other.rows += g.rows;
            other.correct += g.correct;
        }
        groups.push(other);
    }
    groups
}
