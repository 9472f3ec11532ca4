//! The label map: label name <-> class index.
//!
//! The file format is the reference's `tag.txt`: one label per line, the class index is the line
//! number (0-based). Labels are compared trimmed and lower-cased.

use std::path::Path;

use crate::csv::{Table, normalize_label};
use crate::error::{DataError, Result};

/// Most labels a classifier may have: the head grows with them, and a label column that holds
/// free text (the wrong column chosen) is caught here instead of building a huge head.
pub const MAX_LABELS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    labels: Vec<String>,
}

impl LabelMap {
    pub fn new(labels: Vec<String>) -> Result<Self> {
        if labels.len() > MAX_LABELS {
            return Err(too_many_labels());
        }
        let labels: Vec<String> = labels.iter().map(|l| normalize_label(l)).collect();
        if labels.len() < 2 {
            return Err(DataError::Other(format!(
                "a classifier needs at least 2 labels, got {}: {labels:?}",
                labels.len()
            )));
        }
        let mut seen = std::collections::HashMap::new();
        for (i, l) in labels.iter().enumerate() {
            if l.is_empty() {
                return Err(DataError::Other(format!("label {i} is empty")));
            }
            if let Some(j) = seen.insert(l.as_str(), i) {
                return Err(DataError::Other(format!(
                    "label `{l}` appears twice (indices {j} and {i})"
                )));
            }
        }
        Ok(Self { labels })
    }

    /// `LABEL_0`, `LABEL_1`, ... (HF's names when a model has no label names); looked up
    /// case-insensitively like every label.
    pub fn placeholders(n: usize) -> Result<Self> {
        let mut map = Self::new((0..n).map(|i| format!("label_{i}")).collect())?;
        map.labels = (0..n).map(|i| format!("LABEL_{i}")).collect();
        Ok(map)
    }

    /// Reads a label file. Blank lines at the end are ignored; a blank line in the middle is an
    /// error because it would shift every index after it.
    pub fn read(path: &Path) -> Result<Self> {
        let text = bert_model::fsutil::read_text_limited(path, bert_model::fsutil::MAX_SMALL_FILE)
            .map_err(|e| DataError::io(path, e))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let lines: Vec<&str> = text.lines().collect();
        let last = lines.iter().rposition(|l| !l.trim().is_empty());
        let lines = &lines[..last.map_or(0, |i| i + 1)];
        if let Some(i) = lines.iter().position(|l| l.trim().is_empty()) {
            return Err(DataError::line(
                path,
                i as u64 + 1,
                "blank line in the label file (index = line number, so every line must hold a label)",
            ));
        }
        Self::new(lines.iter().map(|l| l.to_string()).collect())
            .map_err(|e| DataError::file(path, e.to_string()))
    }

    /// The labels of `table` in first-seen order (used when no label file is given).
    pub fn from_table(table: &Table) -> Result<Self> {
        let mut labels: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for row in &table.rows {
            if let Some(l) = &row.label
                && seen.insert(l.as_str())
            {
                if labels.len() == MAX_LABELS {
                    return Err(DataError::file(&table.path, too_many_labels().to_string()));
                }
                labels.push(l.clone());
            }
        }
        Self::new(labels).map_err(|e| DataError::file(&table.path, e.to_string()))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = self.labels.join("\n");
        text.push('\n');
        bert_model::fsutil::write_atomic(path, text.as_bytes())
            .map_err(|e| DataError::file(path, e.to_string()))
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.labels
    }

    pub fn name(&self, index: usize) -> &str {
        &self.labels[index]
    }

    pub fn index(&self, label: &str) -> Option<usize> {
        let label = normalize_label(label);
        self.labels.iter().position(|l| normalize_label(l) == label)
    }

    /// The class index of every row of `table`; an unknown label is an error naming its line
    /// and the labels expected.
    pub fn encode(&self, table: &Table) -> Result<Vec<usize>> {
        self.encode_with_hint(table, "")
    }

