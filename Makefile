# Every target works on a fresh machine: `install` builds .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test lint bench chaos clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev,embedded]'
	touch $@

demo: install
	$(VENV)/bin/relay demo

test: install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check relay tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy bench

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The full chaos run (tests/e2e/chaos.py); CHAOS_RUNS=3 runs it three times in a row,
# CAPTURE=poll or CAPTURE=wal in that capture mode.
CHAOS_RUNS ?= 1
CAPTURE ?= notify
chaos: install
	for seed in $$(seq 1 $(CHAOS_RUNS)); do $(PY) -m tests.e2e.chaos --seed $$seed --capture $(CAPTURE) || exit 1; done
