#!/usr/bin/env bash
# moe-vs-dense.sh — the central claim of cheap-AI training, checked on this machine: train a
# DeepSeekMoE model (configs/compare-moe.json: 16 routed experts of width 128, top-4, plus one
# shared expert) and a dense model with the same active FLOPs per token
# (configs/compare-dense.json: MLP width 640 = (4 + 1) x 128 in every layer; same MLA
# attention, embeddings and head) on the same tokens, in the same order, with the same
# optimizer settings, and compare their validation loss and wall-clock time.
#
#   scripts/moe-vs-dense.sh [--steps N] [--threads N] [--corpus kjv|mix] [--moe FILE]
#       (default 150 steps of 8 x 256 tokens on the KJV; mix: the 44M-token Debian corpus of
#       scripts/corpus-mix.sh, where 1,500 steps read 3M tokens without repeating any;
#       --moe: another MoE config of the same active compute, e.g. configs/compare-moe-noshared.json,
#       the design the sweep found best and the demo's)
#
# Both runs are recorded in runs/ledger.jsonl (see `frugal cost`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STEPS=150
THREADS=$(nproc)
CORPUS=kjv
MOE=configs/compare-moe.json
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) STEPS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --corpus) CORPUS=$2; shift 2 ;;
        --moe) MOE=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "moe-vs-dense: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
FRUGAL=./build/frugal
case "$CORPUS" in kjv|mix) ;; *) echo "moe-vs-dense: --corpus must be kjv or mix" >&2; exit 2 ;; esac
[ -f "$MOE" ] || { echo "moe-vs-dense: no MoE config $MOE" >&2; exit 2; }
THREADS=$THREADS scripts/prepare-corpus.sh "$CORPUS"
OUT=runs/moe-vs-dense-$CORPUS-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
for arch in moe dense; do
    cfg=configs/compare-dense.json
    [ "$arch" = moe ] && cfg=$MOE
    echo "== training $cfg for $STEPS steps"
    "$FRUGAL" info --config "$cfg" | grep -E '^(parameters|layers|MoE)'
    "$FRUGAL" train --config "$cfg" --data "data/$CORPUS-4k" --out "$OUT/$arch" --steps "$STEPS" \
        --batch 8 --seq 256 --lr 3e-3 --warmup 30 --bias-speed 0.01 --seed 1 --threads "$THREADS" --ledger runs/ledger.jsonl \
        --eval-interval 25 --eval-batches 8 --ckpt-interval 0 --sample-interval 0 --quiet
done
echo
echo "== result ($STEPS steps x 2048 tokens each, same data order)"
printf '%-6s %12s %12s %14s %12s\n' model val_loss val_bpb train_tok/s wall_s
for arch in moe dense; do
    m="$OUT/$arch/metrics.jsonl"
    ev=$(grep '"type":"eval"' "$m" | tail -1)
    vl=$(printf '%s' "$ev" | sed -n 's/.*"val_loss":\([0-9.eE+-]*\).*/\1/p')
    bpb=$(printf '%s' "$ev" | sed -n 's/.*"val_bpb":\([0-9.eE+-]*\).*/\1/p')
    last=$(grep '"type":"step"' "$m" | tail -1)
    wall=$(printf '%s' "$last" | sed -n 's/.*"elapsed_s":\([0-9.eE+-]*\).*/\1/p')
    tps=$(awk -v t="$STEPS" -v w="$wall" 'BEGIN { printf "%.0f", t * 2048 / w }')
    printf '%-6s %12.4f %12.4f %14s %12.1f\n' "$arch" "$vl" "$bpb" "$tps" "$wall"
done
"$FRUGAL" plot "$OUT/moe" "$OUT/dense" --metric val_loss --out "$OUT/val_loss.svg" && echo "validation curves: $OUT/val_loss.svg"
"$FRUGAL" plot "$OUT/moe" "$OUT/dense" --metric val_loss --terminal || true
