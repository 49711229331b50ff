# The two commands: `make demo` runs the whole loop locally, `make test` runs the tests.
# Both create .venv and install the pinned dependencies first when needed.
PYTHON ?= python3
# Independent targets (the main venv and the tools' venvs) build side by side.
MAKEFLAGS += --jobs=3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install tools demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "mlref needs Python 3.11 (torch 2.13 CPU build); run: make PYTHON=python3.11 ...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# checkov pins clash with ours, so it lives in its own venv nested in .venv.
TOOLS := $(VENV)/tools
$(TOOLS)/bin/checkov:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet checkov==3.3.30

# KServe's storage initializer (kserve-storage) runs in its own image in a cluster, and its
# pins clash with kfp's: the cluster tests run it from its own venv, as that container.
STORAGE_INITIALIZER := $(VENV)/storage-initializer
$(STORAGE_INITIALIZER)/bin/python:
	$(PYTHON) -m venv $(STORAGE_INITIALIZER)
	$(STORAGE_INITIALIZER)/bin/python -m pip install --quiet kserve-storage==0.21.0

tools: $(TOOLS)/bin/checkov $(STORAGE_INITIALIZER)/bin/python

demo: install
	$(BIN)/mlref demo

lint: install
	$(BIN)/ruff check .

# Tests that read the wall clock (windows ending "this hour") run with it set to 00:05 and to
# 23:55 UTC (tests/at-utc.sh, libfaketime) instead of the current time: one run more of these
# only, not of the suite. The others pass every clock they use (ingestion, for one, is given
# its `now`). The two clock runs start first, in the background, each with its own servers,
# ports and temp dirs; the main run (the rest of the suite) goes on beside them on
# TEST_WORKERS pytest-xdist workers (three on two cores: many tests wait on servers and polls;
# the random order's seed is shared by all). The clock runs' output is
# printed when everything is done; any failure fails the target.
CLOCK_TESTS := tests/cluster/test_cluster_loop.py
CLOCKS := 00:05 23:55
TEST_WORKERS ?= 3

test: lint tools
	@pids=""; for clock in $(CLOCKS); do \
	  tests/at-utc.sh $$clock $(BIN)/pytest -p no:cacheprovider $(CLOCK_TESTS) \
	    >$(VENV)/clock-$$clock.log 2>&1 & pids="$$pids $$!"; \
	done; trap 'kill $$pids 2>/dev/null' INT TERM; \
	$(BIN)/pytest -n $(TEST_WORKERS) $(addprefix --ignore=,$(CLOCK_TESTS)); \
	status=$$?; for pid in $$pids; do wait $$pid || status=1; done; \
	for clock in $(CLOCKS); do echo "== clock $$clock UTC"; cat $(VENV)/clock-$$clock.log; done; \
	exit $$status

bench: install
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf .mlref .pytest_cache .ruff_cache
