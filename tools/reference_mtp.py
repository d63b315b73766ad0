"""PyTorch autograd reference for frugal's training loss: main head + multi-token
prediction (MTP) + sequence-wise balance loss, for DeepSeek-V3-style models built with
Hugging Face transformers (which has no MTP of its own).

This file is a test tool; the product is the C library. The C code implements exactly the
definitions below, and tests/fixtures/v3_mtp is generated from this module.

Definitions
-----------
L = num_hidden_layers, D = num_nextn_predict_layers (MTP depth), V = vocab_size,
E = n_routed_experts, K = num_experts_per_tok, lambda = MTP weight, alpha = balance weight.
input_ids [B, T]; targets [B, T] with targets[b, t] = input_ids[b, t+1] (the token that
should follow position t) and -100 (ignored) at t = T-1 and wherever else a position is
ignored.

* Main head: logits = lm_head(model.norm(h_0)), loss_main = mean cross-entropy of
  logits[b, t] against targets[b, t] over the non-ignored (b, t).
* h_0 = the output of the last main decoder layer BEFORE model.norm (the residual stream).
* MTP module k = 1..D works on positions i = 0..T-k-1 (sequence length T-k, RoPE positions
  0..T-k-1, causal attention among those positions). Its parameters are stored as decoder
  layer index L+k-1 under DeepSeek's release names:
      model.layers.{L+k-1}.enorm.weight            [H]
      model.layers.{L+k-1}.hnorm.weight            [H]
      model.layers.{L+k-1}.eh_proj.weight          [H, 2H]
      model.layers.{L+k-1}.shared_head.norm.weight [H]
      model.layers.{L+k-1}.input_layernorm.weight, .self_attn.*, .post_attention_layernorm.weight,
      .mlp.* (a MoE block, since L+k-1 >= first_k_dense_replace; incl. mlp.gate.e_score_correction_bias)
  The checkpoint also holds the copies model.layers.{L+k-1}.embed_tokens.weight (=
  model.embed_tokens.weight) and model.layers.{L+k-1}.shared_head.head.weight (=
  lm_head.weight), as DeepSeek ships them; the computation uses the main model's
  embed_tokens and lm_head (shared), so the copies get no gradient of their own and their
  gradient flows into model.embed_tokens.weight / lm_head.weight.
      x_k      = eh_proj( concat[ enorm(Emb(input_ids[:, k:T])), hnorm(h_{k-1}[:, 0:T-k]) ] )
                 (embedding half first: eh_proj.weight[:, :H] multiplies the embedding part)
      h_k      = Block_k(x_k)                       (h_k is the block output, before shared_head.norm)
      logits_k = lm_head(shared_head.norm(h_k))
      CE_k     = mean CE of logits_k[b, i] against targets[b, i+k], ignoring -100
  (position i of module k predicts token i+k+1.)
* Balance loss, for each MoE layer (the main MoE layers and every MTP block), for each
  sequence b, with T' = that layer's sequence length (T for main layers, T-k for MTP
  block k):
      s_t,i   = sigmoid(router logits)  (unbiased, FP32)
      count_i = #{t : expert i is in the top-K selected for token t}  (selection exactly as the
                gate made it, i.e. with e_score_correction_bias and group limiting)
      f_i     = E / (K * T') * count_i            (constant: no gradient)
      P_i     = (1/T') * sum_t s_t,i / sum_j s_t,j
      L_b     = sum_i f_i * P_i
  layer loss = mean over b of L_b; loss_balance = alpha * (sum over those MoE layers).
* Total: loss = loss_main + lambda/D * sum_k CE_k + loss_balance (the MTP term is absent
  when D = 0). Gradients are d loss / d parameter.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from transformers.models.deepseek_v3 import modeling_deepseek_v3 as mv3
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
    DeepseekV3DecoderLayer,
    DeepseekV3MoE,
    DeepseekV3RMSNorm,
    DeepseekV3TopkRouter,
)

IGNORE = -100


class SharedHead(nn.Module):
    """Holds only the final norm of an MTP module; the head matrix itself is shared."""

    def __init__(self, config):
        super().__init__()
        self.norm = DeepseekV3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class MTPLayer(DeepseekV3DecoderLayer):
    """One MTP module: a transformers DeepseekV3DecoderLayer plus enorm, hnorm, eh_proj and
    shared_head.norm. Its state_dict names are exactly the suffixes DeepSeek uses under
    model.layers.{L+k-1}."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        h = config.hidden_size
        self.enorm = DeepseekV3RMSNorm(h, eps=config.rms_norm_eps)
        self.hnorm = DeepseekV3RMSNorm(h, eps=config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.shared_head = SharedHead(config)


def build_mtp_layers(config, depth):
    return nn.ModuleList(
        [MTPLayer(config, config.num_hidden_layers + k) for k in range(depth)]
    )


def mtp_state_dict(model, mtp_layers, with_copies=True):
    """MTP tensors under release names (model.layers.{L+k-1}.*), optionally with the
    embed_tokens / shared_head.head copies."""
    L = model.config.num_hidden_layers
    out = {}
    for k, layer in enumerate(mtp_layers):
        prefix = f"model.layers.{L + k}."
        for n, t in layer.state_dict().items():
            out[prefix + n] = t
        if with_copies:
            out[prefix + "embed_tokens.weight"] = model.model.embed_tokens.weight
            out[prefix + "shared_head.head.weight"] = model.lm_head.weight
    return out


def mtp_named_parameters(model, mtp_layers):
    L = model.config.num_hidden_layers
    for k, layer in enumerate(mtp_layers):
        for n, p in layer.named_parameters():
            yield f"model.layers.{L + k}.{n}", p


def causal_mask(T, dtype, device=None):
    """Additive causal mask [1, 1, T, T] as transformers' eager path uses it."""
    m = torch.zeros(T, T, dtype=dtype, device=device)
    m.masked_fill_(torch.ones(T, T, dtype=torch.bool, device=device).triu(1), torch.finfo(dtype).min)
    return m[None, None]


class GateCapture:
    """Forward hooks on MoE gates: records (gate module, gate input [B, T', H], selected
    expert indices [B*T', K]) for every call, in call order."""

    def __init__(self, gates):
        self.gates = list(gates)
        self.records = []
        self.handles = []

    def __enter__(self):
        for name, g in self.gates:
            self.handles.append(g.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name):
        def fn(module, args, output):
            x = args[0]
            self.records.append((name, module, x, output[0].detach()))

        return fn

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []


def moe_gates(model, mtp_layers=None):
    """(name, gate) for every MoE layer of the main model, then of the MTP blocks."""
    out = []
    for i, layer in enumerate(model.model.layers):
        if hasattr(layer.mlp, "gate"):
            out.append((f"model.layers.{i}.mlp.gate", layer.mlp.gate))
    if mtp_layers is not None:
        L = model.config.num_hidden_layers
        for k, layer in enumerate(mtp_layers):
            out.append((f"model.layers.{L + k}.mlp.gate", layer.mlp.gate))
    return out


def balance_loss_layer(gate, x, topk_idx, K, router_dtype=torch.float32):
    """Sequence-wise balance loss of one MoE layer (mean over sequences), see module doc."""
    B, Tp, H = x.shape
    E = gate.weight.shape[0]
    dt = router_dtype if router_dtype is not None else x.dtype
    logits = F.linear(x.reshape(-1, H).to(dt), gate.weight.to(dt))
    s = logits.sigmoid().view(B, Tp, E)
    p = (s / s.sum(-1, keepdim=True)).mean(1)  # [B, E]
    counts = F.one_hot(topk_idx.view(B, Tp * K), E).sum(1).to(dt)  # [B, E]
    f = counts * (E / (K * Tp))
    return (f * p).sum(-1).mean()


def forward_loss(model, mtp_layers, input_ids, targets, mtp_lambda, balance_alpha,
                 router_dtype=torch.float32):
    """Runs the main model and the MTP modules; returns a dict with logits, loss_main,
    loss_mtp (list), loss_balance, loss (total), and the gate records."""
    cfg = model.config
    V = cfg.vocab_size
    K = cfg.num_experts_per_tok
    B, T = input_ids.shape
    mtp_layers = list(mtp_layers) if mtp_layers is not None else []
    D = len(mtp_layers)
    h0 = {}

    def grab(module, args, output):
        h0["h"] = output[0] if isinstance(output, tuple) else output

    handle = model.model.layers[-1].register_forward_hook(grab)
    gates = moe_gates(model, mtp_layers)
    try:
        with GateCapture(gates) as cap:
            out = model(input_ids=input_ids)
            logits = out.logits
            loss_main = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=IGNORE)
            ce = []
            h_prev = h0["h"]
            emb = model.model.embed_tokens
            head = model.lm_head
            for k in range(1, D + 1):
                layer = mtp_layers[k - 1]
                Tk = T - k
                e = layer.enorm(emb(input_ids[:, k:T]))
                h = layer.hnorm(h_prev[:, 0:Tk])
                x = layer.eh_proj(torch.cat([e, h], dim=-1))
                pos = torch.arange(Tk, device=input_ids.device)[None]
                cos, sin = model.model.rotary_emb(x, pos)
                hk = layer(x, attention_mask=causal_mask(Tk, x.dtype, x.device), position_ids=pos,
                           position_embeddings=(cos, sin))
                if isinstance(hk, tuple):
                    hk = hk[0]
                lk = head(layer.shared_head.norm(hk))
                ce.append(F.cross_entropy(lk.reshape(-1, V), targets[:, k:T].reshape(-1), ignore_index=IGNORE))
                h_prev = hk
    finally:
        handle.remove()

    bal_layers = []
    if balance_alpha != 0.0:
        for name, gate, x, idx in cap.records:
            bal_layers.append(balance_loss_layer(gate, x, idx, K, router_dtype))
    loss_balance = balance_alpha * torch.stack(bal_layers).sum() if bal_layers else logits.new_zeros(())
    total = loss_main + loss_balance
    if D > 0:
        total = total + (mtp_lambda / D) * torch.stack(ce).sum()
    return {
        "logits": logits,
        "loss_main": loss_main,
        "loss_mtp": ce,
        "loss_balance": loss_balance,
        "balance_layers": bal_layers,
        "loss": total,
        "records": cap.records,
        "h0": h0["h"],
    }


