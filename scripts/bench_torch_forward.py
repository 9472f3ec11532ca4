#!/usr/bin/env python3
"""PyTorch forward throughput for the same shape `trainer bench` measures (batch 128 x 32 tokens).

Pinned stack: pip install torch==2.4.1 transformers==4.44.2 "numpy<2"
    python scripts/bench_torch_forward.py --model-dir DIR [--batch-size 128 --seq-len 32 --iters 5]
"""
import argparse
import json
import time

import torch
from transformers import BertModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--iters", type=int, default=5)
    a = ap.parse_args()
    model = BertModel.from_pretrained(a.model_dir).eval()
    ids = (torch.arange(a.seq_len) + 1000).repeat(a.batch_size, 1)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
        start = time.perf_counter()
        for _ in range(a.iters):
            model(input_ids=ids, attention_mask=mask).last_hidden_state.sum().item()
        secs = (time.perf_counter() - start) / a.iters
    print(json.dumps({"bench": "forward", "device": f"torch {torch.__version__} cpu, {torch.get_num_threads()} threads",
                      "batch_size": a.batch_size, "seq_len": a.seq_len, "ms_per_batch": secs * 1e3,
                      "samples_per_s": a.batch_size / secs}))


if __name__ == "__main__":
    main()
