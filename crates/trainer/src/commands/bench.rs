//! `trainer bench`: forward-pass throughput of a model, to compare backends and machines.

use std::time::Instant;

use anyhow::Result;
use bert_model::tokenizer::{Encoded, pad_batch};
use bert_model::{BertExtras, DEFAULT_MODEL, Pretrained};
use clap::Args;

use crate::device::{describe, device};

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
}

pub fn run(args: BenchArgs) -> Result<()> {
    let device = device();
    let pretrained = Pretrained::load(&args.model, args.seq_len, &device)?;
    let item = Encoded {
        input_ids: (0..args.seq_len as u32).map(|i| 1000 + i).collect(),
        token_type_ids: vec![0; args.seq_len],
    };
    let batch = vec![item; args.batch_size];
    let run_once = || {
        let input = pad_batch(&batch, 0, &device);
        let out = pretrained.model().forward(input, &BertExtras::default());
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
        "device": describe(&device),
        "model": args.model,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "ms_per_batch": secs * 1e3,
        "samples_per_s": args.batch_size as f64 / secs,
    });
    println!("{record}");
    Ok(())
}
