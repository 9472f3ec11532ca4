//! Property tests: any bytes given as a CSV or a label file read into rows or a clean error
//! naming the file, never a panic.

use bert_data::{CsvColumns, LabelMap, Table};
use proptest::prelude::*;

fn columns() -> CsvColumns {
    CsvColumns {
        text: "title".into(),
        label: "label".into(),
    }
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
