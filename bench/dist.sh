#!/bin/sh
# bench/dist.sh — multi-process training on this machine (issue 17): the same global batch
# trained by one process and by 2 ranks under each layout (data parallel, ZeRO-1, expert
# parallel), each rank on its share of the cores. Prints, from rank 0's metrics.jsonl, the
# median step time (the gradient reductions overlapping the backward, the default, and started
# only after it: FRUGAL_DIST_OVERLAP=0, rows *_after_backward), the step's payload bytes by collective next to the formulas' wire bytes,
# the time share of communication, and memory per rank (the plan, which counts the sharded
# moments exactly, and the peak resident set).
#
#   bench/dist.sh [DATA_DIR] [CONFIG] [STEPS]    (defaults: data/kjv-4k configs/demo.json 12)
#
# A second table shows memory per rank where the AdamW moments matter: the 28.9M-parameter
# configs/precision-large.json at a small batch (2 x 128), 4 steps per layout.
#
# Needs a build with MPI (build/frugal) and prepared data (make demo makes data/kjv-4k).
set -eu
DATA=${1:-data/kjv-4k}
CONFIG=${2:-configs/demo.json}
STEPS=${3:-12}
FRUGAL=${FRUGAL:-./build/frugal}
MPIRUN=${MPIRUN:-mpirun}
CORES=$(nproc)
OUT=$(mktemp -d /tmp/frugal-bench-dist.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
BASE="--data $DATA --eval-interval 0 --sample-interval 0 --ckpt-interval 0 --peak-gflops 1 --quiet"
COMMON="--config $CONFIG --steps $STEPS --batch 8 --seq 256 $BASE"

run() { # name ranks extra-flags
    name=$1 np=$2
    shift 2
    threads=$((CORES / np))
    [ "$threads" -ge 1 ] || threads=1
    if [ "$np" = 1 ]; then
        "$FRUGAL" train $COMMON --threads "$threads" --out "$OUT/$name" --ledger "$OUT/ledger.jsonl" "$@" >"$OUT/$name.log" 2>&1
    else
        FRUGAL_DIST_OVERLAP=${OVERLAP:-1} "$MPIRUN" -x FRUGAL_DIST_OVERLAP --oversubscribe -np "$np" "$FRUGAL" train $COMMON --threads "$threads" --out "$OUT/$name" \
            --ledger "$OUT/ledger.jsonl" "$@" >"$OUT/$name.log" 2>&1
    fi || { echo "bench/dist.sh: $name failed:"; tail -5 "$OUT/$name.log"; exit 1; }
    echo "$name $np $threads" >>"$OUT/${RUNS:-runs}.txt"
}

echo "machine: $CORES cores; $CONFIG, global batch 8 x 256 tokens, $STEPS steps per layout"
run one 1
run dp2 2
OVERLAP=0 run dp2_after_backward 2
run dp2_zero1 2 --zero1
OVERLAP=0 run dp2_zero1_after_backward 2 --zero1
run ep2 2 --ep 2
OVERLAP=0 run ep2_after_backward 2 --ep 2
run ep2_zero1 2 --ep 2 --zero1
python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
rows = [l.split() for l in open(out + "/runs.txt")]
print("\nspeed and communication per step (rank 0; payload handed to MPI, formula's wire bytes in brackets):")
print("| layout | ranks x threads | step (median) | tokens/s | all-reduce MB (ring model) | reduce-scatter MB (model) | all-gather MB (model) | all-to-all MB (model) | comm share | memory plan / rank | peak RSS rank 0 |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
base = None
for name, np_, th in rows:
    steps = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl") if '"type":"step"' in l]
    steps = steps[2:] or steps  # the first steps warm the caches
    dt = statistics.median(s["tokens_per_s"] for s in steps)
    t_step = 8 * 256 / dt
    base = base or t_step
    def mb(kind, key):
        c = steps[-1].get("comm")
        return "-" if not c else "%.2f" % (c[kind][key] / 1e6)
    comm = steps[-1].get("comm")
    share = "-" if not comm else "%.0f%%" % (100 * statistics.median(s["comm"]["time_share"] for s in steps))
    print(f"| {name} | {np_} x {th} | {t_step*1000:.0f} ms ({base/t_step:.2f}x) | {dt:.0f} | "
          + " | ".join(f"{mb(k,'bytes')} ({mb(k,'model_bytes')})" for k in ("allreduce", "reduce_scatter", "allgather", "alltoall"))
          + f" | {share} | {steps[-1]['mem_plan_bytes']/2**20:.1f} MiB | {steps[-1]['rss_peak_bytes']/2**20:.1f} MiB |")
PY

echo
echo "memory per rank: configs/precision-large.json, batch 2 x 128, 4 steps"
COMMON="--config configs/precision-large.json --steps 4 --batch 2 --seq 128 $BASE"
RUNS=mem
export RUNS
run mem_one 1
run mem_dp2 2
run mem_dp2_zero1 2 --zero1
run mem_ep2 2 --ep 2
run mem_ep2_zero1 2 --ep 2 --zero1
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print("| layout | ranks | memory plan / rank | moments / rank | peak RSS rank 0 |")
print("|---|---|---|---|---|")
for name, np_, th in (l.split() for l in open(out + "/mem.txt")):
    steps = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl") if '"type":"step"' in l]
    log = open(f"{out}/{name}.log").read()
    share = "100 %"
    for line in log.splitlines():
        if "keeps the AdamW moments of" in line:
            share = line.split("keeps the AdamW moments of ")[1].split(" of the")[0]
    print(f"| {name[4:]} | {np_} | {steps[-1]['mem_plan_bytes']/2**20:.1f} MiB | {share} | {steps[-1]['rss_peak_bytes']/2**20:.1f} MiB |")
PY
