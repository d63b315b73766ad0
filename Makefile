# Top-level convenience targets; the real build is CMake (CMakeLists.txt).
#
#   make            install missing Debian packages, then build Release into build/
#   make demo       the main job: install, build, prepare the KJV corpus, train ~10 min, plot, MoE vs
#                   dense on the Debian corpus (~5 min), cost
#   make test       build Release and run its tests, then the ASan/UBSan build (build-asan/) and its tests
#   make soak       the fault tests at full length (kill -9 / signals at random moments, full disk, slow
#                   HTTP clients, drain); a short version of each runs in make test
#   make install    build Release, install into PREFIX (default /usr/local; make install PREFIX=DIR):
#                   bin/frugal, lib/libfrugal.so + .a, include/frugal.h, lib/pkgconfig/frugal.pc
#   make serve-test-deps  pip-install the openai client into build/venv-serve (network) for the serve tests
#   make fixtures   regenerate tests/fixtures with Python + transformers (needs network; tests do not)
#   make bench      build Release and run bench_peak and bench_model
#   make clean      remove build/ and build-asan/

NPROC      := $(shell nproc 2>/dev/null || echo 4)
BUILD      := build
BUILD_ASAN := build-asan
CMAKE      ?= cmake
CTEST      ?= ctest
PYTHON     ?= python3
PREFIX     ?= /usr/local

.PHONY: demo all deps build install soak test test-release test-asan asan fixtures bench clean help serve-test-deps

all: build

demo: build
	scripts/demo.sh

help:
	@sed -n '3,13p' Makefile | sed 's/^# \{0,1\}//'

deps:
	scripts/install-deps.sh --check || scripts/install-deps.sh

build: deps
	$(CMAKE) -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	$(CMAKE) --build $(BUILD) -j$(NPROC)

# cmake --install takes the prefix at install time (frugal.pc is written then); DESTDIR=...
# (staged installs) is honoured by cmake --install.
install: build
	$(CMAKE) --install $(BUILD) --prefix $(abspath $(PREFIX))

test: test-release test-asan

# Full-length fault tests (tests/soak.sh, test_signals: 50 SIGINT + 50 SIGTERM, test_serve,
# test_run_folder) on the Release build; prints each case's count.
soak: build
	FRUGAL_SOAK=1 tests/soak.sh $(BUILD)/frugal
	FRUGAL_SOAK=1 $(CTEST) --test-dir $(BUILD) --output-on-failure -R '^(test_signals|test_serve|test_run_folder)$$'

# The openai-client serve test needs the openai package in a venv; installing it is tried
# (PyPI) but a machine without network still runs every other test (that one is skipped).
test-release: build
	-@$(MAKE) --no-print-directory serve-test-deps >/dev/null 2>&1 || echo "make test: openai client not installed (no network?): test_serve_py will be skipped"
	$(CTEST) --test-dir $(BUILD) --output-on-failure

asan: deps
	$(CMAKE) -S . -B $(BUILD_ASAN) -DFRUGAL_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug \
		-DCMAKE_C_FLAGS_DEBUG="-O1 -g"
	$(CMAKE) --build $(BUILD_ASAN) -j$(NPROC)

# Runs after the Release tests (test-release is a prerequisite so `make -j test` keeps the order).
test-asan: test-release asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
		$(CTEST) --test-dir $(BUILD_ASAN) --output-on-failure

# The openai Python client for tests/test_serve.py (test_serve_py finds build/venv-serve).
serve-test-deps:
	test -x $(BUILD)/venv-serve/bin/python || $(PYTHON) -m venv $(BUILD)/venv-serve
	$(BUILD)/venv-serve/bin/pip install -q -r tools/requirements-serve.txt

fixtures:
	$(PYTHON) -m pip install -q -r tools/requirements.txt
	$(PYTHON) tools/make_fixtures.py --out tests/fixtures
	$(PYTHON) tools/make_generate_fixture.py --out tests/fixtures/generate
	$(PYTHON) tools/make_peft_fixture.py --out tests/fixtures/peft
	$(PYTHON) tools/make_kd_fixture.py --out tests/fixtures/kd
	$(CMAKE) -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release && $(CMAKE) --build $(BUILD) -j$(NPROC) --target test_tokenizer && $(PYTHON) tools/make_tokenizer_fixtures.py --out tests/fixtures/tokenizer --test-bin $(BUILD)/test_tokenizer
	$(CMAKE) --build $(BUILD) -j$(NPROC) --target test_interop && $(PYTHON) tools/make_interop_fixtures.py --out tests/fixtures --test-bin $(BUILD)/test_interop

bench: build
	./$(BUILD)/bench_peak
	./$(BUILD)/bench_model

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)

# Default training corpus (King James Bible, one chapter per JSONL line) -> data/kjv/kjv.jsonl
.PHONY: corpus
corpus:
	scripts/corpus-kjv.sh data/kjv
