# Two commands are all a user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export TORCHDYNAMO_DISABLE := 1

.PHONY: demo test test-fast sim-test setup clean

setup: $(STAMP)

# The venv is rebuilt whenever pyproject.toml changes.  torch==2.13.0 resolves
# to the CPU wheel on these machines; never leave torch unpinned.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sw.demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests sim_tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

sim-test: $(STAMP)
	$(BIN)/python -m pytest sim_tests

clean:
	rm -rf $(VENV) build sim_build .pytest_cache
