#!/usr/bin/env python3
"""Writes teacher top-k shards for `frugal distill` from any transformers causal LM
(AutoModelForCausalLM): the path for a teacher that frugal cannot run itself.

    python3 tools/dump_teacher_topk.py --model DIR_OR_HUB_ID --data DIR --seq T [--topk K]
        [--temperature T] [--batch N] [--dtype float32|bfloat16] [--threads N] [--device cpu|cuda|...]
        [--attn eager|sdpa|...]

then `frugal distill --data DIR --seq T --topk K --temperature T ...` without --teacher
reads them.

The output is what `frugal distill dump-teacher` writes (src/train/distill.c has the
format): beside each training shard DIR/train_NNNNN.bin listed in DIR/meta.json, a file
DIR/train_NNNNN.topk with a 64-byte little-endian header

    0  char[8] "FRTOPK2\\0"   8 u32 k   12 u32 seq_len   16 u32 vocab (the logits width)
    20 f32 temperature   24 u64 n_tokens   32 u64 start   40 u64 valid   48 u8[16] 0

and then, for each position p < valid of the shard, a record: int32 idx[k], float32
logit[k], the teacher's k largest logits for the token after p, descending, ties to the
lower token id, then float32 lse = log sum_j exp(logit_j / temperature) over the whole
vocabulary (the teacher's mass outside its top k follows from it; the distillation run
must use the same --temperature).

Windows are the trainer's: the training split is the concatenation of its shards in
meta.json order; chunk c is global tokens [c*T, c*T + T] (T + 1 tokens) for
c < n_chunks = (n_train_tokens - 1) // T. The teacher runs each window's first T tokens
from an empty context (position ids 0..T-1, no BOS added, several windows per forward,
no padding) and position g = c*T + i gets the top-k of the logits at position i of window
c. Positions >= n_chunks*T (never read by the trainer) have no record, so a shard's
valid = clamp(n_chunks*T - start, 0, n_tokens).

A teacher whose logits are narrower than the data's vocabulary (meta.json vocab_size) is
refused; `frugal distill` further requires the student's vocabulary to equal `vocab`.
Each file is written as NAME.topk.tmp-PID, fsynced and renamed to NAME.topk once every file
is complete; on any error (or Ctrl-C) the temporaries are removed and no .topk is touched.

Options:
  --model M      a local model folder or a Hub id (trust_remote_code is off)
  --data DIR     a folder made by `frugal data prepare`
  --seq T        the window length the distillation run will use (--seq of frugal distill)
  --topk K       logits kept per position (default 32, frugal distill's default)
  --temperature T  the temperature of the stored log-sum-exp: the run's (default 2)
  --batch N      windows per forward (default 8)
  --dtype D      float32 (default) or bfloat16: the teacher's weights and compute; the
                 stored logits are float32 either way
  --threads N    torch CPU threads (default: torch's choice)
  --device D     torch device (default: cuda if available, else cpu)
  --attn A       attention implementation passed to transformers (default eager; sdpa is
                 faster and equivalent up to rounding)

Package pins: tools/requirements.txt. Python is a tool only; the product is the C library.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time

import numpy as np

TOPK_MAGIC = b"FRTOPK2\0"
SHARD_MAGIC = b"FRUGALTK"
SHARD_HEADER = 64


class Refuse(Exception):
    """A clear, expected error: printed without a traceback."""


# ---------------------------------------------------------------- the data folder


class TrainSplit:
    """The training split of a prepared data folder: its shards (memory-mapped) in
    meta.json order, read as one sequence of global positions."""

    def __init__(self, data_dir: str):
        meta_path = os.path.join(data_dir, "meta.json")
        try:
            with open(meta_path, "rb") as f:
                meta = json.loads(f.read())
        except OSError as e:
            raise Refuse(f"{data_dir} is not a prepared dataset ({meta_path}: {e.strerror})")
        except ValueError:
            raise Refuse(f"{meta_path}: not valid JSON")
        if meta.get("format") != "frugal-token-shards":
            raise Refuse(f'{meta_path}: "format" is not "frugal-token-shards"')
        if meta.get("format_version") != 1:
            raise Refuse(f"{meta_path}: unsupported format_version (this tool reads 1)")
        try:
            train = meta["splits"]["train"]
            entries = train["shards"]
            self.vocab = int(meta["vocab_size"])
            eot = int(meta["eot_id"])
            want_total = int(train["tokens"])
        except (KeyError, TypeError, ValueError):
            raise Refuse(f"{meta_path}: missing or malformed entry for split 'train' (or vocab_size / eot_id)")
        if not isinstance(entries, list) or not entries:
            raise Refuse(f"{data_dir}: split 'train' is empty (no shards)")
        self.paths, self.counts, self.starts, self.tokens = [], [], [], []
        pos = 0
        for i, e in enumerate(entries):
            name = e.get("file") if isinstance(e, dict) else None
            if not isinstance(name, str) or "/" in name or name.startswith(".") or not name.endswith(".bin"):
                raise Refuse(f"{meta_path}: shard entry {i} of split 'train' is malformed (or not NAME.bin)")
            path = os.path.join(data_dir, name)
            count = int(e.get("tokens", -1))
            self.paths.append(path)
            self.counts.append(count)
            self.starts.append(pos)
            self.tokens.append(self._open_shard(path, count, eot))
            pos += count
        if pos != want_total:
            raise Refuse(f"{meta_path}: split 'train' lists {want_total} tokens but its shards hold {pos}")
        self.total = pos

    def _open_shard(self, path: str, count: int, eot: int) -> np.ndarray:
        try:
            with open(path, "rb") as f:
                h = f.read(SHARD_HEADER)
            size = os.path.getsize(path)
        except OSError as e:
            raise Refuse(f"cannot read shard {path}: {e.strerror}")
        if len(h) < SHARD_HEADER or h[:8] != SHARD_MAGIC:
            raise Refuse(f"shard {path}: bad magic or truncated header")
        version, width, n, vocab, heot = struct.unpack_from("<IIQII", h, 8)
        if version != 1 or width not in (2, 4):
            raise Refuse(f"shard {path}: version {version} / token width {width} unsupported")
        if n != count:
            raise Refuse(f"shard {path} holds {n} tokens but meta.json lists {count}")
        if vocab != self.vocab or heot != eot:
            raise Refuse(f"shard {path}: vocab/eot ({vocab}/{heot}) differ from meta.json ({self.vocab}/{eot})")
        if size != SHARD_HEADER + n * width:
            raise Refuse(f"shard {path}: {size} bytes, expected {SHARD_HEADER + n * width}")
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        return np.memmap(path, dtype="<u2" if width == 2 else "<u4", mode="r", offset=SHARD_HEADER, shape=(n,))

    def read(self, pos: int, n: int) -> np.ndarray:
        """Tokens [pos, pos + n) of the split, as int64."""
        out = np.empty(n, dtype=np.int64)
        done = 0
        s = int(np.searchsorted(self.starts, pos, side="right")) - 1
        while done < n:
            while self.counts[s] == 0 or pos + done >= self.starts[s] + self.counts[s]:
                s += 1
            off = pos + done - self.starts[s]
            take = min(n - done, self.counts[s] - off)
            out[done : done + take] = self.tokens[s][off : off + take]
            done += take
        if (out >= self.vocab).any():
            raise Refuse(f"token ids >= the vocabulary size {self.vocab} at positions {pos}..{pos + n}")
        return out


# ---------------------------------------------------------------- the teacher


def load_teacher(args):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    kw = dict(trust_remote_code=False, attn_implementation=args.attn)
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, **kw)
    except TypeError:  # transformers before `dtype` (torch_dtype)
        model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=dtype, **kw)
    model.to(args.device)
    model.eval()
    return model


def logits_width(model) -> int:
    """The teacher's logits width: the output embedding's rows, else config.vocab_size."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    w = getattr(out, "weight", None)
    if w is not None and w.dim() == 2:
        return int(w.shape[0])
    cfg = model.config
    v = getattr(cfg, "vocab_size", None)
    if v is None and hasattr(cfg, "get_text_config"):
        v = getattr(cfg.get_text_config(), "vocab_size", None)
    if v is None:
        raise Refuse("cannot tell the teacher's vocabulary size (no output embedding, no config.vocab_size)")
    return int(v)


