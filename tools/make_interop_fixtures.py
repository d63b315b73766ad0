#!/usr/bin/env python3
"""Generates the interoperability fixtures of tests/test_interop.c (pinned: tools/requirements.txt).

    python3 tools/make_interop_fixtures.py --out tests/fixtures --test-bin build/test_interop

fp8/       DeepSeek's FP8 release format, made from a BF16 folder:
  bf16/      a tiny DeepseekV3 (transformers, fixed seed) saved in BF16
  fp8/       the same weights as the official DeepSeek-V3 checkpoints store them: every linear
             weight of the decoder layers as float8_e4m3fn plus `weight_scale_inv` (F32, one per
             128x128 block, W = fp8 * scale_inv, scale = amax(block) / 448), embeddings, norms,
             routers and the correction bias unquantized; config.json with
             quantization_config; two shards + model.safetensors.index.json
  reference.safetensors  input_ids, logits of transformers (FP32) on the BF16 weights
             ("logits_bf16") and on the dequantized FP8 weights ("logits_fp8")
  The seed is chosen so that both models route every token to the same experts (a flip
  would make the logits differ by more than FP8 rounding, for a reason unrelated to it).

hf_export/ a folder written by frugal (test_interop --write-hf-export: fr_model_create with a
  fixed seed + fr_model_save, tokenizer saved by fr_tokenizer_save), then loaded here with
  AutoModelForCausalLM / AutoTokenizer: reference.safetensors holds input_ids (transformers'
  encoding of text.txt) and transformers' FP32 logits.

Python is a test tool only; the product is the C library.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, DeepseekV3Config

BLOCK = 128
FP8_MAX = 448.0
TEXT = "In the beginning God created the heaven and the earth. And the earth was without form, and void."

FP8_CFG = dict(
    vocab_size=96, hidden_size=160, num_attention_heads=2, num_key_value_heads=2,
    q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
    intermediate_size=288, moe_intermediate_size=32, num_hidden_layers=2, first_k_dense_replace=1,
    moe_layer_freq=1, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, n_group=2,
    topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True, scoring_func="sigmoid",
    topk_method="noaux_tc", max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
    rope_interleave=True, rope_scaling=None, attention_bias=False, hidden_act="silu",
    initializer_range=0.05, tie_word_embeddings=False, num_nextn_predict_layers=0,
    bos_token_id=0, eos_token_id=1,
)


def is_quantized(name: str, t: torch.Tensor) -> bool:
    """The linear weights DeepSeek-V3 ships in FP8: 2-D weights of the decoder layers except the router."""
    return (t.ndim == 2 and name.startswith("model.layers.") and name.endswith(".weight")
            and not name.endswith("mlp.gate.weight"))


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.float()
    rows, cols = w.shape
    sr, sc = (rows + BLOCK - 1) // BLOCK, (cols + BLOCK - 1) // BLOCK
    scale = torch.empty(sr, sc, dtype=torch.float32)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(sr):
        for j in range(sc):
            blk = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            s = blk.abs().max() / FP8_MAX
            if s == 0:
                s = torch.tensor(1.0)
            scale[i, j] = s
            q[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = (blk / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    rows, cols = q.shape
    s = scale.repeat_interleave(BLOCK, 0)[:rows].repeat_interleave(BLOCK, 1)[:, :cols]
    return q.float() * s


def route_hooks(model, store):
    hs = []
    for name, mod in model.named_modules():
        if name.endswith("mlp.gate") and hasattr(mod, "e_score_correction_bias"):
            hs.append(mod.register_forward_hook(lambda m, i, o, n=name: store.__setitem__(n, o[0].sort(-1).values.clone())))
    return hs


def logits_and_routes(model, ids):
    routes = {}
    hs = route_hooks(model, routes)
    with torch.no_grad():
        out = model(ids).logits[0]
    for h in hs:
        h.remove()
    return out, routes


def make_fp8(out: str) -> None:
    root = os.path.join(out, "fp8")
    shutil.rmtree(root, ignore_errors=True)
    T = 12
    for seed in range(100, 200):
        torch.manual_seed(seed)
        cfg = DeepseekV3Config(**FP8_CFG)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
        with torch.no_grad():
            for n, p in list(model.named_parameters()) + list(model.named_buffers()):
                if n.endswith("e_score_correction_bias"):
                    p.copy_(torch.randn_like(p) * 0.01)
        model = model.to(torch.bfloat16)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        ids = torch.randint(0, cfg.vocab_size, (1, T), generator=torch.Generator().manual_seed(seed))
        ref32 = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval().float()
        ref32.load_state_dict({k: v.float() for k, v in sd.items()})
        logits_bf16, routes_bf16 = logits_and_routes(ref32, ids)
        fp8 = {}
        deq = {}
        for k, v in sd.items():
            if is_quantized(k, v):
                q, s = quantize_fp8(v)
                fp8[k] = q
                fp8[k + "_scale_inv"] = s
                deq[k] = dequantize_fp8(q, s)
            else:
                # DeepSeek keeps these in BF16 (the correction bias in F32)
                fp8[k] = v.float() if k.endswith("e_score_correction_bias") else v
                deq[k] = fp8[k].float()
        ref32.load_state_dict(deq)
        logits_fp8, routes_fp8 = logits_and_routes(ref32, ids)
        if all(torch.equal(routes_bf16[n], routes_fp8[n]) for n in routes_bf16):
            break
        print(f"seed {seed}: FP8 rounding changes an expert choice, trying the next seed")
    else:
        raise SystemExit("no seed keeps the routing")

    bf = os.path.join(root, "bf16")
    model.save_pretrained(bf, safe_serialization=True)
    # FP8 folder: config with quantization_config, weights in two shards + index
    f8 = os.path.join(root, "fp8")
    os.makedirs(f8)
    with open(os.path.join(bf, "config.json")) as f:
        c = json.load(f)
    c["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                "weight_block_size": [BLOCK, BLOCK]}
    c["dtype"] = "bfloat16"
    with open(os.path.join(f8, "config.json"), "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
    names = sorted(fp8)
    half = [n for n in names if n.startswith("model.layers.1.")]
    shards = {"model-00001-of-00002.safetensors": [n for n in names if n not in half],
              "model-00002-of-00002.safetensors": half}
    weight_map = {}
    for fn, ns in shards.items():
        save_file({n: fp8[n].contiguous() for n in ns}, os.path.join(f8, fn), metadata={"format": "pt"})
        weight_map.update({n: fn for n in ns})
    total = sum(t.numel() * t.element_size() for t in fp8.values())
    with open(os.path.join(f8, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
    save_file({"input_ids": ids.to(torch.int64), "logits_bf16": logits_bf16.contiguous(),
               "logits_fp8": logits_fp8.contiguous()}, os.path.join(root, "reference.safetensors"))
    d = (logits_fp8 - logits_bf16).abs().max() / logits_bf16.abs().max()
    print(f"fp8: seed {seed}, transformers FP8-vs-BF16 logits relative difference {d:.3e}")


def make_hf_export(out: str, test_bin: str) -> None:
    root = os.path.join(out, "hf_export")
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([test_bin, "--write-hf-export", root], check=True)
    tok = AutoTokenizer.from_pretrained(root)
    model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32, attn_implementation="eager").eval()
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    with open(os.path.join(root, "text.txt"), "w") as f:
        f.write(TEXT)
    save_file({"input_ids": torch.tensor([ids], dtype=torch.int64), "logits": logits.contiguous()},
              os.path.join(root, "reference.safetensors"))
    print(f"hf_export: {len(ids)} tokens, logits {tuple(logits.shape)}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--test-bin", default="build/test_interop")
    args = ap.parse_args()
    torch.set_num_threads(1)
    make_fp8(args.out)
    make_hf_export(args.out, args.test_bin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
