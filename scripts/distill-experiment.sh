#!/usr/bin/env bash
# distill-experiment.sh — does distillation pay here? Train a teacher 2.5x the demo's size
# (configs/distill-teacher.json: 11.3M active of 28.8M parameters) on the KJV, then three
# students of the demo's size (configs/demo.json: 4.5M active of 10.0M) for the same number of
# tokens, in the same order, with the same optimizer settings:
#   ce       plain next-token cross-entropy on the KJV
#   logit    logit distillation: 0.5 x T^2 KL(teacher_T || student_T) + 0.5 x CE at T = 2, the
#            teacher's top-32 stored once beside the data (frugal distill dump-teacher)
#   seq      sequence-level distillation: the teacher continues KJV prompts (sampled at
#            temperature 1), and the student trains on that text by cross-entropy
# and score each on the KJV validation split through `frugal eval` (the same windows for all,
# teacher included). The cost of each run comes from the ledger; the teacher's runs (training,
# top-k dump, generation) are the lifecycle cost a distilled student carries.
#
#   scripts/distill-experiment.sh [--teacher-steps N] [--student-steps N] [--prompts N] [--threads N]
#       (defaults 600, 300, 1500 prompts x 128 new tokens; batches of 8 x 256 tokens)
#
# Everything goes to runs/distill-<time>/ and runs/ledger.jsonl; the table at the end is what
# docs/experiments.md reports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TSTEPS=600
SSTEPS=300
PROMPTS=1500
THREADS=$(nproc)
while [ $# -gt 0 ]; do
    case "$1" in
        --teacher-steps) TSTEPS=$2; shift 2 ;;
        --student-steps) SSTEPS=$2; shift 2 ;;
        --prompts) PROMPTS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "distill-experiment: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
FRUGAL=./build/frugal
PY=${PYTHON:-python3}
THREADS=$THREADS scripts/prepare-corpus.sh kjv
OUT=runs/distill-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
LEDGER=runs/ledger.jsonl
COMMON=(--batch 8 --seq 256 --lr 3e-3 --warmup 30 --bias-speed 0.01 --seed 1 --threads "$THREADS" --ledger "$LEDGER"
        --eval-interval 50 --eval-batches 8 --ckpt-interval 0 --sample-interval 0 --quiet)
t() { date +%s.%N; }
declare -A SECS

echo "== 1/6 teacher: configs/distill-teacher.json, $TSTEPS steps"
s=$(t)
"$FRUGAL" train --config configs/distill-teacher.json --data data/kjv-4k --out "$OUT/teacher" --steps "$TSTEPS" "${COMMON[@]}"
SECS[teacher]=$(echo "$(t) - $s" | bc)
TEACHER=$OUT/teacher/$(cat "$OUT/teacher/latest")

echo "== 2/6 student ce: configs/demo.json, $SSTEPS steps of cross-entropy"
"$FRUGAL" train --config configs/demo.json --data data/kjv-4k --out "$OUT/ce" --steps "$SSTEPS" "${COMMON[@]}"

echo "== 3/6 the teacher's top-32 beside a copy of the data"
cp -r data/kjv-4k "$OUT/data-topk"
s=$(t)
"$FRUGAL" distill dump-teacher --teacher "$TEACHER" --data "$OUT/data-topk" --seq 256 --topk 32 --temperature 2 \
    --threads "$THREADS" --ledger "$LEDGER"
SECS[dump]=$(echo "$(t) - $s" | bc)

echo "== 4/6 student logit: logit distillation, $SSTEPS steps"
"$FRUGAL" distill --config configs/demo.json --data "$OUT/data-topk" --out "$OUT/logit" --steps "$SSTEPS" \
    --topk 32 --temperature 2 --alpha 0.5 "${COMMON[@]}"

