#!/usr/bin/env bash
# soak.sh — fault injection against the real `frugal` binary: kill -9 at random moments of
# train, and kill -9, SIGINT or SIGTERM (in turn) at random moments of quantize, convert,
# data prepare and serve, and a full disk (a small tmpfs) under each writer. After every fault the outputs are checked: a checkpoint, dataset, quantized
# folder or GGUF file is either absent or complete and loadable, the ledger reads, a killed
# train resumes, and the next run removes the killed run's temporary files.
#
#   tests/soak.sh [FRUGAL_BIN]       default build/frugal
#
# Counts: a short version by default (make test); FRUGAL_SOAK=1 runs the full one (make soak).
# FRUGAL_SOAK_SEED=N repeats a run's random moments. The disk-full cases need root (mount);
# without it they are reported as skipped. Signals (SIGINT / SIGTERM at random moments) are
# test_signals; the slow-client and drain cases of the server are test_serve.
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${1:-$root/build/frugal}"
[ -x "$bin" ] || { echo "soak: $bin is not executable"; exit 1; }
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
if [ "${FRUGAL_SOAK:-0}" = 1 ]; then N_TRAIN=25; N_OTHER=15; else N_TRAIN=4; N_OTHER=3; fi
seed="${FRUGAL_SOAK_SEED:-$(( $(date +%s) % 100000 ))}"
RANDOM=$seed
echo "soak: seed $seed (FRUGAL_SOAK_SEED=$seed repeats it), $N_TRAIN train kills, $N_OTHER per other writer"

work="$(mktemp -d /tmp/frugal-soak.XXXXXX)"
mnt="$work/full"
cleanup() {
    [ -n "${serve_pid:-}" ] && kill -9 "$serve_pid" 2>/dev/null
    mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
    rm -rf "$work"
}
trap cleanup EXIT

pass=0 fail=0 skip=0
declare -A CASES
ok() { pass=$((pass + 1)); CASES[$1]=$(( ${CASES[$1]:-0} + 1 )); }
bad() { echo "FAIL [$1]: $2"; fail=$((fail + 1)); }

# A random delay in seconds in [lo_ms, hi_ms).
rdelay() { local lo=$1 hi=$2; awk -v v=$(( lo + RANDOM % (hi - lo) )) 'BEGIN { printf "%.3f", v / 1000 }'; }

# Milliseconds "$@" takes (output discarded).
time_ms() {
    local t0 t1
    t0=$(date +%s%N); "$@" >/dev/null 2>&1; t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000000 + 1 ))
}
declare -A KILLED FINISHED
# Record whether a kill landed (137) or the command had finished (0) first.
tally() { if [ "$2" = 0 ]; then FINISHED[$1]=$(( ${FINISHED[$1]:-0} + 1 )); else KILLED[$1]=$(( ${KILLED[$1]:-0} + 1 )); fi; }
# A signalled writer exits 0 (finished first), 128 + the signal (stopped, or killed by it)
# or 137 (SIGKILL); anything else, or sanitizer text, is a failure.
exit_ok() { case "$2" in 0|137) return 0 ;; 130) [ "$1" = INT ] ;; 143) [ "$1" = TERM ] ;; *) return 1 ;; esac; }

# Start "$@" in the background, send it signal SIG after a random delay, wait; prints the
# exit status.
SIGS=(KILL INT TERM)
signal_at_random() {
    local sig=$1 lo=$2 hi=$3; shift 3
    "$@" >"$work/out.log" 2>"$work/err.log" &
    local pid=$!
    sleep "$(rdelay "$lo" "$hi")"
    kill -s "$sig" "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    echo $?
}

no_sanitizer_text() { ! grep -qE 'AddressSanitizer|runtime error|corrupted|double free' "$1"; }

# ------------------------------------------------------------------ fixtures
cat >"$work/config.json" <<'EOF'
{"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
 "vocab_size": 320, "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
 "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
 "q_lora_rank": 32, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 32,
 "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
 "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
 "first_k_dense_replace": 1, "moe_layer_freq": 1, "num_nextn_predict_layers": 1,
 "max_position_embeddings": 256, "rope_theta": 10000.0, "rope_scaling": null, "rms_norm_eps": 1e-06,
 "tie_word_embeddings": false, "initializer_range": 0.02, "hidden_act": "silu",
 "bos_token_id": 0, "eos_token_id": 1}
