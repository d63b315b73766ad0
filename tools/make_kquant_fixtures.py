#!/usr/bin/env python3
"""Generates the K-quant fixtures of tests/test_kquant.c (src/formats/kquant.c).

    python3 tools/make_kquant_fixtures.py [--out tests/fixtures/kquants]

For each of Q4_K, Q5_K and Q6_K: ROWS rows of COLS values, i.e. random super-blocks
(random bytes from a fixed numpy seed) whose fp16 scale fields (d, and dmin for Q4_K /
Q5_K) are overwritten with finite values, written as <type>.bin (the raw blocks, as a GGUF
tensor stores them) and <type>.f32 (gguf.quants.dequantize's float32 output, raw
little-endian, ROWS x COLS). Scales are uniform in 0.001 .. 0.05 except in the last row,
which also holds negative scales, float16 subnormals, zeros and two blocks of all-0xFF /
all-0x00 quant and scale bytes, so edge bit patterns are covered. Deterministic: two runs
give identical files. Needs gguf==0.19.0 and numpy.

Python is a test tool only; the product is the C library.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from importlib.metadata import version

from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

ROWS = 4
COLS = 512  # 2 super-blocks of 256 per row
SEED = 20240611

# type name -> (GGML type, block bytes, byte offsets of the fp16 scale fields)
TYPES = {
    "q4_k": (T.Q4_K, 144, (0, 2)),
    "q5_k": (T.Q5_K, 176, (0, 2)),
    "q6_k": (T.Q6_K, 210, (208,)),
}

README = """# K-quant fixtures

Reference data for `tests/test_kquant.c` (GGML's Q4_K / Q5_K / Q6_K, `src/formats/kquant.c`).
Made by `python3 tools/make_kquant_fixtures.py` with gguf==0.19.0 and numpy {numpy} (fixed seed
{seed}; two runs give identical files).

For each type `<t>` in q4_k, q5_k, q6_k:

- `<t>.bin`: {rows} rows of {cols} values = {nblk} super-blocks of 256 values, stored exactly as
  a GGUF tensor holds them (Q4_K 144, Q5_K 176, Q6_K 210 bytes per super-block). Random
  bytes, except that the fp16 scales (d, and dmin for Q4_K / Q5_K) are set to finite values:
  uniform in 0.001 .. 0.05 in rows 0..{last_minus}; the last row also has negative values,
  float16 subnormals and zeros, and its first super-block has all quant / scale bytes 0xFF,
  its second all 0x00 (scales kept).
- `<t>.f32`: `gguf.quants.dequantize(blocks, type)`, float32 little-endian, {rows} x {cols}.

The C test requires `fr_kq_dequantize_row` to reproduce `<t>.f32` bit for bit.
"""


def make(name: str, rng: np.random.Generator):
    qtype, bb, scale_offs = TYPES[name]
    nblk = ROWS * COLS // 256
    blocks = rng.integers(0, 256, size=(nblk, bb), dtype=np.uint8)
    per_row = COLS // 256
    for b in range(nblk):
        last_row = b // per_row == ROWS - 1
        if last_row:
            fill = 0xFF if b % per_row == 0 else 0x00
            blocks[b, :] = fill
        for off in scale_offs:
            if last_row:
                kind = rng.integers(0, 4)
                if kind == 0:
                    v = np.float16(-rng.uniform(0.001, 0.05))
                elif kind == 1:
                    v = np.float16(rng.uniform(1e-7, 6e-5))  # float16 subnormal range
                elif kind == 2:
                    v = np.float16(0.0)
                else:
                    v = np.float16(rng.uniform(0.001, 0.05))
            else:
                v = np.float16(rng.uniform(0.001, 0.05))
            blocks[b, off:off + 2] = np.frombuffer(v.tobytes(), dtype=np.uint8)
    # last row: make sure at least one fp16 scale is a subnormal and one negative
    b_last = (ROWS - 1) * per_row
    blocks[b_last, scale_offs[0]:scale_offs[0] + 2] = np.frombuffer(np.float16(3e-6).tobytes(), dtype=np.uint8)
    blocks[b_last + 1, scale_offs[0]:scale_offs[0] + 2] = np.frombuffer(np.float16(-0.02).tobytes(), dtype=np.uint8)
    raw = blocks.reshape(ROWS, per_row * bb)
    out = dequantize(raw, qtype)
    assert out.dtype == np.float32 and out.shape == (ROWS, COLS), (out.dtype, out.shape)
    assert np.all(np.isfinite(out))
    return raw, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "kquants"))
    args = ap.parse_args()
    if version("gguf") != "0.19.0":
        print(f"warning: gguf {version('gguf')} installed; the fixtures were made with 0.19.0")
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for name in TYPES:
        raw, out = make(name, rng)
        with open(os.path.join(args.out, name + ".bin"), "wb") as f:
            f.write(raw.tobytes())
        with open(os.path.join(args.out, name + ".f32"), "wb") as f:
            f.write(out.astype("<f4").tobytes())
        print(f"{name}: {raw.size} bytes of blocks, {out.size} values, max |v| {np.abs(out).max():.4g}")
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(README.format(numpy=np.__version__, seed=SEED, rows=ROWS, cols=COLS,
                              nblk=ROWS * COLS // 256, last_minus=ROWS - 2))


if __name__ == "__main__":
    main()
