#!/usr/bin/env python3
"""Builds tests/fixtures/peft: a tiny DeepSeek-V3 base model, two PEFT LoRA adapters and
the logits PyTorch + transformers + peft compute with them, for frugal's LoRA-adapter tests.

    python3 tools/make_peft_fixture.py --out tests/fixtures/peft

Files (DIR = --out):
  base/              config.json, model.safetensors, generation_config.json: a tiny
                     deepseek_v3 model with the shape of the `v3_qlora` fixture
                     (tools/make_fixtures.py: same config, same init, norm weights
                     U(0.8, 1.2), e_score_correction_bias U(-0.1, 0.1)), float32.
  adapter/           adapter_config.json, adapter_model.safetensors from
                     PeftModel.save_pretrained(safe_serialization=True) (peft's boilerplate
                     model card README.md is removed):
                     LoRA r=4, alpha=8 (scale 2), on every nn.Linear of the decoder layers
                     (attention q_a/q_b/kv_a_proj_with_mqa/kv_b/o, dense MLP, shared experts
                     and routed experts), 72 wrapped modules; target_modules is a regex.
  adapter_rslora/    LoRA r=2, alpha=6, use_rslora (scale 6/sqrt(2)), on q_a_proj, q_b_proj,
                     kv_b_proj, o_proj (a list of names), 12 wrapped modules.
  reference.safetensors
                     input_ids I32 [2, 12]; logits_base, logits_lora, logits_rslora F32
                     [2, 12, 128]: the forward over input_ids of the base model alone, of
                     base + adapter, of base + adapter_rslora (eval mode, float32, eager
                     attention), each computed from the written folders (freshly loaded).
  README.md

All lora_A and lora_B weights are seeded normal(0, 1) * 0.1 (peft initialises lora_B to
zero, which would make the adapter a no-op). Checks (the script stops with an error when
one fails): the number of LoRA-wrapped modules; logits of the reloaded folders equal the
in-memory ones bit for bit; merge_and_unload() logits equal the unmerged ones within 1e-5;
logits_lora and logits_rslora differ from logits_base by more than 1e-2 somewhere; the MoE
routing decisions (as tools/make_fixtures.py measures them) have gaps > 1e-4 for all three
forwards and every routed expert receives a token (seeds are stepped until this holds).
Fixed seeds, one CPU thread: two runs give byte-identical files.

Check mode (how an adapter written by frugal gets checked with peft):

    python3 tools/make_peft_fixture.py --check-adapter ADAPTER_DIR \\
        --check-logits FILE.safetensors [--base BASE_DIR]

loads BASE_DIR (default DIR/base) + ADAPTER_DIR with peft, runs FILE's "input_ids" and
compares with FILE's "logits": prints the max abs difference, exits 1 if it exceeds 1e-5.

Package pins: tools/requirements.txt (torch 2.9.1, transformers 4.57.6, peft 0.17.1).
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
from safetensors.torch import load_file, save_file

import peft
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM, DeepseekV3Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
import reference_mtp as ref  # noqa: E402

B, T = 2, 12
SEED = 6000
MAX_ATTEMPTS = 200
ROUTING_MARGIN = 1e-4
MERGE_TOL = 1e-5
CHECK_TOL = 1e-5
MIN_EFFECT = 1e-2
SIZE_LIMIT = 1024 * 1024

# the v3_qlora configuration of tools/make_fixtures.py
CFG = copy.deepcopy(next(s for s in mf.FIXTURES if s["name"] == "v3_qlora")["cfg"])
assert CFG["num_nextn_predict_layers"] == 0 and CFG["q_lora_rank"] == 24 and CFG["rope_interleave"]
assert CFG["max_position_embeddings"] == 64 and not CFG["tie_word_embeddings"]

# every nn.Linear of the decoder layers (not the router `mlp.gate`, not lm_head)
TARGET_REGEX = (r"model\.layers\.\d+\.(self_attn\.(q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
                r"|mlp\.(shared_experts\.|experts\.\d+\.)?(gate_proj|up_proj|down_proj))")
RSLORA_TARGETS = ["q_a_proj", "q_b_proj", "kv_b_proj", "o_proj"]

ADAPTERS = [
    dict(name="adapter", key="logits_lora", seed=61,
         cfg=dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                  target_modules=TARGET_REGEX)),
    dict(name="adapter_rslora", key="logits_rslora", seed=62,
         cfg=dict(r=2, lora_alpha=6, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                  target_modules=RSLORA_TARGETS, use_rslora=True)),
]


def expected_targets(config, name):
    """Module names the adapter must wrap, listed independently of peft's matching."""
    L = config.num_hidden_layers
    attn = ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
    mlp = ["gate_proj", "up_proj", "down_proj"]
    out = []
    for i in range(L):
        p = f"model.layers.{i}."
        if name == "adapter_rslora":
            out += [p + "self_attn." + a for a in RSLORA_TARGETS]
            continue
        out += [p + "self_attn." + a for a in attn]
        if i < config.first_k_dense_replace:
            out += [p + "mlp." + m for m in mlp]
        else:
            out += [p + "mlp.shared_experts." + m for m in mlp]
            for e in range(config.n_routed_experts):
                out += [p + f"mlp.experts.{e}." + m for m in mlp]
    return sorted(out)


