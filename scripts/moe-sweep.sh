#!/usr/bin/env bash
# moe-sweep.sh — issue 21's sweep around scripts/moe-vs-dense.sh: which DeepSeekMoE choices
# make the MoE win here, at equal active compute per token? Every run trains on the same
# tokens of the non-repeating Debian corpus (data/mix-4k, scripts/corpus-mix.sh) in the same
# order, with the same optimizer and seed, and is scored on the same validation windows:
#
#   moe          configs/compare-moe.json: 16 routed experts of width 128, top-4, 1 shared
#   dense        configs/compare-dense.json: MLP width 640 = (4 + 1) x 128
#   moe-e8       coarser: 8 experts of width 256, top-2, 1 shared (same active width)
#   moe-e32      finer: 32 experts of width 64, top-8, 1 shared
#   moe-noshared no shared expert: 16 x 128, top-5
#   moe-nobias   no router-bias balancing (speed 0; only the default sequence-wise loss, 1e-4)
#   moe-aux      balance loss instead of the bias (alpha 0.01, speed 0: DeepSeek-V2's way)
#   moe-lr6, dense-lr6   both at twice the learning rate (6e-3)
#   moe-rsf1     routed_scaling_factor 1.0 instead of DeepSeek-V3's 2.5
#   moe-nonorm   norm_topk_prob false: the top-k sigmoid scores unnormalised (x 2.5)
#   moe-e64      finest: 64 experts of width 32, top-16, 1 shared (of width 32)
#   moe-e32-noshared  32 experts of width 64, top-10, no shared expert
#   moe-best     the winners together: 32 experts of width 64, top-10, no shared expert,
#                routed_scaling_factor 1.0
#   moe-lr-router03  the router's weights at 0.3 x lr (--lr-router-scale)
#   moe-lr-experts2  the routed experts at 2 x lr (--lr-experts-scale)
#   moe-noshared-long, dense-long (--long) the best single change and dense, 4x the steps
#
#   scripts/moe-sweep.sh [--steps N] [--threads N] [--only NAME,NAME] [--long] [--ckpt-interval N]
#       (default 1000 steps of 8 x 256 tokens = 2.05M tokens per run; checkpoints only at the
#       end unless --ckpt-interval: a long run cut short continues with frugal train --resume)
#
# Writes runs/moe-sweep-<time>/ (configs, runs, val_loss.svg, summary.tsv) and records every
# run in runs/ledger.jsonl. Wall-clock figures from a busy machine are not comparable: the
# step-cost ratio is measured by bench_model on a quiet one (docs/training.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STEPS=1000
THREADS=$(nproc)
ONLY=""
LONG=0
CKPT=0
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) STEPS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --long) LONG=1; shift ;;
        --ckpt-interval) CKPT=$2; shift 2 ;;
        -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "moe-sweep: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
FRUGAL=${FRUGAL:-./build/frugal}
PY=${PYTHON:-python3}
THREADS=$THREADS scripts/prepare-corpus.sh mix
OUT=runs/moe-sweep-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$OUT"

# name | base config | config changes (key=value,...) | extra train flags | step factor
BEST=n_routed_experts=32,moe_intermediate_size=64,num_experts_per_tok=10,n_shared_experts=0,routed_scaling_factor=1.0
VARIANTS="moe|compare-moe||
dense|compare-dense||
moe-e8|compare-moe|n_routed_experts=8,moe_intermediate_size=256,num_experts_per_tok=2|
moe-e32|compare-moe|n_routed_experts=32,moe_intermediate_size=64,num_experts_per_tok=8|
moe-noshared|compare-moe|n_shared_experts=0,num_experts_per_tok=5|
moe-nobias|compare-moe||--bias-speed 0
moe-aux|compare-moe||--bias-speed 0 --balance-alpha 0.01
moe-lr6|compare-moe||--lr 6e-3
dense-lr6|compare-dense||--lr 6e-3
moe-rsf1|compare-moe|routed_scaling_factor=1.0|
moe-nonorm|compare-moe|norm_topk_prob=false|
moe-e64|compare-moe|n_routed_experts=64,moe_intermediate_size=32,num_experts_per_tok=16|
moe-e32-noshared|compare-moe|n_routed_experts=32,moe_intermediate_size=64,num_experts_per_tok=10,n_shared_experts=0|
moe-best|compare-moe|$BEST|
moe-lr-router03|compare-moe||--lr-router-scale 0.3
moe-lr-experts2|compare-moe||--lr-experts-scale 2"
if [ "$LONG" = 1 ]; then
    VARIANTS="moe-noshared-long|compare-moe|n_shared_experts=0,num_experts_per_tok=5|--long
dense-long|compare-dense||--long"
fi

printf 'name\tparams\tactive\tsteps\ttokens\tval_loss\twall_s\n' > "$OUT/summary.tsv"
RUNS=()
while IFS='|' read -r name base changes flags; do
    [ -n "$name" ] || continue
    if [ -n "$ONLY" ] && ! printf ',%s,' "$ONLY" | grep -q ",$name,"; then continue; fi
    cfg=$OUT/$name.json
    "$PY" - "configs/$base.json" "$cfg" "$changes" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
for kv in filter(None, sys.argv[3].split(",")):
    k, v = kv.split("=")
    c[k] = {"true": True, "false": False}.get(v) if v in ("true", "false") else float(v) if "." in v else int(v)
json.dump(c, open(sys.argv[2], "w"), indent=2)
EOF
    steps=$STEPS
    extra=()
    for f in $flags; do extra+=("$f"); done
    if [ "${#extra[@]}" -gt 0 ] && [ "${extra[0]}" = "--long" ]; then steps=$((STEPS * 4)); extra=(); fi
    echo "== $name: $("$FRUGAL" info --config "$cfg" | grep '^parameters' | sed 's/parameters *//'), $steps steps ${extra[*]:-}"
    "$FRUGAL" train --config "$cfg" --data data/mix-4k --out "$OUT/$name" --steps "$steps" --batch 8 --seq 256 --lr 3e-3 \
        --warmup 30 --bias-speed 0.01 --seed 1 --threads "$THREADS" --ledger runs/ledger.jsonl --eval-interval 100 \
        --eval-batches 8 --ckpt-interval "$CKPT" --sample-interval 0 --quiet "${extra[@]}"
    m=$OUT/$name/metrics.jsonl
    vl=$(grep '"type":"eval"' "$m" | tail -1 | sed -n 's/.*"val_loss":\([0-9.eE+-]*\).*/\1/p')
    wall=$(grep '"type":"step"' "$m" | tail -1 | sed -n 's/.*"elapsed_s":\([0-9.eE+-]*\).*/\1/p')
    pa=$("$FRUGAL" info --config "$cfg" | sed -n 's/^parameters *\([0-9]*\) total.* \([0-9]*\) active.*/\1\t\2/p')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$pa" "$steps" "$((steps * 2048))" "$vl" "$wall" >> "$OUT/summary.tsv"
    RUNS+=("$OUT/$name")
done <<< "$VARIANTS"
echo
column -t -s "$(printf '\t')" "$OUT/summary.tsv"
"$FRUGAL" plot "${RUNS[@]}" --metric val_loss --out "$OUT/val_loss.svg" && echo "validation curves: $OUT/val_loss.svg"
