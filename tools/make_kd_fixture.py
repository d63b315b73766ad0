#!/usr/bin/env python3
"""Builds tests/fixtures/kd: reference values of the knowledge-distillation loss and its
gradient with respect to the student logits, for frugal's C implementation.

    python3 tools/make_kd_fixture.py --out tests/fixtures/kd

The loss is "top-k plus a tail bucket": the teacher's distribution is represented by its K
largest entries plus one bucket holding all of its remaining mass, and the student's
distribution is folded the same way (its mass outside the teacher's top-k goes into the
bucket). Earlier versions renormalised the teacher's top-k to sum to 1, which teaches the
student that every token outside the teacher's top-k has probability 0 (on real data about
19 % of next tokens fall outside a top-32); the tail bucket keeps the teacher's true
probabilities and only asks the student to put the right total mass outside the top-k.

Definitions. Inputs for N positions over a vocabulary of V:
  z   [N, V]  student logits (float32);
  y   [N]     targets (int), -1 = ignored position;
  I   [N, K]  teacher top-k indices (int32, distinct within a row);
  L   [N, K]  teacher logits of those entries, the teacher's K largest logits in
              descending order (float32);
  lse [N]     the teacher's log-sum-exp at temperature Tm over the WHOLE vocabulary,
              lse_i = log sum_{j<V} exp(t_ij / Tm), t_i the teacher's full logit row
              (float32; computed in float64 from the full row, then rounded);
  Tm          temperature, alpha weight.
Teacher probabilities at Tm, NOT renormalised over the K entries, and its tail mass:
  p_ik = exp(L_ik / Tm - lse_i),
  p_ir = 1 - sum_k p_ik, set to exactly 0 when it is below 1e-6 (this covers max(0, .)
         and the float32 rounding of lse: with K = V, 1 - sum_k p_ik is a rounding
         residue of order 1e-7 of either sign, and the tail bucket is empty).
Student at temperature, over all V:
  q_i  = softmax(z_i / Tm);  q_ik = q_i[I_ik];
  q_ir = sum of q_ij over the j NOT in I_i (= 1 - sum_k q_ik, summed directly to avoid
         cancellation; 0 when K = V).
Per position i with y_i >= 0 (convention 0 log 0 = 0: the tail term is absent when p_ir = 0):
  kl_i   = sum_k p_ik (log p_ik - log q_ik) + p_ir (log p_ir - log q_ir)
  ce_i   = -log_softmax(z_i)[y_i]            (temperature 1)
  loss_i = alpha * Tm^2 * kl_i + (1 - alpha) * ce_i
Positions with y_i = -1 contribute nothing (no loss, zero gradient row).
  loss = sum_i loss_i / n_targets,  n_targets = #{i : y_i >= 0}.
Gradient (closed form): with m_i = sum_k p_ik + p_ir (= 1 unless p_ir was zeroed),
  d kl_i / d z_ij = (1/Tm) (m_i q_ij - p_ij)               for j in I_i,
                    (1/Tm) q_ij (m_i - p_ir / q_ir)        for j not in I_i
(with m_i = 1: (q_ij - p_ij) / Tm and q_ij (1 - p_ir / q_ir) / Tm; when p_ir = 0 the second
is q_ij / Tm). The loss and d loss / d z are computed with torch autograd in float64 from
the stored float32 inputs (z, L and the STORED float32 lse converted to float64); the
gradient is stored as float32, the loss both as float64 and as float32.

Cases (tensor name prefix in kd.safetensors):
  a: N=7, V=50, K=5,  Tm=2.0, alpha=0.7,  two targets -1
  b: N=4, V=33, K=33 (K = V: the full teacher distribution; p_r is a rounding residue,
     zeroed, so this is the plain full KL with p = exp(L / Tm - lse)), Tm=1.0, alpha=1.0
  c: N=5, V=40, K=1 (one entry plus the tail: a two-outcome KL), Tm=4.0, alpha=0.25
Student and teacher logits are N(0, 3^2); the teacher's top-k is torch.topk of a random
teacher logit vector over V (sorted descending, distinct indices), and lse is that
vector's log-sum-exp at Tm.

Tensors per case P: P.z F32 [N,V]; P.y I32 [N]; P.topk_idx I32 [N,K]; P.topk_logit F32
[N,K]; P.teacher_lse F32 [N]; P.temperature F32 [1]; P.alpha F32 [1]; P.loss F64 [1];
P.loss_f32 F32 [1]; P.grad F32 [N,V].

Checks (the script stops with an error when one fails): an independent float64 numpy
loop gives the same loss and gradient (the closed form above); the closed form with
m_i = 1 agrees with autograd up to alpha Tm |1 - m_i| / n_targets; central finite
differences agree with autograd on some entries; kl_i >= 0; ignored rows have a zero
gradient; the stored lse reproduces the teacher's tail mass; case b equals the full
KL(p || softmax(z / Tm)) with p = exp(L / Tm - lse) scattered to V, and the full KL with
p = softmax(t / Tm) to 1e-6; case c equals the two-outcome KL of (p_1, 1 - p_1) against
(q_1, 1 - q_1). Fixed seeds, one CPU thread: two runs give byte-identical files.

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
TAIL_EPS = 1e-6  # p_r below this is set to exactly 0
SIZE_LIMIT = 1024 * 1024


def tail_mass(p_sum):
    """p_r = 1 - sum_k p_k, exactly 0 where below TAIL_EPS (works on torch or numpy)."""
    pr = 1.0 - p_sum
    return pr * (pr >= TAIL_EPS)


def kd_loss(z, y, idx, tl, lse, Tm, alpha):
    """The loss of the module docstring, in the dtype of z / tl / lse (float64 here)."""
    mask = y >= 0
    n_targets = int(mask.sum())
    assert n_targets > 0
    N, V = z.shape
    K = idx.shape[1]
    logp = tl / Tm - lse[:, None]                             # [N, K], not renormalised
    p = logp.exp()
    pr = tail_mass(p.sum(-1))                                 # [N]
    s = z / Tm
    lz = torch.logsumexp(s, -1)                               # [N]
    logq_k = s.gather(1, idx) - lz[:, None]                   # [N, K]
    kl = (p * (logp - logq_k)).sum(-1)                        # [N]
    if K < V:
        in_top = torch.zeros(N, V, dtype=torch.bool).scatter(1, idx, True)
        logq_r = torch.logsumexp(s.masked_fill(in_top, float("-inf")), -1) - lz
        kl = kl + torch.xlogy(pr, pr) - pr * logq_r           # 0 log 0 = 0
    else:
        assert bool((pr == 0).all()), pr                      # empty tail
    ls = F.log_softmax(z, dim=-1)
    ce = -ls.gather(1, y.clamp(min=0)[:, None])[:, 0]        # [N]
    per = alpha * Tm * Tm * kl + (1.0 - alpha) * ce
    per = torch.where(mask, per, torch.zeros_like(per))
    return per.sum() / n_targets, kl.detach()


def numpy_reference(z, y, idx, tl, lse, Tm, alpha):
    """Independent loop: loss, closed-form gradient (exact, with m_i) and the closed form
    with m_i = 1, in float64. Also returns max |1 - m_i|."""
    N, V = z.shape
    rows = [i for i in range(N) if y[i] >= 0]
    n = len(rows)
    loss = 0.0
    grad = np.zeros((N, V), dtype=np.float64)
    grad1 = np.zeros((N, V), dtype=np.float64)
    worst_m = 0.0
    for i in rows:
        p = np.exp(tl[i] / Tm - lse[i])
        pr = float(tail_mass(p.sum()))
        s = z[i] / Tm
        m = s.max()
        e = np.exp(s - m)
        q = e / e.sum()
        out = np.ones(V, dtype=bool)
        out[idx[i]] = False
        qr = q[out].sum()
        kl = 0.0
        for k in range(idx.shape[1]):
            kl += p[k] * (np.log(p[k]) - np.log(q[idx[i, k]]))
        if pr > 0.0:
            kl += pr * (np.log(pr) - np.log(qr))
        m1 = z[i].max()
        lse1 = m1 + np.log(np.exp(z[i] - m1).sum())
        ce = -(z[i, y[i]] - lse1)
        loss += alpha * Tm * Tm * kl + (1.0 - alpha) * ce
        sm = np.exp(z[i] - lse1)
        oh = np.zeros(V)
        oh[y[i]] = 1.0
        mass = p.sum() + pr
        worst_m = max(worst_m, abs(1.0 - mass))
        for mm, g in ((mass, grad), (1.0, grad1)):
            dkl = np.empty(V)
            dkl[idx[i]] = mm * q[idx[i]] - p
            if pr > 0.0:
                dkl[out] = q[out] * (mm - pr / qr)
            else:
                dkl[out] = mm * q[out]
            dkl /= Tm
            g[i] = alpha * Tm * Tm * dkl + (1.0 - alpha) * (sm - oh)
    return loss / n, grad / n, grad1 / n, worst_m


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
    assert Tm32 == Tm
    # the teacher's log-sum-exp over the whole vocabulary, float64 from the float32 row,
    # stored as float32; everything below uses the stored value
    lse64_exact = torch.logsumexp(teacher.double() / Tm32, -1)
    lse = lse64_exact.float()
    lse64 = lse.double()
    assert float((lse64 - lse64_exact).abs().max()) <= 1e-6 * float(lse64_exact.abs().max())

    z64 = z.double().requires_grad_(True)
    loss, kl = kd_loss(z64, y, idx, tl.double(), lse64, Tm32, al32)
    (grad,) = torch.autograd.grad(loss, z64)
    loss_v = float(loss.detach())
    mask = y >= 0

    # tail mass: 1 - sum p over the top-k, from the stored lse, against the teacher's
    # own mass outside its top-k
    p_top = torch.exp(tl.double() / Tm32 - lse64[:, None])
    pr_raw = 1.0 - p_top.sum(-1)
    pr = tail_mass(p_top.sum(-1))
    out = torch.ones(N, V, dtype=torch.bool).scatter(1, idx, False)
    pr_true = (torch.exp(teacher.double() / Tm32 - lse64_exact[:, None]) * out).sum(-1)
    assert float((pr_raw - pr_true).abs().max()) <= 2e-6, (pr_raw, pr_true)
    if K < V:
        # the threshold does not bite: every row has a genuine tail
        assert float(pr.min()) >= 1e-3, pr
    else:
        assert float(pr_raw.abs().max()) < TAIL_EPS and bool((pr == 0).all()), pr_raw
    # generalised KL of two distributions over K + 1 outcomes is >= 0
    assert float(kl[mask].min()) >= -1e-12, kl

    # independent numpy loop
    l_np, g_np, g1_np, worst_m = numpy_reference(
        z.double().numpy(), y.numpy(), idx.numpy(), tl.double().numpy(), lse64.numpy(), Tm32, al32)
    assert abs(l_np - loss_v) <= 1e-12 * max(1.0, abs(loss_v)), (spec["name"], l_np, loss_v)
    gd = float(np.abs(g_np - grad.numpy()).max())
    assert gd <= 1e-13, (spec["name"], "closed-form gradient", gd)
    # the closed form as stated with m_i = 1
    n_t = int(mask.sum())
    gd1 = float(np.abs(g1_np - grad.numpy()).max())
    bound1 = 1e-13 + al32 * Tm32 * worst_m / n_t
    assert gd1 <= bound1, (spec["name"], "closed form m=1", gd1, bound1)
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
        lp = float(kd_loss(zp, y, idx, tl.double(), lse64, Tm32, al32)[0])
        lm = float(kd_loss(zm, y, idx, tl.double(), lse64, Tm32, al32)[0])
        worst = max(worst, abs((lp - lm) / (2 * h) - float(grad[i, j])))
    assert worst <= 1e-7, (spec["name"], "finite differences", worst)
    # special cases
    ce = F.cross_entropy(z.double(), y.clamp(min=0), reduction="none")
    logq = F.log_softmax(z.double() / Tm32, -1)
    if K == V:
        pf = torch.zeros(N, V, dtype=torch.float64).scatter(1, idx, p_top)
        full = F.kl_div(logq, pf, reduction="none").sum(-1)
        ref = ((al32 * Tm32 ** 2 * full + (1 - al32) * ce)[mask]).mean()
        assert abs(float(ref) - loss_v) <= 1e-12 * max(1.0, abs(loss_v)), (spec["name"], float(ref), loss_v)
        # against the exactly normalised teacher: differs only by the float32 rounding of lse
        pt = F.softmax(teacher.double() / Tm32, -1)
        full_t = F.kl_div(logq, pt, reduction="none").sum(-1)
        ref_t = ((al32 * Tm32 ** 2 * full_t + (1 - al32) * ce)[mask]).mean()
        assert abs(float(ref_t) - loss_v) <= 1e-6, (spec["name"], float(ref_t), loss_v)
    if K == 1:
        p1 = p_top[:, 0]
        q1 = logq.gather(1, idx)[:, 0].exp()
        bkl = p1 * torch.log(p1 / q1) + (1 - p1) * torch.log((1 - p1) / (1 - q1))
        ref = ((al32 * Tm32 ** 2 * bkl + (1 - al32) * ce)[mask]).mean()
        assert abs(float(ref) - loss_v) <= 1e-12 * max(1.0, abs(loss_v)), (spec["name"], float(ref), loss_v)

    p = spec["name"] + "."
    tensors = {
        p + "z": z.contiguous(),
        p + "y": y.to(torch.int32).contiguous(),
        p + "topk_idx": idx.to(torch.int32).contiguous(),
        p + "topk_logit": tl.contiguous(),
        p + "teacher_lse": lse.contiguous(),
        p + "temperature": torch.tensor([Tm], dtype=torch.float32),
        p + "alpha": torch.tensor([alpha], dtype=torch.float32),
        p + "loss": torch.tensor([loss_v], dtype=torch.float64),
        p + "loss_f32": torch.tensor([loss_v], dtype=torch.float32),
        p + "grad": grad.float().contiguous(),
    }
    print(f"case {spec['name']}: N={N} V={V} K={K} Tm={Tm} alpha={alpha} n_targets={n_t} "
          f"loss {loss_v:.10f}  max|grad| {float(grad.abs().max()):.4e}  fd err {worst:.1e}")
    print(f"    p_r raw [{float(pr_raw.min()):.3e}, {float(pr_raw.max()):.3e}]  "
          f"max|p_r raw - true tail| {float((pr_raw - pr_true).abs().max()):.1e}  "
          f"kl [{float(kl[mask].min()):.4f}, {float(kl[mask].max()):.4f}]  "
          f"closed form m=1 err {gd1:.1e}  numpy grad err {gd:.1e}")
    return tensors


README = """# kd fixture