def build_base(seed):
    torch.manual_seed(seed)
    config = DeepseekV3Config(**copy.deepcopy(CFG))
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.float().eval()
    assert model.config._attn_implementation == "eager"
    mf.randomize_extras(model, config.initializer_range)
    input_ids = torch.randint(0, config.vocab_size, (B, T))
    return model, input_ids


def make_peft(base, spec):
    """Wraps (in place) base with spec's LoRA config and randomises lora_A / lora_B."""
    pm = get_peft_model(base, LoraConfig(**spec["cfg"]))
    wrapped = sorted(n[len("base_model.model."):] for n, m in pm.named_modules() if isinstance(m, LoraLayer))
    want = expected_targets(base.config, spec["name"])
    assert wrapped == want, (spec["name"], len(wrapped), len(want), sorted(set(wrapped) ^ set(want))[:8])
    n_expected = {"adapter": 3 * 5 + 3 + 2 * (1 + 8) * 3, "adapter_rslora": 3 * 4}[spec["name"]]
    assert len(wrapped) == n_expected, (spec["name"], len(wrapped), n_expected)
    g = torch.Generator().manual_seed(spec["seed"])
    n_lora = 0
    with torch.no_grad():
        for n, p in sorted(pm.named_parameters(), key=lambda t: t[0]):
            if ".lora_A." in n or ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.1)
                n_lora += 1
    assert n_lora == 2 * n_expected, n_lora
    pm.eval()
    return pm, len(wrapped)


@torch.no_grad()
def routing_check(hf_model, forward, input_ids):
    """(smallest routing gap, number of routed experts of MoE layers that get no token) for
    forward(input_ids), hf_model being the DeepseekV3ForCausalLM whose gates run."""
    with ref.GateCapture(ref.moe_gates(hf_model)) as cap:
        forward(input_ids)
    assert len(cap.records) == 2
    E = hf_model.config.n_routed_experts
    unused = sum(E - torch.unique(idx).numel() for _, _, _, idx in cap.records)
    margin = min(mf.routing_margin(hf_model.config, gate, x, idx) for _, gate, x, idx in cap.records)
    return margin, unused


def load_base(path):
    m = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)
    m.eval()
    return m


@torch.no_grad()
def logits_of(model, input_ids):
    return model(input_ids=input_ids).logits.detach().float().contiguous()


