"""Board tops: PLL settings against the vendor-flow tools, and (opt-in) the full bitstream builds.

The bitstream builds run the whole open flow (yosys, nextpnr, icepack/ecppack) and take
from half a minute (iCEBreaker) to about 15 minutes (ULX3S) on a 2-core machine, so they
run only with BITLANE_HW_BUILD=1 (`make hw-build`, or the CI job that sets it).
"""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from bitlane.hw.boards import BOARDS, BoardError, board, ecp5_pll, ecp5_pll_clocks, ice40_pll
from bitlane.hw.build import build_board, yowasp_environment
from bitlane.hw.uart import UartConfigError, baud_divisor


def tool(name: str) -> str:
    bin_dir = os.path.dirname(yowasp_environment()["YOSYS"])
    return os.path.join(bin_dir, name)


@pytest.mark.parametrize("out_mhz", [18, 24, 36, 48])
def test_ice40_pll_matches_icepll(out_mhz: int) -> None:
    text = subprocess.run([tool("yowasp-icepll"), "-i", "12", "-o", str(out_mhz)],
                          capture_output=True, text=True, check=True).stdout
    want = {k: int(v) for k, v in re.findall(r"^(DIVR|DIVF|DIVQ|FILTER_RANGE):\s+(\d+)", text, re.M)}
    got = ice40_pll(12_000_000, out_mhz * 1_000_000)
    assert (got.divr, got.divf, got.divq, got.filter_range) == (
        want["DIVR"], want["DIVF"], want["DIVQ"], want["FILTER_RANGE"])


