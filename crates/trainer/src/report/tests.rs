use super::*;

/// An evaluation of `n` items of two labels whose scores for label 0 rise with the index: label
/// 0 above 0.5, label 1 below, both wrong between 0.4 and 0.6.
fn evaluation(n: usize) -> Evaluation {
    let (mut logits, mut targets) = (Vec::new(), Vec::new());
    for i in 0..n {
        let p0 = (i as f32 + 0.5) / n as f32;
        let unsure = (0.4..0.6).contains(&p0);
        targets.push(usize::from((p0 < 0.5) != unsure));
        logits.push(vec![p0.ln(), (1.0 - p0).ln()]);
    }
    Evaluation::new(logits, targets, 1.0, 0.5)
}

fn run_dir(dir: &Path) -> RunDir {
    let run = RunDir::new(dir);
    std::fs::write(
        run.config(),
        "[peft]\nmethod = \"lora\"\n# <b>not markup</b>\n",
    )
    .unwrap();
    std::fs::write(run.labels(), "clickbait\nnot_clickbait\n").unwrap();
    let summary = serde_json::json!({
        "best_epoch": 2,
        "device": "flex",
        "params": {"trainable": 100, "total": 10000},
        "data": {"source": "data.csv", "rows_read": 100, "train": 80, "valid": 20,
                 "train_per_class": [40, 40], "valid_per_class": [10, 10]},
    });
    std::fs::write(run.summary(), summary.to_string()).unwrap();
    let epoch = |e: u64, loss: f64| {
        serde_json::json!({"epoch": e,
            "train": {"loss": loss, "accuracy": 0.8, "macro_f1": 0.79},
            "valid": {"loss": loss + 0.1, "accuracy": 0.85, "macro_f1": 0.84}})
    };
    let metrics = serde_json::json!({"epochs": [epoch(1, 0.6), epoch(2, 0.4)]});
    std::fs::write(run.metrics(), metrics.to_string()).unwrap();
    run
}

#[test]
fn the_page_has_every_section_and_escapes_the_recipe() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path());
    let path = write(&run, &evaluation(200)).unwrap();
    let html = std::fs::read_to_string(path).unwrap();
    // Loss, accuracy/F1, precision-recall, reliability.
    assert_eq!(html.matches("<svg").count(), 4, "{html}");
    for needle in [
        "Training",
        "precision-recall of \u{201c}clickbait\u{201d}",
        "true \\ predicted",
        "reliability (validation split)",
        "rows read",
        "&lt;b&gt;not markup&lt;/b&gt;",
        "No threshold saved",
        "At p ≥ 0.5",
    ] {
        assert!(html.contains(needle), "missing {needle:?}");
    }
    assert!(!html.contains("<b>not markup</b>"));
    // Self-contained: no scripts, stylesheets, images or fonts fetched from anywhere.
    for fetch in ["<script", "<link", "<img", "src=", "url(", "@import"] {
        assert!(!html.contains(fetch), "the page loads something: {fetch}");
    }
}

#[test]
fn a_saved_threshold_is_marked() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path());
    let threshold = serde_json::json!({"label": "clickbait", "threshold": 0.7,
        "target_precision": 0.9, "precision": 0.9, "recall": 0.5, "data": "valid.csv"});
    std::fs::write(run.threshold(), threshold.to_string()).unwrap();
    let html = std::fs::read_to_string(write(&run, &evaluation(200)).unwrap()).unwrap();
    assert!(
        html.contains("Saved threshold (<code>threshold.json</code>"),
        "{html}"
    );
    assert!(html.contains("saved threshold"));
}

#[test]
fn a_broken_run_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path());
    std::fs::write(run.metrics(), "{not json").unwrap();
    let err = write(&run, &evaluation(20)).unwrap_err();
    assert!(format!("{err:#}").contains("metrics.json"), "{err:#}");
    assert!(!run.report().exists());
}

