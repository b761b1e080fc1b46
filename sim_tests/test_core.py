"""TernaryCore (memories + sequencer + lanes) under Verilator, against numpy int64.

Every run loads random tile-major weights and activations (contract/packing.py) at random
bases through the write ports, with random idle cycles, starts at a random moment, waits for
`done`, reads every output word of the run back, and compares it bit for bit with the
integer reference (rows past R must read 0). The counters must account for every busy cycle.
"""
from __future__ import annotations

import os

import cocotb
import numpy as np
import pytest
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge
from cocotb.utils import get_sim_time

from bitlane.contract.protocol import RunArgs
from bitlane.hw.core import TernaryCore
from sim_tests import simlib
from sim_tests.coresim import CONFIGS, act_words, random_acts, random_trits, weight_words

PERIOD_NS = 10


class CoreDriver:
    """Drives the core's ports on falling clock edges (so rising edges see stable inputs)."""

    def __init__(self, dut, cfg, rng: np.random.Generator) -> None:
        self.dut, self.cfg, self.rng = dut, cfg, rng

    async def reset(self) -> None:
        dut = self.dut
        cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
        for port in ("w_wr_en", "a_wr_en", "start", "clear_counters", "o_rd_addr"):
            getattr(dut, port).value = 0
        dut.rst.value = 1
        await FallingEdge(dut.clk)
        await FallingEdge(dut.clk)
        dut.rst.value = 0

    async def idle(self, cycles: int) -> None:
        for _ in range(cycles):
            await FallingEdge(self.dut.clk)

    async def write(self, port: str, base: int, words: list[int], gap_probability: float = 0.1) -> None:
        """Write words at base.. through the w_wr_* or a_wr_* port, with random idle cycles."""
        dut = self.dut
        addr, data, en = (getattr(dut, f"{port}_wr_{s}") for s in ("addr", "data", "en"))
        for i, word in enumerate(words):
            while self.rng.random() < gap_probability:
                en.value = 0
                await FallingEdge(dut.clk)
            addr.value, data.value, en.value = base + i, word, 1
            await FallingEdge(dut.clk)
        en.value = 0

    async def run(self, w_base: int, a_base: int, o_base: int, rows: int, cols: int, n: int) -> tuple[int, int, int]:
        """One RUN; returns (busy cycles, busy_cycles increment, stall_cycles increment)."""
        dut = self.dut
        busy0, stall0 = int(dut.busy_cycles.value), int(dut.stall_cycles.value)
        # the `run` port is the RunArgs record, laid out as on the wire (least significant first)
        dut.run.value = int.from_bytes(RunArgs(w_base, a_base, o_base, rows, cols, n).pack(), "little")
        dut.start.value = 1
        await FallingEdge(dut.clk)
        t_start = get_sim_time("ns") - PERIOD_NS / 2  # the rising edge that sampled start
        dut.start.value = 0
        assert dut.busy.value == 1, "busy did not rise the cycle after start"
        if self.rng.random() < 0.3:  # a start while busy must be ignored
            dut.start.value = 1
            await FallingEdge(dut.clk)
            dut.start.value = 0
        if not dut.done.value:
            await RisingEdge(dut.done)
        t_done = get_sim_time("ns")
        await FallingEdge(dut.clk)
        assert dut.done.value == 1 and dut.busy.value == 1, "done must be high in the last busy cycle"
        await FallingEdge(dut.clk)
        assert dut.done.value == 0 and dut.busy.value == 0, "done is not a one-cycle pulse ending the run"
        await FallingEdge(dut.clk)  # the counters count one cycle late
        cycles = round((t_done - t_start) / PERIOD_NS) + 1
        return (cycles, int(dut.busy_cycles.value) - busy0, int(dut.stall_cycles.value) - stall0)

    async def read(self, base: int, count: int) -> np.ndarray:
        """Output words base..base+count-1 as [count, lanes] int64 (sign-extended int32)."""
        dut, lanes = self.dut, self.cfg.lanes
        out = np.zeros((count, lanes), dtype=np.int64)
        for i in range(count):  # address i in one cycle, its data after the next rising edge
            dut.o_rd_addr.value = base + i
            await FallingEdge(dut.clk)
            raw = dut.o_rd_data.value.to_unsigned()
            for lane in range(lanes):
                v = (raw >> (32 * lane)) & 0xFFFFFFFF
                out[i, lane] = v - (1 << 32) if v >> 31 else v
        return out


