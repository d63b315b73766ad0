#!/usr/bin/env python3
"""Checks a GGUF written by `frugal convert --to gguf` against the Hugging Face folder it came from,
reading it with the `gguf` Python package (llama.cpp's own reader; pinned in tools/requirements.txt).

    python3 tools/check_gguf.py MODEL_DIR OUT.gguf

  * every metadata key of ours is a key llama.cpp defines (gguf.Keys), for architecture deepseek2,
    and the hyperparameters equal config.json's;
  * every tensor name is one llama.cpp's deepseek2 defines (gguf.MODEL_TENSORS), no MTP layer
    is exported, and every expected tensor is present;
  * every tensor, after dequantization by the gguf package, equals the source computed here
    independently from the safetensors (FP8 blocks dequantized, kv_b_proj split, experts
    stacked, RoPE rows reordered for rope_interleave = false): F32 exactly, F16/BF16 exactly
    equal to the source rounded by torch, Q8_0/Q4_0 byte for byte equal to the gguf package's
    own quantizer run on the source; the max error vs the FP32 source is printed;
  * the tokenizer: tokens, merges, token types, special ids and chat template equal the
    folder's tokenizer (loaded with transformers' AutoTokenizer).
Exit status 1 on any mismatch.
"""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import torch
from safetensors import safe_open

import gguf
from gguf import GGMLQuantizationType as QT


def load_hf(model_dir):
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    tensors = {}
    for fn in files:
        with safe_open(os.path.join(model_dir, fn), "pt") as f:
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    return tensors


def weight(t, name, block):
    w = t[name]
    if w.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        s = t[name + "_scale_inv"].float()
        r, c = w.shape
        s = s.repeat_interleave(block[0], 0)[:r].repeat_interleave(block[1], 1)[:, :c]
        return w.float() * s
    return w.float()