    /// [`LabelMap::encode`], whose error ends with `hint` (when not empty): what the caller's
    /// user can do about an unknown label, such as the setting that chooses the labels.
    pub fn encode_with_hint(&self, table: &Table, hint: &str) -> Result<Vec<usize>> {
        table
            .rows
            .iter()
            .map(|row| {
                let label = row.label.as_deref().unwrap_or_default();
                self.index(label).ok_or_else(|| {
                    let hint = if hint.is_empty() {
                        String::new()
                    } else {
                        format!("; {hint}")
                    };
                    DataError::line(
                        &table.path,
                        row.line,
                        format!(
                            "unknown label `{label}` (expected one of: {}{hint})",
                            self.listed()
                        ),
                    )
                })
            })
            .collect()
    }

    /// The labels, comma-separated; the first [`LISTED_LABELS`] of a longer list.
    pub fn listed(&self) -> String {
        let shown = self.labels[..self.labels.len().min(LISTED_LABELS)].join(", ");
        if self.labels.len() > LISTED_LABELS {
            format!("{shown}, ... ({} labels)", self.labels.len())
        } else {
            shown
        }
    }
}

/// How many labels an error message lists.
const LISTED_LABELS: usize = 20;

fn too_many_labels() -> DataError {
    DataError::Other(format!(
        "more than {MAX_LABELS} distinct labels: is the label column the right one?"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csv::CsvColumns;

    fn table(s: &str) -> Table {
        Table::parse(
            Path::new("d.csv"),
            s.as_bytes(),
            &CsvColumns::default(),
            true,
        )
        .unwrap()
    }

    #[test]
    fn file_order_is_the_index_and_labels_are_normalised() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tag.txt");
        std::fs::write(&p, "Clickbait\n not_clickbait \n\n").unwrap();
        let m = LabelMap::read(&p).unwrap();
        assert_eq!(m.names(), ["clickbait", "not_clickbait"]);
        let t = table("title,label\na,NOT_CLICKBAIT\nb, clickbait\n");
        assert_eq!(m.encode(&t).unwrap(), vec![1, 0]);
        m.write(&dir.path().join("out.txt")).unwrap();
        assert_eq!(LabelMap::read(&dir.path().join("out.txt")).unwrap(), m);
    }

    #[test]
    fn first_seen_order_without_a_file() {
        let t = table("title,label\na,标题党\nb,非标题党\nc,标题党\n");
        assert_eq!(
            LabelMap::from_table(&t).unwrap().names(),
            ["标题党", "非标题党"]
        );
    }

    #[test]
    fn errors() {
        let m = LabelMap::new(vec!["a".into(), "b".into()]).unwrap();
        let t = table("title,label\nx,a\ny,c\n");
        assert_eq!(
            m.encode(&t).unwrap_err().to_string(),
            "d.csv:3: unknown label `c` (expected one of: a, b)"
        );
        assert_eq!(
            m.encode_with_hint(&t, "set x to choose")
                .unwrap_err()
                .to_string(),
            "d.csv:3: unknown label `c` (expected one of: a, b; set x to choose)"
        );
        let many = LabelMap::new((0..25).map(|i| format!("l{i}")).collect()).unwrap();
        let e = many.encode(&t).unwrap_err().to_string();
        assert!(e.ends_with("l18, l19, ... (25 labels))"), "{e}");
        assert!(LabelMap::new(vec!["a".into(), "A ".into()]).is_err());
        assert!(LabelMap::new(vec!["a".into()]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tag.txt");
        std::fs::write(&p, "a\n\nb\n").unwrap();
        assert!(
            LabelMap::read(&p)
                .unwrap_err()
                .to_string()
                .ends_with("tag.txt:2: blank line in the label file (index = line number, so every line must hold a label)")
        );
        let missing = LabelMap::read(&dir.path().join("nope.txt")).unwrap_err();
        assert!(missing.to_string().contains("nope.txt"), "{missing}");
    }
}
