//! `trainer bench`: forward-pass throughput of a model, to compare backends and machines.

use std::time::Instant;

use anyhow::Result;
use bert_model::tokenizer::{Encoded, pad_batch};
use bert_model::{BertExtras, DEFAULT_MODEL, Pretrained};
use clap::Args;

use crate::commands::classifier::load_run;
use crate::device::DeviceChoice;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 32)]
    pub seq_len: usize,
    /// Timed iterations (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Instead: classification with a trained run, on the first `--texts` titles of its
    /// validation split: single-text latency (p50/p99) and batched throughput, as `predict`
    /// and `serve` run them (the first batched pass, and the mean of the two after it).
    #[arg(long)]
    pub run: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 300)]
    pub texts: usize,
}

pub fn run(args: BenchArgs, choice: &DeviceChoice) -> Result<()> {
    use crate::commands::check_count;
    check_count(
        "--batch-size",
        args.batch_size,
        crate::config::MAX_BATCH_SIZE,
    )?;
    check_count("--iters", args.iters, 100_000)?;
    check_count("--texts", args.texts, 1_000_000)?;
    check_count("--seq-len", args.seq_len, 1 << 16)?;
    if let Some(run) = &args.run {
        return classify(run, args.texts, args.batch_size, choice);
    }
    let device = choice.device();
    let precision = choice.set_inference_precision(Default::default())?;
    let pretrained = Pretrained::load(&args.model, args.seq_len, device)?;
    let units = choice.matrix_units(precision);
    let model = match &units {
        Some(units) => pretrained.model().clone().packed_for(units).0,
        None => pretrained.model().clone(),
    };
    let positions = pretrained.config.max_position_embeddings;
    anyhow::ensure!(
        args.seq_len <= positions,
        "--seq-len {} exceeds the model's {positions} positions (max_position_embeddings)",
        args.seq_len
    );
    let item = Encoded {
        input_ids: (0..args.seq_len)
            .map(|i| ((1000 + i) % pretrained.config.vocab_size) as u32)
            .collect(),
        token_type_ids: vec![0; args.seq_len],
    };
    let batch = vec![item; args.batch_size];
    let run_once = || {
        let input = pad_batch(&batch, 0, device);
        let out = model.forward(input, &BertExtras::default());
        // Reading a value back forces the (possibly asynchronous) backend to finish.
        let _ = out.last_hidden_state.sum().into_data();
    };
    run_once();
    let start = Instant::now();
    for _ in 0..args.iters {
        run_once();
    }
    let secs = start.elapsed().as_secs_f64() / args.iters as f64;
    let record = serde_json::json!({
        "bench": "forward",
        "device": choice.main.to_string(),
        "precision": precision_label(device, units.map(|u| u.describe())),
        "model": args.model,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "ms_per_batch": secs * 1e3,
        "samples_per_s": args.batch_size as f64 / secs,
    });
    println!("{record}");
    Ok(())
}

/// The device's float type, or `bf16 (oneDNN ...)` when the linears multiply in bf16 on the
/// CPU's matrix units.
fn precision_label(device: &burn::tensor::Device, bf16_products: Option<String>) -> String {
    match bf16_products {
        Some(products) => format!("bf16 ({products})"),
        None => format!("{:?}", device.settings().float_dtype).to_lowercase(),
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Timed batched passes after the first.
const WARM_PASSES: usize = 2;

fn classify(
    dir: &std::path::Path,
    n: usize,
    batch_size: usize,
    choice: &DeviceChoice,
) -> Result<()> {
    let device = choice.device();
    let run = load_run(dir, choice)?;
    let columns = run.config.data.columns();
    let valid = crate::run::RunDir::new(dir).valid_csv();
    let table = bert_data::Table::read(&valid, &columns, true)?;
    let texts: Vec<&str> = table.rows.iter().take(n).map(|r| r.text.as_str()).collect();
    anyhow::ensure!(!texts.is_empty(), "{}: no texts", valid.display());
    // Warm-up, then one text at a time.
    run.probabilities(&texts[..1], 1, device)?;
    let mut ms: Vec<f64> = texts
        .iter()
        .map(|t| {
            let start = Instant::now();
            run.probabilities(&[t], 1, device)
                .map(|_| start.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_>>()?;
    ms.sort_by(f64::total_cmp);
    // The first batched pass meets the batch shapes for the first time (a GPU backend compiles
    // and autotunes kernels for them); the throughput is the mean of the passes after it, as a
    // server under load runs.
    let pass = || -> Result<f64> {
        let start = Instant::now();
        run.probabilities(&texts, batch_size, device)?;
        Ok(texts.len() as f64 / start.elapsed().as_secs_f64())
    };
    let first = pass()?;
    let warm = (0..WARM_PASSES)
        .map(|_| pass())
        .collect::<Result<Vec<_>>>()?;
    let warm = warm.len() as f64 / warm.iter().map(|r| 1.0 / r).sum::<f64>();
    let record = serde_json::json!({
        "bench": "classify",
        "device": choice.main.to_string(),
        "precision": precision_label(device, run.bf16_products.clone()),
        "run": dir,
        "method": run.config.peft.name(),
        "texts": texts.len(),
        "single_text_ms": {"p50": percentile(&ms, 0.5), "p99": percentile(&ms, 0.99), "mean": ms.iter().sum::<f64>() / ms.len() as f64},
        "batch_size": batch_size,
        "batched_texts_per_s": warm,
        "batched_first_pass_texts_per_s": first,
    });
    println!("{record}");
    Ok(())
}