def topk_rows(x, k: int):
    """The k largest of each row of x [R, V] (float32), descending, ties to the lower id:
    torch.topk, the rows whose k-th value is tied with an entry left out redone with a full
    stable sort, then every row re-sorted by (-value, index)."""
    import torch

    val, idx = torch.topk(x, k, dim=-1, largest=True, sorted=True)
    kth = val[:, -1:]
    # a row is ambiguous when more entries equal its k-th value than topk kept
    n_eq_all = (x == kth).sum(dim=-1)
    n_eq_kept = (val == kth).sum(dim=-1)
    bad = torch.nonzero(n_eq_all != n_eq_kept).flatten()
    if bad.numel():
        v2, i2 = torch.sort(x[bad], dim=-1, descending=True, stable=True)  # stable: lower id first
        val[bad], idx[bad] = v2[:, :k], i2[:, :k]
    # (-value, index): by index, then stably by value descending
    order = torch.argsort(idx, dim=-1)
    idx, val = torch.gather(idx, -1, order), torch.gather(val, -1, order)
    order = torch.sort(val, dim=-1, descending=True, stable=True).indices
    return torch.gather(idx, -1, order), torch.gather(val, -1, order)


# ---------------------------------------------------------------- progress


class Progress:
    def __init__(self, total_windows: int, T: int):
        self.total, self.T = total_windows, T
        self.t0 = time.monotonic()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, done: int, force: bool = False):
        now = time.monotonic()
        if not force and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        el = now - self.t0
        rate = done / el if el > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        msg = (f"teacher top-k: {done}/{self.total} windows ({100.0 * done / max(self.total, 1):5.1f}%), "
               f"{rate * self.T:,.0f} tok/s, elapsed {fmt_s(el)}, ETA {fmt_s(eta)}")
        if self.tty:
            sys.stderr.write("\r" + msg + "\x1b[K" + ("\n" if force else ""))
        else:
            sys.stderr.write(msg + "\n")
        sys.stderr.flush()


