#!/usr/bin/env bash
# shellcheck disable=SC2317  # the check functions are called through check()
# test_install.sh BUILD_DIR SOURCE_DIR — ctest `test_install`.
#
# Installs BUILD_DIR into a temporary prefix (cmake --install --prefix), checks the installed
# files (libfrugal.so with soname libfrugal.so.0, libfrugal.a, frugal.h, frugal.pc, bin/frugal;
# no RPATH into the build tree), then builds examples/generate_greedy.c with examples/Makefile
# against the prefix through pkg-config, linked to libfrugal.so and to libfrugal.a
# (pkg-config --static), runs both on tests/fixtures/hf_export and compares their text with
# the installed `frugal generate --temperature 0`. Prints PASS/FAIL per check and
# "N passed, M failed"; exits 1 on any failure, 77 (skipped) without make or pkg-config.
#
# Environment (set by CMakeLists.txt): CMAKE, CC, PKG_CONFIG, MAKE.
set -u

build=${1:?usage: test_install.sh BUILD_DIR SOURCE_DIR}
src=${2:?usage: test_install.sh BUILD_DIR SOURCE_DIR}
build=$(cd "$build" && pwd) || exit 1
src=$(cd "$src" && pwd) || exit 1

usable() { [ -n "${1:-}" ] && [ "${1%-NOTFOUND}" = "$1" ] && command -v "$1" >/dev/null 2>&1; }
CMAKE=${CMAKE:-cmake}
CC=${CC:-cc}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}
MAKE=${MAKE:-make}
usable "$MAKE" || MAKE="make"
for tool in "$CMAKE" "$CC" "$PKG_CONFIG" "$MAKE"; do
    usable "$tool" || { echo "SKIP: '$tool' not found"; exit 77; }
done
# run from ctest under `make test`: do not hand the outer make's jobserver to ours
unset MAKEFLAGS MFLAGS MAKELEVEL

MODEL=$src/tests/fixtures/hf_export   # tiny DeepSeek-V3 model with tokenizer.json
PROMPT="In the beginning God created"
NTOK=24

tmp=$(mktemp -d "${TMPDIR:-/tmp}/frugal-install.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
logs=$tmp/logs
mkdir -p "$logs"

pass=0
fail=0
ok() { echo "PASS: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
# check DESCRIPTION COMMAND...: PASS when COMMAND succeeds; otherwise FAIL and its output
check() {
    local desc=$1
    shift
    if "$@" >"$logs/check" 2>&1; then
        ok "$desc"
    else
        bad "$desc"
        sed 's/^/    /' "$logs/check"
    fi
}
finish() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ] && exit 0
    exit 1
}

# ---- install
if "$CMAKE" --install "$build" --prefix "$prefix" >"$logs/install" 2>&1; then
    ok "cmake --install $build --prefix \$tmp/prefix"
else
    bad "cmake --install $build --prefix \$tmp/prefix"
    sed 's/^/    /' "$logs/install"
    finish
fi

# libdir as GNUInstallDirs chose it (lib, lib64, lib/<triplet>): where frugal.pc went
pc=$(find "$prefix" -path '*/pkgconfig/frugal.pc' | head -n 1)
if [ -z "$pc" ]; then
    bad "frugal.pc installed (lib*/pkgconfig/frugal.pc)"
    finish
fi
libdir=$(dirname "$(dirname "$pc")")
ok "frugal.pc installed (${pc#"$prefix"/})"

check "libfrugal.so.0 is installed" test -e "$libdir/libfrugal.so.0"
check "libfrugal.so is a symlink (development link)" test -L "$libdir/libfrugal.so"
check "libfrugal.so resolves to the same file as libfrugal.so.0" \
    test "$libdir/libfrugal.so" -ef "$libdir/libfrugal.so.0"
check "libfrugal.a is installed" test -f "$libdir/libfrugal.a"
check "include/frugal.h is installed" test -f "$prefix/include/frugal.h"
check "bin/frugal is installed" test -x "$prefix/bin/frugal"

# dynamic section of an ELF file (readelf, else objdump)
dynamic() {
    if command -v readelf >/dev/null 2>&1; then readelf -d "$1"; else objdump -p "$1"; fi
}
soname_ok() { dynamic "$libdir/libfrugal.so" | grep SONAME | grep -Eq 'libfrugal\.so\.0(\]|[[:space:]]*$)'; }
check "SONAME of libfrugal.so is libfrugal.so.0" soname_ok
no_build_rpath() {
    local f
    for f in "$libdir/libfrugal.so.0" "$prefix/bin/frugal"; do
        if dynamic "$f" | grep -E 'RPATH|RUNPATH' | grep -F "$build"; then
            echo "$f has an RPATH/RUNPATH into the build tree"
            return 1
        fi
    done
}
check "no RPATH/RUNPATH into the build tree (libfrugal.so, bin/frugal)" no_build_rpath

