#!/usr/bin/env python3
"""Builds tests/fixtures/kd: reference values of the knowledge-distillation loss and its
gradient with respect to the student logits, for frugal's C implementation.

    python3 tools/make_kd_fixture.py --out tests/fixtures/kd

Definitions. Inputs for N positions over a vocabulary of V:
  z [N, V]  student logits (float32);
  y [N]     targets (int), -1 = ignored position;
  I [N, K]  teacher top-k indices (int32, distinct within a row);
  L [N, K]  teacher logits of those entries, the teacher's K largest logits in
            descending order (float32);
  Tm        temperature, alpha weight.
Teacher distribution over its top-k only, renormalised:
  p_ik = softmax(L_i / Tm)_k  (over the K entries).
Student at temperature:
  log q_i = log_softmax(z_i / Tm)  (over all V).
Per position i with y_i >= 0:
  kl_i   = sum_k p_ik (log p_ik - log q_i[I_ik])
  ce_i   = -log_softmax(z_i)[y_i]            (temperature 1)
  loss_i = alpha * Tm^2 * kl_i + (1 - alpha) * ce_i
Positions with y_i = -1 contribute nothing (no loss, zero gradient row).
  loss = sum_i loss_i / n_targets,  n_targets = #{i : y_i >= 0}.
The loss and d loss / d z are computed with torch autograd in float64 from the stored
float32 inputs (z, L converted to float64); the gradient is stored as float32, the loss
both as float64 and as float32.

Cases (tensor name prefix in kd.safetensors):
  a: N=7, V=50, K=5,  Tm=2.0, alpha=0.7,  two targets -1
  b: N=4, V=33, K=33 (K = V: the full teacher distribution), Tm=1.0, alpha=1.0
  c: N=5, V=40, K=1,  Tm=4.0, alpha=0.25
Student and teacher logits are N(0, 3^2); the teacher's top-k is torch.topk of a random
teacher logit vector over V (sorted descending, distinct indices).

Tensors per case P: P.z F32 [N,V]; P.y I32 [N]; P.topk_idx I32 [N,K]; P.topk_logit F32
[N,K]; P.temperature F32 [1]; P.alpha F32 [1]; P.loss F64 [1]; P.loss_f32 F32 [1];
P.grad F32 [N,V].

Checks (the script stops with an error when one fails): an independent float64 numpy
loop gives the same loss and gradient (closed form: d loss_i / d z_i =
alpha Tm (q_i - p~_i) + (1 - alpha) (softmax(z_i) - onehot(y_i)), divided by n_targets,
p~ = p scattered to V); central finite differences agree with autograd on some entries;
ignored rows have a zero gradient; case b equals the full KL(softmax(L) || softmax(z));
case c equals alpha Tm^2 (-log q[I]) + (1 - alpha) ce. Fixed seeds, one CPU thread: two
runs give byte-identical files.

Package pins: tools/requirements.txt (torch 2.9.1, safetensors 0.6.2, numpy 2.4.6).
Python is a test tool only; the product is the C library.
"""

from __future__ import annotations

import argparse
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

CASES = [
    dict(name="a", N=7, V=50, K=5, Tm=2.0, alpha=0.7, n_ignored=2, seed=8001),
    dict(name="b", N=4, V=33, K=33, Tm=1.0, alpha=1.0, n_ignored=0, seed=8002),
    dict(name="c", N=5, V=40, K=1, Tm=4.0, alpha=0.25, n_ignored=0, seed=8003),
]
LOGIT_STD = 3.0
SIZE_LIMIT = 1024 * 1024


def kd_loss(z, y, idx, tl, Tm, alpha):
    """The loss of the module docstring, in the dtype of z / tl (float64 here)."""
    mask = y >= 0
    n_targets = int(mask.sum())
    assert n_targets > 0
    logp = F.log_softmax(tl / Tm, dim=-1)                    # [N, K]
    logq = F.log_softmax(z / Tm, dim=-1)                     # [N, V]
    kl = (logp.exp() * (logp - logq.gather(1, idx))).sum(-1)  # [N]
    ls = F.log_softmax(z, dim=-1)
    ce = -ls.gather(1, y.clamp(min=0)[:, None])[:, 0]        # [N]
    per = alpha * Tm * Tm * kl + (1.0 - alpha) * ce
    per = torch.where(mask, per, torch.zeros_like(per))
    return per.sum() / n_targets


