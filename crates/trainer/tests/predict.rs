//! `trainer predict` and the decision threshold, end to end on a tiny trained run (seconds):
//! JSON lines, stdin, CSV scoring that keeps every row, column and quote, and `eval
//! --save-threshold` changing what predict decides.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// A one-epoch prefix-tuning run of the tiny fixture model on 40 Chinese titles.
fn trained_run(dir: &Path) -> &'static str {
    write_titles(dir, 40);
    train_run(
        dir,
        "run",
        "method = \"prefix-tuning\"\nnum_virtual_tokens = 4",
        42,
    );
    "run"
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn predict_json_stdin_csv_and_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = trained_run(dir);
    let labels = ["标题党", "非标题党"];

    // Arguments, JSON lines.
    let texts = ["震惊！第一个秘密", "国务院发布通知", "Mixed 中文 text"];
    let mut args = vec!["predict", "--run", run, "--json"];
    args.extend(texts);
    let got = lines(&ok(&trainer(dir, &args)));
    assert_eq!(got.len(), 3);
    for (v, t) in got.iter().zip(texts) {
        assert_eq!(v["text"], t);
        let p: Vec<f64> = v["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(p.len(), 2);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        let best = if p[0] >= p[1] { 0 } else { 1 };
        assert_eq!(v["label"], labels[best]);
        assert!((v["score"].as_f64().unwrap() - p[best]).abs() < 1e-6);
    }

    // Stdin, one text per line; an empty line keeps its place with nulls.
    let from_stdin = lines(&ok(&trainer_stdin(
        dir,
        &["predict", "--run", run, "--json"],
        "震惊！第一个秘密\n\n国务院发布通知\n",
    )));
    assert_eq!(from_stdin.len(), 3);
    assert_eq!(from_stdin[0]["probabilities"], got[0]["probabilities"]);
    assert_eq!(from_stdin[1]["label"], Value::Null);
    assert_eq!(from_stdin[2]["probabilities"], got[1]["probabilities"]);

    // CSV: every row, in order, every column as it was (quotes, commas, newlines, Chinese).
    let input = "id,title,source\n\
                 1,\"震惊！第一个秘密\",\"a, b\"\n\
                 2,,empty title\n\
                 3,\"国务院发布通知\",\"line one\nline two\"\n\
                 4,\"Mixed 中文 text\",\"say \"\"hi\"\"\"\n";
    std::fs::write(dir.join("in.csv"), input).unwrap();
    let out = trainer(
        dir,
        &[
            "predict",
            "--run",
            run,
            "--input",
            "in.csv",
            "--output",
            "out/scored.csv",
        ],
    );
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("scored 3 row(s)") && stderr.contains("1 row(s) with an empty `title`"),
        "{stderr}"
    );
    let mut reader = csv::Reader::from_path(dir.join("out/scored.csv")).unwrap();
    let headers: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        headers,
        [
            "id",
            "title",
            "source",
            "label",
            "score",
            "p_标题党",
            "p_非标题党"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let mut original = csv::Reader::from_reader(input.as_bytes());
    let originals: Vec<csv::StringRecord> = original.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 4);
    for (row, orig) in rows.iter().zip(&originals) {
        assert_eq!(
            &row.iter().take(3).collect::<Vec<_>>(),
            &orig.iter().collect::<Vec<_>>()
        );
    }
    assert_eq!(&rows[1][3], "");
    for (row, v) in [&rows[0], &rows[2], &rows[3]].iter().zip(&got) {
        assert_eq!(&row[3], v["label"].as_str().unwrap());
        let p0: f64 = row[5].parse().unwrap();
        assert!((p0 - v["probabilities"][0].as_f64().unwrap()).abs() < 1e-5);
    }
    // No temp files left next to the output.
    assert_eq!(std::fs::read_dir(dir.join("out")).unwrap().count(), 1);

    // The threshold: eval finds and stores it; predict then flags by it.
    let report: Value = serde_json::from_str(
        ok(&trainer(
            dir,
            &[
                "eval",
                "--run",
                run,
                "--json",
                "--target-precision",
                "0.5",
                "--save-threshold",
            ],
        ))
        .trim(),
    )
    .unwrap();
    let pr = &report["precision_recall"];
    assert_eq!(pr["positive"], "标题党");
    let t = pr["threshold"]["threshold"].as_f64().unwrap();
    assert!(pr["threshold"]["precision"].as_f64().unwrap() >= 0.5);
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/threshold.json")).unwrap())
            .unwrap();
    assert_eq!(stored["label"], "标题党");
    assert!((stored["threshold"].as_f64().unwrap() - t).abs() < 1e-6);
    // Make the stored threshold decisive: just above the first text's p(标题党).
    let p0 = got[0]["probabilities"][0].as_f64().unwrap();
    let mut edited = stored.clone();
    edited["threshold"] = (p0 + 1e-4).into();
    std::fs::write(dir.join("run/threshold.json"), edited.to_string()).unwrap();
    let decided = lines(&ok(&trainer(
        dir,
        &["predict", "--run", run, "--json", texts[0]],
    )));
    assert_eq!(decided[0]["label"], "非标题党");
    edited["threshold"] = (p0 - 1e-4).into();
    std::fs::write(dir.join("run/threshold.json"), edited.to_string()).unwrap();
    let decided = lines(&ok(&trainer(
        dir,
        &["predict", "--run", run, "--json", texts[0]],
    )));
    assert_eq!(decided[0]["label"], "标题党");
}