#[test]
fn at_threshold_is_the_last_point_flagging_at_or_above_it() {
    let scores = [0.9, 0.8, 0.6, 0.4, 0.2];
    let truth = [true, true, false, true, false];
    let curve = pr_curve(&scores, &truth);
    let p = at_threshold(&curve, 0.5).unwrap();
    assert_eq!((p.threshold, p.flagged), (0.6, 3));
    assert!(at_threshold(&curve, 0.95).is_none());
}

/// `eval` with texts `text {i}` (one of them with markup), `i % 40 + 1` tokens each and a max
/// length of 32.
fn with_texts(mut eval: Evaluation) -> Evaluation {
    eval.texts = (0..eval.rows).map(|i| format!("text {i}")).collect();
    eval.lengths = (0..eval.rows)
        .map(|i| (i % 40 + 1).min(32) as u32)
        .collect();
    eval.max_length = Some(32);
    eval
}

/// The part of `html` from heading `h2` to the next `<h2>`.
fn section<'a>(html: &'a str, h2: &str) -> &'a str {
    let start = html
        .find(&format!("<h2>{h2}"))
        .unwrap_or_else(|| panic!("no section {h2:?}: {html}"));
    let rest = &html[start + 4..];
    &rest[..rest.find("<h2>").unwrap_or(rest.len())]
}

#[test]
fn the_most_confident_mistakes_of_each_kind_are_listed_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path());
    let mut eval = with_texts(evaluation(200));
    // Item 119 (p(clickbait) 0.5975, truly not) is the most confident false positive.
    eval.texts[119] = "<script>alert(1)</script> & \"more\"".into();
    let html = std::fs::read_to_string(write(&run, &eval).unwrap()).unwrap();
    let s = section(&html, "Most confident mistakes");
    assert!(
        s.contains("by the most probable label (no threshold saved)"),
        "{s}"
    );
    assert!(s.contains("40 of 200 rows are wrong"), "{s}");
    assert!(
        s.contains("False positives: decided <code>clickbait</code>, truly not (20 in all; the 15"),
        "{s}"
    );
    assert!(
        s.contains("False negatives: truly <code>clickbait</code>"),
        "{s}"
    );
    assert!(s.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;more&quot;"));
    assert!(!html.contains("<script"));
    // Most confident first: the false positives by p(clickbait) descending, the false
    // negatives ascending; 15 of each.
    let fp = &s[s.find("False positives").unwrap()..s.find("False negatives").unwrap()];
    let fn_ = &s[s.find("False negatives").unwrap()..];
    assert_eq!(fp.matches("<td class=\"t\">").count(), 15);
    assert_eq!(fn_.matches("<td class=\"t\">").count(), 15);
    let order = |part: &str, a: &str, b: &str| part.find(a).unwrap() < part.find(b).unwrap();
    assert!(order(fp, "&lt;script", "text 118"), "{fp}");
    assert!(order(fn_, "text 80<", "text 81<"), "{fn_}");
    assert!(!fp.contains("text 104<"), "the 15 most confident only");
    // Score of the predicted label and of the positive label, and the true label.
    assert!(
        fp.contains("<td class=\"l\">not_clickbait</td><td class=\"l\">clickbait</td><td>0.5975</td><td>0.5975</td>"),
        "{fp}"
    );
    assert!(
        fn_.contains("text 80</td><td class=\"l\">clickbait</td><td class=\"l\">not_clickbait</td><td>0.5975</td><td>0.4025</td>"),
        "{fn_}"
    );
}

#[test]
fn mistakes_follow_a_saved_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path());
    let threshold = serde_json::json!({"label": "clickbait", "threshold": 0.3,
        "target_precision": 0.9, "precision": 0.9, "recall": 0.5, "data": "valid.csv"});
    std::fs::write(run.threshold(), threshold.to_string()).unwrap();
    let html = std::fs::read_to_string(write(&run, &with_texts(evaluation(200))).unwrap()).unwrap();
    let s = section(&html, "Most confident mistakes");
    assert!(
        s.contains("by the saved threshold in <code>threshold.json</code>, <code>clickbait</code> when p(clickbait) ≥ 0.3000"),
        "{s}"
    );
    // Flagged from 0.3: items 60..=79 (p 0.30-0.40, truly not clickbait) are false positives
    // too, and there are no false negatives (every clickbait item has p ≥ 0.4).
    assert!(s.contains("40 of 200 rows are wrong"), "{s}");
    assert!(s.contains("(40 in all; the 15"), "{s}");
    assert!(s.contains("decided otherwise (0 in all)</h3>"), "{s}");
    assert!(s.contains(">none<"), "{s}");
}

