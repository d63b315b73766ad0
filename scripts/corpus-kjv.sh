#!/usr/bin/env bash
# corpus-kjv.sh — write the default English corpus: the King James Bible from Debian's
# bible-kjv-text package (read through the `bible` program of bible-kjv), one chapter per
# JSONL document, so the train/validation split of `frugal data prepare` has 1189
# documents to split.
#
#   scripts/corpus-kjv.sh [OUT_DIR]      default OUT_DIR: data/kjv  -> OUT_DIR/kjv.jsonl
#
# Deterministic: the same package version gives byte-identical output. Idempotent: an
# existing complete file is kept. No network beyond Debian's packages.
set -euo pipefail
out_dir=${1:-data/kjv}
case "$out_dir" in -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
out="$out_dir/kjv.jsonl"
if [ -s "$out" ]; then echo "corpus-kjv: $out already present"; exit 0; fi
if ! command -v bible >/dev/null 2>&1; then
    echo "corpus-kjv: the 'bible' program is missing; run scripts/install-deps.sh (package bible-kjv)" >&2
    exit 1
fi
mkdir -p "$out_dir"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# `bible -f` prints one verse per line as "Ge1:1 text" (no wrapping with a huge COLUMNS).
# Group verses by book+chapter, drop the references, escape for JSON.
COLUMNS=1000000 bible -f "Gen1:1-Rev22:21" | awk '
    function flush() { if (doc != "") { printf "{\"text\": \"%s\"}\n", doc; doc = "" } }
    function esc(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); gsub(/\t/, " ", s); return s }
    /^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ / {
        ref = $1; sub(/^[^ ]+ /, "", $0)
        chap = ref; sub(/:.*/, "", chap)
        if (chap != cur) { flush(); cur = chap }
        doc = (doc == "" ? esc($0) : doc "\\n" esc($0))
        next
    }
    NF { doc = doc " " esc($0) }
    END { flush() }' > "$tmp"
n=$(wc -l < "$tmp")
if [ "$n" -lt 1000 ]; then echo "corpus-kjv: expected ~1189 chapters, got $n" >&2; exit 1; fi
mv "$tmp" "$out"
trap - EXIT
echo "corpus-kjv: wrote $out ($n chapters, $(wc -c < "$out") bytes)"
