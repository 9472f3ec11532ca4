//! CSV files of labelled texts.
//!
//! The file must have a header row; the text and label columns are found by name (`title` and
//! `label` by default). Quoted fields may hold commas and newlines. A UTF-8 byte-order mark is
//! skipped; any other invalid UTF-8 is an error naming the line. Rows whose text is empty are
//! not errors: the reference drops them, so they are dropped here too, but counted and listed
//! by line so the caller can report them.
//!
//! Line numbers are the physical lines of the file where a record starts, counted from its
//! bytes (`\n`, `\r\n` and a lone `\r` each end a line; newlines inside quoted fields count):
//! the csv crate's own `Position::line` counts only `\n` and points a record at the end of the
//! line before it, so it is one short after a `\r\n` or a blank line, and always 1 in a file
//! with `\r` line ends.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// Which columns hold the text and the label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvColumns {
    pub text: String,
    pub label: String,
    /// How the user chooses the text and the label column, named when one is missing: a
    /// recipe's `data.text_column` / `data.label_column` (the default), or a command's flags.
    pub chosen_by: [&'static str; 2],
}

impl CsvColumns {
    /// Columns chosen by a recipe's `data.text_column` and `data.label_column`.
    pub fn new(text: impl Into<String>, label: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            label: label.into(),
            chosen_by: ["data.text_column", "data.label_column"],
        }
    }

    /// The same columns, chosen on a command line by these flags.
    pub fn chosen_by(self, text_flag: &'static str, label_flag: &'static str) -> Self {
        Self {
            chosen_by: [text_flag, label_flag],
            ..self
        }
    }
}

impl Default for CsvColumns {
    fn default() -> Self {
        Self::new("title", "label")
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
        let mut lines = LineIndex::new(bytes);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(bytes);
        let header = reader
            .byte_headers()
            .map_err(|e| csv_error(path, e, &mut lines))?
            .clone();
        let header_line = header.position().map_or(1, |p| lines.line_at(p.byte()));
        if header.is_empty() {
            return Err(DataError::file(path, "empty file: expected a header row"));
        }
        let header: Vec<String> = header
            .iter()
            .map(|h| {
                std::str::from_utf8(h)
                    .map(|s| s.trim().to_string())
                    .map_err(|_| DataError::line(path, header_line, "invalid UTF-8 in the header"))
            })
            .collect::<Result<_>>()?;
        let find = |name: &str| header.iter().position(|h| h == name);
        let text_col = find(&columns.text).ok_or_else(|| {
            DataError::line(
                path,
                header_line,
                format!(
                    "no column named `{}` (header has: {}); set the text column with `{}`",
                    columns.text,
                    header.join(", "),
                    columns.chosen_by[0]
                ),
            )
        })?;
        let label_col = find(&columns.label);
        if require_label && label_col.is_none() {
            return Err(DataError::line(
                path,
                header_line,
                format!(
                    "no column named `{}` (header has: {}); set the label column with `{}`",
                    columns.label,
                    header.join(", "),
                    columns.chosen_by[1]
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
                Err(e) => return Err(csv_error(path, e, &mut lines)),
            }
            let line = record.position().map_or(0, |p| lines.line_at(p.byte()));
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

/// Physical line numbers of byte offsets in a CSV file, counted forward from the last offset
/// asked about (records come in order, so the whole file is scanned once).
struct LineIndex<'a> {
    bytes: &'a [u8],
    /// Every line end before `offset` is counted in `line`.
    offset: usize,
    line: u64,
}

impl<'a> LineIndex<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            offset: 0,
            line: 1,
        }
    }

    /// The line of the record the csv crate places at byte `byte`: the csv reader places a
    /// record where the previous one stopped reading, which may be before the `\n` of a
    /// `\r\n` or before blank lines it skips, so the record starts at the first byte from
    /// there that is not a line end.
    fn line_at(&mut self, byte: u64) -> u64 {
        let bytes = self.bytes;
        let mut start = usize::try_from(byte).unwrap_or(usize::MAX).min(bytes.len());
        while start < bytes.len() && matches!(bytes[start], b'\r' | b'\n') {
            start += 1;
        }
        if start < self.offset {
            *self = Self::new(bytes);
        }
        for i in self.offset..start {
            let ends_line = match bytes[i] {
                b'\n' => true,
                // A `\r\n` is counted at its `\n`.
                b'\r' => bytes.get(i + 1) != Some(&b'\n'),
                _ => false,
            };
            self.line += u64::from(ends_line);
        }
        self.offset = start;
        self.line
    }
}

fn csv_error(path: &Path, e: csv::Error, lines: &mut LineIndex) -> DataError {
    let line = e.position().map(|p| lines.line_at(p.byte()));
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
        let cols = CsvColumns::new("headline", "y");
        let t = Table::parse(Path::new("t.csv"), b"id,headline\n1,hello\n", &cols, false).unwrap();
        assert_eq!(t.rows[0].text, "hello");
        assert_eq!(t.rows[0].label, None);
    }

    /// Rows and errors name the physical line where a record starts, whatever the line ends,
    /// after quoted fields holding escaped quotes or newlines, and after blank lines.
    #[test]
    fn lines_are_physical_lines_with_any_line_ends_and_quoting() {
        let lines = [
            "title,label",
            "plain,x",
            "\"say \"\"hi\"\" now\",y",
            "\"two",
            "lines\",x",
            "\"a, \"\"b\"\"\",y",
            "bad,x,extra",
        ];
        for end in ["\n", "\r\n", "\r"] {
            let text = lines.join(end);
            let e = parse(text.as_bytes()).unwrap_err();
            assert_eq!(
                e.to_string(),
                "t.csv:7: malformed CSV: 3 fields where the header has 2",
                "{end:?}"
            );
            let text = format!("{}{end}", text.replace("bad,x,extra", ",x"));
            let t = parse(text.as_bytes()).unwrap();
            let got: Vec<u64> = t.rows.iter().map(|r| r.line).collect();
            assert_eq!(got, [2, 3, 4, 6], "{end:?}");
            assert_eq!(t.rows[1].text, "say \"hi\" now");
            assert_eq!(t.dropped_empty, [7], "{end:?}");
            // The newline inside the quotes is the file's own.
            assert_eq!(t.rows[2].text, format!("two{end}lines"));
        }
        // Blank lines (skipped by the reader) still count, and so does a BOM-led CRLF header.
        let t = parse(b"\xEF\xBB\xBFtitle,label\r\n\r\na,x\r\n\r\n\r\nb,y\r\n").unwrap();
        let got: Vec<u64> = t.rows.iter().map(|r| r.line).collect();
        assert_eq!(got, [3, 6]);
        let e = parse(b"\ntitle,label\nok,\n").unwrap_err();
        assert_eq!(e.to_string(), "t.csv:3: empty value in column `label`");
        let e = parse(b"\r\n\r\nheadline,label\r\nok,x\r\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t.csv:3: no column named `title`"),
            "{e}"
        );
    }
}