echo "== 5/6 sequence-level: the teacher continues $PROMPTS KJV prompts, the student trains on the text"
# prompts: the first eight words of verses drawn (seeded) from the training documents
"$PY" - "$OUT/prompts.jsonl" "$PROMPTS" <<'EOF'
import json, random, sys
out, n = sys.argv[1], int(sys.argv[2])
verses = []
for line in open("data/kjv/kjv.jsonl", encoding="utf-8"):
    verses += [v for v in json.loads(line)["text"].split("\n") if len(v.split()) >= 12]
random.Random(1).shuffle(verses)
with open(out, "w", encoding="utf-8") as f:
    for v in verses[:n]:
        f.write(json.dumps({"prompt": " ".join(v.split()[:8])}) + "\n")
EOF
s=$(t)
"$FRUGAL" generate --model "$TEACHER" --batch "$OUT/prompts.jsonl" --out "$OUT/teacher-text.jsonl" --parallel 16 \
    --max-tokens 128 --temperature 1.0 --top-k 0 --top-p 1.0 --seed 1 --threads "$THREADS" --ledger "$LEDGER"
SECS[generate]=$(echo "$(t) - $s" | bc)
"$PY" - "$OUT/teacher-text.jsonl" "$OUT/teacher-text-docs.jsonl" <<'EOF'
import json, sys
with open(sys.argv[2], "w", encoding="utf-8") as f:
    for line in open(sys.argv[1], encoding="utf-8"):
        j = json.loads(line)
        f.write(json.dumps({"text": j["prompt"] + j["completion"]}) + "\n")
EOF
"$FRUGAL" data prepare --tokenizer data/kjv-4k --input "$OUT/teacher-text-docs.jsonl" --output "$OUT/data-seq" \
    --val-fraction 0.02 --threads "$THREADS" --quiet
"$FRUGAL" train --config configs/demo.json --data "$OUT/data-seq" --out "$OUT/seq" --steps "$SSTEPS" "${COMMON[@]}"

echo "== 6/6 scores on the KJV validation split (the same windows for every model)"
for m in teacher ce logit seq; do
    ck=$OUT/$m/$(cat "$OUT/$m/latest")
    printf '%-8s %s\n' "$m" "$("$FRUGAL" eval --model "$ck" --data data/kjv-4k --split val --seq 256 --threads "$THREADS")"
done
echo
echo "== cost of every job of this experiment (runs/ledger.jsonl), and what each student carries"
"$PY" - "$LEDGER" "$OUT" <<'EOF'
import json, sys
ledger, out = sys.argv[1], sys.argv[2]
jobs = {}
for line in open(ledger, encoding="utf-8"):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if str(r.get("run_dir", "")).startswith(out):
        jobs[r["run_id"]] = r  # the latest record of each job wins
rows = sorted(jobs.values(), key=lambda r: r.get("start_unix", 0))
print(f"{'kind':14s} {'job':42s} {'wall_s':>9s} {'core_h':>8s} {'cost_usd':>10s}")
total = {}
for r in rows:
    name = r["run_dir"][len(out) + 1:]
    print(f"{r['kind']:14s} {name:42s} {r.get('wall_s', 0):9.1f} {r.get('device_hours', 0):8.4f} {r.get('cost_usd', 0):10.5f}")
    total[name.split("/")[0].split(".")[0]] = r.get("cost_usd", 0)
t = total.get("teacher", 0)
print(f"student ce: {total.get('ce', 0):.5f}; logit: {total.get('logit', 0):.5f} + teacher {t:.5f} + top-k dump "
      f"{total.get('data-topk', 0):.5f}; seq: {total.get('seq', 0):.5f} + teacher {t:.5f} + generation "
      f"{total.get('teacher-text', 0):.5f} (USD, the ledger's default core-hour price)")
EOF
"$FRUGAL" plot "$OUT/ce" "$OUT/logit" "$OUT/seq" --metric val_loss --out "$OUT/val_loss.svg" && echo "curves: $OUT/val_loss.svg"
