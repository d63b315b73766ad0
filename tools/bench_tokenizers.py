#!/usr/bin/env python3
"""frugal's tokenizer against Hugging Face `tokenizers` on the same corpus, same settings,
in one run (figures for docs/tokenizer.md).

    scripts/corpus-kjv.sh /tmp/kjv
    python3 tools/bench_tokenizers.py [--bench-bin build/bench_tokenizer] [--corpus /tmp/kjv/kjv.jsonl]

1. Runs bench/bench_tokenizer: frugal trains a --vocab tokenizer (DeepSeek-V3 pre-tokenizer,
   default specials), saves it, and encodes the corpus with 1 and 2 threads.
2. Trains the same kind of tokenizer with tokenizers' BpeTrainer (same Split sequence +
   ByteLevel, same specials, initial alphabet = the 256 byte tokens, same vocab size).
3. Encodes the corpus with tokenizers using the tokenizer.json frugal saved (so both
   encode with the same vocabulary), in a fresh process per thread count
   (RAYON_NUM_THREADS), with encode_batch_fast when available, and checks that the ids are
   identical to frugal's (FNV-1a hash over all ids).
Prints a table with the ratios. Encode figures are the best of --reps passes.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

SPECIALS = ["<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>",
            "<\uff5c\u2581pad\u2581\uff5c>", "<\uff5cUser\uff5c>", "<\uff5cAssistant\uff5c>"]
DSV3 = [
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|"
    r" ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
]


def read_docs(path):
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            return [json.loads(l)["text"] for l in f if l.strip()]
    with open(path, encoding="utf-8") as f:
        return [f.read()]


def fnv1a_ids(encodings):
    h = 0xcbf29ce484222325
    n = 0
    for ids in encodings:
        n += len(ids)
        for v in ids:
            for b in range(4):
                h ^= (v >> (8 * b)) & 0xFF
                h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return n, f"{h:016x}"


def encode_child(args):
    """Runs in a fresh process so RAYON_NUM_THREADS takes effect."""
    from tokenizers import Tokenizer
    docs = read_docs(args.corpus)
    tok = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    tok.encode_special_tokens = True  # frugal's bench encodes with parse_special = 0
    fast = hasattr(tok, "encode_batch_fast")
    enc = tok.encode_batch_fast if fast else tok.encode_batch
    best = 1e30
    out = None
    for _ in range(args.reps):
        t0 = time.perf_counter()
        out = enc(docs, add_special_tokens=False)
        best = min(best, time.perf_counter() - t0)
    n, h = fnv1a_ids([e.ids for e in out])
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    print(json.dumps({"encode_s": best, "mbs": nbytes / 1e6 / best, "tokens": n, "ids_fnv1a": h,
                      "api": "encode_batch_fast" if fast else "encode_batch"}))


def train_hf(docs, vocab):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in DSV3]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t0 = time.perf_counter()
    tok.train_from_iterator(docs, trainer=trainer)
    return time.perf_counter() - t0, tok.get_vocab_size()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench-bin", default="build/bench_tokenizer")
    ap.add_argument("--corpus", default="/tmp/kjv/kjv.jsonl")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--encode-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.encode_child:
        return encode_child(a)

    import tokenizers
    work = tempfile.mkdtemp(prefix="frugal-tokbench-")
    r = subprocess.run([a.bench_bin, "--corpus", a.corpus, "--vocab", str(a.vocab), "--reps", str(a.reps),
                        "--save", work, "--json"], check=True, capture_output=True, text=True)
    fr = json.loads(r.stdout.strip().splitlines()[-1])

    docs = read_docs(a.corpus)
    hf_train_s, hf_vocab = train_hf(docs, a.vocab)
    hf = {}
    for nt in (1, 2):
        env = dict(os.environ, RAYON_NUM_THREADS=str(nt), TOKENIZERS_PARALLELISM="true")
        out = subprocess.run([sys.executable, __file__, "--encode-child", "--corpus", a.corpus, "--tokenizer", work,
                              "--reps", str(a.reps)], check=True, capture_output=True, text=True, env=env)
        hf[nt] = json.loads(out.stdout.strip().splitlines()[-1])
    shutil.rmtree(work, ignore_errors=True)
    same = all(hf[nt]["ids_fnv1a"] == fr["ids_fnv1a"] and hf[nt]["tokens"] == fr["tokens"] for nt in (1, 2))

    print(f"corpus {a.corpus}: {fr['docs']} documents, {fr['bytes'] / 1e6:.2f} MB; vocab {a.vocab}; "
          f"tokenizers {tokenizers.__version__} ({hf[1]['api']}); {os.cpu_count()} cores")
    print(f"{'':28s} {'frugal':>10s} {'tokenizers':>11s} {'ratio':>7s}")
    rows = [("train 8k vocab (s)" if a.vocab == 8192 else f"train {a.vocab} vocab (s)", fr["train_s"], hf_train_s, hf_train_s / fr["train_s"]),
            ("encode 1 thread (MB/s)", fr["encode_1t_mbs"], hf[1]["mbs"], fr["encode_1t_mbs"] / hf[1]["mbs"]),
            ("encode 2 threads (MB/s)", fr["encode_2t_mbs"], hf[2]["mbs"], fr["encode_2t_mbs"] / hf[2]["mbs"])]
    for name, x, y, ratio in rows:
        print(f"{name:28s} {x:10.3f} {y:11.3f} {ratio:6.2f}x")
    print("(ratio: how many times faster frugal is)")
    print(f"tokens {fr['tokens']}; ids identical to tokenizers: {'yes' if same else 'NO'}; "
          f"vocab sizes frugal {fr['vocab']}, tokenizers {hf_vocab}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
