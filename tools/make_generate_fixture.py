#!/usr/bin/env python3
"""Builds tests/fixtures/generate: a small DeepSeek-V3 model and transformers' greedy
continuation of a prompt, for frugal's inference test (tests/test_infer.c).

    python3 tools/make_generate_fixture.py --out tests/fixtures/generate

A random model's greedy continuation is degenerate (one token repeated) and its argmax
margins are tiny, so the model is first trained (AdamW, a few hundred steps, one CPU thread,
fixed seeds) on windows of a synthetic sequence: a fixed pseudo-random permutation cycle
over ids 3..127 with every 7th step taking a second rule, so the continuation walks through
many different ids. transformers' `generate` (greedy, 64 new tokens, eos disabled) then
writes the expected ids. Checks (the script stops with an error when one fails; it then
tries the next seed):
  * generate's ids equal the argmax of one full forward over prompt + continuation;
  * the smallest top-1 minus top-2 logit gap over the 64 choices is > 1e-3, so float
    differences between implementations cannot flip a choice;
  * the smallest MoE routing gap (as tools/make_fixtures.py measures it) is > 1e-4.
Files: config.json, model.safetensors, generation_config.json (from save_pretrained) and
expected.json {prompt, generated, min_logit_margin, min_routing_margin, seed, steps}.
Package pins: tools/requirements.txt (torch 2.9.1, transformers 4.57.6).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, DeepseekV3Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
import reference_mtp as ref  # noqa: E402

N_NEW = 64
PROMPT_LEN = 16
STEPS = 300
LOGIT_MARGIN = 1e-3
ROUTING_MARGIN = 1e-4

CFG = dict(
    vocab_size=128, hidden_size=48, num_attention_heads=4, num_key_value_heads=4,
    q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
    intermediate_size=96, moe_intermediate_size=24, num_hidden_layers=3, first_k_dense_replace=1,
    moe_layer_freq=1, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2,
    topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True, scoring_func="sigmoid",
    topk_method="noaux_tc", max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=10000.0,
    rope_interleave=True, rope_scaling=None, attention_bias=False, hidden_act="silu",
    initializer_range=0.05, tie_word_embeddings=False, num_nextn_predict_layers=0,
    bos_token_id=0, eos_token_id=1, pad_token_id=2,
)


def synthetic_sequence(n, seed):
    """Ids in 3..127: a permutation cycle, with a second permutation every 7th step."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(3, 128)
    p1 = ids[torch.randperm(125, generator=g)]
    p2 = ids[torch.randperm(125, generator=g)]
    nxt1 = {int(a): int(b) for a, b in zip(ids, p1)}
    nxt2 = {int(a): int(b) for a, b in zip(ids, p2)}
    seq = [3]
    for i in range(1, n):
        seq.append((nxt2 if i % 7 == 0 else nxt1)[seq[-1]])
    return torch.tensor(seq)


def build_and_train(seed):
    torch.manual_seed(seed)
    config = DeepseekV3Config(**CFG)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.float()
    mf.randomize_extras(model, config.initializer_range)
    data = synthetic_sequence(4096, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    B, T = 16, 64
    model.train()
    for step in range(STEPS):
        starts = torch.randint(0, data.numel() - T - 1, (B,))
        x = torch.stack([data[s:s + T] for s in starts.tolist()])
        y = torch.stack([data[s + 1:s + T + 1] for s in starts.tolist()])
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, config.vocab_size), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, data, float(loss.detach())


def try_seed(seed):
    model, data, loss = build_and_train(seed)
    prompt = data[1000:1000 + PROMPT_LEN][None]
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 2
    with torch.no_grad():
        out = model.generate(prompt, do_sample=False, max_new_tokens=N_NEW, min_new_tokens=0, num_beams=1)
    gen = out[0, PROMPT_LEN:]
    assert gen.numel() == N_NEW, "generate stopped early"
    full = out[0][None]
    with torch.no_grad(), ref.GateCapture(ref.moe_gates(model)) as cap:
        logits = model(input_ids=full).logits[0]
    choice = logits[PROMPT_LEN - 1:PROMPT_LEN - 1 + N_NEW]
    assert torch.equal(choice.argmax(-1), gen), "generate differs from the argmax of a full forward"
    top2 = choice.topk(2, dim=-1).values
    logit_margin = float((top2[:, 0] - top2[:, 1]).min())
    routing = min(mf.routing_margin(model.config, g, x, idx) for _, g, x, idx in cap.records)
    distinct = int(torch.unique(gen).numel())
    return model, prompt[0], gen, logit_margin, routing, distinct, loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/generate")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for seed in range(7000, 7010):
        model, prompt, gen, lm, rm, distinct, loss = try_seed(seed)
        print(f"seed {seed}: final loss {loss:.4f}, min logit margin {lm:.4g}, min routing gap {rm:.4g}, "
              f"{distinct} distinct ids in the continuation")
        if lm > LOGIT_MARGIN and rm > ROUTING_MARGIN and distinct >= 16:
            break
    else:
        sys.exit("no seed gave comfortable margins")
    d = args.out
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    model.generation_config.eos_token_id = CFG["eos_token_id"]
    model.save_pretrained(d, safe_serialization=True)
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump({"prompt": [int(t) for t in prompt], "generated": [int(t) for t in gen],
                   "min_logit_margin": lm, "min_routing_margin": rm, "seed": seed, "steps": STEPS,
                   "final_train_loss": loss}, f, indent=1)
        f.write("\n")
    # reload check: the saved folder reproduces the continuation
    m2 = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    m2.generation_config.eos_token_id = None
    with torch.no_grad():
        out2 = m2.generate(prompt[None], do_sample=False, max_new_tokens=N_NEW, pad_token_id=2)
    assert torch.equal(out2[0, PROMPT_LEN:], gen), "reloaded model generates differently"
    print(f"wrote {d}")


if __name__ == "__main__":
    main()
