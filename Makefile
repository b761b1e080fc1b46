# Two commands are all a user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export TORCHDYNAMO_DISABLE := 1

.PHONY: demo test test-fast sim-test large-check hw-check formal setup clean

setup: $(STAMP)

# The venv is rebuilt whenever pyproject.toml changes.  torch==2.13.0 resolves
# to the CPU wheel on these machines; never leave torch unpinned.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m bitlane.demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests sim_tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

sim-test: $(STAMP)
	$(BIN)/python -m pytest sim_tests

# Opt-in, about 10 minutes (plus builds): the SDRAM-sized models (26M h512-english, issue 13's random 18M)
# generate the integer reference's tokens on sim://ulx3s-large, the ULX3S's gateware with an engine grown
# for them, and h128 its whole 256-token context on sim://ulx3s (the KV cache in SDRAM).
large-check: $(STAMP)
	BITLANE_LARGE=1 $(BIN)/python -m pytest -v -s sim_tests/test_decoder_sdram_sim.py -k "ulx3s_large or full_context"

# The slow hardware job (10-35 min on 2 cores): both bitstreams built with the open
# toolchain and checked for timing, and the iCEBreaker gate-level netlist simulated
# against the RTL.  Kept out of `make test` to hold the suite near 10 minutes.
hw-check: $(STAMP)
	BITLANE_HW_BUILD=1 $(BIN)/python -m pytest -v sim_tests/test_board_build.py sim_tests/test_gatelevel.py

# Every formal property (docs/formal.md), one line each; MUTATE=1 plants each property's
# one-line bug instead and checks that the property catches it.
formal: $(STAMP)
	$(BIN)/python -m formal $(if $(MUTATE),--mutate)

clean:
	rm -rf $(VENV) build sim_build .pytest_cache