EOF
# text: sentences from a small vocabulary, deterministic
awk 'BEGIN { srand(7); split("the of and to in a is that for it as was with be by on not he this are or his from at which but have an they you were her she there one all we their", w, " ");
  for (d = 0; d < 400; d++) { s = ""; for (i = 0; i < 60 + d % 40; i++) s = s w[1 + int(rand() * 40)] (i % 12 == 11 ? ". " : " "); print "{\"text\": \"" s "\"}" } }' >"$work/corpus.jsonl"
"$bin" tokenizer train --vocab-size 300 --special "<|bos|>" --special "<|eos|>" --bos "<|bos|>" --eos "<|eos|>" \
    --input "$work/corpus.jsonl" --output "$work/tok" --quiet >/dev/null 2>"$work/err.log" || { echo "soak: tokenizer train failed:"; cat "$work/err.log"; exit 1; }
"$bin" data prepare --tokenizer "$work/tok" --input "$work/corpus.jsonl" --output "$work/data" --quiet >/dev/null 2>"$work/err.log" \
    || { echo "soak: data prepare failed:"; cat "$work/err.log"; exit 1; }
train_args=(--config "$work/config.json" --data "$work/data" --batch 2 --seq 32 --threads 2 --warmup 2
            --eval-interval 0 --ckpt-interval 3 --sample-interval 0 --peak-gflops 10 --quiet)
"$bin" train "${train_args[@]}" --out "$work/base" --steps 3 >/dev/null 2>"$work/err.log" \
    || { echo "soak: base training failed:"; cat "$work/err.log"; exit 1; }
model="$(ls -d "$work"/base/ckpt-* | sort | tail -1)"
cp "$work/tok/tokenizer.json" "$work/tok/tokenizer_config.json" "$model/" 2>/dev/null
# the writers' inputs: a model and a corpus large enough that a random moment lands inside
# the work more often than in process start-up (the tiny ones take ~10-20 ms)
sed -e 's/"hidden_size": 64/"hidden_size": 256/; s/"intermediate_size": 128/"intermediate_size": 512/' \
    -e 's/"moe_intermediate_size": 32/"moe_intermediate_size": 128/; s/"num_hidden_layers": 2/"num_hidden_layers": 4/' \
    -e 's/"n_routed_experts": 8/"n_routed_experts": 16/' "$work/config.json" >"$work/config-big.json"
"$bin" train "${train_args[@]}" --config "$work/config-big.json" --out "$work/big" --steps 1 --ckpt-interval 1 >/dev/null 2>"$work/err.log" \
    || { echo "soak: training the larger model failed:"; cat "$work/err.log"; exit 1; }
wmodel="$(ls -d "$work"/big/ckpt-* | sort | tail -1)"
cp "$work/tok/tokenizer.json" "$work/tok/tokenizer_config.json" "$wmodel/" 2>/dev/null
for _ in 1 2 3 4 5 6 7 8; do cat "$work/corpus.jsonl"; done >"$work/corpus-big.jsonl"

