#!/usr/bin/env python3
"""Training throughput: frugal against PyTorch + transformers on the same model, batch and threads.

    python3 tools/bench_torch_train.py [--configs configs/demo.json bench/configs/bench-100m.json]
                                       [--batch 8] [--seq 256] [--threads 2] [--steps 5]

For each config, both sides train the same DeepseekV3 architecture without MTP (transformers
has no MTP head; our figure with MTP is in docs/performance.md separately):
  - frugal: ./build/bench_model (forward + backward + AdamW), median step, in --precision fp32
    and bf16 (the BF16 GEMM path it ran is printed: AMX / AVX512-BF16 / fallback);
  - PyTorch: transformers' DeepseekV3ForCausalLM, torch.optim.AdamW, the same B x T random
    tokens, torch.set_num_threads(threads); FP32, and BF16 autocast (torch.autocast("cpu",
    dtype=torch.bfloat16)), median step after warmup.
Prints a table with tokens/s and the ratio frugal / PyTorch for every pair of precisions, the
ratio of frugal bf16 to the better of PyTorch's two, and one JSON line per row.
Pinned versions: tools/requirements.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import transformers
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def no_mtp_config(path: str, tmpdir: str) -> str:
    with open(path) as f:
        cfg = json.load(f)
    cfg["num_nextn_predict_layers"] = 0
    out = os.path.join(tmpdir, os.path.basename(path).replace(".json", "-nomtp.json"))
    with open(out, "w") as f:
        json.dump(cfg, f)
    return out


def torch_steps(cfg_path: str, batch: int, seq: int, steps: int, warmup: int, bf16: bool, device: str = "cpu") -> float:
    with open(cfg_path) as f:
        raw = json.load(f)
    cfg = DeepseekV3Config(**{k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype")})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(cfg).float().train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=g).to(device)
    x, y = ids[:, :-1], ids[:, 1:]
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()  # the step ends when the GPU's work has
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def frugal_step(cfg_path: str, batch: int, seq: int, steps: int, threads: int, precision: str,
                device: str = "cpu", peak_tflops: float = 0, exe: str = "") -> dict:
    exe = exe or os.path.join(ROOT, "build", "bench_model")
    cmd = [exe, "--config", cfg_path, "--batch", str(batch), "--seq", str(seq), "--steps", str(steps), "--warmup", "2",
           "--threads", str(threads), "--precision", precision, "--device", device]
    if device != "cpu":
        cmd += ["--peak-tflops", str(int(peak_tflops))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    line = [l for l in out.splitlines() if l.startswith('{"bench": "model"')][-1]
    return json.loads(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=[os.path.join(ROOT, "configs/demo.json"),
                                                      os.path.join(ROOT, "bench/configs/bench-100m.json")])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: both sides on the GPU (frugal --device cuda; PyTorch .to('cuda'), BF16 autocast)")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the GPU's dense BF16 peak for frugal's MFU (989: H100 / H200 SXM)")
    ap.add_argument("--bench-model", default="", help="the bench_model to run (default build/bench_model)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tokens = args.batch * args.seq
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {args.threads}, "
          f"B={args.batch} T={args.seq}, bf16 supported by CPU: {torch.backends.mkldnn.is_available()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.configs:
            cfg = no_mtp_config(path, tmp)
            fr = {p: frugal_step(cfg, args.batch, args.seq, args.steps, args.threads, p, args.device, args.peak_tflops,
                                 args.bench_model) for p in ("fp32", "bf16")}
            torch_tps = {}
            for bf16 in (False, True):
                dt = torch_steps(cfg, args.batch, args.seq, args.steps, args.warmup, bf16, args.device)
                torch_tps["bf16-autocast" if bf16 else "fp32"] = tokens / dt
            for fp, f in fr.items():
                for tp, tps in torch_tps.items():
                    row = {"bench": "train_vs_torch", "device": args.device, "config": os.path.basename(path), "mtp": 0,
                           "batch": args.batch, "seq": args.seq, "threads": args.threads,
                           "torch_precision": tp, "torch_tokens_per_s": round(tps, 1), "frugal_precision": fp,
                           "frugal_gemm_path": f.get("gemm_path", "?"), "frugal_tokens_per_s": f["tokens_per_s"],
                           "frugal_mfu": f["fraction_of_peak"], "peak_gflops": f["peak_gflops"],
                           "ratio": round(f["tokens_per_s"] / tps, 2),
                           "torch": torch.__version__, "transformers": transformers.__version__}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            best = max(torch_tps.values())
            print(f"{os.path.basename(path)}: frugal bf16 / frugal fp32 = "
                  f"{fr['bf16']['tokens_per_s'] / fr['fp32']['tokens_per_s']:.2f}x; frugal bf16 / best PyTorch "
                  f"= {fr['bf16']['tokens_per_s'] / best:.2f}x (bf16 path: {fr['bf16'].get('gemm_path', '?')})",
                  flush=True)
    print()
    print(f"{'config':<22} {'frugal':<7} {'torch prec':<14} {'torch tok/s':>12} {'frugal tok/s':>13} "
          f"{'frugal MFU':>11} {'ratio':>7}")
    for r in rows:
        print(f"{r['config']:<22} {r['frugal_precision']:<7} {r['torch_precision']:<14} {r['torch_tokens_per_s']:>12.1f} "
              f"{r['frugal_tokens_per_s']:>13.1f} {100 * r['frugal_mfu']:>10.1f}% {r['ratio']:>6.2f}x")


if __name__ == "__main__":
    sys.exit(main())