def tidy_adapter_dir(d):
    """Drops peft's boilerplate model card (README.md) and checks that nothing in the
    folder depends on where it was written: the base model is built in memory, so
    adapter_config.json's base_model_name_or_path is the empty string; a target_modules
    list is written sorted."""
    card = os.path.join(d, "README.md")
    if os.path.exists(card):
        os.remove(card)
    assert sorted(os.listdir(d)) == ["adapter_config.json", "adapter_model.safetensors"], os.listdir(d)
    cfg_path = os.path.join(d, "adapter_config.json")
    with open(cfg_path) as f:
        text = f.read()
    cfg = json.loads(text)
    # peft's own writer (json.dumps(indent=2, sort_keys=True), no final newline)
    assert json.dumps(cfg, indent=2, sort_keys=True) == text
    assert cfg["base_model_name_or_path"] in ("", None), cfg["base_model_name_or_path"]
    # a target_modules list is a set inside peft and comes out in hash order: sort it
    if isinstance(cfg["target_modules"], list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
        with open(cfg_path, "w") as f:
            f.write(json.dumps(cfg, indent=2, sort_keys=True))


def generate(out):
    for attempt in range(MAX_ATTEMPTS):
        seed = SEED + attempt
        base, input_ids = build_base(seed)
        ok = True
        report = []
        m, u = routing_check(base, lambda x: base(input_ids=x), input_ids)
        report.append(("base", m, u))
        ok &= m > ROUTING_MARGIN and u == 0
        pms = {}
        for spec in ADAPTERS:
            pm, n_wrapped = make_peft(copy.deepcopy(base), spec)
            m, u = routing_check(pm.base_model.model, lambda x: pm(input_ids=x), input_ids)
            report.append((spec["name"], m, u))
            ok &= m > ROUTING_MARGIN and u == 0
            pms[spec["name"]] = (pm, n_wrapped)
        if ok:
            break
        print(f"  seed {seed} rejected: " + ", ".join(f"{n} margin {m:.2e} unused {u}" for n, m, u in report))
    else:
        raise RuntimeError("no seed with robust routing")

    mem_logits = {"logits_base": logits_of(base, input_ids)}
    for spec in ADAPTERS:
        mem_logits[spec["key"]] = logits_of(pms[spec["name"]][0], input_ids)

    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    base_dir = os.path.join(out, "base")
    base.save_pretrained(base_dir, safe_serialization=True)
    for spec in ADAPTERS:
        d = os.path.join(out, spec["name"])
        pms[spec["name"]][0].save_pretrained(d, safe_serialization=True, save_embedding_layers=False)
        tidy_adapter_dir(d)

    # references from the written folders
    tensors = {"input_ids": input_ids.to(torch.int32).contiguous()}
    tensors["logits_base"] = logits_of(load_base(base_dir), input_ids)
    assert torch.equal(tensors["logits_base"], mem_logits["logits_base"]), "reloaded base logits differ"
    info = {}
    for spec in ADAPTERS:
        d = os.path.join(out, spec["name"])
        pm = PeftModel.from_pretrained(load_base(base_dir), d)
        pm.eval()
        lg = logits_of(pm, input_ids)
        assert torch.equal(lg, mem_logits[spec["key"]]), f"{spec['name']}: reloaded logits differ"
        n_loaded = sum(1 for _, mod in pm.named_modules() if isinstance(mod, LoraLayer))
        assert n_loaded == pms[spec["name"]][1], (spec["name"], n_loaded)
        merged = PeftModel.from_pretrained(load_base(base_dir), d).merge_and_unload()
        merged.eval()
        lm = logits_of(merged, input_ids)
        merge_diff = float((lm - lg).abs().max())
        assert merge_diff <= MERGE_TOL, (spec["name"], "merged vs unmerged", merge_diff)
        effect = float((lg - tensors["logits_base"]).abs().max())
        assert effect > MIN_EFFECT, (spec["name"], "adapter has no effect", effect)
        tensors[spec["key"]] = lg
        info[spec["name"]] = (n_loaded, merge_diff, effect)

    ref_path = os.path.join(out, "reference.safetensors")
    save_file(tensors, ref_path, metadata={"format": "pt"})
    back = load_file(ref_path)
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)

    write_readme(out, seed)

    size = 0
    for root, _, files in os.walk(out):
        size += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    assert size < SIZE_LIMIT, f"fixture too large: {size} bytes"
    print(f"peft fixture: seed {seed}, " + ", ".join(f"{n} routing margin {m:.2e}" for n, m, _ in report))
    for name, (n, md, eff) in info.items():
        print(f"  {name}: {n} LoRA modules, max |merged - unmerged| {md:.2e}, max |lora - base| {eff:.3f}")
    print(f"  size {size / 1024:.1f} KiB")


