#!/usr/bin/env python3
"""The llama.cpp peer of frugal's inference figures, on the same GGUF files and threads.

    python3 tools/bench_llamacpp.py --frugal build/frugal --gguf A.gguf [B.gguf ...]
                                    [--prompt-tokens 512] [--gen 64] [--threads 2]

llama.cpp comes from PyPI's llama-cpp-python, which compiles llama.cpp from its source
(CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python into a venv outside the
repository; never committed). For each file it measures, with the same prompt text:

  - llama.cpp: prompt processing of the prompt (one llama_eval call) and batch-1 decode of
    --gen tokens (one eval per token), tokens/s from the wall time (the decode's also from its
    median step, in the JSON line);
  - frugal: `frugal generate --temperature 0 --ignore-eos` on the same file, the prompt and
    decode rates it prints.

Prints a Markdown table and one JSON line per file.
"""
import argparse
import json
import re
import subprocess
import sys
import time

import numpy as np
from llama_cpp import Llama

PROMPT_TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and "
               "void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face of "
               "the waters. And God said, Let there be light: and there was light. ")


def bench_llamacpp(path, prompt, n_gen, threads):
    llm = Llama(model_path=path, n_ctx=len(prompt) + n_gen + 8, n_threads=threads, n_threads_batch=threads,
                n_batch=len(prompt), logits_all=False, verbose=False)
    llm.eval(prompt[:8])  # warm-up (weights paged in)
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    pp = len(prompt) / (time.perf_counter() - t)
    steps = []
    for i in range(n_gen):
        tok = prompt[1 + i % (len(prompt) - 1)]  # the prompt's tokens again: the speed does not depend on them
        t = time.perf_counter()
        llm.eval([tok])
        steps.append(time.perf_counter() - t)
    # the mean over the steps, as frugal's figure (its whole decode's wall time / tokens); the
    # median step too, which leaves out the machine's hiccups
    return pp, len(steps) / float(np.sum(steps)), 1.0 / float(np.median(steps))


def bench_frugal(frugal, path, text, n_gen, threads):
    r = subprocess.run([frugal, "generate", "--model", path, "--prompt", text, "--max-tokens", str(n_gen),
                        "--temperature", "0", "--ignore-eos", "--threads", str(threads)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"frugal generate failed on {path}: {r.stderr.strip()}")
    m = re.search(r"prompt (\d+) tokens in [\d.]+ s \(([\d.]+) tokens/s\); generated (\d+) tokens, ([\d.]+) tokens/s",
                  r.stderr)
    if not m:
        raise SystemExit(f"unexpected frugal output: {r.stderr.strip()}")
    return int(m.group(1)), float(m.group(2)), float(m.group(4))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frugal", required=True)
    ap.add_argument("--gguf", nargs="+", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    rows = []
    print("| file | prompt tokens | llama.cpp pp tok/s | frugal pp tok/s | frugal / llama.cpp | llama.cpp decode tok/s "
          "| frugal decode tok/s | frugal / llama.cpp |")
    print("|---|---|---|---|---|---|---|---|")
    for path in a.gguf:
        probe = Llama(model_path=path, n_ctx=64, verbose=False, vocab_only=True)
        text = PROMPT_TEXT
        while len(probe.tokenize(text.encode(), add_bos=True)) < a.prompt_tokens:
            text += PROMPT_TEXT
        ids = probe.tokenize(text.encode(), add_bos=True)[: a.prompt_tokens]
        text = probe.detokenize(ids[1:]).decode("utf-8", "replace")
        ids = probe.tokenize(text.encode(), add_bos=True)
        del probe
        lpp, ldec, ldec_median = bench_llamacpp(path, ids, a.gen, a.threads)
        n_prompt, fpp, fdec = bench_frugal(a.frugal, path, text, a.gen, a.threads)
        print(f"| {path.split('/')[-1]} | {len(ids)} / {n_prompt} | {lpp:.1f} | {fpp:.1f} | {fpp / lpp:.2f} | {ldec:.1f} "
              f"| {fdec:.1f} | {fdec / ldec:.2f} |", flush=True)
        rows.append({"bench": "llamacpp_peer", "file": path, "threads": a.threads, "prompt_tokens_llamacpp": len(ids),
                     "prompt_tokens_frugal": n_prompt, "llamacpp_pp_tps": lpp, "frugal_pp_tps": fpp,
                     "llamacpp_decode_tps": ldec, "llamacpp_decode_median_step_tps": ldec_median,
                     "frugal_decode_tps": fdec})
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    sys.exit(main())
