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
        "precision-recall of `clickbait`",
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
    assert!(html.contains("Saved threshold (threshold.json"), "{html}");
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
