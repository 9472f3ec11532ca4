"""Checks a built `trainer` on each device against transformers + peft, with no Python ML stack:
the committed fixtures (tests/fixtures, made by tests/fixtures/make_fixtures.py with the pinned
stack) hold peft's probabilities for every adapter fixture and the base model's mean-pooled
embeddings. For each `--device`, runs `trainer predict` on each adapter and `trainer embed`,
and prints the largest difference from peft's numbers; exits 1 if one exceeds `--tol`.
`--precision f16` (or bf16) runs them in half precision: peft's numbers are f32, so this measures
the error that precision adds (give it a wider `--tol`).

    cargo build --release -p trainer --features wgpu
    python scripts/check_backend.py --device flex --device wgpu

Prints one JSON line per device, then a summary line.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def trainer(args, device, *cmd):
    out = subprocess.run([args.trainer, "--device", device, "--precision", args.precision, *cmd],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"trainer {' '.join(cmd[:1])} on {device}: {out.stderr.strip()}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def max_diff(rows, expected):
    return max(abs(a - b) for got, want in zip(rows, expected) for a, b in zip(got, want))


def check(args, device, expected):
    model = os.path.join(FIXTURES, "tiny-bert")
    texts = expected["texts"]
    result = {"device": device, "precision": args.precision, "adapters": {}}
    for adapter in expected["peft_adapters"]:
        rows = trainer(args, device, "predict", "--model", model, "--adapter",
                       os.path.join(FIXTURES, adapter["dir"]), "--json", *texts)
        result["adapters"][adapter["dir"]] = max_diff(
            [r["probabilities"] for r in rows], adapter["probabilities"])
    rows = trainer(args, device, "embed", "--model", model, *texts)
    result["embedding"] = max_diff([r["embedding"] for r in rows], expected["mean_pooled"])
    result["max_diff"] = max([result["embedding"], *result["adapters"].values()])
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trainer", default=os.path.join(ROOT, "target", "release", "trainer"))
    ap.add_argument("--device", action="append", help="repeatable; default: flex")
    ap.add_argument("--precision", default="f32", choices=["f32", "f16", "bf16"])
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    with open(os.path.join(FIXTURES, "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    failed = []
    for device in args.device or ["flex"]:
        try:
            result = check(args, device, expected)
        except RuntimeError as e:
            result = {"device": device, "error": str(e)}
        print(json.dumps(result), flush=True)
        if "error" in result or result["max_diff"] > args.tol:
            failed.append(device)
    print(json.dumps({"tolerance": args.tol, "failed": failed}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
