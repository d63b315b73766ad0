#!/usr/bin/env bash
# demo.sh — the main job: on a fresh machine, prepare the default corpus, train a small
# DeepSeek-style model (MLA + MoE with a shared expert + MTP) for about 10 minutes on the
# CPU, show the loss curve and a sample, and print the cost summary. Run by `make demo`
# (which first installs missing packages and builds).
#
#   scripts/demo.sh [--steps N] [--threads N]   (or DEMO_STEPS=N make demo)
#
# The router-bias speed is 0.01 rather than DeepSeek-V3's 0.001: the demo has 400 steps, not
# hundreds of thousands, and the biases have to travel as far in them.
#
# Everything lands under data/ (corpus, tokenizer, token shards; reused on later runs) and
# runs/ (one folder per demo run, plus runs/ledger.jsonl: every run, including interrupted
# ones, for `frugal cost`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STEPS=${DEMO_STEPS:-400}
THREADS=${DEMO_THREADS:-$(nproc)}
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) STEPS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

FRUGAL=./build/frugal
[ -x "$FRUGAL" ] || { echo "demo: $FRUGAL is missing; run 'make demo' (it builds first)" >&2; exit 1; }

echo "== 1-3/5 corpus (King James Bible from Debian's bible-kjv-text), tokenizer (BPE, 4096 ids), token shards"
THREADS=$THREADS scripts/prepare-kjv.sh
"$FRUGAL" data info data/kjv-4k || true

RUN=runs/demo-$(date -u +%Y%m%d-%H%M%S)
mkdir -p runs
echo "== 4/5 training configs/demo.json for $STEPS steps into $RUN (Ctrl-C saves and stops; resume with: $FRUGAL train --resume $RUN)"
"$FRUGAL" info --config configs/demo.json | sed -n '1,9p'
set +e
"$FRUGAL" train --config configs/demo.json --data data/kjv-4k --out "$RUN" --steps "$STEPS" \
    --batch 8 --seq 256 --lr 3e-3 --warmup 40 --bias-speed 0.01 --threads "$THREADS" \
    --eval-interval 50 --eval-batches 8 --ckpt-interval 100 --sample-interval 100 --prompt "And God said"
status=$?
set -e
if [ $status -ne 0 ] && [ $status -ne 130 ]; then echo "demo: training failed (exit $status)" >&2; exit $status; fi

echo "== 5/5 results"
"$FRUGAL" plot "$RUN" --metric loss --terminal || true
"$FRUGAL" plot "$RUN" --metric loss --out "$RUN/loss.svg" && echo "loss curve: $RUN/loss.svg"
"$FRUGAL" plot "$RUN" --metric maxvio --out "$RUN/maxvio.svg" && echo "expert balance (MaxVio per MoE layer): $RUN/maxvio.svg"
echo "last sample:"
grep '"type":"sample"' "$RUN/metrics.jsonl" | tail -1 || true
echo
"$FRUGAL" cost runs
