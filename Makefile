# The two commands of the quick start: `make demo` and `make test`.
# Both create .venv when missing and reinstall only when pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_DIR ?= demo-work
BENCHES ?= $(wildcard benchmarks/bench_*.py)

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamp files: reinstall only when the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[report]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/brcatool demo --workdir $(DEMO_DIR)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check brcatool tests benchmarks

# Every benchmark, then each target line again (ratios over interleaved rounds, with the load average).
bench: $(VENV)/.installed
	@mkdir -p bench-work && rm -f bench-work/bench.log
	@for f in $(BENCHES); do \
		echo "== $$f" | tee -a bench-work/bench.log; \
		{ $(BIN)/python -u $$f || echo "FAILED: $$f"; } 2>&1 | tee -a bench-work/bench.log; \
	done
	@echo "== targets (from bench-work/bench.log)"; grep -iE 'target|FAILED' bench-work/bench.log
	@! grep -q '^FAILED' bench-work/bench.log

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
