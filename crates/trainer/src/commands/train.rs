//! `trainer train`: fine-tune a classifier with burn-train's Learner.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bert_data::ClassificationBatcher;
use clap::Args;

use crate::device::{DeviceChoice, Precision};
use crate::training::Session;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The recipe (TOML); see configs/.
    #[arg(long, default_value = "configs/default.toml")]
    pub config: PathBuf,
    /// Override a config key, e.g. `--set train.epochs=5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run directory (default: runs/<name>, or runs/<name>-N when taken).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue the interrupted run in --run-dir from its last finished epoch, with its own
    /// config, data split, data order and schedule.
    #[arg(long, requires = "run_dir")]
    pub resume: bool,
    /// Stop after this epoch (its checkpoint is saved); continue later with --resume.
    #[arg(long, value_name = "EPOCH")]
    pub stop_after: Option<usize>,
}

/// Said at the start of a run by a debug build (measured on this project: a debug build trains
/// at 57 samples/s, 3.3x slower than a release build).
pub const DEBUG_BUILD_NOTE: &str = "note: this is a debug build; a release build trains about 3x \
     faster: `cargo run --release -p trainer` (add `-- train ...` for other arguments)";

/// The recipe: a run (new or resumed), the data read and checked, the pretrained model, the
/// classifier, the Learner, the best epoch kept. Stdout is one line, the run directory.
pub fn run(args: TrainArgs, choice: &DeviceChoice) -> Result<()> {
    let mut session = if args.resume {
        let dir = args
            .run_dir
            .as_deref()
            .context("--resume needs --run-dir")?;
        Session::resume(dir, &args.overrides)?
    } else {
        Session::new(&args.config, &args.overrides, args.run_dir.as_deref())?
    };
    if cfg!(debug_assertions) {
        eprintln!("{DEBUG_BUILD_NOTE}");
    }
    // Bad data (an unknown label, a missing column, a malformed row) is reported now, not
    // after the model has loaded or downloaded.
    session.check_data()?;
    let train = &session.config.train;
    let devices = choice.for_training(train.device.as_deref(), &train.devices)?;
    crate::training::strategy::check(train.strategy, &devices)?;
    let precision = choice.set_precision(&devices, train.precision)?;
    // Its checkpoint holds weights and optimizer state of that precision.
    anyhow::ensure!(
        session.resume_from.is_none() || precision == train.precision,
        "--resume: the run trains in {}, not {precision}; resume it without --precision",
        train.precision
    );
    anyhow::ensure!(
        precision != Precision::F16,
        "precision f16: training is not supported (AdamW's second moments and epsilon underflow \
         in f16 and the loss turns NaN); train in bf16 or f32, and predict in f16 if you like"
    );
    session.config.train.precision = precision;
    let train = &session.config.train;
    for named in &devices {
        named.device.seed(train.seed);
    }
    let main = devices.first().context("no device to train on")?;
    let pretrained = session.load_model(main)?;
    let (data, model) = session.prepare(&pretrained, &devices)?;
    let batcher = ClassificationBatcher {
        pad_id: pretrained.tokenizer.pad_id(),
        max_length: pretrained.tokenizer.max_length().unwrap_or(usize::MAX),
    };
    let (result, history) = session.fit(data, model, batcher, &devices, args.stop_after)?;
    session.finish(result, &history, &pretrained)?;
    // The run is complete without these (probabilities are then the plain softmax): a failure
    // here is reported, not fatal.
    match session.calibrate(&pretrained, &main.device) {
        Ok(eval) => match crate::report::write(&session.run, &eval) {
            Ok(path) => eprintln!("report: {}", path.display()),
            Err(e) => eprintln!("warning: no report.html ({e:#})"),
        },
        Err(e) => {
            eprintln!("warning: not calibrated ({e:#}); probabilities are the uncalibrated softmax")
        }
    }
    // The directory may not be the README's `runs/<name>` (`runs/<name>-2` when that is
    // taken): the commands that use the run, with its actual path; the path itself is the last
    // line, on stdout.
    for line in next_steps(&session.run.root) {
        eprintln!("{line}");
    }
    println!("{}", session.run.root.display());
    Ok(())
}

/// What to run next with the run in `dir`, as lines to print.
fn next_steps(dir: &Path) -> Vec<String> {
    let run = shell_word(&dir.display().to_string());
    vec![
        format!("the run is in {}; use it with:", dir.display()),
        format!("  trainer predict --run {run} \"a headline\""),
        format!("  trainer eval --run {run}"),
        format!("  trainer serve --run {run}"),
    ]
}

/// `word` as one shell word: as it is when it holds only plain characters, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:+,=@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_steps_name_the_actual_run_directory_as_one_shell_word() {
        let lines = next_steps(Path::new("runs/default-2"));
        assert_eq!(lines[0], "the run is in runs/default-2; use it with:");
        assert_eq!(
            lines[1],
            "  trainer predict --run runs/default-2 \"a headline\""
        );
        assert!(
            lines[2..]
                .iter()
                .all(|l| l.contains("--run runs/default-2"))
        );
        assert_eq!(shell_word("my runs/it's"), r"'my runs/it'\''s'");
    }
}
