//! `trainer report`: (re)writes a run's `report.html` (see [`crate::report`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::classifier::Classifier;
use crate::device::DeviceChoice;
use crate::evaluation::evaluate_csv;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directory written by `trainer train`.
    #[arg(long)]
    pub run: PathBuf,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
}

/// Evaluates the run's validation split at its temperature and writes the page; prints its path.
pub fn run(args: ReportArgs, choice: &DeviceChoice) -> Result<()> {
    crate::commands::check_batch_size(args.batch_size)?;
    let device = choice.device();
    let classifier = Classifier::load(&args.run, device)?;
    let dir = classifier
        .dir
        .clone()
        .unwrap_or_else(|| crate::run::RunDir::new(&args.run));
    let eval = evaluate_csv(
        &classifier,
        &dir.valid_csv(),
        &classifier.config.data.columns(),
        args.batch_size,
        device,
    )?;
    let path = crate::report::write(&dir, &eval)?;
    println!("{}", path.display());
    Ok(())
}