def numpy_reference(z, y, idx, tl, Tm, alpha):
    """Independent loop: loss and closed-form gradient in float64."""
    N, V = z.shape
    rows = [i for i in range(N) if y[i] >= 0]
    n = len(rows)
    loss = 0.0
    grad = np.zeros((N, V), dtype=np.float64)
    for i in rows:
        a = tl[i] / Tm
        p = np.exp(a - a.max())
        p /= p.sum()
        s = z[i] / Tm
        m = s.max()
        lse = m + np.log(np.exp(s - m).sum())
        logq = s - lse
        kl = 0.0
        for k in range(idx.shape[1]):
            kl += p[k] * (np.log(p[k]) - logq[idx[i, k]])
        m1 = z[i].max()
        lse1 = m1 + np.log(np.exp(z[i] - m1).sum())
        ce = -(z[i, y[i]] - lse1)
        loss += alpha * Tm * Tm * kl + (1.0 - alpha) * ce
        pt = np.zeros(V)
        pt[idx[i]] = p
        q = np.exp(logq)
        sm = np.exp(z[i] - lse1)
        oh = np.zeros(V)
        oh[y[i]] = 1.0
        grad[i] = alpha * Tm * (q - pt) + (1.0 - alpha) * (sm - oh)
    return loss / n, grad / n


def make_case(spec):
    g = torch.Generator().manual_seed(spec["seed"])
    N, V, K = spec["N"], spec["V"], spec["K"]
    Tm, alpha = spec["Tm"], spec["alpha"]
    z = (torch.randn(N, V, generator=g, dtype=torch.float64) * LOGIT_STD).float()
    teacher = (torch.randn(N, V, generator=g, dtype=torch.float64) * LOGIT_STD).float()
    tl, idx = torch.topk(teacher, K, dim=-1, largest=True, sorted=True)
    y = torch.randint(0, V, (N,), generator=g)
    if spec["n_ignored"]:
        ign = torch.randperm(N, generator=g)[: spec["n_ignored"]]
        y[ign] = -1
    assert int((y < 0).sum()) == spec["n_ignored"]
    for i in range(N):
        assert torch.unique(idx[i]).numel() == K
        assert bool((tl[i][:-1] >= tl[i][1:]).all())
        assert torch.equal(tl[i], teacher[i][idx[i]])
        # the teacher's K largest (no tie at the boundary)
        if K < V:
            rest = torch.ones(V, dtype=torch.bool)
            rest[idx[i]] = False
            assert float(teacher[i][rest].max()) < float(tl[i][-1])

    Tm32 = float(np.float32(Tm))
    al32 = float(np.float32(alpha))
    z64 = z.double().requires_grad_(True)
    loss = kd_loss(z64, y, idx, tl.double(), Tm32, al32)
    (grad,) = torch.autograd.grad(loss, z64)
    loss_v = float(loss.detach())

    # independent numpy loop
    l_np, g_np = numpy_reference(z.double().numpy(), y.numpy(), idx.numpy(), tl.double().numpy(), Tm32, al32)
    assert abs(l_np - loss_v) <= 1e-12 * max(1.0, abs(loss_v)), (spec["name"], l_np, loss_v)
    gd = float(np.abs(g_np - grad.numpy()).max())
    assert gd <= 1e-13, (spec["name"], "closed-form gradient", gd)
    # ignored rows
    for i in range(N):
        if y[i] < 0:
            assert bool((grad[i] == 0).all())
    # central finite differences on a few entries
    h = 1e-6
    gfd = torch.Generator().manual_seed(spec["seed"] + 100)
    worst = 0.0
    for _ in range(12):
        i = int(torch.randint(0, N, (1,), generator=gfd))
        j = int(torch.randint(0, V, (1,), generator=gfd))
        zp = z.double().clone()
        zm = z.double().clone()
        zp[i, j] += h
        zm[i, j] -= h
        fd = (float(kd_loss(zp, y, idx, tl.double(), Tm32, al32)) - float(kd_loss(zm, y, idx, tl.double(), Tm32, al32))) / (2 * h)
        worst = max(worst, abs(fd - float(grad[i, j])))
    assert worst <= 1e-7, (spec["name"], "finite differences", worst)
    # special cases
    mask = y >= 0
    if K == V:
        p = F.softmax(tl.double() / Tm32, -1)
        pf = torch.zeros(N, V, dtype=torch.float64).scatter(1, idx, p)
        full = F.kl_div(F.log_softmax(z.double() / Tm32, -1), pf, reduction="none").sum(-1)
        ce = F.cross_entropy(z.double(), y.clamp(min=0), reduction="none")
        ref = ((al32 * Tm32 ** 2 * full + (1 - al32) * ce)[mask]).mean()
        assert abs(float(ref) - loss_v) <= 1e-12 * max(1.0, abs(loss_v)), (spec["name"], float(ref), loss_v)
    if K == 1:
        nlq = -F.log_softmax(z.double() / Tm32, -1).gather(1, idx)[:, 0]
        ce = F.cross_entropy(z.double(), y.clamp(min=0), reduction="none")
        ref = ((al32 * Tm32 ** 2 * nlq + (1 - al32) * ce)[mask]).mean()
        assert abs(float(ref) - loss_v) <= 1e-12 * max(1.0, abs(loss_v)), (spec["name"], float(ref), loss_v)

    p = spec["name"] + "."
    tensors = {
        p + "z": z.contiguous(),
        p + "y": y.to(torch.int32).contiguous(),
        p + "topk_idx": idx.to(torch.int32).contiguous(),
        p + "topk_logit": tl.contiguous(),
        p + "temperature": torch.tensor([Tm], dtype=torch.float32),
        p + "alpha": torch.tensor([alpha], dtype=torch.float32),
        p + "loss": torch.tensor([loss_v], dtype=torch.float64),
        p + "loss_f32": torch.tensor([loss_v], dtype=torch.float32),
        p + "grad": grad.float().contiguous(),
    }
    print(f"case {spec['name']}: N={N} V={V} K={K} Tm={Tm} alpha={alpha} n_targets={int(mask.sum())} "
          f"loss {loss_v:.10f}  max|grad| {float(grad.abs().max()):.4e}  fd err {worst:.1e}")
    return tensors