async def check_product(drv: CoreDriver, trits: np.ndarray, q: np.ndarray, *, place: str = "random") -> tuple[int, int, int]:
    """Load, run and check one product of trits [R, C] with activations q [N, C]."""
    cfg, rng = drv.cfg, drv.rng
    (rows, cols), n = trits.shape, q.shape[0]
    row_tiles, k_steps = -(-rows // cfg.lanes), -(-cols // cfg.k_per_cycle)
    w_len, a_len, o_len = row_tiles * k_steps, n * k_steps, n * row_tiles

    def base(depth: int, length: int) -> int:
        return int(rng.integers(0, depth - length + 1)) if place == "random" else 0

    w_base, a_base, o_base = base(cfg.weight_depth, w_len), base(cfg.act_depth, a_len), base(cfg.out_depth, o_len)
    await drv.write("w", w_base, weight_words(trits, cfg))
    await drv.write("a", a_base, act_words(q, cfg))
    await drv.idle(int(rng.integers(0, 4)))
    result = await drv.run(w_base, a_base, o_base, rows, cols, n)
    cycles, busy, stall = result
    assert busy == w_len * n, f"busy_cycles grew by {busy}, the run consumed {w_len * n} pairs"
    assert busy + stall == cycles, f"busy {busy} + stall {stall} != {cycles} cycles of the run"

    got = (await drv.read(o_base, o_len)).reshape(n, row_tiles * cfg.lanes)
    want = np.zeros_like(got)
    want[:, :rows] = TernaryCore.model(trits, q)
    bad = np.argwhere(got != want)
    assert not len(bad), (f"{rows}x{cols} n={n}: {len(bad)} wrong results, first at (vector, row) "
                          f"{tuple(bad[0])}: got {got[tuple(bad[0])]}, expected {want[tuple(bad[0])]}")
    return result


async def setup(dut, seed: int) -> CoreDriver:
    cfg = CONFIGS[os.environ["BITLANE_CONFIG"]]
    drv = CoreDriver(dut, cfg, np.random.default_rng(seed))
    await drv.reset()
    return drv


@cocotb.test()
async def matvec_shapes(dut) -> None:
    """Matrix-vector products of awkward shapes: 1x1, primes, one off the tile sizes."""
    drv = await setup(dut, 1)
    cfg, rng = drv.cfg, drv.rng
    L, K = cfg.lanes, cfg.k_per_cycle
    shapes = [(1, 1), (1, 2), (2, 1), (L, K), (L + 1, K + 1), (L - 1, K - 1), (3, 7), (13, 31),
              (2 * L + 3, 5 * K + 1), (37, 101), (5, 257)]
    for rows, cols in shapes:
        await check_product(drv, random_trits(rng, (rows, cols)), random_acts(rng, (1, cols)))


@cocotb.test()
async def matmul_shapes(dut) -> None:
    """Small matrix-matrix products (n_vectors activation vectors against resident weights)."""
    drv = await setup(dut, 2)
    rng = drv.rng
    for rows, cols, n in [(1, 1, 2), (7, 11, 3), (17, 29, 5), (3, 61, 8), (29, 3, 4)]:
        await check_product(drv, random_trits(rng, (rows, cols)), random_acts(rng, (n, cols)))


@cocotb.test()
async def extremes(dut) -> None:
    """All +1 / all -1 / all 0 weights against -128 / +127 at the largest K: the largest
    accumulator magnitudes of both signs."""
    drv = await setup(dut, 3)
    cfg = drv.cfg
    rows, cols = cfg.lanes + 1, cfg.max_k
    trits = np.stack([np.full(cols, (1, -1, 0)[r % 3], dtype=np.int8) for r in range(rows)])
    for x in (-128, 127):
        await check_product(drv, trits, np.full((1, cols), x, dtype=np.int8), place="zero")


@cocotb.test()
async def long_k_random(dut) -> None:
    """K up to max_k (8192) with random trits and activations."""
    drv = await setup(dut, 4)
    rng = drv.rng
    for rows, cols in [(3, drv.cfg.max_k), (drv.cfg.lanes + 2, 4099)]:
        await check_product(drv, random_trits(rng, (rows, cols)), random_acts(rng, (1, cols)))


@cocotb.test()
async def back_to_back_and_counters(dut) -> None:
    """Runs started the cycle after done, counters that accumulate over runs and clear."""
    drv = await setup(dut, 5)
    rng, cfg = drv.rng, drv.cfg
    total_busy = 0
    for _ in range(4):
        rows, cols = int(rng.integers(1, 3 * cfg.lanes)), int(rng.integers(1, 6 * cfg.k_per_cycle))
        _, busy, _ = await check_product(drv, random_trits(rng, (rows, cols)), random_acts(rng, (1, cols)))
        total_busy += busy
    assert int(dut.busy_cycles.value) == total_busy
    dut.clear_counters.value = 1
    await FallingEdge(dut.clk)
    dut.clear_counters.value = 0
    await FallingEdge(dut.clk)
    assert int(dut.busy_cycles.value) == 0 and int(dut.stall_cycles.value) == 0, "clear_counters did not clear"
    # back to back: the same resident product started again right after done
    trits, q = random_trits(rng, (2 * cfg.lanes, 3 * cfg.k_per_cycle)), random_acts(rng, (2, 3 * cfg.k_per_cycle))
    await drv.write("w", 0, weight_words(trits, cfg))
    await drv.write("a", 0, act_words(q, cfg))
    for _ in range(3):
        await drv.run(0, 0, 0, *trits.shape, 2)
    got = (await drv.read(0, 4)).reshape(2, -1)
    assert np.array_equal(got, TernaryCore.model(trits, q)), "back-to-back runs gave wrong results"


@cocotb.test()
async def utilization(dut) -> None:
    """A large product keeps the lanes busy in at least 95% of its cycles (figures are
    printed by bench/core_bench.py; this checks the no-bubble property)."""
    drv = await setup(dut, 6)
    cfg, rng = drv.cfg, drv.rng
    rows, cols = 8 * cfg.lanes, 64 * cfg.k_per_cycle
    cycles, busy, stall = await check_product(drv, random_trits(rng, (rows, cols)), random_acts(rng, (1, cols)))
    assert busy >= 0.95 * cycles, f"lanes busy in {busy} of {cycles} cycles"
    assert stall <= 16, f"{stall} stall cycles: more than the pipeline fill and drain"


# ---------------------------------------------------------------- pytest entry

@pytest.fixture(scope="module", params=list(CONFIGS))
def core_build(request):
    return request.param, simlib.build(TernaryCore(CONFIGS[request.param]), "core")


@pytest.mark.parametrize("case", ["matvec_shapes", "matmul_shapes", "extremes", "long_k_random",
                                  "back_to_back_and_counters", "utilization"])
def test_core(core_build, case: str) -> None:
    name, build_dir = core_build
    simlib.run("sim_tests.test_core", build_dir, "core", env={"BITLANE_CONFIG": name},
               testcase=case, name=f"{name}-{case}")
