#!/usr/bin/env python3
"""Checks that a frugal checkpoint folder is a working Hugging Face model folder: transformers
loads the model and the tokenizer, and its mean next-token loss on a text equals the loss
`frugal eval` prints for the same token ids (relative tolerance 1e-5, FP32).

    python3 tools/check_hf_checkpoint.py RUN_DIR/ckpt-NNNNNNNN [--text "..."] [--frugal build/frugal]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--text", default="In the beginning God created the heaven and the earth. And the earth was without form, and void.")
    ap.add_argument("--frugal", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "frugal"))
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    ids = tok(args.text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model(torch.tensor([ids]), labels=torch.tensor([ids]))
    hf_loss = float(out.loss)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(" ".join(map(str, ids)) + "\n")
        path = f.name
    res = subprocess.run([args.frugal, "eval", "--model", args.model, "--tokens", path], capture_output=True, text=True)
    os.unlink(path)
    if res.returncode != 0:
        print(res.stderr, file=sys.stderr)
        return 1
    fr_loss = float(res.stdout.split()[1])
    rel = abs(fr_loss - hf_loss) / abs(hf_loss)
    print(f"{len(ids)} tokens: transformers loss {hf_loss:.7f}, frugal eval {fr_loss:.7f}, relative difference {rel:.2e} (tolerance 1e-5)")
    return 0 if rel <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
