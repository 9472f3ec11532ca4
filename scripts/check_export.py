"""Checks that a directory written by `trainer export` is a plain transformers classifier:
`BertForSequenceClassification.from_pretrained(DIR)` (no peft) gives the probabilities that
`trainer predict` gives for the run it was exported from, within 1e-4.

    pip install torch==2.4.1 transformers==4.44.2 "numpy<2" safetensors
    trainer export --run runs/en-lora --output exported
    trainer predict --run runs/en-lora --json < texts.txt > rust.jsonl
    python scripts/check_export.py --model exported --max-length 32 rust.jsonl
"""

import argparse
import json
import sys

import torch
from transformers import AutoTokenizer, BertForSequenceClassification


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="directory written by `trainer export`")
    ap.add_argument("--max-length", type=int, default=32, help="the run's model.max_length")
    ap.add_argument("rust_jsonl", help="output of `trainer predict --json`")
    args = ap.parse_args()

    rows = [json.loads(line) for line in open(args.rust_jsonl, encoding="utf-8") if line.strip()]
    texts = [r["text"] for r in rows]
    tok = AutoTokenizer.from_pretrained(args.model)
    model = BertForSequenceClassification.from_pretrained(args.model).eval()
    batch = tok(texts, truncation=True, max_length=args.max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**batch).logits, -1)
    id2label = model.config.id2label
    worst = 0.0
    for r, p in zip(rows, probs.tolist()):
        worst = max(worst, max(abs(a - b) for a, b in zip(r["probabilities"], p)))
        label = id2label[max(range(len(p)), key=p.__getitem__)]
        if label != r["label"]:
            print(f"label differs for {r['text']!r}: {label} vs {r['label']}")
    print(f"{len(rows)} texts, max |p_transformers - p_trainer| = {worst:.2e}")
    if worst > 1e-4:
        print("FAILED")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