#[test]
fn predict_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = trained_run(dir);
    std::fs::write(dir.join("nocol.csv"), "headline\nx\n").unwrap();
    let out = trainer(
        dir,
        &[
            "predict",
            "--run",
            run,
            "--input",
            "nocol.csv",
            "--output",
            "o.csv",
        ],
    );
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("no column `title`") && e.contains("headline"),
        "{e}"
    );
    assert!(!dir.join("o.csv").exists());
    std::fs::write(dir.join("bad.csv"), b"title\nok\n\xff\xfe\n").unwrap();
    let out = trainer(
        dir,
        &[
            "predict", "--run", run, "--input", "bad.csv", "--output", "o.csv",
        ],
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("bad.csv:3: invalid UTF-8"), "{e}");
    assert!(!dir.join("o.csv").exists());
}

/// `--model DIR` alone: a fine-tuned HF classifier (its own head, its `id2label` names); a base
/// model without a head is refused by name.
#[test]
fn predict_with_a_fine_tuned_hf_classifier() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = fixtures().join("tiny-bert");
    let out = ok(&trainer(
        dir,
        &[
            "predict",
            "--model",
            model.to_str().unwrap(),
            "--json",
            "震惊！这个标题党竟然如此离谱",
        ],
    ));
    let line = &lines(&out)[0];
    assert!(
        ["标题党", "非标题党"].contains(&line["label"].as_str().unwrap()),
        "{line}"
    );
    assert_eq!(line["probabilities"].as_array().unwrap().len(), 2);
    std::fs::write(dir.join("three.txt"), "a\nb\nc\n").unwrap();
    let out = trainer(
        dir,
        &[
            "predict",
            "--model",
            model.to_str().unwrap(),
            "--labels",
            "three.txt",
            "x",
        ],
    );
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("head has 2 labels, the label file three.txt has 3"),
        "{e}"
    );

    let bare = fixtures().join("tiny-bert-bare");
    let out = trainer(dir, &["predict", "--model", bare.to_str().unwrap(), "x"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("no classification head"), "{e}");
}

