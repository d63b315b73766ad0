#!/usr/bin/env bash
# prepare-corpus.sh NAME — a corpus, its tokenizer and token shards, made once and reused
# (NAME: kjv or mix; scripts/prepare-kjv.sh and scripts/prepare-mix.sh call this):
#   data/NAME/NAME.jsonl   the documents (scripts/corpus-NAME.sh)
#   data/NAME-tok/         byte-level BPE tokenizer, 4096 ids, trained on them
#   data/NAME-4k/          token shards, 2 % of the documents held out for validation
# Needs ./build/frugal (or FRUGAL=path/to/frugal). THREADS defaults to all cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
name=${1:-}
case "$name" in -h|--help|"") sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; [ -n "$name" ]; exit $? ;; esac
[ -x "scripts/corpus-$name.sh" ] || { echo "prepare-corpus: no scripts/corpus-$name.sh" >&2; exit 2; }
FRUGAL=${FRUGAL:-./build/frugal}
THREADS=${THREADS:-$(nproc)}
[ -x "$FRUGAL" ] || { echo "prepare-$name: $FRUGAL is missing; run 'make' first" >&2; exit 1; }
"scripts/corpus-$name.sh" "data/$name"
if [ ! -f "data/$name-tok/tokenizer.json" ]; then
    "$FRUGAL" tokenizer train --vocab-size 4096 --input "data/$name/$name.jsonl" --output "data/$name-tok" --threads "$THREADS"
else
    echo "prepare-$name: data/$name-tok already present"
fi
if [ ! -f "data/$name-4k/meta.json" ]; then
    "$FRUGAL" data prepare --tokenizer "data/$name-tok" --input "data/$name/$name.jsonl" --output "data/$name-4k" \
        --val-fraction 0.02 --threads "$THREADS"
else
    echo "prepare-$name: data/$name-4k already present"
fi