# ------------------------------------------------------------------ kill -9: train
for i in $(seq 1 "$N_TRAIN"); do
    run="$work/train-$i"
    rc=$(signal_at_random KILL 300 2500 "$bin" train "${train_args[@]}" --out "$run" --steps 100000)
    tally train "$rc"
    if [ "$rc" = 0 ]; then bad train "run $i finished before the kill (make the run longer)"; continue; fi
    no_sanitizer_text "$work/err.log" || { bad train "run $i: $(tail -3 "$work/err.log")"; continue; }
    # every folder named ckpt-N is a complete checkpoint (none half-written or half-deleted),
    # the ledger reads
    last=0
    for c in "$run"/ckpt-*; do
        [ -d "$c" ] || continue
        "$bin" info --model "$c" >/dev/null 2>"$work/err2.log" || bad train "run $i: $c does not load: $(cat "$work/err2.log")"
        s=${c##*ckpt-}; s=$((10#$s)); [ "$s" -gt "$last" ] && last=$s
    done
    "$bin" cost --ledger "$work/ledger.jsonl" >/dev/null 2>"$work/err2.log" || bad train "run $i: ledger unreadable: $(cat "$work/err2.log")"
    # resume continues (from a checkpoint, or from step 0 when none was reached) and finishes
    if "$bin" train --resume "$run" --steps $((last + 4)) >"$work/out2.log" 2>"$work/err2.log"; then
        left=$(ls -d "$run"/*.tmp* "$run"/.*.tmp* "$run"/.*.del 2>/dev/null | head -3)
        if [ -n "$left" ]; then bad train "run $i: temporary files left after resume: $left"; else ok train_kill9; fi
    else
        bad train "run $i: resume failed: $(tail -3 "$work/err2.log")"
    fi
done

# ------------------------------------------------------------------ kill -9: quantize, convert, data prepare
# a random moment within each command's own duration (measured once here)
t_q=$(time_ms "$bin" quantize --model "$wmodel" --type q8_0 --out "$work/q-time")
t_c=$(time_ms "$bin" convert --to gguf --type Q8_0 "$wmodel" "$work/c-time.gguf")
t_d=$(time_ms "$bin" data prepare --tokenizer "$work/tok" --input "$work/corpus-big.jsonl" --output "$work/d-time" --quiet)
echo "soak: durations: quantize ${t_q} ms, convert ${t_c} ms, data prepare ${t_d} ms"
engine_loads() { "$bin" generate --model "$1" --prompt "the" --max-tokens 1 --no-check >/dev/null 2>&1; }
tmp_left() { ls -d "$1".tmp* 2>/dev/null | head -1; }
for i in $(seq 1 "$N_OTHER"); do
    sig=${SIGS[$(( (i - 1) % 3 ))]}
    out="$work/q-$i"
    rc=$(signal_at_random "$sig" 1 $((t_q + 2)) "$bin" quantize --model "$wmodel" --type q8_0 --out "$out")
    tally quantize "$rc"
    exit_ok "$sig" "$rc" && no_sanitizer_text "$work/err.log" || bad quantize "run $i: SIG$sig gave exit $rc: $(tail -2 "$work/err.log")"
    if [ -e "$out" ] && ! engine_loads "$out"; then bad quantize "run $i (rc $rc): $out exists but does not load"; fi
    # the next run into the same place removes the killed run's temporary folder and succeeds
    rm -rf "$out"
    if "$bin" quantize --model "$wmodel" --type q8_0 --out "$out" >/dev/null 2>"$work/err2.log"; then
        t=$(tmp_left "$out"); [ -z "$t" ] && ok "quantize_$sig" || bad quantize "run $i: $t left after the next run"
    else bad quantize "run $i: next run failed: $(tail -2 "$work/err2.log")"; fi

    out="$work/c-$i.gguf"
    rc=$(signal_at_random "$sig" 1 $((t_c + 2)) "$bin" convert --to gguf --type Q8_0 "$wmodel" "$out")
    tally convert "$rc"
    exit_ok "$sig" "$rc" && no_sanitizer_text "$work/err.log" || bad convert "run $i: SIG$sig gave exit $rc: $(tail -2 "$work/err.log")"
    if [ -e "$out" ] && ! engine_loads "$out"; then bad convert "run $i (rc $rc): $out exists but does not load"; fi
    rm -f "$out"
    if "$bin" convert --to gguf --type Q8_0 "$wmodel" "$out" >/dev/null 2>"$work/err2.log"; then
        t=$(tmp_left "$out"); [ -z "$t" ] && ok "convert_$sig" || bad convert "run $i: $t left after the next run"
    else bad convert "run $i: next run failed: $(tail -2 "$work/err2.log")"; fi

    out="$work/d-$i"
    rc=$(signal_at_random "$sig" 1 $((t_d + 2)) "$bin" data prepare --tokenizer "$work/tok" --input "$work/corpus-big.jsonl" --output "$out" --quiet)
    tally data "$rc"
    exit_ok "$sig" "$rc" && no_sanitizer_text "$work/err.log" || bad data "run $i: SIG$sig gave exit $rc: $(tail -2 "$work/err.log")"
    if [ -e "$out" ] && ! "$bin" data info "$out" >/dev/null 2>&1; then bad data "run $i (rc $rc): $out exists but is not a dataset"; fi
    rm -rf "$out"
    if "$bin" data prepare --tokenizer "$work/tok" --input "$work/corpus-big.jsonl" --output "$out" --quiet >/dev/null 2>"$work/err2.log"; then
        t=$(tmp_left "$out"); [ -z "$t" ] && ok "data_$sig" || bad data "run $i: $t left after the next run"
    else bad data "run $i: next run failed: $(tail -2 "$work/err2.log")"; fi
done

# ------------------------------------------------------------------ kill -9 / SIGINT / SIGTERM: serve
for i in $(seq 1 "$N_OTHER"); do
    sig=${SIGS[$(( (i - 1) % 3 ))]}
    : >"$work/serve.log"
    "$bin" serve --model "$model" --port 0 --parallel 2 --drain-seconds 1 >"$work/serve.log" 2>&1 &
    serve_pid=$!
    port=""
    for _ in $(seq 1 100); do
        port=$(grep -oE 'http://127\.0\.0\.1:[0-9]+' "$work/serve.log" | head -1 | sed 's/.*://')
        [ -n "$port" ] && break
        sleep 0.05
    done
    if [ -z "$port" ]; then bad serve "run $i: server did not start: $(tail -3 "$work/serve.log")"; kill -9 $serve_pid; serve_pid=""; continue; fi
    curl -s -m 5 -N "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
        -d '{"prompt": "the of", "max_tokens": 200, "stream": true}' >/dev/null 2>&1 &
    cpid=$!
    sleep "$(rdelay 20 300)"
    t0=$(date +%s%N)
    kill -s "$sig" "$serve_pid"; wait "$serve_pid" 2>/dev/null; rc=$?; serve_pid=""
    took=$(( ($(date +%s%N) - t0) / 1000000 ))
    wait "$cpid" 2>/dev/null
    # SIGINT / SIGTERM: a clean exit within the drain bound (1 s + 2 s to end the streams)
    if [ "$sig" != KILL ] && { [ "$rc" != 0 ] || [ "$took" -gt 4000 ]; }; then
        bad serve "run $i: SIG$sig: exit $rc after $took ms: $(tail -2 "$work/serve.log")"
    fi
    no_sanitizer_text "$work/serve.log" || bad serve "run $i: $(tail -3 "$work/serve.log")"
    # the model folder is untouched and serves again
    if "$bin" info --model "$model" >/dev/null 2>&1; then ok "serve_$sig"; else bad serve "run $i: model no longer loads"; fi
done

# ------------------------------------------------------------------ disk full (tmpfs)
mkdir -p "$mnt"
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=600k tmpfs "$mnt" 2>/dev/null; then
    # train: the run folder on a disk with room for about one checkpoint
    "$bin" train "${train_args[@]}" --out "$mnt/run" --steps 30 >/dev/null 2>"$work/err.log"
    rc=$?
    if [ "$rc" != 0 ] && grep -qi 'no space\|ENOSPC\|disk' "$work/err.log"; then ok disk_full_train; else bad disk_full "train: rc $rc, stderr: $(tail -2 "$work/err.log")"; fi
    for c in "$mnt"/run/ckpt-*; do
        [ -d "$c" ] || continue
        case "$c" in *.tmp*) bad disk_full "train left $c"; continue ;; esac
        "$bin" info --model "$c" >/dev/null 2>&1 && ok disk_full_ckpt_intact || bad disk_full "train: checkpoint $c does not load"
    done
    ls -d "$mnt"/run/*.tmp* >/dev/null 2>&1 && bad disk_full "train left temporary files: $(ls -d "$mnt"/run/*.tmp*)"
    rm -rf "${mnt:?}"/*
    # the other writers: a clear error, nothing that looks complete, no temporary files
    dd if=/dev/zero of="$mnt/filler" bs=1k count=520 status=none 2>/dev/null
    for w in quantize convert data; do
        case $w in
            quantize) out="$mnt/q"; "$bin" quantize --model "$wmodel" --type q8_0 --out "$out" >/dev/null 2>"$work/err.log" ;;
            convert) out="$mnt/c.gguf"; "$bin" convert --to gguf --type F32 "$model" "$out" >/dev/null 2>"$work/err.log" ;;
            data) out="$mnt/d"; "$bin" data prepare --tokenizer "$work/tok" --input "$work/corpus.jsonl" --output "$out" --quiet >/dev/null 2>"$work/err.log" ;;
        esac
        rc=$?
        if [ "$rc" = 0 ]; then bad disk_full "$w succeeded on a full disk (make the filler larger)"; continue; fi
        grep -qi 'no space\|ENOSPC' "$work/err.log" || bad disk_full "$w: the message does not name the full disk: $(tail -2 "$work/err.log")"
        if [ -e "$out" ] || [ -n "$(tmp_left "$out")" ]; then bad disk_full "$w left $(ls -d "$out"* 2>/dev/null | tr '\n' ' ')"; else ok "disk_full_$w"; fi
    done
    umount "$mnt"
else
    echo "soak: disk-full cases skipped (need root to mount a tmpfs)"
    skip=$((skip + 1))
fi

for k in $(printf '%s\n' "${!CASES[@]}" | sort); do printf 'soak: %-22s %3d ok\n' "$k" "${CASES[$k]}"; done
for k in train quantize convert data; do
    printf 'soak: signals to %-9s landed %3d times mid-run, %3d runs had finished first\n' "$k" "${KILLED[$k]:-0}" "${FINISHED[$k]:-0}"
done
if [ "$skip" -gt 0 ]; then echo "soak: $pass passed, $fail failed, $skip skipped"; else echo "soak: $pass passed, $fail failed"; fi
[ "$fail" -eq 0 ]