/// A batch split by rows across cores (`bert_model::parallel`; three threads force three
/// parts of 14, 14 and 12 texts) scores and evaluates every text as one text at a time does,
/// in input order.
#[test]
fn batches_split_across_cores_match_one_text_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = trained_run(dir);
    // Texts of many lengths, so each part pads to its own longest.
    let mut input = String::from("title\n");
    for i in 0..40 {
        input.push_str(&format!("{}第{i}个秘密\n", "震惊！".repeat(i % 5)));
    }
    std::fs::write(dir.join("in.csv"), &input).unwrap();
    let threads = [("RAYON_NUM_THREADS", "3")];
    let scored = |batch: &str, out: &str| {
        let args = [
            "predict",
            "--run",
            run,
            "--input",
            "in.csv",
            "--output",
            out,
            "--batch-size",
            batch,
        ];
        ok(&trainer_env(dir, &args, &threads));
        let mut reader = csv::Reader::from_path(dir.join(out)).unwrap();
        reader
            .records()
            .map(|r| {
                let r = r.unwrap();
                (r[0].to_string(), r[1].to_string(), r[3].parse().unwrap())
            })
            .collect::<Vec<(String, String, f64)>>()
    };
    let split = scored("64", "split.csv");
    let single = scored("1", "single.csv");
    assert_eq!(split.len(), 40);
    for (a, b) in split.iter().zip(&single) {
        assert_eq!((&a.0, &a.1), (&b.0, &b.1));
        assert!((a.2 - b.2).abs() < 1e-5, "{a:?} vs {b:?}");
    }

    let eval = |batch: &str| {
        let args = ["eval", "--run", run, "--data", "in_labelled.csv", "--json"];
        let args = [&args[..], &["--batch-size", batch]].concat();
        ok_json(&trainer_env(dir, &args, &threads))
    };
    let mut labelled = String::from("title,label\n");
    for (i, line) in input.lines().skip(1).enumerate() {
        labelled.push_str(&format!("{line},{}\n", ["标题党", "非标题党"][i % 2]));
    }
    std::fs::write(dir.join("in_labelled.csv"), labelled).unwrap();
    let (split, single) = (eval("64"), eval("1"));
    let loss = |v: &Value| v["loss"].as_f64().unwrap();
    assert!(
        (loss(&split) - loss(&single)).abs() < 1e-5,
        "{split} vs {single}"
    );
    assert_eq!(split["accuracy"], single["accuracy"]);
}

/// Under a saved threshold predict says so: a text line shows the positive label's probability
/// against the threshold (a label can come with a score under 0.5), `--json` adds
/// `threshold`, `positive` and `p_positive`, the CSV a `threshold` column; the same from a
/// model exported with the threshold in its config.json. Without one, output is as before.
#[test]
fn predict_shows_the_threshold_that_decided() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_titles(dir, 40);
    train_run(dir, "run", "method = \"lora\"", 42);
    let texts = ["震惊！第一个秘密", "国务院发布通知"];
    let predict = |extra: &[&str]| {
        let mut args = vec!["predict"];
        args.extend_from_slice(extra);
        args.extend(texts);
        ok(&trainer(dir, &args))
    };

    // No threshold: `label<TAB>score<TAB>text`, JSON without the threshold fields.
    let plain = lines(&predict(&["--run", "run", "--json"]));
    for v in &plain {
        for key in ["threshold", "positive", "p_positive"] {
            assert!(v.get(key).is_none(), "{v}");
        }
    }
    for line in predict(&["--run", "run"]).lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 3, "{line}");
        fields[1].parse::<f64>().unwrap();
    }

    // A threshold between the two texts' p(标题党): the first is flagged, the second not.
    let p: Vec<f32> = plain
        .iter()
        .map(|v| v["probabilities"][0].as_f64().unwrap() as f32)
        .collect();
    assert_ne!(p[0], p[1]);
    let (hi, lo) = if p[0] > p[1] { (0, 1) } else { (1, 0) };
    let t = (p[0] + p[1]) / 2.0;
    let threshold = serde_json::json!({"label": "标题党", "threshold": t, "target_precision": 0.9,
        "precision": 0.9, "recall": 0.5, "data": "v.csv"});
    std::fs::write(dir.join("run/threshold.json"), threshold.to_string()).unwrap();

    let check_json = |got: &[Value]| {
        for (i, v) in got.iter().enumerate() {
            assert_eq!(v["positive"], "标题党", "{v}");
            assert_eq!(v["threshold"].as_f64().unwrap() as f32, t, "{v}");
            assert_eq!(v["p_positive"], v["probabilities"][0], "{v}");
            let flagged = i == hi;
            assert_eq!(
                v["label"],
                if flagged { "标题党" } else { "非标题党" },
                "{v}"
            );
            assert_eq!(v["score"], v["probabilities"][usize::from(!flagged)], "{v}");
        }
        assert_eq!(got[lo]["label"], "非标题党");
    };
    check_json(&lines(&predict(&["--run", "run", "--json"])));

    let human = predict(&["--run", "run"]);
    let human: Vec<Vec<&str>> = human.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(human.len(), 2);
    for (i, fields) in human.iter().enumerate() {
        assert_eq!(fields.len(), 3, "{fields:?}");
        assert_eq!(fields[2], texts[i]);
        let (op, label) = if i == hi {
            (">=", "标题党")
        } else {
            ("< ", "非标题党")
        };
        assert_eq!(fields[0], label);
        let expected = format!("p(标题党)={:.4} {op} threshold {:.4}", p[i], t);
        // Four decimals unless the two would read equal.
        if format!("{:.4}", p[i]) != format!("{t:.4}") {
            assert_eq!(fields[1], expected);
        } else {
            assert!(
                fields[1].contains(&format!(" {op} threshold ")),
                "{fields:?}"
            );
        }
    }
    assert_eq!(human[0][1].len(), human[1][1].len());

    // CSV: a `threshold` column, as stored.
    std::fs::write(
        dir.join("in.csv"),
        format!("id,title\n1,{}\n2,\n3,{}\n", texts[0], texts[1]),
    )
    .unwrap();
    let out = trainer(
        dir,
        &[
            "predict", "--run", "run", "--input", "in.csv", "--output", "out.csv",
        ],
    );
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("threshold p(标题党) >= "), "{stderr}");
    let mut reader = csv::Reader::from_path(dir.join("out.csv")).unwrap();
    let headers: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        headers,
        [
            "id",
            "title",
            "label",
            "score",
            "p_标题党",
            "p_非标题党",
            "threshold"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 3);
    for (i, row) in [&rows[0], &rows[2]].iter().enumerate() {
        assert_eq!(row[6].parse::<f32>().unwrap(), t);
        assert_eq!(&row[2], if i == hi { "标题党" } else { "非标题党" });
    }
    assert!(rows[1][2].is_empty() && rows[1][6].is_empty());

    // Exported with the threshold in config.json: the same decisions, said the same way.
    ok(&trainer(
        dir,
        &["export", "--run", "run", "--output", "exported"],
    ));
    let exported = lines(&predict(&[
        "--model",
        "exported",
        "--max-length",
        "16",
        "--json",
    ]));
    check_json(&exported);
}

