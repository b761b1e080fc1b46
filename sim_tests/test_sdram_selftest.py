"""The ULX3S SDRAM self-test's logic (hw/sdram_selftest.py) on the checking SDRAM model.

The self-test runs as on the board (100 MHz, `read_delay` = 1 + 2 for the IO registers, the
model delaying read words the same 3 cycles) over a 4096-word region: passes complete with
no error, and a word corrupted in the model between a pass's write and its read is reported.
"""
from __future__ import annotations

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge, Timer

from bitlane.hw.sdram_selftest import CLOCK_HZ, IO_REGISTER_DELAY, PHASE_READ_DELAY, SdramSelfTest
from sim_tests import simlib
from sim_tests.sdram_model import SdramModel, attach
from sim_tests.test_sdram import split

REGION_WORDS = 4096
READ_DELAY = PHASE_READ_DELAY + IO_REGISTER_DELAY


async def wait_passes(dut, passes: int, limit: int) -> None:
    for _ in range(limit):
        await FallingEdge(dut.clk)
        if int(dut.passes.value) >= passes:
            return
    raise AssertionError(f"{passes} passes not done in {limit} cycles (passes = {int(dut.passes.value)})")


@cocotb.test()
async def passes_and_catches_a_corrupted_word(dut) -> None:
    period_ns = 1e9 / CLOCK_HZ
    Clock(dut.clk, period_ns, unit="ns").start()
    dut.rst.value = 1
    await RisingEdge(dut.clk)
    model = SdramModel(CLOCK_HZ)
    cocotb.start_soon(attach(dut, model, read_delay=READ_DELAY))
    await Timer(3 * period_ns, unit="ns")
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    pass_cycles = 3 * REGION_WORDS
    await wait_passes(dut, 2, 25_000 + 2 * pass_cycles)
    assert not dut.error.value, "the self-test reported a mismatch on a healthy SDRAM"
    assert len(model.mem) == REGION_WORDS

    # In pass 3, once its read has started, corrupt the region's last word in the SDRAM.
    reads_before = model.counts["READ"]
    while model.counts["READ"] == reads_before:
        await FallingEdge(dut.clk)
    model.mem[split(REGION_WORDS - 1)] ^= 0x0100
    await wait_passes(dut, 3, pass_cycles)
    assert dut.error.value, "a corrupted word went unnoticed"


def test_sdram_selftest() -> None:
    build_dir = simlib.build(SdramSelfTest(CLOCK_HZ, read_delay=READ_DELAY, region_words=REGION_WORDS),
                             "sdram_selftest")
    simlib.run("sim_tests.test_sdram_selftest", build_dir, "sdram_selftest", name="sdram-selftest")
