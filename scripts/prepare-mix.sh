#!/usr/bin/env bash
# prepare-mix.sh — the large corpus, tokenizer and token shards, made once and reused:
#   data/mix/mix.jsonl   English text and code from Debian packages, ~22,800 documents,
#                        130 MB (scripts/corpus-mix.sh; what is in it: docs/data.md)
#   data/mix-tok/        byte-level BPE tokenizer, 4096 ids, trained on it
#   data/mix-4k/         token shards (~44M tokens), 2 % of the documents held out for validation
# Needs ./build/frugal (or FRUGAL=path/to/frugal).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case "${1:-}" in -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
FRUGAL=${FRUGAL:-./build/frugal}
THREADS=${THREADS:-$(nproc)}
[ -x "$FRUGAL" ] || { echo "prepare-mix: $FRUGAL is missing; run 'make' first" >&2; exit 1; }
scripts/corpus-mix.sh data/mix
if [ ! -f data/mix-tok/tokenizer.json ]; then
    "$FRUGAL" tokenizer train --vocab-size 4096 --input data/mix/mix.jsonl --output data/mix-tok --threads "$THREADS"
else
    echo "prepare-mix: data/mix-tok already present"
fi
if [ ! -f data/mix-4k/meta.json ]; then
    "$FRUGAL" data prepare --tokenizer data/mix-tok --input data/mix/mix.jsonl --output data/mix-4k \
        --val-fraction 0.02 --threads "$THREADS"
else
    echo "prepare-mix: data/mix-4k already present"
fi
