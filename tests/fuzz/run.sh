#!/usr/bin/env bash
# run.sh — build the libFuzzer targets with clang and run each for a while.
#
#   tests/fuzz/run.sh [SECONDS] [BUILD_DIR]     default 60 s per target, build in build-fuzz/
#
# Targets (tests/fuzz/fuzz_*.c): safetensors header, index JSON, GGUF, config.json,
# tokenizer.json. Each runs with AddressSanitizer (leaks included) and UBSan, starting from
# its seed corpus tests/fuzz/corpus/NAME (copied, so new inputs never land in the tree).
# Exit 0 when every target ran SECONDS without a crash, leak or sanitizer report; exit 77
# (skipped) when clang with libFuzzer is not installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
secs="${1:-60}"
out="${2:-$root/build-fuzz}"
CC="${FUZZ_CC:-clang}"
if ! command -v "$CC" >/dev/null 2>&1; then
    echo "fuzz: $CC not found; skipped (install clang: scripts/install-deps.sh)"; exit 77
fi
mkdir -p "$out/obj"
probe="$out/probe.c"
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }' >"$probe"
if ! "$CC" -fsanitize=fuzzer "$probe" -o "$out/probe" 2>/dev/null; then
    echo "fuzz: $CC has no libFuzzer runtime; skipped"; exit 77
fi
cjson_inc="$(pkg-config --cflags libcjson 2>/dev/null || true)"
pcre_flags="$(pkg-config --cflags --libs libpcre2-8)"
flags=(-g -O1 -std=gnu11 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined
       -fno-sanitize-recover=undefined -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas
       -I"$root/include" -I"$root/src")
# The parsers and what they call (no OpenMP code is among them).
lib=(core/util.c core/weight_pool.c formats/safetensors.c model/config.c text/tokenizer.c text/pretok.c text/strmap.c formats/gguf.c formats/kquant.c formats/qmatrix.c cpu/isa.c formats/fp8.c formats/numfmt.c)
objs=()
for s in "${lib[@]}"; do
    o="$out/obj/$(basename "${s%.c}").o"
    if [ ! -f "$o" ] || [ "$root/src/$s" -nt "$o" ] || [ -n "$(find "$root/src" -name '*.h' -newer "$o" | head -1)" ]; then
        "$CC" "${flags[@]}" $cjson_inc -c "$root/src/$s" -o "$o"
    fi
    objs+=("$o")
done
targets=(safetensors index gguf config tokenizer)
fail=0
for t in "${targets[@]}"; do
    "$CC" "${flags[@]}" -fsanitize=fuzzer $cjson_inc "$root/tests/fuzz/fuzz_$t.c" "${objs[@]}" \
        -lcjson $pcre_flags -lm -o "$out/fuzz_$t"
    work="$out/corpus_$t"
    rm -rf "$work"; mkdir -p "$work"
    cp "$root/tests/fuzz/corpus/$t/"* "$work/" 2>/dev/null || true
    echo "fuzz: $t for ${secs}s"
    if ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$out/fuzz_$t" -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$out/crash_${t}_" "$work" >"$out/fuzz_$t.log" 2>&1; then
        echo "fuzz: $t ok: $(grep -E 'stat::number_of_executed_units' "$out/fuzz_$t.log" | awk '{print $2}') runs, $(grep -E 'stat::new_units_added' "$out/fuzz_$t.log" | awk '{print $2}') new inputs, corpus $(ls "$work" | wc -l)"
    else
        echo "fuzz: $t FAILED (log: $out/fuzz_$t.log)"; tail -40 "$out/fuzz_$t.log"; fail=1
    fi
done
if [ "$fail" -ne 0 ]; then echo "0 passed, 1 failed"; exit 1; fi
echo "fuzz: all ${#targets[@]} targets ran ${secs}s without a crash, leak or sanitizer report"
