//! `trainer train`: fine-tune a classifier with burn-train's Learner.

use std::path::PathBuf;

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

/// The recipe: a run (new or resumed), the pretrained model, the data and the classifier, the
/// Learner, the best epoch kept.
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
    println!("{}", session.run.root.display());
    Ok(())
}
