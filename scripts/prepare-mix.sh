#!/usr/bin/env bash
# prepare-mix.sh — the large corpus, tokenizer and token shards, made once and reused:
#   data/mix/mix.jsonl   English text and code from Debian packages, ~22,800 documents,
#                        130 MB (scripts/corpus-mix.sh; what is in it: docs/data.md)
#   data/mix-tok/        byte-level BPE tokenizer, 4096 ids, trained on it
#   data/mix-4k/         token shards (~44M tokens), 2 % of the documents held out for validation
# Needs ./build/frugal (or FRUGAL=path/to/frugal).
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
exec "$(dirname "${BASH_SOURCE[0]}")/prepare-corpus.sh" mix