Reference values for frugal's knowledge-distillation loss, "top-k plus a tail bucket"
(tools/make_kd_fixture.py, whose docstring has the full definition). The teacher is given
by its top-K indices I and logits L (descending) and its log-sum-exp at temperature Tm over
the WHOLE vocabulary, lse_i = log sum_j exp(t_ij / Tm). Its probabilities are NOT
renormalised over the K entries: p_ik = exp(L_ik / Tm - lse_i), and the rest of its mass
goes into one tail bucket, p_ir = 1 - sum_k p_ik (set to exactly 0 when below 1e-6, which
absorbs the float32 rounding of lse; with K = V the bucket is empty). The student
q_i = softmax(z_i / Tm) over V is folded the same way: q_ik = q_i[I_ik] and q_ir = the sum
of q_ij over the j not in I_i. For y_i >= 0 (0 log 0 = 0):
kl_i = sum_k p_ik (log p_ik - log q_ik) + p_ir (log p_ir - log q_ir),
loss_i = alpha Tm^2 kl_i + (1 - alpha) (-log_softmax(z_i)[y_i]), loss = sum_i loss_i / #{y_i >= 0}.
Why: the former definition renormalised the teacher's top-k, which teaches the student that
every token outside the teacher's top-k has probability 0 (on real data about 19 % of next
tokens fall outside a top-32); the tail bucket keeps that mass.
d kl_i / d z_ij = (q_ij - p_ij) / Tm for j in I_i and q_ij (1 - p_ir / q_ir) / Tm otherwise.

`kd.safetensors` holds, for cases `a` (N 7, V 50, K 5, Tm 2, alpha 0.7, two ignored
positions), `b` (N 4, V 33, K = V = 33, Tm 1, alpha 1: no tail, the plain full KL) and `c`
(N 5, V 40, K 1, Tm 4, alpha 0.25: one entry plus the tail): `P.z` F32 [N,V], `P.y` I32 [N],
`P.topk_idx` I32 [N,K], `P.topk_logit` F32 [N,K], `P.teacher_lse` F32 [N],
`P.temperature` F32 [1], `P.alpha` F32 [1], `P.loss` F64 [1], `P.loss_f32` F32 [1] and
`P.grad` F32 [N,V] = d loss / d z (autograd in float64 from the stored float32 inputs,
lse included; rows of ignored positions are zero). Generated with torch {torch}, numpy
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
