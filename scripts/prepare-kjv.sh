#!/usr/bin/env bash
# prepare-kjv.sh — the default corpus, tokenizer and token shards, made once and reused:
#   data/kjv/kjv.jsonl   King James Bible, one chapter per document (scripts/corpus-kjv.sh)
#   data/kjv-tok/        byte-level BPE tokenizer, 4096 ids, trained on it
#   data/kjv-4k/         token shards, 2 % of the chapters held out for validation
# Used by scripts/demo.sh and scripts/moe-vs-dense.sh. Needs ./build/frugal.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case "${1:-}" in -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
FRUGAL=./build/frugal
THREADS=${THREADS:-$(nproc)}
[ -x "$FRUGAL" ] || { echo "prepare-kjv: $FRUGAL is missing; run 'make' first" >&2; exit 1; }
scripts/corpus-kjv.sh data/kjv
if [ ! -f data/kjv-tok/tokenizer.json ]; then
    "$FRUGAL" tokenizer train --vocab-size 4096 --input data/kjv/kjv.jsonl --output data/kjv-tok --threads "$THREADS"
else
    echo "prepare-kjv: data/kjv-tok already present"
fi
if [ ! -f data/kjv-4k/meta.json ]; then
    "$FRUGAL" data prepare --tokenizer data/kjv-tok --input data/kjv/kjv.jsonl --output data/kjv-4k \
        --val-fraction 0.02 --threads "$THREADS"
else
    echo "prepare-kjv: data/kjv-4k already present"
fi