/// `eval --errors N`: the most confident false positives and false negatives of the positive
/// label, in the JSON under "errors" and after the printed report; `report --by-column`
/// breaks accuracy down by a column of `--data`, and names the columns when it has no such one.
#[test]
fn eval_lists_the_most_confident_mistakes_and_report_groups_by_a_column() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = trained_run(dir);
    // Every title twice, once with each label: each title is a mistake exactly once, a false
    // positive when the model flags it, else a false negative.
    let mut csv = String::from("title,label,source\n");
    for i in 0..40 {
        let title = if i % 2 == 0 {
            format!("震惊！你绝对想不到的第{i}个秘密")
        } else {
            format!("国务院发布第{i}号通知")
        };
        for label in ["标题党", "非标题党"] {
            csv.push_str(&format!("{title},{label},feed{}\n", i % 3));
        }
    }
    std::fs::write(dir.join("both.csv"), csv).unwrap();
    let args = ["eval", "--run", run, "--data", "both.csv", "--json"];
    let plain = ok_json(&trainer(dir, &args));
    assert!(plain.get("errors").is_none(), "errors only when asked for");
    let mut with = args.to_vec();
    with.extend(["--errors", "3"]);
    let report = ok_json(&trainer(dir, &with));
    let errors = &report["errors"];
    assert_eq!(errors["positive"], "标题党");
    assert_eq!(errors["decided_by"], "most probable label");
    let confusion = &report["confusion"];
    let count = |t: usize, p: usize| confusion[t][p].as_u64().unwrap() as usize;
    let (fp, fn_) = (
        errors["false_positives"].as_array().unwrap(),
        errors["false_negatives"].as_array().unwrap(),
    );
    assert_eq!(fp.len(), count(1, 0).min(3), "{errors}");
    assert_eq!(fn_.len(), count(0, 1).min(3), "{errors}");
    assert!(fp.len() + fn_.len() >= 3, "{errors}");
    let p = |v: &Value| v["p_positive"].as_f64().unwrap();
    for (items, truth, predicted) in [(fp, "非标题党", "标题党"), (fn_, "标题党", "非标题党")]
    {
        for m in items {
            assert_eq!(
                (m["label"].as_str(), m["predicted"].as_str()),
                (Some(truth), Some(predicted))
            );
            let text = m["text"].as_str().unwrap();
            assert!(text.contains("秘密") || text.contains("通知"), "{m}");
        }
    }
    // Most confident first: the flagged by p(positive) descending, the missed ascending.
    assert!(fp.windows(2).all(|w| p(&w[0]) >= p(&w[1])), "{errors}");
    assert!(fn_.windows(2).all(|w| p(&w[0]) <= p(&w[1])), "{errors}");
    assert!(fp.iter().all(|m| p(m) >= 0.5) && fn_.iter().all(|m| p(m) < 0.5));

    // The printed report ends with them.
    let text = ok(&trainer(
        dir,
        &["eval", "--run", run, "--data", "both.csv", "--errors", "2"],
    ));
    assert!(
        text.contains(
            "most confident mistakes, decided as predict decides: by the most probable label"
        ),
        "{text}"
    );
    assert!(
        text.contains("false positives (decided `标题党`, truly not)"),
        "{text}"
    );
    assert!(
        text.contains("false negatives (truly `标题党`, decided otherwise)"),
        "{text}"
    );

    // report --by-column: a column of --data, or a one-line error naming those there are.
    only_error_line(
        &trainer(
            dir,
            &[
                "report",
                "--run",
                run,
                "--data",
                "both.csv",
                "--by-column",
                "feed",
            ],
        ),
        &[
            "--by-column feed",
            "no such column",
            "columns: title, label, source",
        ],
    );
    ok(&trainer(
        dir,
        &[
            "report",
            "--run",
            run,
            "--data",
            "both.csv",
            "--by-column",
            "source",
        ],
    ));
    let html = std::fs::read_to_string(dir.join(run).join("report.html")).unwrap();
    assert!(html.contains("<h2>Accuracy by text length and column</h2>"));
    assert!(
        html.contains("<td class=\"l\">feed0</td><td>28</td>"),
        "{html}"
    );
    assert!(html.contains("<h2>Most confident mistakes</h2>"));
    assert!(html.contains("40 of 80 rows are wrong"), "{html}");
    assert!(html.contains("<h2>Adapter</h2>"));
}

