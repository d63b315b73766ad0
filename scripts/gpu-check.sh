#!/usr/bin/env bash
# scripts/gpu-check.sh — the one script to run on a GPU machine (issue 18), in well under 6
# minutes: configure and build with the CUDA backend for this GPU, run the gpu-labelled tests
# (every op of src/cuda/ against the CPU backend), run them again under compute-sanitizer when
# it is installed, then print one summary table and write it as JSON lines to
# gpu-check.jsonl (the machine keeps nothing: copy the figures into docs/performance.md with
# the date and the device name).
#
#   scripts/gpu-check.sh [BUILD_DIR]     (default build-gpu)
#
# Benchmarks: training steps of bench/configs/bench-1b-moe.json (1.13B parameters, 366M active)
# at sequence 2048 on the GPU in bf16 and fp32 (tokens/s, MFU against PEAK_TFLOPS, default 989:
# H100 / H200 dense BF16), and the same model in PyTorch + transformers on the same GPU when
# both import (tools/bench_torch_train.py); decode of bench/configs/bench-infer.json at batch 1
# and 32 on the GPU engine, and the latent decode attention's bandwidth against the device's
# copy bandwidth (bench_decode_device). Logs go beside the JSON lines (GPU_CHECK_OUT's folder).
# It needs the project's build dependencies (scripts/install-deps.sh) on the GPU machine.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD=${1:-build-gpu}
OUT=${GPU_CHECK_OUT:-gpu-check.jsonl}
LOGS=$(dirname "$OUT")
PEAK=${PEAK_TFLOPS:-989}
: >"$OUT"
t0=$(date +%s)
row() { # name status seconds detail
    printf '%-34s %-8s %6s s  %s\n' "$1" "$2" "$3" "$4"
    python3 -c 'import json,sys; print(json.dumps({"check": sys.argv[1], "status": sys.argv[2], "seconds": float(sys.argv[3]), "detail": sys.argv[4]}))' \
        "$1" "$2" "$3" "$4" >>"$OUT"
}
step() { # name command...: runs it, records pass / fail and its time
    local name=$1 s=$(date +%s)
    shift
    if "$@" >"$LOGS/gpu-check.$name.log" 2>&1; then
        local st=pass
        grep -q "(Skipped)" "$LOGS/gpu-check.$name.log" && st=skipped  # a test that found no GPU did not pass
        row "$name" $st $(( $(date +%s) - s )) "$(tail -1 "$LOGS/gpu-check.$name.log")"
    else row "$name" FAIL $(( $(date +%s) - s )) "$(tail -1 "$LOGS/gpu-check.$name.log") (log: $LOGS/gpu-check.$name.log)"; fi
}

device=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)
echo "gpu-check $(date -u +%Y-%m-%dT%H:%MZ): ${device:-no GPU found by nvidia-smi}"
row device info 0 "${device:-none} (compute capability ${cc:-?})"
arch=${cc:-90}
[ "$arch" = 90 ] && arch=90a
step configure cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch"
step build cmake --build "$BUILD" -j"$(nproc)"
step kernels_on_host ctest --test-dir "$BUILD" -R '^test_cuda_kernels' --output-on-failure
step gpu_ops ctest --test-dir "$BUILD" -L gpu --output-on-failure
if command -v compute-sanitizer >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
    cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    step sanitizer_memcheck timeout 120 "$cs" --tool memcheck --error-exitcode 1 "$BUILD/test_cuda_ops"
    step sanitizer_racecheck timeout 120 "$cs" --tool racecheck --error-exitcode 1 "$BUILD/test_cuda_ops"
    step sanitizer_engine timeout 120 "$cs" --tool memcheck --error-exitcode 1 "$BUILD/test_engine_device" cuda
else
    row sanitizer skipped 0 "compute-sanitizer not installed"
fi
B1=bench/configs/bench-1b-moe.json
step train_bf16 timeout 180 "$BUILD/bench_model" --device cuda --config $B1 --batch 4 --seq 2048 --precision bf16 \
    --steps 5 --warmup 2 --peak-tflops "$PEAK"
step train_fp32 timeout 120 "$BUILD/bench_model" --device cuda --config $B1 --batch 4 --seq 2048 --precision fp32 \
    --steps 3 --warmup 1 --peak-tflops "$PEAK"
step decode timeout 120 "$BUILD/bench_decode_device" --device cuda --batch 1,32 --prompt 128 --gen 32
grep '"bench": "decode_device"' "$LOGS/gpu-check.decode.log" >>"$OUT" 2>/dev/null
if python3 -c 'import torch, transformers; assert torch.cuda.is_available()' >/dev/null 2>&1; then
    step torch_peer timeout 240 python3 tools/bench_torch_train.py --device cuda --configs $B1 --batch 4 --seq 2048 \
        --steps 3 --warmup 1 --peak-tflops "$PEAK" --bench-model "$BUILD/bench_model"
else
    row torch_peer skipped 0 "PyTorch with CUDA and transformers are not both importable here"
fi
row total info $(( $(date +%s) - t0 )) "figures in $OUT"
grep -q '"FAIL"' "$OUT" && exit 1
exit 0
