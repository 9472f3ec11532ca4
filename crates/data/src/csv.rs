//! CSV files of labelled texts.
//!
//! The file must have a header row; the text and label columns are found by name (`title` and
//! `label` by default). Quoted fields may hold commas and newlines. A UTF-8 byte-order mark is
//! skipped; any other invalid UTF-8 is an error naming the line. Rows whose text is empty are
//! not errors: the reference drops them, so they are dropped here too, but counted and listed
//! by line so the caller can report them.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// Which columns hold the text and the label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvColumns {
    pub text: String,
    pub label: String,
}

impl Default for CsvColumns {
    fn default() -> Self {
        Self {
            text: "title".into(),
            label: "label".into(),
        }
    }
}

/// One usable row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// 1-based line of the file where the record starts (the header is line 1).
    pub line: u64,
    pub text: String,
    /// The label as written (trimmed, lower-cased); `None` when the file has no label column
    /// and none was required.
    pub label: Option<String>,
}

/// The rows of one file, plus the lines that were dropped for having no text.
#[derive(Debug, Clone)]
pub struct Table {
    pub path: PathBuf,
    pub rows: Vec<Row>,
    pub dropped_empty: Vec<u64>,
}

/// Labels are compared trimmed and lower-cased, as the reference does.
pub fn normalize_label(label: &str) -> String {
    label.trim().to_lowercase()
}

impl Table {
    /// Reads `path`; `require_label` makes a missing label column (or empty label) an error.
    pub fn read(path: &Path, columns: &CsvColumns, require_label: bool) -> Result<Self> {
        let bytes = bert_model::fsutil::read_limited(path, bert_model::fsutil::MAX_DATA_FILE)
            .map_err(|e| DataError::io(path, e))?;
        Self::parse(path, &bytes, columns, require_label)
    }

    /// Parses CSV bytes; `path` is only used in messages.
    pub fn parse(
        path: &Path,
        bytes: &[u8],
        columns: &CsvColumns,
        require_label: bool,
    ) -> Result<Self> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(bytes);
        let header = reader
            .byte_headers()
            .map_err(|e| csv_error(path, e))?
            .clone();
        if header.is_empty() {
            return Err(DataError::file(path, "empty file: expected a header row"));
        }
        let header: Vec<String> = header
            .iter()
            .map(|h| {
                std::str::from_utf8(h)
                    .map(|s| s.trim().to_string())
                    .map_err(|_| DataError::line(path, 1, "invalid UTF-8 in the header"))
            })
            .collect::<Result<_>>()?;
        let find = |name: &str| header.iter().position(|h| h == name);
        let text_col = find(&columns.text).ok_or_else(|| {
            DataError::line(
                path,
                1,
                format!(
                    "no column named `{}` (header has: {}); set the text column with `data.text_column`",
                    columns.text,
                    header.join(", ")
                ),
            )
        })?;
        let label_col = find(&columns.label);
        if require_label && label_col.is_none() {
            return Err(DataError::line(
                path,
                1,
                format!(
                    "no column named `{}` (header has: {}); set the label column with `data.label_column`",
                    columns.label,
                    header.join(", ")
                ),
            ));
        }

        let mut rows = Vec::new();
        let mut dropped_empty = Vec::new();
        let mut record = csv::ByteRecord::new();
        loop {
            match reader.read_byte_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(csv_error(path, e)),
            }
            let line = record.position().map_or(0, |p| p.line());
            let field = |i: usize, name: &str| -> Result<String> {
                let raw = record.get(i).unwrap_or_default();
                std::str::from_utf8(raw).map(str::to_string).map_err(|e| {
                    DataError::line(
                        path,
                        line,
                        format!(
                            "invalid UTF-8 in column `{name}` at byte {} of the field (is the file UTF-8?)",
                            e.valid_up_to()
                        ),
                    )
                })
            };
            let text = field(text_col, &columns.text)?;
            let label = match label_col {
                Some(i) => Some(normalize_label(&field(i, &columns.label)?)),
                None => None,
            };
            if text.trim().is_empty() {
                dropped_empty.push(line);
                continue;
            }
            if require_label && label.as_deref().is_none_or(str::is_empty) {
                return Err(DataError::line(
                    path,
                    line,
                    format!("empty value in column `{}`", columns.label),
                ));
            }
            rows.push(Row { line, text, label });
        }
        Ok(Self {
            path: path.to_path_buf(),
            rows,
            dropped_empty,
        })
    }
}

fn csv_error(path: &Path, e: csv::Error) -> DataError {
    let line = e.position().map(|p| p.line());
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("malformed CSV: {len} fields where the header has {expected_len}"),
        csv::ErrorKind::Io(err) => format!("cannot read: {err}"),
        _ => format!("malformed CSV: {e}"),
    };
    match line {
        Some(line) => DataError::line(path, line, message),
        None => DataError::file(path, message),
    }
}

/// Writes `header` + `records` as CSV to `path` atomically (temp file in the same directory,
/// then rename), quoting fields as needed.
pub fn write_csv(path: &Path, header: &[&str], records: &[Vec<&str>]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let map = |e: csv::Error| DataError::file(path, format!("cannot write CSV: {e}"));
    writer.write_record(header).map_err(map)?;
    for r in records {
        writer.write_record(r).map_err(map)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| DataError::file(path, format!("cannot write CSV: {e}")))?;
    bert_model::fsutil::write_atomic(path, &bytes).map_err(|e| DataError::file(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Result<Table> {
        Table::parse(Path::new("t.csv"), s, &CsvColumns::default(), true)
    }

    #[test]
    fn quoted_fields_bom_and_empty_titles() {
        let t = parse(
            b"\xEF\xBB\xBFtitle,label\n\"a, b\",X\n\"multi\nline\",y\n,x\n  ,y\n\xe4\xbd\xa0\xe5\xa5\xbd, Y \n",
        )
        .unwrap();
        let got: Vec<_> = t
            .rows
            .iter()
            .map(|r| (r.line, r.text.as_str(), r.label.as_deref().unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![(2, "a, b", "x"), (3, "multi\nline", "y"), (7, "你好", "y")]
        );
        assert_eq!(t.dropped_empty, vec![5, 6]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse(b"title,label\nok,x\n\xff\xfe,y\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.csv:3: invalid UTF-8 in column `title` at byte 0 of the field (is the file UTF-8?)"
        );
        let e = parse(b"title,label\nok,x\na,b,c\n").unwrap_err();
        assert!(e.to_string().starts_with("t.csv:3: malformed CSV"), "{e}");
        let e = parse(b"headline,label\nok,x\n").unwrap_err();
        assert!(e.to_string().contains("no column named `title`"), "{e}");
        let e = parse(b"title,label\nok,\n").unwrap_err();
        assert_eq!(e.to_string(), "t.csv:2: empty value in column `label`");
    }

    #[test]
    fn custom_columns_and_optional_label() {
        let cols = CsvColumns {
            text: "headline".into(),
            label: "y".into(),
        };
        let t = Table::parse(Path::new("t.csv"), b"id,headline\n1,hello\n", &cols, false).unwrap();
        assert_eq!(t.rows[0].text, "hello");
        assert_eq!(t.rows[0].label, None);
    }
}