#[test]
fn multi_class_mistakes_are_listed_overall() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path());
    std::fs::write(run.labels(), "sports\nnews\nweather\n").unwrap();
    let logits = vec![
        vec![0.9f32.ln(), 0.05f32.ln(), 0.05f32.ln()],
        vec![0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()],
        vec![0.1f32.ln(), 0.1f32.ln(), 0.8f32.ln()],
        vec![0.2f32.ln(), 0.7f32.ln(), 0.1f32.ln()],
    ];
    let eval = with_texts(Evaluation::new(logits, vec![1, 2, 2, 1], 1.0, 0.5));
    let html = std::fs::read_to_string(write(&run, &eval).unwrap()).unwrap();
    let s = section(&html, "Most confident mistakes");
    assert!(
        s.contains("The 2 mistakes with the highest p(predicted)"),
        "{s}"
    );
    assert!(!s.contains("False positives"));
    let first = s.find("text 0<").unwrap();
    assert!(first < s.find("text 1<").unwrap());
    assert!(
        s.contains(
            "text 0</td><td class=\"l\">news</td><td class=\"l\">sports</td><td>0.9000</td></tr>"
        ),
        "{s}"
    );
}

#[test]
fn accuracy_by_token_length() {
    assert_eq!(
        analysis::length_bounds(Some(32)),
        (vec![8, 16, 24, 32], false)
    );
    assert_eq!(
        analysis::length_bounds(Some(128)),
        (vec![8, 16, 24, 32], true)
    );
    assert_eq!(analysis::length_bounds(Some(20)), (vec![8, 16, 20], false));
    assert_eq!(
        analysis::length_bounds(Some(512)),
        (vec![32, 64, 96, 128], true)
    );
    assert_eq!(analysis::length_bounds(None), (vec![8, 16, 24, 32], true));
    let groups = analysis::by_length(
        &[1, 8, 9, 40, 200],
        &[true, false, true, true, false],
        Some(128),
    );
    let got: Vec<(&str, usize, usize)> = groups
        .iter()
        .map(|g| (g.name.as_str(), g.rows, g.correct))
        .collect();
    assert_eq!(
        got,
        [
            ("1-8", 2, 1),
            ("9-16", 1, 1),
            ("17-24", 0, 0),
            ("25-32", 0, 0),
            (">32", 2, 1)
        ]
    );

    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path());
    let html = std::fs::read_to_string(write(&run, &with_texts(evaluation(200))).unwrap()).unwrap();
    let s = section(&html, "Accuracy by text length");
    // Lengths 1..=40 capped at 32: 8 items of 40 in each of the first three buckets.
    assert!(s.contains("<td class=\"l\">1-8</td><td>40</td>"), "{s}");
    assert!(s.contains("<td class=\"l\">25-32</td><td>80</td>"), "{s}");
    assert!(
        s.contains("Texts are cut at 32 tokens; 45 reached it."),
        "{s}"
    );
}