# --------------------------------------------------------------------------- float64 support
# transformers computes RMSNorm, the router and the attention softmax in float32 even in a
# float64 model. For finite-difference checks we patch those three places to keep the
# input dtype (same math, no float32 round trip).


def _rmsnorm_native(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _router_native(self, hidden_states):
    hidden_states = hidden_states.view(-1, self.config.hidden_size)
    router_logits = F.linear(hidden_states, self.weight.to(hidden_states.dtype))
    scores = router_logits.sigmoid()
    topk_indices = self.get_topk_indices(scores)
    topk_weights = scores.gather(1, topk_indices)
    if self.norm_topk_prob:
        denominator = topk_weights.sum(dim=-1, keepdim=True) + 1e-20
        topk_weights = topk_weights / denominator
    topk_weights = topk_weights * self.routed_scaling_factor
    return topk_indices, topk_weights


def _eager_native(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    attn = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn = attn + attention_mask[:, :, :, : key.shape[-2]]
    attn = torch.softmax(attn, dim=-1)
    out = torch.matmul(attn, value).transpose(1, 2).contiguous()
    return out, attn


@contextlib.contextmanager
def native_dtype_patches():
    saved = (DeepseekV3RMSNorm.forward, DeepseekV3TopkRouter.forward, mv3.eager_attention_forward)
    DeepseekV3RMSNorm.forward = _rmsnorm_native
    DeepseekV3TopkRouter.forward = _router_native
    mv3.eager_attention_forward = _eager_native
    try:
        yield
    finally:
        DeepseekV3RMSNorm.forward, DeepseekV3TopkRouter.forward, mv3.eager_attention_forward = saved


# --------------------------------------------------------------------------- self tests


def _balance_loop(gate, x, idx, K):
    """Balance loss of one layer with explicit loops (independent of balance_loss_layer)."""
    B, Tp, H = x.shape
    E = gate.weight.shape[0]
    W = gate.weight.detach().double()
    xs = x.detach().double()
    idx = idx.view(B, Tp, K)
    total = 0.0
    for b in range(B):
        count = [0] * E
        P = [0.0] * E
        for t in range(Tp):
            s = torch.sigmoid(W @ xs[b, t])
            tot = float(s.sum())
            for i in range(E):
                P[i] += float(s[i]) / tot / Tp
            for j in range(K):
                count[int(idx[b, t, j])] += 1
        total += sum(E / (K * Tp) * count[i] * P[i] for i in range(E))
    return total / B


def _ce_loop(logits, targets):
    """Sum and count of CE with explicit log-softmax (independent of F.cross_entropy)."""
    lg = logits.detach().double().reshape(-1, logits.shape[-1])
    tg = targets.reshape(-1)
    s, n = 0.0, 0
    for r in range(lg.shape[0]):
        if int(tg[r]) == IGNORE:
            continue
        row = lg[r]
        m = float(row.max())
        lse = m + math.log(float(torch.exp(row - m).sum()))
        s += lse - float(row[int(tg[r])])
        n += 1
    return s, n


@torch.no_grad()
def check_depth_one(model, mtp_layers, input_ids, targets, mtp_lambda, balance_alpha, tol=2e-6):
    """(a) D=1 reduces correctly: recomputes module 1 by a separate path (eh_proj split into
    its embedding and hidden halves, each sequence run alone, explicit CE and balance loops)
    and checks the total; also checks CE_1 does not depend on D."""
    cfg = model.config
    H = cfg.hidden_size
    K = cfg.num_experts_per_tok
    B, T = input_ids.shape
    r1 = forward_loss(model, mtp_layers[:1], input_ids, targets, mtp_lambda, balance_alpha)
    rD = forward_loss(model, mtp_layers, input_ids, targets, mtp_lambda, balance_alpha)
    assert abs(float(r1["loss_mtp"][0]) - float(rD["loss_mtp"][0])) <= tol, "CE_1 depends on D"
    assert abs(float(r1["loss_main"]) - float(rD["loss_main"])) == 0.0

    layer = mtp_layers[0]
    W = layer.eh_proj.weight
    h0 = r1["h0"]
    ce_sum, ce_n, bal = 0.0, 0, 0.0
    main_sum, main_n = _ce_loop(r1["logits"], targets)
    # balance of the main MoE layers from their recorded gate inputs (explicit loops)
    for name, gate, x, idx in r1["records"][:-1]:
        bal += _balance_loop(gate, x, idx, K)
    recs = []
    for b in range(B):
        Tk = T - 1
        e = layer.enorm(model.model.embed_tokens(input_ids[b:b + 1, 1:T]))
        h = layer.hnorm(h0[b:b + 1, 0:Tk])
        x = F.linear(e, W[:, :H]) + F.linear(h, W[:, H:])
        pos = torch.arange(Tk)[None]
        cos, sin = model.model.rotary_emb(x, pos)
        with GateCapture([("mtp", layer.mlp.gate)]) as cap:
            hk = layer(x, attention_mask=causal_mask(Tk, x.dtype), position_ids=pos,
                       position_embeddings=(cos, sin))
        recs.append(cap.records[0])
        lk = model.lm_head(layer.shared_head.norm(hk))
        s, n = _ce_loop(lk, targets[b:b + 1, 1:T])
        ce_sum += s
        ce_n += n
    # MTP block balance: per sequence, then mean over b
    bal_mtp = sum(_balance_loop(g, x, i, K) for _, g, x, i in recs) / B
    bal += bal_mtp
    ce1 = ce_sum / ce_n
    total = main_sum / main_n + mtp_lambda * ce1 + balance_alpha * bal
    assert abs(ce1 - float(r1["loss_mtp"][0])) <= tol, (ce1, float(r1["loss_mtp"][0]))
    assert abs(total - float(r1["loss"])) <= tol, (total, float(r1["loss"]))
    return {"ce1": ce1, "total_d1": total}


def finite_difference_check(model, mtp_layers, input_ids, targets, mtp_lambda, balance_alpha,
                            param_names, n_entries=3, eps=1e-6, seed=0, rtol=1e-5, atol=1e-7):
    """(b) float64 central differences against autograd for a few entries of the named
    parameters (names as in the checkpoint). Returns the max relative error."""
    import copy

    m64 = copy.deepcopy(model).double()
    t64 = copy.deepcopy(mtp_layers).double()
    params = dict(m64.named_parameters())
    params.update(dict(mtp_named_parameters(m64, t64)))
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    with native_dtype_patches():
        m64.zero_grad(set_to_none=True)
        t64.zero_grad(set_to_none=True)
        r = forward_loss(m64, t64, input_ids, targets, mtp_lambda, balance_alpha, router_dtype=None)
        r["loss"].backward()
        sel_ref = [rec[3] for rec in r["records"]]
        for name in param_names:
            p = params[name]
            assert p.grad is not None, name
            flat = p.data.view(-1)
            gflat = p.grad.view(-1)
            for _ in range(n_entries):
                j = int(torch.randint(flat.numel(), (1,), generator=g))
                old = float(flat[j])
                vals = []
                for sgn in (1.0, -1.0):
                    flat[j] = old + sgn * eps
                    with torch.no_grad():
                        rr = forward_loss(m64, t64, input_ids, targets, mtp_lambda, balance_alpha,
                                          router_dtype=None)
                    for a, b in zip(sel_ref, [rec[3] for rec in rr["records"]]):
                        assert torch.equal(a, b), "routing changed under perturbation"
                    vals.append(float(rr["loss"]))
                flat[j] = old
                fd = (vals[0] - vals[1]) / (2 * eps)
                an = float(gflat[j])
                err = abs(fd - an)
                assert err <= atol + rtol * max(abs(fd), abs(an)), (name, j, fd, an)
                if abs(an) > 1e-6:
                    worst = max(worst, err / abs(an))
    grads64 = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
    return worst, grads64