def fmt_s(s: float) -> str:
    if s != s:
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


# ---------------------------------------------------------------- main


def dump(args) -> int:
    T, K = args.seq, args.topk
    if T < 2 or K < 1 or args.batch < 1:
        raise Refuse("--seq must be >= 2, --topk >= 1 and --batch >= 1")
    split = TrainSplit(args.data)
    nt = split.total
    n_chunks = (nt - 1) // T if nt >= T + 1 else 0
    if n_chunks == 0:
        raise Refuse(f"{args.data}: {nt} training tokens, fewer than one window of {T} + 1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:  # refuse a too-small vocabulary before loading the weights (checked again on the model)
        from transformers import AutoConfig

        cv = getattr(AutoConfig.from_pretrained(args.model, trust_remote_code=False), "vocab_size", None)
    except Exception:
        cv = None
    if isinstance(cv, int) and split.vocab > cv:
        raise Refuse(f"the data's vocabulary ({split.vocab}) is larger than the teacher's ({cv}): another tokenizer?")
    model = load_teacher(args)
    V = logits_width(model)
    if split.vocab > V:
        raise Refuse(f"the data's vocabulary ({split.vocab}) is larger than the teacher's ({V}): another tokenizer?")
    if K > V:
        raise Refuse(f"top-k {K} exceeds the teacher's vocabulary of {V}")
    cfg = model.config
    maxpos = getattr(cfg, "max_position_embeddings", None)
    if isinstance(maxpos, int) and T > maxpos:
        print(f"warning: --seq {T} exceeds the teacher's max_position_embeddings ({maxpos})", file=sys.stderr)
    for name in ("tokenizer.json",):
        a, b = os.path.join(args.data, name), os.path.join(args.model, name)
        if os.path.isfile(a) and os.path.isfile(b):
            with open(a, "rb") as fa, open(b, "rb") as fb:
                if fa.read() != fb.read():
                    print(f"note: {b} differs from the data's {a}; check that teacher and data share a tokenizer",
                          file=sys.stderr)

    covered = n_chunks * T
    rec = np.dtype([("idx", "<i4", (K,)), ("logit", "<f4", (K,)), ("lse", "<f4")])
    Tm = float(np.float32(args.temperature))
    tmps, files = [], []
    pid = os.getpid()
    ok = False
    try:
        for path, count, start in zip(split.paths, split.counts, split.starts):
            tmp = f"{path[:-4]}.topk.tmp-{pid}"
            tmps.append(tmp)
            f = open(tmp, "wb")
            files.append(f)
            valid = min(max(covered - start, 0), count)
            f.write(struct.pack("<8sIIIfQQQ16x", TOPK_MAGIC, K, T, V, Tm, count, start, valid))

        prog = Progress(n_chunks, T)
        dev = torch.device(args.device)
        s = 0  # the shard receiving the next record
        with torch.inference_mode():
            for c0 in range(0, n_chunks, args.batch):
                B = min(args.batch, n_chunks - c0)
                win = split.read(c0 * T, B * T).reshape(B, T)
                ids = torch.from_numpy(win).to(dev)
                out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
                logits = out.logits
                if logits.shape != (B, T, V):
                    raise Refuse(f"the teacher returned logits of shape {tuple(logits.shape)}, expected {(B, T, V)}")
                idx, val = topk_rows(logits.reshape(B * T, V).float(), K)
                if not torch.isfinite(val).all():
                    raise Refuse(f"non-finite teacher logits in windows {c0}..{c0 + B - 1}")
                r = np.empty(B * T, dtype=rec)
                r["idx"] = idx.to(torch.int32).cpu().numpy()
                r["logit"] = val.cpu().numpy()
                flat = logits.reshape(B * T, V).double() / Tm  # log-sum-exp at the temperature, in double
                r["lse"] = torch.logsumexp(flat, dim=-1).float().cpu().numpy()
                g, at = c0 * T, 0  # global position of r[at]
                while at < B * T:
                    while g >= split.starts[s] + split.counts[s]:
                        s += 1
                    take = min(B * T - at, split.starts[s] + split.counts[s] - g)
                    files[s].write(r[at : at + take].tobytes())
                    at += take
                    g += take
                prog.update(c0 + B, force=c0 + B == n_chunks)
        for f in files:
            f.flush()
            os.fsync(f.fileno())
        for f in files:
            f.close()
        for tmp in tmps:
            os.replace(tmp, tmp[: tmp.rindex(".")])
        ok = True
        dfd = os.open(args.data, os.O_RDONLY)  # the renames themselves
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        if not ok:
            for f in files:
                try:
                    f.close()
                except OSError:
                    pass
            for tmp in tmps:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
    print(f"wrote {len(tmps)} top-k shard(s) beside {args.data}: {covered} positions, k {K}, seq {T}, vocab {V}",
          file=sys.stderr)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Writes frugal teacher top-k shards (DIR/train_NNNNN.topk) from a transformers causal LM.")
    p.add_argument("--model", required=True, help="local model folder or Hub id (trust_remote_code off)")
    p.add_argument("--data", required=True, help="a folder made by `frugal data prepare`")
    p.add_argument("--seq", type=int, required=True, help="window length (the distillation run's --seq)")
    p.add_argument("--topk", type=int, default=32, help="logits kept per position (default 32)")
    p.add_argument("--temperature", type=float, default=2.0,
                   help="temperature of the stored log-sum-exp: the distillation run's (default 2)")
    p.add_argument("--batch", type=int, default=8, help="windows per forward (default 8)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="teacher dtype (default float32)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--attn", default="eager", help="attention implementation (default eager)")
    args = p.parse_args(argv)
    try:
        return dump(args)
    except Refuse as e:
        print(f"dump_teacher_topk: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndump_teacher_topk: interrupted; no top-k shard was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
