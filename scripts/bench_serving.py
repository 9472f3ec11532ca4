"""Latency and throughput of classifying with a trained adapter: HF transformers + peft in
process, or `trainer serve` over HTTP, on the same texts (a run's validation titles).

    # transformers + peft (torch 2.4.1, transformers 4.44.2, peft 0.12.0), 2 threads:
    python scripts/bench_serving.py peft --model MODEL_DIR --adapter runs/en-lora/adapter \
        --texts runs/en-lora/valid.csv
    # a running `trainer serve --run runs/en-lora`:
    python scripts/bench_serving.py http --url http://127.0.0.1:8080 --texts runs/en-lora/valid.csv

Single-text latency: one text per call, sequentially (p50 / p99 over --n texts, after a
warm-up). Throughput: peft, batches of --batch texts; HTTP, --clients concurrent clients each
sending one text per request (what the server's micro-batching is for). Prints one JSON line.
"""

import argparse
import csv
import json
import threading
import time
import urllib.request


def texts_from(path, n, column="title"):
    with open(path, newline="", encoding="utf-8") as f:
        return [r[column] for r in csv.DictReader(f)][:n]


def stats(ms):
    ms = sorted(ms)
    pick = lambda q: ms[min(len(ms) - 1, round((len(ms) - 1) * q))]
    return {"p50": pick(0.5), "p99": pick(0.99), "mean": sum(ms) / len(ms)}


def bench_peft(args, texts):
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    cfg = json.load(open(f"{args.adapter}/adapter_config.json"))
    from safetensors.torch import load_file

    weights = load_file(f"{args.adapter}/adapter_model.safetensors")
    head = next(v for k, v in weights.items() if k.endswith("classifier.weight"))
    base = BertForSequenceClassification.from_pretrained(args.model, num_labels=head.shape[0])
    model = PeftModel.from_pretrained(base, args.adapter).eval().to(args.device)
    if cfg["peft_type"] == "LORA" and args.merge:
        model = model.merge_and_unload()

    def run(batch):
        with torch.no_grad():
            b = tok(batch, truncation=True, max_length=args.max_length, padding=True,
                    return_tensors="pt").to(args.device)
            return torch.softmax(model(**b).logits, -1).cpu()

    run(texts[:1])
    ms = []
    for t in texts:
        start = time.perf_counter()
        run([t])
        ms.append((time.perf_counter() - start) * 1e3)
    def batched_pass():
        start = time.perf_counter()
        for i in range(0, len(texts), args.batch):
            run(texts[i : i + args.batch])
        return len(texts) / (time.perf_counter() - start)

    # As `trainer bench --run`: the first pass, then the mean of two more (harmonic: texts/s).
    first = batched_pass()
    warm = [batched_pass() for _ in range(2)]
    return {
        "bench": "transformers+peft", "device": args.device, "peft_type": cfg["peft_type"],
        "texts": len(texts),
        "single_text_ms": stats(ms), "batch_size": args.batch,
        "batched_texts_per_s": len(warm) / sum(1 / r for r in warm),
        "batched_first_pass_texts_per_s": first,
    }


def post(url, texts):
    req = urllib.request.Request(
        f"{url}/v1/classify", data=json.dumps({"texts": texts}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def bench_http(args, texts):
    post(args.url, texts[:1])
    ms = []
    for t in texts:
        start = time.perf_counter()
        post(args.url, [t])
        ms.append((time.perf_counter() - start) * 1e3)
    work = list(texts)
    lock = threading.Lock()

    def client():
        while True:
            with lock:
                if not work:
                    return
                t = work.pop()
            post(args.url, [t])

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    secs = time.perf_counter() - start
    return {
        "bench": "trainer serve (HTTP)", "texts": len(texts), "single_text_ms": stats(ms),
        "clients": args.clients, "concurrent_texts_per_s": len(texts) / secs,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["peft", "http"])
    ap.add_argument("--texts", required=True, help="CSV with a `title` column")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--model")
    ap.add_argument("--adapter")
    ap.add_argument("--merge", action="store_true", help="peft: merge LoRA before timing")
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="peft: torch device (cpu, cuda, ...)")
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    texts = texts_from(args.texts, args.n)
    out = bench_peft(args, texts) if args.mode == "peft" else bench_http(args, texts)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
