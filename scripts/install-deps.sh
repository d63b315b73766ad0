#!/usr/bin/env bash
# install-deps.sh — install the Debian packages frugal needs to build and test.
#
#   scripts/install-deps.sh           install whatever is missing (apt-get; sudo if not root)
#   scripts/install-deps.sh --check   exit 0 if everything is present, 1 otherwise (lists what is missing)
#
# Idempotent: packages already installed are left alone and apt-get is not called at all
# when nothing is missing. OpenMP (libgomp) comes with gcc. clang (with its libFuzzer
# runtime) runs the parsers' fuzz targets in the test suite (tests/fuzz/run.sh).
# The CPU backend runs its matrix products through oneDNN (libdnnl-dev; measured faster than
# our own kernels, docs/performance.md); multi-process training runs on OpenMPI (openmpi-bin,
# libopenmpi-dev: src/comm/, tests under mpirun). `frugal serve` links libmicrohttpd; its tests use
# curl, python3 (tests/test_serve.py; the openai client itself comes from
# `make serve-test-deps`, a venv, never from apt) and chromium (headless, for the chat page).
# `make fixtures` uses Python (tools/requirements.txt).
# bible-kjv-text and bible-kjv give the default corpus (scripts/corpus-kjv.sh); the dict-*,
# fortunes, python3-doc, perl-doc and manpages packages (rendered by man-db) give the larger
# mixed corpus of scripts/corpus-mix.sh, with the Python stdlib and libc/kernel headers.
set -euo pipefail

PACKAGES=(build-essential cmake pkg-config libcjson-dev libpcre2-dev libmicrohttpd-dev libdnnl-dev openmpi-bin libopenmpi-dev curl chromium python3 python3-venv bible-kjv-text bible-kjv dict-gcide dict-wn dict-foldoc dict-jargon dict-devil fortunes fortunes-min python3-doc perl-doc manpages manpages-dev man-db clang libclang-rt-14-dev)

usage() {
    cat <<USAGE
usage: $0 [--check]

Installs the Debian packages frugal needs to build and run its tests:
  ${PACKAGES[*]}

  --check    only report: exit 0 if all are installed, 1 (listing the missing ones) otherwise
  -h, --help show this help
USAGE
}

check_only=0
for arg in "$@"; do
    case "$arg" in
        --check) check_only=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install-deps: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
    esac
done

is_installed() {
    # dpkg -s also succeeds for packages removed but not purged: require "install ok installed".
    local info
    info=$(dpkg -s "$1" 2>/dev/null || true)
    printf '%s\n' "$info" | grep -qx 'Status: install ok installed'

}

if ! command -v dpkg >/dev/null 2>&1; then
    echo "install-deps: dpkg not found; this script supports Debian/Ubuntu only." >&2
    echo "install-deps: install by hand: a C11 compiler with OpenMP (gcc), make, cmake >= 3.18, pkg-config, cJSON headers." >&2
    exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
    if ! is_installed "$p"; then missing+=("$p"); fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-deps: all build dependencies present (${PACKAGES[*]})"
    exit 0
fi

if [ "$check_only" -eq 1 ]; then
    echo "install-deps: missing packages: ${missing[*]}"
    echo "install-deps: run scripts/install-deps.sh to install them"
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-deps: not root and sudo is not available; as root run:" >&2
        echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
${SUDO[@]+"${SUDO[@]}"} apt-get update
${SUDO[@]+"${SUDO[@]}"} apt-get install -y --no-install-recommends "${missing[@]}"

still=()
for p in "${missing[@]}"; do
    if ! is_installed "$p"; then still+=("$p"); fi
done
if [ "${#still[@]}" -ne 0 ]; then
    echo "install-deps: still missing after apt-get: ${still[*]}" >&2
    exit 1
fi
echo "install-deps: done"