def write_readme(out, seed):
    text = f"""# peft fixture

A tiny DeepSeek-V3 base model (`base/`, the `v3_qlora` shape and init of
tools/make_fixtures.py: vocab 128, hidden 32, 4 heads, q_lora_rank 24, kv_lora_rank 16,
qk 8+4, v 8, 3 layers (1 dense + 2 MoE, 8 routed + 1 shared experts, top-3, 4 groups, top-2
groups, scale 2.5), rope_interleave true, untied, float32) and two LoRA adapters written by
peft's `PeftModel.save_pretrained(safe_serialization=True)`: `adapter/` (r 4, lora_alpha 8,
every nn.Linear of the decoder layers via a regex `target_modules`: 72 modules) and
`adapter_rslora/` (r 2, lora_alpha 6, use_rslora, q_a_proj/q_b_proj/kv_b_proj/o_proj: 12
modules). A wrapped Linear computes W x + s B (A x) with s = lora_alpha / r = 2 (`adapter`)
or s = lora_alpha / sqrt(r) = 6 / sqrt(2) (`adapter_rslora`, use_rslora). lora_A and lora_B
are seeded normal * 0.1 (not peft's zero lora_B).
Each adapter folder holds exactly what save_pretrained writes (adapter_config.json with
`base_model_name_or_path` "" as the base was built in memory, and a `target_modules` list
sorted, since peft writes its set in hash order; adapter_model.safetensors with
keys `base_model.model.<module>.lora_A.weight` [r, in] / `.lora_B.weight` [out, r]) minus
peft's boilerplate model card README.md.
`reference.safetensors` holds `input_ids` (I32 [2, 12]) and `logits_base`, `logits_lora`,
`logits_rslora` (F32 [2, 12, 128]): transformers' forward of the base model alone, with
`adapter`, with `adapter_rslora` (eval, float32, eager attention, loaded from these folders).
Base seed {seed}; torch {torch.__version__.split('+')[0]}, transformers {transformers.__version__},
peft {peft.__version__}, safetensors 0.6.2. Regenerate with `make fixtures`
(`python3 tools/make_peft_fixture.py --out tests/fixtures/peft`); reruns are byte-identical.
Check an adapter written by frugal against peft with
`python3 tools/make_peft_fixture.py --check-adapter DIR --check-logits FILE.safetensors
[--base tests/fixtures/peft/base]` (FILE holds `input_ids` and frugal's `logits`; exits 1 when
the max abs difference exceeds 1e-5).
"""
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)


def check(base_dir, adapter_dir, logits_file):
    t = load_file(logits_file)
    for k in ("input_ids", "logits"):
        if k not in t:
            print(f"{logits_file}: no tensor '{k}'", file=sys.stderr)
            return 2
    ids = t["input_ids"].long()
    if ids.dim() == 1:
        ids = ids[None]
    want = t["logits"].float()
    pm = PeftModel.from_pretrained(load_base(base_dir), adapter_dir)
    pm.eval()
    # every tensor of the adapter file must land in a LoRA parameter and vice versa (peft
    # only warns about missing or unexpected keys)
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    params = {n.replace(".default", ""): p for n, p in pm.named_parameters() if ".lora_" in n}
    missing = sorted(set(params) - set(saved))
    unexpected = sorted(set(saved) - set(params))
    if missing or unexpected:
        print(f"adapter keys do not match the LoRA modules peft built: {len(missing)} missing "
              f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})", file=sys.stderr)
        return 1
    for k, p in params.items():
        if not torch.equal(saved[k].to(p.dtype), p.detach()):
            print(f"{k}: loaded parameter differs from the file", file=sys.stderr)
            return 1
    print(f"{len(params)} LoRA tensors loaded")
    got = logits_of(pm, ids)
    if want.numel() != got.numel():
        print(f"shape mismatch: peft {tuple(got.shape)}, file {tuple(want.shape)}", file=sys.stderr)
        return 1
    diff = float((got - want.reshape(got.shape)).abs().max())
    if not torch.isfinite(torch.tensor(diff)):
        diff = float("inf")
    print(f"max abs difference {diff:.3e} (tolerance {CHECK_TOL:.0e})")
    return 0 if diff <= CHECK_TOL else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/peft", help="output folder (default tests/fixtures/peft)")
    ap.add_argument("--check-adapter", metavar="ADAPTER_DIR", help="check mode: adapter folder to load with peft")
    ap.add_argument("--check-logits", metavar="FILE", help="check mode: safetensors with input_ids and logits")
    ap.add_argument("--base", help="check mode: base model folder (default OUT/base)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    if args.check_adapter or args.check_logits:
        if not (args.check_adapter and args.check_logits):
            ap.error("--check-adapter and --check-logits go together")
        sys.exit(check(args.base or os.path.join(args.out, "base"), args.check_adapter, args.check_logits))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    generate(args.out)


if __name__ == "__main__":
    main()
