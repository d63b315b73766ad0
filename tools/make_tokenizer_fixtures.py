#!/usr/bin/env python3
"""Make the tokenizer fixtures in tests/fixtures/tokenizer (see docs/tokenizer.md).

    python3 tools/make_tokenizer_fixtures.py --out tests/fixtures/tokenizer --test-bin build/test_tokenizer

1. corpus.jsonl: a small deterministic multilingual corpus (English, Chinese, Japanese,
   code, numbers, emoji, whitespace runs), {"text": ...} per line.
2. frugal_trained/: frugal's trainer run on the corpus (through `test_tokenizer --train`).
3. hf_cl100k/, hf_dsv3/, hf_gpt2/: tokenizers trained and written by `tokenizers` itself on
   the same corpus, with a GPT-4 (cl100k) Split, the DeepSeek-V3 Split sequence and a plain
   ByteLevel(use_regex=true) pre-tokenizer; hf_gpt2 also has a non-special added token.
   Variants edited from those files: hf_gpt2_prefix (ByteLevel add_prefix_space=true,
   merges in the older "a b" string form), hf_cl100k_ignore (model.ignore_merges=true) and
   hf_gpt2_literal (a Split on the literal string ". " before ByteLevel(use_regex=true)).
4. expected.json: the test texts and, for every tokenizer, the ids `tokenizers` gives with
   special tokens parsed (encode(..., add_special_tokens=False)) and not parsed
   (encode_special_tokens=True), plus what transformers' AutoTokenizer reports for the
   frugal-trained folder.

Package pins: tools/requirements.txt. Deterministic: fixed seeds; tokenizers' training is
deterministic for a fixed corpus. Exits nonzero if a check fails.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = [
    "<\uff5cbegin\u2581of\u2581sentence\uff5c>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
    "<\uff5c\u2581pad\u2581\uff5c>",
    "<\uff5cUser\uff5c>",
    "<\uff5cAssistant\uff5c>",
]
BOS, EOS, PAD, USER, ASSISTANT = SPECIALS

CL100K = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
DSV3 = [
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|"
    r" ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
]
VOCAB = 1000

EN = ["In the beginning was the word, and the word was with the tokenizer.",
      "I'm sure they'll say it's fine; don't you think? We've SEEN IT'S DONE.",
      "The quick brown fox jumps over the lazy dog near the riverbank.",
      "Language models read tokens, not characters, so the split matters.",
      "She said: \"Let's meet at 10:30 on 2024-05-17, room 42B.\""]
ZH = ["今天天气很好，我们去公园散步吧。", "机器学习是人工智能的一个分支。",
      "深度求索发布了新的语言模型，支持中文和英文。", "这个分词器使用字节级的编码。"]
JA = ["こんにちは、世界！", "カタカナとひらがなを混ぜた文章です。", "東京は日本の首都です。"]
CODE = ["def square(x):\n    return x ** 2 + 3 * x - 1  # comment\n",
        "for (int i = 0; i < n; i++) {\n\tsum += a[i] * b[i];\n}\n",
        "if (a != b && c >= d) { printf(\"%d\\n\", a); }",
        "const xs = [1, 2, 3].map((v) => v * 2);  // => [2, 4, 6]"]
MISC = ["I \u2764\ufe0f \U0001f355 and \U0001f469\u200d\U0001f469\u200d\U0001f467 families \U0001f389\U0001f389",
        "Caf\u00e9 na\u00efve fa\u00e7ade \u2014 r\u00e9sum\u00e9; e\u0301 \u03a9 \u00df",
        "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440. \u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645.",
        "Prices: $3.14159, 1234567 units, 0.5% of 100000000 is 500000.",
        "   indented\t\ttabs\n\n\n  \r\n trailing   "]

TEXTS = [
    "Hello world! In the beginning God created the heaven and the earth.",
    "I'm sure they'll say it's fine; don't you think? We've SEEN IT'S done. I'LL go.",
    "今天天气很好，我们去公园散步吧。机器学习是人工智能的一个分支。",
    "こんにちは、世界！カタカナとひらがな。東京タワー",
    "안녕하세요 세계. Привет, мир! مرحبا بالعالم. שלום עולם",
    "def f(x):\n    return x**2 + 3*x - 1  # comment\n\tif (a != b) { printf(\"%d\\n\", a); }\n",
    "I \u2764\ufe0f \U0001f355 and \U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 families \U0001f389\U0001f389!",
    "   leading spaces\t\ttabs\n\n\n  \r\n trailing   ",
    "In 2024, 1234567 people paid $3.14159 each; 0.5% of 100000000 is 500000. \u0661\u0662\u0663 \u09ea\u09eb 12\u00bd",
    BOS + "Hello" + USER + "What is 2+2?" + ASSISTANT + "4" + EOS,
    "Caf\u00e9 na\u00efve fa\u00e7ade \u2014 r\u00e9sum\u00e9; e\u0301 \u03a9 \u00df \u017ftop \u212a",
    "a" * 75 + " " * 40 + "end" + "\n" * 5,
    "a\u00a0b\u2003c\u3000d\u2028e\u0085f \u200bg",
    "<\uff5cUser> <|User|> <\uff5cbegin\u2581of " + USER[:-1],
    "",
    " ",
    "\n",
    "x" + PAD + PAD + "y " + EOS,
    "深度求索发布了新的语言模型，支持中文和英文。" * 12,
    "<tool>call(1, 2)</tool> <tool>",
    "mixed中文English混合123四五六 ok",
    "!!!??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}} ||| \\\\ /// ~~~ ```",
    "URL: https://example.com/path?q=1&r=two#frag email: someone@example.org",
    "\t\t\tdeeply\n\t\t\t\tindented\n\n\n\n",
    # U+180E is not White_Space for tokenizers (Oniguruma) but is \s for PCRE2 in UCP mode
    " \u2000\u180e x\u180e'S \u2029\u2028\u180e end\u180e",
]


def make_corpus(path):
    rng = random.Random(1234)
    pools = [EN, EN, ZH, JA, CODE, MISC]
    lines = []
    for _ in range(800):
        parts = []
        for _ in range(rng.randint(1, 6)):
            pool = rng.choice(pools)
            s = rng.choice(pool)
            if rng.random() < 0.3:
                s = s.replace("the", "a") if rng.random() < 0.5 else s.upper()
            parts.append(s)
        if rng.random() < 0.1:
            parts.insert(rng.randint(0, len(parts)), EOS)
        lines.append(json.dumps({"text": " ".join(parts) + str(rng.randint(0, 99999))}, ensure_ascii=False))
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return [json.loads(l)["text"] for l in lines]


def train_hf(texts, pre, out_dir, add_tokens=()):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    if add_tokens:
        tok.add_tokens(list(add_tokens))
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))


def edit_json(src_dir, dst_dir, fn):
    with open(os.path.join(src_dir, "tokenizer.json"), encoding="utf-8") as f:
        j = json.load(f)
    fn(j)
    os.makedirs(dst_dir, exist_ok=True)
    with open(os.path.join(dst_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False, indent=1)


def ids_for(tok_dir, adds_prefix=False):
    tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    parsed = [tok.encode(t, add_special_tokens=False).ids for t in TEXTS]
    tok.encode_special_tokens = True
    unparsed = [tok.encode(t, add_special_tokens=False).ids for t in TEXTS]
    tok.encode_special_tokens = False
    for t, ids in zip(TEXTS, parsed if not adds_prefix else []):
        back = tok.decode(ids, skip_special_tokens=False)
        if back != t:
            sys.exit(f"check failed: {tok_dir}: tokenizers does not round-trip {t!r}: {back!r}")
    return {"ids": parsed, "ids_no_special": unparsed}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/tokenizer")
    ap.add_argument("--test-bin", default="build/test_tokenizer",
                    help="test_tokenizer binary (its --train mode runs frugal's trainer)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    corpus = os.path.join(a.out, "corpus.jsonl")
    texts = make_corpus(corpus)

    frugal_dir = os.path.join(a.out, "frugal_trained")
    shutil.rmtree(frugal_dir, ignore_errors=True)
    os.makedirs(frugal_dir)
    subprocess.run([a.test_bin, "--train", corpus, frugal_dir, str(VOCAB)], check=True)

    split = lambda p: pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False)
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    train_hf(texts, pre_tokenizers.Sequence([split(CL100K), bl]), os.path.join(a.out, "hf_cl100k"))
    train_hf(texts, pre_tokenizers.Sequence([split(p) for p in DSV3] + [bl]), os.path.join(a.out, "hf_dsv3"))
    train_hf(texts, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), os.path.join(a.out, "hf_gpt2"),
             add_tokens=["<tool>", "</tool>"])

    def prefix_and_string_merges(j):
        j["pre_tokenizer"]["add_prefix_space"] = True
        j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    edit_json(os.path.join(a.out, "hf_gpt2"), os.path.join(a.out, "hf_gpt2_prefix"), prefix_and_string_merges)

    def ignore_merges(j):
        j["model"]["ignore_merges"] = True
    edit_json(os.path.join(a.out, "hf_cl100k"), os.path.join(a.out, "hf_cl100k_ignore"), ignore_merges)

    def literal_split(j):
        j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": ". "}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    edit_json(os.path.join(a.out, "hf_gpt2"), os.path.join(a.out, "hf_gpt2_literal"), literal_split)

    names = ["frugal_trained", "hf_cl100k", "hf_dsv3", "hf_gpt2", "hf_gpt2_prefix", "hf_cl100k_ignore",
             "hf_gpt2_literal"]
    expected = {"texts": TEXTS, "versions": {"tokenizers": tokenizers.__version__}, "tokenizers": {}}
    for n in names:
        expected["tokenizers"][n] = ids_for(os.path.join(a.out, n), adds_prefix="prefix" in n)

    # transformers' AutoTokenizer on the folder frugal saved
    import transformers
    from transformers import AutoTokenizer
    expected["versions"]["transformers"] = transformers.__version__
    at = AutoTokenizer.from_pretrained(frugal_dir)
    at_ids = [at.encode(t, add_special_tokens=False) for t in TEXTS]
    if at_ids != expected["tokenizers"]["frugal_trained"]["ids"]:
        sys.exit("check failed: AutoTokenizer ids differ from tokenizers' ids on frugal_trained")
    chat = at.apply_chat_template([{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "Hello."},
                                   {"role": "user", "content": "2+2?"}],
                                  tokenize=False, add_generation_prompt=True)
    want = BOS + "Be brief.\n\n" + USER + "Hi" + ASSISTANT + "Hello." + EOS + USER + "2+2?" + ASSISTANT
    if chat != want:
        sys.exit(f"check failed: chat template renders {chat!r}")
    expected["transformers"] = {
        "loaded": True,
        "class": type(at).__name__,
        "ids_match_tokenizers": True,
        "bos_token_id": at.bos_token_id,
        "eos_token_id": at.eos_token_id,
        "pad_token_id": at.pad_token_id,
        "model_max_length": at.model_max_length,
        "chat": chat,
        "chat_ids": at.encode(chat, add_special_tokens=False),
    }
    with open(os.path.join(a.out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {a.out}: {', '.join(names)}, expected.json ({len(TEXTS)} texts)")


if __name__ == "__main__":
    main()
