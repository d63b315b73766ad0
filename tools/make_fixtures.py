#!/usr/bin/env python3
"""Generates the reference fixtures that frugal's C tests compare against.

    python3 tools/make_fixtures.py --out tests/fixtures

Each fixture NAME is a tiny DeepSeek-V3 / DeepSeek-V2 model built with Hugging Face
transformers (float32, eager attention) and written to NAME/ as a Hugging Face model
folder plus reference.safetensors (inputs, targets, logits, losses, gradients) and
eval_tokens.txt. Everything is deterministic (fixed seeds, one thread). See
tests/fixtures/README.md for the file layout and conventions, and tools/reference_mtp.py
for the MTP / balance-loss definitions.

Python is a test tool only; the product is the C library.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import transformers
from transformers import AutoModelForCausalLM, DeepseekV2Config, DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_mtp as ref  # noqa: E402

IGNORE = -100
MARGIN = 1e-4          # minimum routing gap (scores) for every token of every MoE layer
B = 2
EVAL_LENGTHS = (9, 16, 5)
MAX_ATTEMPTS = 200
SIZE_LIMIT = 3 * 1024 * 1024

BASE = dict(
    vocab_size=128,
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=4,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=4,
    v_head_dim=8,
    intermediate_size=48,
    moe_intermediate_size=16,
    num_hidden_layers=3,
    first_k_dense_replace=1,
    moe_layer_freq=1,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    attention_bias=False,
    hidden_act="silu",
    initializer_range=0.1,
)

V3_MOE = dict(
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=3,
    n_group=4,
    topk_group=2,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    scoring_func="sigmoid",
    topk_method="noaux_tc",
)

FIXTURES = [
    dict(name="v3_qlora", arch="v3", T=16, seed=1000,
         cfg=dict(BASE, **V3_MOE, q_lora_rank=24, tie_word_embeddings=False, rope_interleave=True,
                  rope_scaling=None, num_nextn_predict_layers=0)),
    dict(name="v3_yarn_tied", arch="v3", T=32, seed=2000,
         cfg=dict(BASE, **V3_MOE, q_lora_rank=None, tie_word_embeddings=True, rope_interleave=True,
                  num_nextn_predict_layers=0,
                  rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8})),
    dict(name="v2_group", arch="v2", T=16, seed=3000,
         cfg=dict(BASE, q_lora_rank=24, scoring_func="softmax", topk_method="group_limited_greedy",
                  n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=3, n_shared_experts=2,
                  norm_topk_prob=False, routed_scaling_factor=1.0, tie_word_embeddings=False,
                  rope_scaling=None)),
    dict(name="v2_lite", arch="v2", T=16, seed=4000, experts="unused",
         cfg=dict(BASE, q_lora_rank=None, scoring_func="softmax", topk_method="greedy",
                  n_routed_experts=8, n_group=1, topk_group=1, num_experts_per_tok=2, n_shared_experts=2,
                  norm_topk_prob=False, routed_scaling_factor=1.0, tie_word_embeddings=False,
                  rope_scaling=None)),
    dict(name="v3_mtp", arch="v3", T=16, seed=5000, mtp_lambda=0.3, balance_alpha=0.01,
         cfg=dict(BASE, **V3_MOE, q_lora_rank=24, tie_word_embeddings=False, rope_interleave=False,
                  rope_scaling=None, num_nextn_predict_layers=2)),
]


# --------------------------------------------------------------------------- model building


def randomize_extras(model_or_module, std):
    """Norm weights -> U(0.8, 1.2) (so a missing norm multiply shows up), routing bias ->
    distinct U(-0.1, 0.1)."""
    with torch.no_grad():
        for _, mod in model_or_module.named_modules():
            if "RMSNorm" in type(mod).__name__:
                mod.weight.uniform_(0.8, 1.2)
            if isinstance(mod, DeepseekV3TopkRouter):
                mod.e_score_correction_bias.uniform_(-0.1, 0.1)
                b = mod.e_score_correction_bias
                assert torch.unique(b).numel() == b.numel() and bool((b != 0).all())


def build(spec, seed):
    torch.manual_seed(seed)
    cfg = copy.deepcopy(spec["cfg"])
    cls = DeepseekV3Config if spec["arch"] == "v3" else DeepseekV2Config
    config = cls(**cfg)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.float().eval()
    assert model.config._attn_implementation == "eager"
    randomize_extras(model, config.initializer_range)
    mtp = None
    D = cfg.get("num_nextn_predict_layers", 0) or 0
    if D > 0:
        mtp = ref.build_mtp_layers(model.config, D)
        with torch.no_grad():
            for mod in mtp.modules():
                model._init_weights(mod)
        randomize_extras(mtp, config.initializer_range)
        mtp.float().eval()
    T = spec["T"]
    V = config.vocab_size
    input_ids = torch.randint(0, V, (B, T))
    targets = torch.full((B, T), IGNORE, dtype=torch.long)
    targets[:, :-1] = input_ids[:, 1:]
    picks = torch.randperm(B * (T - 1))[:3]
    for p in picks.tolist():
        targets[p // (T - 1), p % (T - 1)] = IGNORE
    eval_lines = [torch.randint(0, V, (n,)) for n in EVAL_LENGTHS]
    return model, mtp, input_ids, targets, eval_lines


# --------------------------------------------------------------------------- routing robustness


def routing_margin(config, gate, x, idx_gate):
    """Recomputes the gate's selection in float32 as transformers does, asserts it equals
    what the gate chose, and returns the smallest decision gap over all tokens: between the
    last kept and first dropped group score, between the last selected and first unselected
    candidate score, and (V3 groups) the last selected score above the 0.0 that masked
    experts get."""
    H = config.hidden_size
    E = config.n_routed_experts
    K = config.num_experts_per_tok
    xs = x.detach().reshape(-1, H).float()
    logits = F.linear(xs, gate.weight.detach().float())
    N = logits.shape[0]
    margins = []
    if config.model_type == "deepseek_v3":
        scores = logits.sigmoid()
        choice = scores + gate.e_score_correction_bias.detach().float()[None]
        ng, tg = config.n_group, config.topk_group
        gs = choice.view(N, ng, E // ng).topk(min(2, E // ng), dim=-1)[0].sum(-1)
        grouped = tg < ng
    else:
        scores = logits.softmax(-1)
        choice = scores
        ng, tg = config.n_group, config.topk_group
        grouped = config.topk_method == "group_limited_greedy" and tg < ng
        if grouped:
            gs = scores.view(N, ng, E // ng).max(-1).values
    if grouped:
        gsort = gs.sort(-1, descending=True).values
        margins.append(gsort[:, tg - 1] - gsort[:, tg])
        keep = gs.topk(tg, dim=-1).indices
        gmask = torch.zeros(N, ng, dtype=torch.bool).scatter(1, keep, True)
        emask = gmask.repeat_interleave(E // ng, dim=1)
        masked = choice.masked_fill(~emask, 0.0)
        kept_sorted = choice.masked_fill(~emask, float("-inf")).sort(-1, descending=True).values
        margins.append(kept_sorted[:, K - 1] - 0.0)
    else:
        masked = choice
        emask = torch.ones(N, E, dtype=torch.bool)
    msort = masked.sort(-1, descending=True).values
    margins.append(msort[:, K - 1] - msort[:, K])
    sel = masked.topk(K, dim=-1).indices
    assert torch.equal(sel.sort(-1).values, idx_gate.reshape(N, K).sort(-1).values), "own routing != gate routing"
    assert bool(emask.gather(1, sel).all())
    return float(torch.stack([m.min() for m in margins]).min())


@torch.no_grad()
def check_routing(model, mtp, input_ids, targets, eval_lines):
    """Returns (smallest routing gap over the batch and the eval lines, number of (layer,
    expert) pairs of the training batch that receive no token)."""
    recs = []
    r = ref.forward_loss(model, mtp, input_ids, targets, 0.0, 0.0)
    recs += r["records"]
    E = model.config.n_routed_experts
    unused = sum(E - torch.unique(idx).numel() for _, _, _, idx in r["records"])
    for line in eval_lines:
        with ref.GateCapture(ref.moe_gates(model)) as cap:
            model(input_ids=line[None])
        recs += cap.records
    assert len(recs) > 0
    margin = min(routing_margin(model.config, gate, x, idx) for _, gate, x, idx in recs)
    return margin, unused


# --------------------------------------------------------------------------- one fixture


def all_named_params(model, mtp):
    items = list(model.named_parameters())
    if mtp is not None:
        items += list(ref.mtp_named_parameters(model, mtp))
    return items


def eval_loss(model, eval_lines):
    tot, n = 0.0, 0
    with torch.no_grad():
        for line in eval_lines:
            lg = model(input_ids=line[None]).logits[0]
            tot += float(F.cross_entropy(lg[:-1], line[1:], reduction="sum").double())
            n += line.numel() - 1
    return tot / n


def make_fixture(spec, out_root):
    name = spec["name"]
    lam = float(spec.get("mtp_lambda", 0.0))
    alpha = float(spec.get("balance_alpha", 0.0))
    for attempt in range(MAX_ATTEMPTS):
        seed = spec["seed"] + attempt
        model, mtp, input_ids, targets, eval_lines = build(spec, seed)
        margin, unused = check_routing(model, mtp, input_ids, targets, eval_lines)
        # every fixture but one has every routed expert of every MoE layer used by the
        # training batch; "unused" fixtures keep at least one expert without tokens (its
        # gradient must come out exactly zero)
        want_unused = spec.get("experts", "all") == "unused"
        if margin > MARGIN and (unused > 0) == want_unused:
            break
        print(f"  {name}: seed {seed} rejected (routing margin {margin:.2e}, unused experts {unused})")
    else:
        raise RuntimeError(f"{name}: no seed with robust routing")
    config = model.config
    V = config.vocab_size

    # forward + backward of the reference loss
    model.zero_grad(set_to_none=True)
    if mtp is not None:
        mtp.zero_grad(set_to_none=True)
    r = ref.forward_loss(model, mtp, input_ids, targets, lam, alpha)
    r["loss"].backward()
    logits = r["logits"].detach()
    loss_main = r["loss_main"].detach()

    # own CE == transformers' loss with labels whose internal shift gives the same targets
    labels = torch.cat([input_ids[:, :1], targets[:, :-1]], dim=1)
    with torch.no_grad():
        hf = model(input_ids=input_ids, labels=labels)
        own = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=IGNORE)
    assert torch.equal(hf.logits, logits), f"{name}: logits differ between runs"
    assert torch.equal(own, loss_main)
    assert abs(float(hf.loss) - float(loss_main)) <= 1e-6 * max(1.0, abs(float(loss_main))), \
        (name, float(hf.loss), float(loss_main))
    if mtp is None:
        assert torch.equal(r["loss"], r["loss_main"])

    grads = {}
    n_none = 0
    for pname, p in all_named_params(model, mtp):
        if p.grad is None:
            n_none += 1
            grads["grad." + pname] = torch.zeros_like(p).contiguous()
        else:
            grads["grad." + pname] = p.grad.detach().float().contiguous()

    ev = eval_loss(model, eval_lines)

    tensors = {
        "input_ids": input_ids.to(torch.int32).contiguous(),
        "targets": targets.to(torch.int32).contiguous(),
        "logits": logits.float().contiguous(),
        "loss": r["loss"].detach().float().reshape(1),
        "loss_main": loss_main.float().reshape(1),
        "eval_loss": torch.tensor([ev], dtype=torch.float32),
        "mtp_lambda": torch.tensor([lam], dtype=torch.float32),
        "balance_alpha": torch.tensor([alpha], dtype=torch.float32),
    }
    if mtp is not None:
        tensors["loss_mtp"] = torch.stack([c.detach() for c in r["loss_mtp"]]).float()
        tensors["loss_balance"] = r["loss_balance"].detach().float().reshape(1)
    tensors.update(grads)

    # write
    d = os.path.join(out_root, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    model.save_pretrained(d, safe_serialization=True)
    if mtp is not None:
        st_path = os.path.join(d, "model.safetensors")
        sd = load_file(st_path)
        for k, v in ref.mtp_state_dict(model, mtp).items():
            assert k not in sd
            sd[k] = v.detach().float().clone().contiguous()
        save_file(sd, st_path, metadata={"format": "pt"})
    save_file(tensors, os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "eval_tokens.txt"), "w") as f:
        for line in eval_lines:
            f.write(" ".join(str(int(t)) for t in line) + "\n")

    # reload checks: transformers reproduces logits exactly; MTP tensors reproduce the loss
    with torch.no_grad():
        m2 = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32)
        m2.eval()
        lg2 = m2(input_ids=input_ids).logits
        assert torch.equal(lg2, logits), f"{name}: from_pretrained logits differ"
        sd_loaded = load_file(os.path.join(d, "model.safetensors"))
        for pname, buf in model.named_buffers():
            if pname.endswith("e_score_correction_bias"):
                assert torch.equal(sd_loaded[pname], buf)
                assert torch.equal(m2.get_buffer(pname), buf)
        if mtp is not None:
            L = config.num_hidden_layers
            mtp2 = ref.build_mtp_layers(m2.config, len(mtp))
            for k, layer in enumerate(mtp2):
                prefix = f"model.layers.{L + k}."
                sub = {n[len(prefix):]: t for n, t in sd_loaded.items() if n.startswith(prefix)}
                assert torch.equal(sub.pop("embed_tokens.weight"), model.model.embed_tokens.weight)
                assert torch.equal(sub.pop("shared_head.head.weight"), model.lm_head.weight)
                layer.load_state_dict(sub, strict=True)
            mtp2.eval()
            r2 = ref.forward_loss(m2, mtp2, input_ids, targets, lam, alpha)
            assert torch.equal(r2["loss"], r["loss"]), f"{name}: reloaded MTP loss differs"
        ref_loaded = load_file(os.path.join(d, "reference.safetensors"))
        assert set(ref_loaded) == set(tensors)

    extra = {}
    if mtp is not None:
        extra = mtp_self_tests(model, mtp, input_ids, targets, lam, alpha, grads)

    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: seed {seed} (routing margin {margin:.2e}, unused experts {unused}), T={spec['T']}, "
          f"params {sum(p.numel() for _, p in all_named_params(model, mtp))}, "
          f"grad tensors {len(grads)} ({n_none} without gradient), size {size / 1024:.1f} KiB")
    msg = f"  loss {float(r['loss'].detach()):.6f}  loss_main {float(loss_main):.6f}  eval_loss {ev:.6f}"
    if mtp is not None:
        msg += (f"  loss_mtp {[round(float(c.detach()), 6) for c in r['loss_mtp']]}"
                f"  loss_balance {float(r['loss_balance'].detach()):.6f}")
    print(msg)
    for k, v in extra.items():
        print(f"  {k}: {v}")
    return size


def mtp_self_tests(model, mtp, input_ids, targets, lam, alpha, grads32):
    out = {}
    # (a) depth 1 reduces correctly (independent recomputation of module 1 and the total)
    a = ref.check_depth_one(model, mtp, input_ids, targets, lam, alpha)
    out["D=1 check"] = f"ok (CE_1 {a['ce1']:.6f}, total {a['total_d1']:.6f})"
    # D=0 with no balance is exactly the transformers loss, main gradients equal
    model.zero_grad(set_to_none=True)
    r0 = ref.forward_loss(model, None, input_ids, targets, lam, 0.0)
    r0["loss"].backward()
    labels = torch.cat([input_ids[:, :1], targets[:, :-1]], dim=1)
    g_ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    hf = model(input_ids=input_ids, labels=labels)
    hf.loss.backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, g_ref[n], rtol=1e-5, atol=1e-7), n
    model.zero_grad(set_to_none=True)
    out["D=0 check"] = "ok (equals transformers loss and gradients)"
    # (b) finite differences in float64 on MTP-specific (and some shared) parameters
    L = model.config.num_hidden_layers
    names = []
    for k in range(len(mtp)):
        p = f"model.layers.{L + k}."
        names += [p + "eh_proj.weight", p + "enorm.weight", p + "hnorm.weight", p + "shared_head.norm.weight",
                  p + "mlp.gate.weight", p + "self_attn.kv_b_proj.weight", p + "input_layernorm.weight"]
    names += ["lm_head.weight", "model.layers.1.mlp.gate.weight", "model.layers.2.self_attn.q_a_proj.weight"]
    worst, g64 = ref.finite_difference_check(model, mtp, input_ids, targets, lam, alpha, names, n_entries=3)
    out["finite differences (float64)"] = f"ok, {3 * len(names)} entries, max rel err {worst:.2e}"
    # float32 fixture gradients vs float64 autograd gradients
    worst32 = 0.0
    for n, g in g64.items():
        g32 = grads32["grad." + n].double()
        scale = float(g.abs().max())
        if scale > 0:
            worst32 = max(worst32, float((g32 - g).abs().max()) / scale)
    assert worst32 < 1e-3, worst32
    out["float32 vs float64 grads"] = f"max |diff|/max|g| = {worst32:.2e}"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures", help="output folder (default tests/fixtures)")
    ap.add_argument("--only", nargs="*", help="generate only these fixtures")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for spec in FIXTURES:
        if args.only and spec["name"] not in args.only:
            continue
        total += make_fixture(spec, args.out)
    print(f"total fixture size {total / 1024:.1f} KiB")
    if not args.only:
        assert total < SIZE_LIMIT, f"fixtures too large: {total} bytes"


if __name__ == "__main__":
    main()
