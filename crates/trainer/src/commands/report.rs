//! `trainer report`: (re)writes a run's `report.html` (see [`crate::report`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::classifier::Classifier;
use crate::device::DeviceChoice;
use crate::evaluation::evaluate_csv;
use crate::report::{Options, analysis};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directory written by `trainer train`.
    #[arg(long)]
    pub run: PathBuf,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Labelled CSV to evaluate (default: the run's own validation split), with the run's
    /// text and label columns; its other columns can be named by --by-column.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Also show accuracy and row count by the values of this column of the data (the 20 most
    /// frequent values, the rest as "other").
    #[arg(long, value_name = "NAME")]
    pub by_column: Option<String>,
}

/// Evaluates the run's validation split (or --data) at its temperature and writes the page;
/// prints its path.
pub fn run(args: ReportArgs, choice: &DeviceChoice) -> Result<()> {
    crate::commands::check_batch_size(args.batch_size)?;
    let device = choice.device();
    let classifier = Classifier::load(&args.run, device)?;
    let dir = classifier
        .dir
        .clone()
        .unwrap_or_else(|| crate::run::RunDir::new(&args.run));
    let data = args.data.clone().unwrap_or_else(|| dir.valid_csv());
    let columns = classifier.config.data.columns();
    // A wrong column name fails before the model runs.
    let by_column = args
        .by_column
        .as_deref()
        .map(|name| analysis::read_column(&data, &columns.text, name))
        .transpose()?;
    let other_columns = analysis::other_columns(&data, &[&columns.text, &columns.label])?;
    let eval = evaluate_csv(&classifier, &data, &columns, args.batch_size, device)?;
    if let Some(column) = &by_column {
        anyhow::ensure!(
            column.of_row.len() == eval.rows,
            "{}: column `{}` has {} rows with a text, the evaluation {}",
            data.display(),
            column.name,
            column.of_row.len(),
            eval.rows
        );
    }
    let options = Options {
        data: args.data,
        other_columns,
        by_column,
    };
    let path = crate::report::write_with(&dir, &eval, &options)?;
    println!("{}", path.display());
    Ok(())
}
