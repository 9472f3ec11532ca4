//! `trainer`: fine-tune, evaluate and use BERT text classifiers, built on Burn.
//!
//! The backend is chosen at build time by Cargo feature (`flex`, the default CPU backend, `cuda`,
//! `wgpu`, `vulkan`, `metal`, `ndarray` or `cpu`); `--device` or `BURN_DEVICE` picks among the
//! compiled ones at run time.

mod calibration;
mod checkpoint;
mod classifier;
mod commands;
mod config;
#[cfg(feature = "cuda")]
mod cuda_driver;
mod decision;
mod device;
mod evaluation;
mod lines;
mod metrics;
mod probability;
mod progress;
mod renderer;
mod report;
mod run;
mod schedule;
mod threshold;
mod training;

use std::process::ExitCode;

/// mimalloc, never returning freed memory to the OS (see [`keep_freed_memory`]), instead of
/// glibc's malloc: a forward and backward pass allocate and free hundreds of tensor buffers of a
/// few MB each, which glibc unmaps and then takes back page by page (page faults, zeroing and
/// their locks were ~15% of a training profile on Flex).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns off mimalloc's purging of freed memory, so the process keeps its high-water mark
/// (about 0.9 GB while training MiniLM at batch 128) and reuses it without page faults.
fn keep_freed_memory() {
    /// `mi_option_purge_delay` in mimalloc.h (the same index in mimalloc 2 and 3); -1 = never.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets a process-wide integer option; mimalloc reads it on its next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

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
    /// Compute device: flex, cpu, ndarray, cuda[:N], wgpu|vulkan|metal[:N|:cpu], among those
    /// this binary was built with (default: BURN_DEVICE, else the first compiled one, GPUs
    /// first).
    #[arg(long, global = true, value_name = "DEVICE")]
    device: Option<String>,
    /// Float type: f32, f16 or bf16 (default: the run's or recipe's `train.precision`, else
    /// f32). On GPUs it is the type of weights and activations. On the CPU (Flex), bf16 for
    /// predict, eval, serve, bench and export keeps f32 tensors and multiplies the linear layers
    /// in bf16 on the CPU's matrix units (AMX or AVX512-BF16, through oneDNN 2.x:
    /// `apt-get install libdnnl2`), about 2x f32's speed; where those are missing it says why
    /// and multiplies in f32. Training on Flex in f16 or bf16 is slower than f32.
    #[arg(long, global = true, value_name = "TYPE")]
    precision: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fine-tune a classifier from a recipe (configs/*.toml); prints the run directory last.
    Train(commands::train::TrainArgs),
    /// Evaluate a trained run on a labelled CSV (default: its validation split).
    Eval(commands::eval::EvalArgs),
    /// Classify texts (arguments or stdin), or score a CSV with --input/--output.
    Predict(commands::predict::PredictArgs),
    /// Serve classification over HTTP (JSON), several adapters on one base model.
    Serve(commands::serve::ServeArgs),
    /// Write a LoRA or fully fine-tuned classifier as a plain HF model directory (no peft).
    Export(commands::export::ExportArgs),
    /// Print sentence embeddings, one JSON object per line.
    Embed(commands::embed::EmbedArgs),
    /// Measure forward-pass throughput of a model on this machine's backend.
    Bench(commands::bench::BenchArgs),
    /// Write a run's report.html: curves per epoch, precision-recall, confusion, calibration.
    Report(commands::report::ReportArgs),
}

/// Restores the default action of SIGPIPE, which Rust's runtime ignores: a command whose
/// stdout is a closed pipe (`trainer eval --json | head -c1`) then ends quietly, as Unix tools
/// do, instead of panicking on its next `println!`. Not for `serve`, whose sockets must never
/// end the process.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: sets a signal's disposition to its default, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    if !matches!(cli.command, Some(Command::Serve(_))) {
        quiet_on_closed_pipe();
    }
    let choice =
        match device::DeviceChoice::resolve(cli.device.as_deref(), cli.precision.as_deref()) {
            Ok(choice) => choice,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        };
    let result = match cli.command {
        Some(Command::Train(args)) => commands::train::run(args, &choice),
        Some(Command::Eval(args)) => commands::eval::run(args, &choice),
        Some(Command::Predict(args)) => commands::predict::run(args, &choice),
        Some(Command::Serve(args)) => commands::serve::run(args, &choice),
        Some(Command::Export(args)) => commands::export::run(args, &choice),
        Some(Command::Embed(args)) => commands::embed::run(args, &choice),
        Some(Command::Bench(args)) => commands::bench::run(args, &choice),
        Some(Command::Report(args)) => commands::report::run(args, &choice),
        // No command: the default recipe, so `cargo run --release -p trainer` trains.
        None => commands::train::run(
            commands::train::TrainArgs {
                config: "configs/default.toml".into(),
                overrides: vec![],
                run_dir: None,
                resume: false,
                stop_after: None,
            },
            &choice,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
