#!/usr/bin/env python3
"""AdamW reference for frugal's optimizer test: torch.optim.AdamW on the tensors of a
fixture model, with the parameter groups frugal uses.

    python3 tools/reference_adamw.py --model tests/fixtures/v3_qlora --out tests/fixtures/adamw

Groups: weight decay on matrices (ndim >= 2), none on norms and biases (ndim == 1);
`e_score_correction_bias` is not optimised (the balancer moves it). Gradients are a fixed
formula of (flat index, step) that tests/test_train.c evaluates identically:
    g[i] = 0.01 * sin(0.37 * i + 1.3 * step) + 0.001 * cos(0.11 * i),   step = 1, 2, 3
(computed in float64, rounded to float32). Writes expected.safetensors (parameters after
3 steps) and hparams.json.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
from safetensors.torch import load_file, save_file

STEPS = 3
HP = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def grad_for(numel: int, step: int) -> torch.Tensor:
    i = torch.arange(numel, dtype=torch.float64)
    return (0.01 * torch.sin(0.37 * i + 1.3 * step) + 0.001 * torch.cos(0.11 * i)).to(torch.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    tensors = load_file(os.path.join(args.model, "model.safetensors"))
    params = {}
    for name, t in sorted(tensors.items()):
        if "e_score_correction_bias" in name:
            continue
        # MTP layers' embed/head copies are the shared embedding/head in frugal
        if ".embed_tokens." in name and name.startswith("model.layers."):
            continue
        if ".shared_head.head." in name:
            continue
        params[name] = torch.nn.Parameter(t.to(torch.float32).clone())
    decay = [p for n, p in params.items() if p.ndim >= 2]
    no_decay = [p for n, p in params.items() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": HP["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=HP["lr"], betas=HP["betas"], eps=HP["eps"])
    for step in range(1, STEPS + 1):
        for p in params.values():
            p.grad = grad_for(p.numel(), step).reshape(p.shape)
        opt.step()
    os.makedirs(args.out, exist_ok=True)
    save_file({n: p.detach().contiguous() for n, p in params.items()}, os.path.join(args.out, "expected.safetensors"))
    with open(os.path.join(args.out, "hparams.json"), "w") as f:
        json.dump({"lr": HP["lr"], "beta1": HP["betas"][0], "beta2": HP["betas"][1], "eps": HP["eps"],
                   "weight_decay": HP["weight_decay"], "steps": STEPS, "model": os.path.basename(args.model),
                   "torch": torch.__version__}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