@pytest.mark.parametrize("out_mhz", [30, 45, 50])
def test_ecp5_pll_matches_ecppll(out_mhz: int, tmp_path) -> None:
    text = subprocess.run([tool("yowasp-ecppll"), "-i", "25", "-o", str(out_mhz), "-f", "pll.v"],
                          capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    want = [int(re.search(rf"{label}:\s+(\d+)", text).group(1))
            for label in ("Refclk divisor", "Feedback divisor", "clkout0 divisor")]
    got = ecp5_pll(25_000_000, out_mhz * 1_000_000)
    assert [got.clki_div, got.clkfb_div, got.clkop_div] == want


def test_ecp5_pll_clocks_match_ecppll(tmp_path) -> None:
    """The ULX3S's three clocks (SDRAM controller, SDRAM chip board_capture's phase behind, core): every
    divider and phase parameter as ecppll writes them, with the core at 30 MHz. ecppll takes the VCO
    nearest 600 MHz and rounds the other outputs: for the shipped core clock of 45 MHz it makes 46.15 MHz
    (VCO 600 / 13), where ecp5_pll_clocks takes the exact 450 MHz VCO; so the shipped clocks are checked for
    exactness, and the parameters' conventions against ecppll where both are exact."""
    from bitlane.hw.sdram_port import board_capture
    spec = board("ulx3s")
    sdram_hz, core_hz = spec.core.sdram_clock_hz, 30_000_000
    phase = board_capture(sdram_hz).phase_deg
    shipped = ecp5_pll_clocks(spec.osc_hz, [(sdram_hz, 0), (sdram_hz, phase), (spec.core.clock_hz, 0)])
    vco_hz = spec.osc_hz * shipped.clkfb_div // shipped.clki_div * shipped.outputs[0].div
    assert [vco_hz / out.div for out in shipped.outputs] == [sdram_hz, sdram_hz, spec.core.clock_hz]
    subprocess.run([tool("yowasp-ecppll"), "-i", str(spec.osc_hz / 1e6), "-o", str(sdram_hz / 1e6),
                    "--clkout1", str(sdram_hz / 1e6), "--phase1", str(phase), "--clkout2", str(core_hz / 1e6),
                    "-f", "pll.v"], capture_output=True, text=True, check=True, cwd=tmp_path)
    want = {k: int(v) for k, v in re.findall(r"\.(\w+)\((\d+)\)", (tmp_path / "pll.v").read_text())}
    clocks = ecp5_pll_clocks(spec.osc_hz, [(sdram_hz, 0), (sdram_hz, phase), (core_hz, 0)])
    got = {"CLKI_DIV": clocks.clki_div, "CLKFB_DIV": clocks.clkfb_div}
    for name, out in zip(("CLKOP", "CLKOS", "CLKOS2"), clocks.outputs):
        got.update({f"{name}_DIV": out.div, f"{name}_CPHASE": out.cphase, f"{name}_FPHASE": out.fphase})
    assert got == want
    with pytest.raises(BoardError, match="one VCO"):
        ecp5_pll_clocks(25_000_000, [(100_000_000, 0), (33_000_000, 0)])


@pytest.mark.parametrize("sdram_mhz, phase_deg, read_delay", [(50, 90.0, 0), (100, 202.5, 1)])
def test_sdram_capture_points_are_docs_sdram_md(sdram_mhz: int, phase_deg: float, read_delay: int) -> None:
    """The SDRAM clock's phase and the read delay come from the window budget of docs/sdram.md: its two
    operating points, each phase inside both windows of its read delay and a whole EHXPLLL step."""
    from bitlane.hw.sdram_port import CaptureBudget, board_capture
    capture = board_capture(sdram_mhz * 1_000_000)
    assert (capture.phase_deg, capture.read_delay) == (phase_deg, read_delay)
    period = 1e3 / sdram_mhz
    low, high = CaptureBudget().window(period, read_delay)
    assert low <= phase_deg / 360 * period <= high
    ecp5_pll_clocks(25_000_000, [(sdram_mhz * 1_000_000, 0), (sdram_mhz * 1_000_000, phase_deg)])


def test_impossible_clocks_and_bauds_are_refused() -> None:
    with pytest.raises(BoardError, match="cannot make exactly"):
        ecp5_pll(25_000_000, 48_000_000)
    with pytest.raises(UartConfigError, match="2.0% off"):
        baud_divisor(50_000_000, 3_000_000)
    with pytest.raises(UartConfigError, match="at least 4"):
        baud_divisor(18_000_000, 12_000_000)
    with pytest.raises(BoardError, match="USB-UART bridge"):
        board("ulx3s").with_baud(12_000_000)
    with pytest.raises(BoardError, match="unknown board"):
        board("de0nano")


@pytest.mark.skipif(os.environ.get("BITLANE_HW_BUILD") != "1", reason="set BITLANE_HW_BUILD=1 (minutes per board)")
@pytest.mark.parametrize("name", sorted(BOARDS))
def test_bitstream_builds_and_meets_timing(name: str, tmp_path) -> None:
    report = build_board(board(name), tmp_path)
    assert report.bitstream.is_file() and report.bitstream.stat().st_size > 0
    assert report.timing_met, report.markdown()
    assert report.utilization and all(used <= available for used, available in report.utilization.values())


@pytest.mark.skipif(os.environ.get("BITLANE_HW_BUILD") != "1", reason="set BITLANE_HW_BUILD=1 (minutes per board)")
def test_sweep_places_and_routes_every_seed(tmp_path) -> None:
    """`bitlane hw sweep` on the real flow: the iCEBreaker top synthesized once, then routed from two seeds at
    once, each meeting its 18 MHz (tests/test_hw_sweep.py checks the verdicts with a stand-in nextpnr)."""
    from bitlane.hw.sweep import sweep_board
    results = sweep_board(board("icebreaker"), [1, 2], tmp_path, jobs=2, timeout_s=600)
    assert [r.seed for r in results] == [1, 2]
    assert all(r.timing_met and not r.stopped for r in results), [r.verdict() for r in results]
    seed2 = tmp_path / "seed2"
    assert (seed2 / "report.json").is_file() and not (seed2 / "bitlane_icebreaker.bin").exists()  # no bitstream