# ---- pkg-config
export PKG_CONFIG_PATH="$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
check "pkg-config finds frugal" "$PKG_CONFIG" --exists --print-errors frugal
version_ok() {
    local pcv hv
    pcv=$("$PKG_CONFIG" --modversion frugal) || return 1
    hv=$(sed -n 's/^#define FRUGAL_VERSION "\(.*\)"$/\1/p' "$prefix/include/frugal.h")
    echo "frugal.pc Version '$pcv', frugal.h FRUGAL_VERSION '$hv'"
    [ -n "$pcv" ] && [ "$pcv" = "$hv" ] && [ -e "$libdir/libfrugal.so.$pcv" ]
}
check "Version in frugal.pc = FRUGAL_VERSION = libfrugal.so.VERSION" version_ok
paths_ok() {
    local p c l
    p=$("$PKG_CONFIG" --variable=prefix frugal)
    c=$("$PKG_CONFIG" --cflags frugal)
    l=$("$PKG_CONFIG" --libs frugal)
    echo "prefix=$p cflags=$c libs=$l"
    [ "$p" = "$prefix" ] && [[ " $c " == *" -I$prefix/include "* ]] && [[ " $l " == *" -L$libdir "* ]] &&
        [[ " $l " == *" -lfrugal "* ]]
}
check "frugal.pc has the install prefix, -I\$prefix/include, -L\$libdir -lfrugal" paths_ok
check "pkg-config --static --libs frugal resolves" "$PKG_CONFIG" --static --libs --print-errors frugal

# the header alone, strict C99 (it must need nothing but the C library)
printf '#include <frugal.h>\nint main(void) { return fr_last_error() == 0; }\n' >"$tmp/header_only.c"
header_ok() {
    # shellcheck disable=SC2046
    "$CC" -std=c99 -pedantic -Wall -Wextra -Werror $("$PKG_CONFIG" --cflags frugal) -c "$tmp/header_only.c" \
        -o "$tmp/header_only.o"
}
check "frugal.h compiles on its own (-std=c99 -pedantic -Wall -Wextra -Werror)" header_ok

# ---- the example, built out of tree with examples/Makefile
exdir=$tmp/example
build_example() {
    "$MAKE" -C "$src/examples" BUILDDIR="$exdir" CC="$CC" CFLAGS="-O2 -Wall -Wextra -Werror" \
        PKG_CONFIG="$PKG_CONFIG" "$@"
}
check "examples/Makefile builds generate_greedy (libfrugal.so; -Wall -Wextra -Werror)" build_example all
check "examples/Makefile builds generate_greedy_static (libfrugal.a, pkg-config --static)" build_example static
needs_shared() { dynamic "$exdir/generate_greedy" | grep NEEDED | grep -Eq 'libfrugal\.so\.0(\]|[[:space:]]*$)'; }
check "generate_greedy needs libfrugal.so.0" needs_shared
static_ok() {
    if dynamic "$exdir/generate_greedy_static" | grep NEEDED | grep 'libfrugal'; then
        echo "generate_greedy_static still needs the shared library"
        return 1
    fi
}
check "generate_greedy_static does not need libfrugal.so" static_ok

# ---- run: the example (shared and static) against the installed `frugal generate`
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
run_cli() {
    "$prefix/bin/frugal" generate --model "$MODEL" --prompt "$PROMPT" --max-tokens "$NTOK" --temperature 0 \
        >"$tmp/cli.txt" 2>"$logs/cli.err" || { cat "$logs/cli.err"; return 1; }
    # the prompt, then generated text
    [ "$(wc -c <"$tmp/cli.txt")" -gt "$(printf '%s\n' "$PROMPT" | wc -c)" ] ||
        { echo "no text generated:"; cat "$tmp/cli.txt"; return 1; }
}
check "installed frugal generate --temperature 0 runs" run_cli
echo "    frugal generate: $(head -c 300 "$tmp/cli.txt" | tr -c '[:print:]' '?')"
run_example() { # NAME: run it, compare with frugal generate
    local exe=$exdir/$1
    env LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$exe" "$MODEL" "$PROMPT" "$NTOK" \
        >"$tmp/$1.txt" 2>"$logs/$1.err" || { echo "$1 exited $?:"; cat "$logs/$1.err"; return 1; }
    cmp "$tmp/cli.txt" "$tmp/$1.txt" || {
        echo "frugal generate:"; cat "$tmp/cli.txt"; echo "$1:"; cat "$tmp/$1.txt"; return 1
    }
}
check "generate_greedy prints the same text as frugal generate" run_example generate_greedy
check "generate_greedy_static prints the same text as frugal generate" run_example generate_greedy_static
static_alone() { # without LD_LIBRARY_PATH
    env -u LD_LIBRARY_PATH "$exdir/generate_greedy_static" "$MODEL" "$PROMPT" 4 >/dev/null
}
check "generate_greedy_static runs without LD_LIBRARY_PATH" static_alone
error_ok() { # a missing model: exit status 1 and the library's message
    local rc=0
    env LD_LIBRARY_PATH="$libdir" "$exdir/generate_greedy" "$tmp/no-such-model" "x" 2 >/dev/null 2>"$logs/err.txt" || rc=$?
    cat "$logs/err.txt"
    [ "$rc" -eq 1 ] && grep -q '^generate_greedy: cannot load the model: .' "$logs/err.txt"
}
check "generate_greedy reports fr_last_error() and exits 1 on a missing model" error_ok
check "installed frugal --help runs" sh -c "'$prefix/bin/frugal' --help | grep -qi usage"

finish
