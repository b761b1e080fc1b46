"""LaneArray (select muxes, carry-in adder trees, accumulators) under Verilator.

Every test streams (valid, last, weight word, activation word) items into the lanes and
compares every tile result the array shows (one per `last` item) against a Python model
of the accumulators, so a wrong product, a lost carry or a wrong latency all fail.
"""
from __future__ import annotations

import itertools
import os

import cocotb
import numpy as np
import pytest
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from bitlane.contract.config import CoreConfig
from bitlane.hw.lane import LaneArray
from sim_tests import simlib
from sim_tests.coresim import CONFIGS

# The core configurations plus the degenerate trees: one input (paired with a constant
# zero) and one pair per lane.
LANE_CONFIGS = {
    **CONFIGS,
    "k1": CoreConfig("k1", lanes=4, k_per_cycle=1, weight_depth=16, act_depth=1024, out_depth=16, max_k=1024),
    "k2": CoreConfig("k2", lanes=2, k_per_cycle=2, weight_depth=16, act_depth=512, out_depth=16, max_k=1024),
}

def config():
    return LANE_CONFIGS[os.environ["BITLANE_CONFIG"]]


def weight_word(codes: np.ndarray) -> int:
    """codes[lane, j] (0..3) -> weight word, trit (l, j) at bit 2 * (l * k + j)."""
    return sum(int(c) << (2 * i) for i, c in enumerate(codes.reshape(-1)))


def act_word(acts) -> int:
    return sum((int(x) & 0xFF) << (8 * j) for j, x in enumerate(acts))


async def stream(dut, items) -> None:
    """Drive items = [(valid, last, codes[lanes, k], acts[k])] and check every tile result."""
    cfg = config()
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.valid.value = 0
    dut.last.value = 0
    dut.rst.value = 1
    await FallingEdge(dut.clk)
    dut.rst.value = 0

    expected = LaneArray.model(items)

    seen, bits = [], cfg.acc_bits
    for valid, last, codes, acts in [*items, *[(0, 0, None, None)] * (4 + cfg.k_per_cycle.bit_length())]:
        await FallingEdge(dut.clk)
        if dut.sums_valid.value:
            raw = dut.sums.value.to_unsigned()
            lanes = [(raw >> (bits * l)) & ((1 << bits) - 1) for l in range(cfg.lanes)]
            seen.append(np.array([v - (1 << bits) if v >> (bits - 1) else v for v in lanes]))
        dut.valid.value = valid
        dut.last.value = last
        if valid:
            dut.weights.value = weight_word(codes)
            dut.acts.value = act_word(acts)
    assert len(seen) == len(expected), f"{len(seen)} tile results shown, expected {len(expected)}"
    for i, (got, want) in enumerate(zip(seen, expected)):
        assert np.array_equal(got, want), f"item {i}: lanes hold {got.tolist()}, expected {want.tolist()}"


@cocotb.test()
async def every_code_and_value(dut) -> None:
    """Each position sees every (trit code, int8 value) pair, reserved code included;
    for k <= 4 additionally every combination of codes against extreme activation words."""
    cfg = config()
    k, lanes = cfg.k_per_cycle, cfg.lanes
    items = []
    pairs = [(c, x) for c in range(4) for x in range(-128, 128)]
    for i in range(len(pairs)):
        codes = np.array([[pairs[(i + 37 * l + 101 * j) % len(pairs)][0] for j in range(k)] for l in range(lanes)])
        acts = [pairs[(i + 101 * j) % len(pairs)][1] for j in range(k)]
        # lanes use shifted pairs for their codes but share the activations: the lane's own
        # code at position j still meets every x over the sweep
        items.append((1, 1, codes, acts))
    if k <= 4:
        combos = np.array(list(itertools.product(range(4), repeat=k)))
        for acts in ([-128] * k, [127] * k, [-128, 127, -1, 1][:k], [-1] * k):
            for start in range(0, len(combos), lanes):
                codes = combos[np.arange(start, start + lanes) % len(combos)]
                items.append((1, 1, codes, acts))
    await stream(dut, items)


@cocotb.test()
async def random_accumulation(dut) -> None:
    """Random products accumulated over random run lengths with random idle cycles."""
    cfg = config()
    rng = np.random.default_rng(7)
    items = []
    for _ in range(3000):
        valid = int(rng.random() < 0.8)
        last = int(rng.random() < 0.1)
        codes = rng.integers(0, 4, size=(cfg.lanes, cfg.k_per_cycle))
        acts = rng.choice(np.array([-128, 127, -1, 0, 1, *range(-128, 128, 17)]), size=cfg.k_per_cycle)
        items.append((valid, last, codes, acts))
    items.append((1, 1, codes, acts))
    await stream(dut, items)


@cocotb.test()
async def accumulator_extremes(dut) -> None:
    """max_k columns of (-1) x (-128), (+1) x (-128) and (+1) x 127: the largest magnitudes
    the accumulator must hold exactly, both signs, plus all-zero trits."""
    cfg = config()
    steps = cfg.max_k // cfg.k_per_cycle
    k, lanes = cfg.k_per_cycle, cfg.lanes
    items = []
    for code, x in ((3, -128), (1, -128), (1, 127), (3, 127), (0, -128)):
        codes = np.full((lanes, k), code)
        items += [(1, s == steps - 1, codes, [x] * k) for s in range(steps)]
    await stream(dut, items)


# ---------------------------------------------------------------- pytest entry

@pytest.mark.parametrize("name", list(LANE_CONFIGS))
def test_lane_array(name: str) -> None:
    build_dir = simlib.build(LaneArray(LANE_CONFIGS[name]), "lanes")
    simlib.run("sim_tests.test_lane", build_dir, "lanes", env={"BITLANE_CONFIG": name}, name=f"lane-{name}")
