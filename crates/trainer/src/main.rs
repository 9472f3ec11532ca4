//! `trainer`: fine-tune, evaluate and use BERT text classifiers, built on Burn.
//!
//! The backend is chosen at build time by Cargo feature (`flex`, the default CPU backend, or
//! `cuda`); `BURN_DEVICE` picks among the compiled ones at run time.

mod commands;
mod device;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "trainer",
    version,
    about = "BERT text classification with parameter-efficient fine-tuning, on Burn"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print sentence embeddings, one JSON object per line.
    Embed(commands::embed::EmbedArgs),
    /// Measure forward-pass throughput of a model on this machine's backend.
    Bench(commands::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Embed(args)) => commands::embed::run(args),
        Some(Command::Bench(args)) => commands::bench::run(args),
        None => {
            eprintln!("error: no command given (try `trainer embed --help`)");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
