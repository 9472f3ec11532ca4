//! Property tests: any bytes given as a CSV or a label file read into rows or a clean error
//! naming the file, never a panic.

use bert_data::{CsvColumns, LabelMap, Table};
use proptest::prelude::*;

fn columns() -> CsvColumns {
    CsvColumns::default()
}

/// Bytes that look like a CSV often enough to reach past the header: a header line, then
/// fragments of quotes, commas, newlines, BOMs, invalid UTF-8 and text.
fn csv_like() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"\"".to_vec()),
        Just(b",".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just("\u{feff}".as_bytes().to_vec()),
        Just(vec![0xff, 0xfe]),
        Just("标题".as_bytes().to_vec()),
        Just(b"a".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    let head = prop_oneof![
        Just(b"title,label\n".to_vec()),
        Just(Vec::new()),
        Just(b"label,title,x\n".to_vec()),
    ];
    (head, proptest::collection::vec(piece, 0..40)).prop_map(|(head, pieces)| {
        head.into_iter()
            .chain(pieces.into_iter().flatten())
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn any_csv_reads_or_fails_cleanly(bytes in csv_like(), require_label in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        std::fs::write(&path, &bytes).unwrap();
        match Table::read(&path, &columns(), require_label) {
            Ok(table) => {
                prop_assert!(table.rows.iter().all(|r| !r.text.trim().is_empty()));
                if let Ok(labels) = LabelMap::from_table(&table) {
                    prop_assert!(labels.encode(&table).is_ok());
                }
            }
            Err(e) => prop_assert!(e.to_string().contains("data.csv"), "{}", e),
        }
    }

    #[test]
    fn any_label_file_reads_or_fails_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.txt");
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = LabelMap::read(&path) {
            prop_assert!(e.to_string().contains("labels.txt"), "{}", e);
        }
    }
}

/// One field as written in the file and the physical lines it spans: plain, quoted with a
/// comma or escaped quotes, or quoted across a line end.
fn field() -> impl Strategy<Value = (String, u64)> {
    prop_oneof![
        Just(("plain".to_string(), 0)),
        Just(("\"a, b\"".to_string(), 0)),
        Just(("\"say \"\"hi\"\"\"".to_string(), 0)),
        Just(("\"two\nlines\"".to_string(), 1)),
        Just(("\"two\r\nlines \"\"q\"\"\"".to_string(), 1)),
        Just(("\"three\rshort\nlines\"".to_string(), 2)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every row is reported at the physical line where it starts, with any mix of `\n`,
    /// `\r\n` and `\r` line ends, blank lines, and quoted fields spanning lines before it.
    #[test]
    fn rows_are_reported_at_their_physical_line(
        rows in proptest::collection::vec((field(), 0..3usize, any::<bool>()), 1..12),
        header_end in 0..3usize,
    ) {
        let ends = ["\n", "\r\n", "\r"];
        let mut text = format!("title,label{}", ends[header_end]);
        let mut line = 2;
        let mut expected = Vec::new();
        for ((title, spans), end, blank_after) in &rows {
            expected.push(line);
            text.push_str(&format!("{title},x{}", ends[*end]));
            line += spans + 1;
            if *blank_after {
                text.push_str(ends[*end]);
                line += 1;
            }
        }
        let t = Table::parse(std::path::Path::new("d.csv"), text.as_bytes(), &columns(), true)
            .unwrap();
        let got: Vec<u64> = t.rows.iter().map(|r| r.line).collect();
        prop_assert_eq!(got, expected, "{:?}", text);
    }
}