/// `--precision bf16` on Flex multiplies the encoder's linears in bf16 on the CPU's matrix
/// units where it has them (oneDNN): probabilities within 2e-2 of f32's (the tolerance of the
/// model crate's bf16 tests), the same labels wherever f32 is not within that of a tie, and
/// stderr and `bench` say what multiplied. Without matrix units stderr says why f32 did (and
/// `BERT_REQUIRE_MATRIX_UNITS`, set by CI where the CPU has them, makes that a failure).
#[test]
fn bf16_predictions_are_the_f32_ones_within_bf16_rounding() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = trained_run(dir);
    let mut input = String::new();
    for i in 0..40 {
        input.push_str(&format!("{}第{i}个秘密\n", "震惊！".repeat(i % 5)));
    }
    let predict = |precision: &str| {
        let args = ["predict", "--run", run, "--json", "--precision", precision];
        let out = trainer_stdin(dir, &args, &input);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (lines(&ok(&out)), stderr)
    };
    let ((f32s, _), (bf16s, stderr)) = (predict("f32"), predict("bf16"));
    let on_units = stderr.contains("bf16 products on the CPU's matrix units (oneDNN");
    if std::env::var_os("BERT_REQUIRE_MATRIX_UNITS").is_some() {
        assert!(on_units, "{stderr}");
    }
    assert!(
        on_units || stderr.contains("multiplying in f32"),
        "{stderr}"
    );
    assert_eq!(f32s.len(), 40);
    let p = |v: &Value| v["probabilities"][0].as_f64().unwrap();
    let mut differ = false;
    for (a, b) in f32s.iter().zip(&bf16s) {
        assert!((p(a) - p(b)).abs() < 2e-2, "{a} against {b}");
        if (p(a) - 0.5).abs() > 2e-2 {
            assert_eq!(a["label"], b["label"], "{a} against {b}");
        }
        differ |= p(a) != p(b);
    }
    assert_eq!(
        differ, on_units,
        "bf16 products change the probabilities slightly"
    );

    let bench = ["bench", "--run", run, "--texts", "8", "--precision", "bf16"];
    let record = ok_json(&trainer(dir, &bench));
    let precision = record["precision"].as_str().unwrap();
    assert_eq!(precision.starts_with("bf16 (oneDNN"), on_units, "{record}");
}