README = """# kd fixture

Reference values for frugal's knowledge-distillation loss (tools/make_kd_fixture.py, whose
docstring has the full definition). Student logits z [N, V], targets y [N] (-1 = ignored),
the teacher's top-K indices I and logits L (descending); p = softmax(L / Tm) over the K
entries, log q = log_softmax(z / Tm) over V; for y_i >= 0:
loss_i = alpha Tm^2 sum_k p_ik (log p_ik - log q_i[I_ik]) + (1 - alpha) (-log_softmax(z_i)[y_i]);
loss = sum_i loss_i / #{y_i >= 0}. `kd.safetensors` holds, for cases `a` (N 7, V 50, K 5,
Tm 2, alpha 0.7, two ignored positions), `b` (N 4, V 33, K = V = 33, Tm 1, alpha 1) and `c`
(N 5, V 40, K 1, Tm 4, alpha 0.25): `P.z` F32 [N,V], `P.y` I32 [N], `P.topk_idx` I32 [N,K],
`P.topk_logit` F32 [N,K], `P.temperature` F32 [1], `P.alpha` F32 [1], `P.loss` F64 [1],
`P.loss_f32` F32 [1] and `P.grad` F32 [N,V] = d loss / d z (autograd in float64 from the
float32 inputs; rows of ignored positions are zero). Generated with torch {torch}, numpy
{numpy}, safetensors 0.6.2; regenerate with `make fixtures`
(`python3 tools/make_kd_fixture.py --out tests/fixtures/kd`); reruns are byte-identical.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/kd", help="output folder (default tests/fixtures/kd)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    tensors = {}
    for spec in CASES:
        tensors.update(make_case(spec))
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    path = os.path.join(args.out, "kd.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    back = load_file(path)
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(README.replace("{torch}", torch.__version__.split("+")[0]).replace("{numpy}", np.__version__))
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    assert size < SIZE_LIMIT, size
    print(f"kd fixture: {len(tensors)} tensors, size {size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