#[test]
fn accuracy_by_a_column_of_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("data.csv");
    let mut text = String::from("\u{feff}title,label,source\n");
    for i in 0..30 {
        // source s0 x9, s1 x8 ... then 24 values once; one row without a text is skipped.
        let source = if i < 3 {
            "big".to_string()
        } else {
            format!("s{i:02}")
        };
        text.push_str(&format!("t{i},clickbait,{source}\n"));
    }
    text.push_str(",clickbait,skipped\n");
    std::fs::write(&csv, text).unwrap();
    let column = analysis::read_column(&csv, "title", "source").unwrap();
    assert_eq!(column.of_row.len(), 30);
    let correct: Vec<bool> = (0..30).map(|i| i % 3 != 0).collect();
    let groups = analysis::by_column(&column, &correct);
    assert_eq!(groups.len(), analysis::TOP_VALUES + 1);
    assert_eq!(
        (groups[0].name.as_str(), groups[0].rows, groups[0].correct),
        ("big", 3, 2)
    );
    let other = groups.last().unwrap();
    assert_eq!((other.name.as_str(), other.rows), ("other (8 values)", 8));
    assert_eq!(
        analysis::other_columns(&csv, &["title", "label"]).unwrap(),
        ["source"]
    );

    let err = analysis::read_column(&csv, "title", "feed").unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("--by-column feed: no such column"), "{msg}");
    assert!(msg.contains("(columns: title, label, source)"), "{msg}");
    assert_eq!(msg.lines().count(), 1);

    // On the page.
    std::fs::create_dir(tmp.path().join("run")).unwrap();
    let run = run_dir(&tmp.path().join("run"));
    let eval = with_texts(evaluation(30));
    let options = Options {
        data: Some(csv.clone()),
        other_columns: vec!["source".into()],
        by_column: Some(column),
    };
    let html = std::fs::read_to_string(write_with(&run, &eval, &options).unwrap()).unwrap();
    let s = section(&html, "Accuracy by text length and column");
    assert!(s.contains("<th class=\"l\">source</th>"), "{s}");
    assert!(s.contains("<td class=\"l\">big</td><td>3</td>"), "{s}");
    assert!(s.contains("other (8 values)"), "{s}");
    let options = Options {
        by_column: None,
        ..options
    };
    let html = std::fs::read_to_string(write_with(&run, &eval, &options).unwrap()).unwrap();
    assert!(
        html.contains("The data has other columns (<code>source</code>)"),
        "{html}"
    );
}

#[test]
fn a_peft_run_shows_its_adapter_beside_the_base_model() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path());
    let mut summary: Value =
        serde_json::from_str(&std::fs::read_to_string(run.summary()).unwrap()).unwrap();
    summary["params"] = serde_json::json!({"trainable": 296_450, "total": 102_564_482});
    std::fs::write(run.summary(), summary.to_string()).unwrap();
    std::fs::create_dir_all(run.peft_adapter()).unwrap();
    std::fs::write(
        run.peft_adapter().join("adapter_model.safetensors"),
        vec![0u8; 1_186_000],
    )
    .unwrap();
    let html = std::fs::read_to_string(write(&run, &evaluation(20)).unwrap()).unwrap();
    let s = section(&html, "Adapter");
    for needle in [
        "<code>lora</code>",
        "<td>296,450 (0.29% of all)</td>",
        "base model parameters (frozen)</th><td>102,268,032</td>",
        "<td>102,564,482</td>",
        "on disk (<code>adapter/adapter_model.safetensors</code>)</th><td>1,186,000 bytes (1.2 MB)</td>",
    ] {
        assert!(s.contains(needle), "missing {needle:?}: {s}");
    }
    // Full fine-tuning has no adapter section.
    std::fs::write(run.config(), "[peft]\nmethod = \"full\"\n").unwrap();
    let html = std::fs::read_to_string(write(&run, &evaluation(20)).unwrap()).unwrap();
    assert!(!html.contains("<h2>Adapter"));
}

#[test]
fn numbers_have_separators_and_prose_has_no_backticks() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path());
    let html =
        std::fs::read_to_string(write(&run, &with_texts(evaluation(6400))).unwrap()).unwrap();
    assert!(html.contains("6,400 rows"), "{html}");
    assert!(
        html.contains("<td style=\"background:rgba(31,119,180,0.48)\">2,560</td>"),
        "{html}"
    );
    assert!(html.contains("(<code>trainer eval --save-threshold</code>)"));
    // Outside the charts (whose SVG text is drawn, not markup), no backticks.
    let mut prose = html.clone();
    while let Some(start) = prose.find("<svg") {
        let end = prose[start..].find("</svg>").unwrap() + start + 6;
        prose.replace_range(start..end, "");
    }
    let prose = &prose[..prose.find("<h2>Recipe").unwrap()];
    assert!(!prose.contains('`'), "{prose}");
}