def expected(cfg, t, block):
    """GGUF name -> (numpy array in GGUF layout, i.e. reversed ne order = torch shape)."""
    L, nh = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    nope, rope, vd, kvr = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    inter = cfg.get("rope_interleave", True)
    out = {}
    W = lambda n: weight(t, n, block)

    def pairs(w, base):  # rotate_half layout -> adjacent pairs
        w = w.clone()
        rows = w[base:base + rope].clone()
        w[base:base + rope:2] = rows[:rope // 2]
        w[base + 1:base + rope:2] = rows[rope // 2:]
        return w

    out["token_embd.weight"] = W("model.embed_tokens.weight")
    out["output_norm.weight"] = W("model.norm.weight")
    out["output.weight"] = W("model.embed_tokens.weight" if cfg.get("tie_word_embeddings") else "lm_head.weight")
    E = cfg.get("n_routed_experts") or 0
    for l in range(L):
        p, g = f"model.layers.{l}.", f"blk.{l}."
        out[g + "attn_norm.weight"] = W(p + "input_layernorm.weight")
        if cfg.get("q_lora_rank"):
            out[g + "attn_q_a.weight"] = W(p + "self_attn.q_a_proj.weight")
            out[g + "attn_q_a_norm.weight"] = W(p + "self_attn.q_a_layernorm.weight")
            q, qn = W(p + "self_attn.q_b_proj.weight"), g + "attn_q_b.weight"
        else:
            q, qn = W(p + "self_attn.q_proj.weight"), g + "attn_q.weight"
        kva = W(p + "self_attn.kv_a_proj_with_mqa.weight")
        if not inter:
            for h in range(nh):
                q = pairs(q, h * (nope + rope) + nope)
            kva = pairs(kva, kvr)
        out[qn] = q
        out[g + "attn_kv_a_mqa.weight"] = kva
        out[g + "attn_kv_a_norm.weight"] = W(p + "self_attn.kv_a_layernorm.weight")
        kvb = W(p + "self_attn.kv_b_proj.weight").view(nh, nope + vd, kvr)
        out[g + "attn_k_b.weight"] = kvb[:, :nope, :].transpose(1, 2).contiguous()
        out[g + "attn_v_b.weight"] = kvb[:, nope:, :].contiguous()
        out[g + "attn_output.weight"] = W(p + "self_attn.o_proj.weight")
        out[g + "ffn_norm.weight"] = W(p + "post_attention_layernorm.weight")
        if E and l >= cfg.get("first_k_dense_replace", 0):
            out[g + "ffn_gate_inp.weight"] = W(p + "mlp.gate.weight")
            if p + "mlp.gate.e_score_correction_bias" in t:
                out[g + "exp_probs_b.bias"] = W(p + "mlp.gate.e_score_correction_bias")
            for k in ("gate", "up", "down"):
                out[g + f"ffn_{k}_exps.weight"] = torch.stack([W(p + f"mlp.experts.{e}.{k}_proj.weight") for e in range(E)])
            if cfg.get("n_shared_experts"):
                for k in ("gate", "up", "down"):
                    out[g + f"ffn_{k}_shexp.weight"] = W(p + f"mlp.shared_experts.{k}_proj.weight")
        else:
            for k in ("gate", "up", "down"):
                out[g + f"ffn_{k}.weight"] = W(p + f"mlp.{k}_proj.weight")
    return {k: v.float().numpy() for k, v in out.items()}


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    model_dir, path = sys.argv[1], sys.argv[2]
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    qc = cfg.get("quantization_config") or {}
    block = tuple(qc.get("weight_block_size", (128, 128)))
    r = gguf.GGUFReader(path)
    fails = []
    kv = {f.name: f for f in r.fields.values()}

    def val(k):
        f = kv[k]
        if f.types and f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(f.parts[f.data[0]]).decode("utf-8")
        if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
            if f.types[1] == gguf.GGUFValueType.STRING:
                return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            return [int(f.parts[i][0]) for i in f.data]
        return f.parts[f.data[0]][0].item()

    # ---- metadata keys are llama.cpp's
    known = set()
    for cls in (gguf.Keys.General, gguf.Keys.LLM, gguf.Keys.Attention, gguf.Keys.Rope, gguf.Keys.Tokenizer):
        for n, v in vars(cls).items():
            if isinstance(v, str) and not n.startswith("_"):
                known.add(v.replace("{arch}", "deepseek2"))
    for k in kv:
        if k.startswith("GGUF."):
            continue
        if k not in known:
            fails.append(f"metadata key {k} is not a key llama.cpp defines")
    want = {
        "general.architecture": "deepseek2", "deepseek2.block_count": cfg["num_hidden_layers"],
        "deepseek2.embedding_length": cfg["hidden_size"], "deepseek2.attention.head_count": cfg["num_attention_heads"],
        "deepseek2.attention.head_count_kv": 1, "deepseek2.attention.kv_lora_rank": cfg["kv_lora_rank"],
        "deepseek2.attention.q_lora_rank": cfg.get("q_lora_rank") or 0,
        "deepseek2.attention.key_length": cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"],
        "deepseek2.attention.value_length": cfg["kv_lora_rank"],
        "deepseek2.attention.key_length_mla": cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"],
        "deepseek2.attention.value_length_mla": cfg["v_head_dim"], "deepseek2.rope.dimension_count": cfg["qk_rope_head_dim"],
        "deepseek2.expert_count": cfg.get("n_routed_experts") or 0, "deepseek2.expert_used_count": cfg.get("num_experts_per_tok") or 0,
        "deepseek2.expert_shared_count": cfg.get("n_shared_experts") or 0,
        "deepseek2.expert_feed_forward_length": cfg["moe_intermediate_size"],
        "deepseek2.leading_dense_block_count": cfg.get("first_k_dense_replace", 0),
        "deepseek2.expert_gating_func": 2 if cfg.get("scoring_func", "softmax") == "sigmoid" else 1,
        "deepseek2.feed_forward_length": cfg["intermediate_size"], "deepseek2.vocab_size": cfg["vocab_size"],
    }
    for k, v in want.items():
        if k not in kv or val(k) != v:
            fails.append(f"metadata {k} = {val(k) if k in kv else None}, expected {v}")
    for k, v in (("deepseek2.expert_weights_scale", cfg.get("routed_scaling_factor", 1.0)),
                 ("deepseek2.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"]), ("deepseek2.rope.freq_base", cfg["rope_theta"])):
        if k not in kv or not math.isclose(val(k), v, rel_tol=1e-6):
            fails.append(f"metadata {k} = {val(k) if k in kv else None}, expected {v}")

    # ---- tokenizer
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    tj = json.load(open(os.path.join(model_dir, "tokenizer.json")))
    vocab = {v: k for k, v in tj["model"]["vocab"].items()}
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    tokens, types = val("tokenizer.ggml.tokens"), val("tokenizer.ggml.token_type")
    for i in range(cfg["vocab_size"]):
        exp_t = added[i]["content"] if i in added else vocab.get(i, f"[PAD{i}]")
        exp_ty = (3 if added[i]["special"] else 4) if i in added else (1 if i in vocab else 5)
        if tokens[i] != exp_t or types[i] != exp_ty:
            fails.append(f"token {i}: {tokens[i]!r}/{types[i]} expected {exp_t!r}/{exp_ty}")
            break
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    if val("tokenizer.ggml.merges") != merges:
        fails.append("merges differ")
    for k, tid in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id), ("padding", tok.pad_token_id)):
        key = f"tokenizer.ggml.{k}_token_id"
        if tid is not None and (key not in kv or val(key) != tid):
            fails.append(f"{key} = {val(key) if key in kv else None}, expected {tid}")
    if tok.chat_template and val("tokenizer.chat_template") != tok.chat_template:
        fails.append("chat template differs")

    # ---- tensors
    allowed = set()
    for tt in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.DEEPSEEK2]:
        n = gguf.TENSOR_NAMES[tt]
        for b in range(cfg["num_hidden_layers"]):
            allowed.add(n.format(bid=b))
    exp = expected(cfg, load_hf(model_dir), block)
    seen = set()
    worst = {}
    for t in r.tensors:
        base = t.name.rsplit(".", 1)[0]
        if base not in allowed:
            fails.append(f"tensor {t.name}: not a deepseek2 tensor name (or an MTP layer)")
            continue
        if t.name not in exp:
            fails.append(f"tensor {t.name}: unexpected")
            continue
        seen.add(t.name)
        src = exp[t.name]
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(src.shape)
        ty = QT(t.tensor_type)
        if list(t.shape) != list(reversed(src.shape)):
            fails.append(f"tensor {t.name}: ne {list(t.shape)}, expected {list(reversed(src.shape))}")
        if ty == QT.F32:
            ok = np.array_equal(got, src)
        elif ty == QT.F16:
            ok = np.array_equal(got, src.astype(np.float16).astype(np.float32))
        elif ty == QT.BF16:
            ok = np.array_equal(got, torch.from_numpy(src).to(torch.bfloat16).float().numpy())
        else:
            ok = np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8),
                                gguf.quants.quantize(src, ty).reshape(-1).view(np.uint8))
        if (src.ndim == 1 or "ffn_gate_inp" in t.name) and ty != QT.F32:
            fails.append(f"tensor {t.name}: {ty.name}, llama.cpp expects F32")
        if not ok:
            fails.append(f"tensor {t.name} ({ty.name}): differs from the source")
        err = float(np.abs(got - src).max() / max(np.abs(src).max(), 1e-30))
        worst[ty.name] = max(worst.get(ty.name, 0.0), err)
    for n in exp:
        if n not in seen:
            fails.append(f"tensor {n}: missing")
    print(f"{path}: {len(r.tensors)} tensors, {len([k for k in kv if not k.startswith('GGUF.')])} metadata keys; "
          + ", ".join(f"{k} max rel error {v:.3e}" for k, v in sorted(worst.items())))
    for f in fails[:20]:
        print("MISMATCH", f)
    print("OK" if not fails else f"{len(fails)} mismatches")
    return 0 if not fails else 1


if __name__ == "__main__":
    sys.exit(main())
