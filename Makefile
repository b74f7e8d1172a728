# PromptIntern suite. `make setup` installs everything (system bubblewrap + a .venv); see README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps venv test test-fast integration lint bench reproduce clean

setup: system-deps venv

system-deps:
	@command -v bwrap >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq bubblewrap; }
	@python3 -c 'import ensurepip' 2>/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv; }
	@{ command -v cmake && command -v g++; } >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq build-essential cmake; }
	@# headless Chromium: the leaderboard page test (tests/test_leaderboard_browser.py)
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

venv:
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# [server]: llama-cpp-python compiles llama.cpp (~10-20 min on 2 cores the first time; pip caches the wheel).
	# GGML_NATIVE=OFF (AVX2 kernels): pip caches that wheel by the sdist alone, so a native build could reach a CPU
	# without its instructions. A native AVX-512 build is no faster for the embedded Q4_1 GGUF (one thread, Zen 4:
	# ~170 tok/s of prompt and ~75 tok/s of decoding with either build); Q8_0 would be ~2x / 1.35x faster, but it
	# changes the served weights.
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
		$(PY) -m pip install -q -e '.[dev,server]'
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt

test:
	$(BIN)/pytest -q -m "integration or not integration"

test-fast:
	$(BIN)/pytest -q

integration:
	$(BIN)/pytest -q -m integration

lint:
	$(BIN)/ruff check .

bench:
	@mkdir -p results/benchmarks
	$(BIN)/pytest benchmarks --benchmark-only --benchmark-json=results/benchmarks/latest.json

# Main job: the sandbox self test, then every experiment of the paper's Tables 1-8 that fits the profile
# (benchmarks/tables/reproduce.yaml), recorded in $PROMPTINTERN_HOME/results.sqlite and rendered to
# results/$(PROFILE)/ (tables .md/.csv/.json, plots). Every experiment is cached by a hash of its settings, so a
# rerun only does what is missing.
PROFILE ?= cpu
TABLES ?= 1,2,3,4,5,6,7,8
reproduce:
	$(BIN)/promptintern sandbox selftest
	OMP_WAIT_POLICY=PASSIVE $(BIN)/promptintern reproduce --profile $(PROFILE) --tables $(TABLES)

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
