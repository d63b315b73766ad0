#!/usr/bin/env bash
# prepare-kjv.sh — the default corpus, tokenizer and token shards, made once and reused:
#   data/kjv/kjv.jsonl   King James Bible, one chapter per document (scripts/corpus-kjv.sh)
#   data/kjv-tok/        byte-level BPE tokenizer, 4096 ids, trained on it
#   data/kjv-4k/         token shards, 2 % of the chapters held out for validation
# Used by scripts/demo.sh and scripts/moe-vs-dense.sh. Needs ./build/frugal.
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
exec "$(dirname "${BASH_SOURCE[0]}")/prepare-corpus.sh" kjv
