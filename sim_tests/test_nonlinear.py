"""The nonlinear units (hw/nonlinear.py) against the integer reference (bitlane.golden.integer).

Each unit's `model()` is compared with the reference function over the unit's whole input domain
(no simulator). Then all units, built once under Verilator side by side in one `simlib.UnitBank`, take
their whole domains through their streams: every m of recip and rsqrt, every exp2 argument below
2 * EXP_SAT, every phase index of the sine table, random and extreme RoPE positions and
frequencies, every x < 2^16 and every bit length of rsqrt_factor's uint48, every int8 exponent of
the sigmoid against extreme and random x, and every sigmoid table index. Inputs come with random
gaps and outputs meet random backpressure; every result is compared with the reference integer for
integer, a result held back by backpressure must not change, and an unstalled run checks each
unit's latency and throughput against its docstring.
"""
import os
import random
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

from bitlane.golden import integer as gi
from bitlane.hw.nonlinear import (
    EXP2_ARG_BITS, SIG_INDEX_BITS, SINE_PHASE_BITS, UNITS, Exp2Neg, Recip16, RopePhase, Rsqrt16, RsqrtFactor,
    SigmoidQ15, SinCos,
)
from sim_tests import simlib

TOPLEVEL = "nonlinear"
MANT = gi.MANT_BITS
PHASE_MASK = (1 << gi.PHASE_BITS) - 1


# ---------------------------------------------------------------- the domains and the reference

def rope_cases(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random (position, omega) pairs plus every pair of extreme positions and omegas, including
    the shipped models' real frequencies."""
    edges_pos = np.array([0, 1, 2, 255, 256, (1 << MANT) - 2, (1 << MANT) - 1])
    edges_omega = np.array([0, 1, (1 << MANT) - 1, 1 << MANT, PHASE_MASK - (1 << MANT) + 1, PHASE_MASK - 1,
                            PHASE_MASK, *gi.rope_omega(64, 10000.0)])
    grid_pos, grid_omega = (a.reshape(-1) for a in np.meshgrid(edges_pos, edges_omega))
    pos = np.concatenate([grid_pos, rng.integers(0, 1 << MANT, 20000)])
    omega = np.concatenate([grid_omega, rng.integers(0, 1 << gi.PHASE_BITS, 20000)])
    return pos, omega


def phases(rng: np.random.Generator) -> np.ndarray:
    """Every phase index (top 12 bits) with its lowest, highest and two random lower parts."""
    top = np.arange(1 << SINE_PHASE_BITS, dtype=np.int64)
    low_bits = gi.PHASE_BITS - SINE_PHASE_BITS
    lows = [np.zeros_like(top), np.full_like(top, (1 << low_bits) - 1),
            *rng.integers(0, 1 << low_bits, (2, len(top)))]
    return np.concatenate([(top << low_bits) | low for low in lows])


def wide_sums(rng: np.random.Generator) -> np.ndarray:
    """Every x in [1, 2^16) (the left shifts), and for every bit length up to WIDE_BITS its smallest and
    largest value and random ones."""
    lengths = np.repeat(np.arange(1, gi.WIDE_BITS + 1), 200)
    top = np.int64(1) << (lengths - 1)
    inside = top | (rng.integers(0, 1 << 62, len(top)) & (top - 1))
    return np.concatenate([np.arange(1, 1 << MANT), top, 2 * top - 1, inside])


def sigmoid_cases(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Every int8 exponent against 0, +-1, the int32 extremes, powers of two and their neighbours and
    random values; and every index of the table and past its end (e = -SIG_FRAC, |x| <= 2^11)."""
    powers = np.int64(1) << np.arange(gi.ACC_BITS - 1)
    xs = np.concatenate([[0, 1, -1, -(1 << (gi.ACC_BITS - 1)), (1 << (gi.ACC_BITS - 1)) - 1],
                         powers, powers - 1, -powers, -powers + 1, rng.integers(-(1 << 31), 1 << 31, 20)])
    exps = np.arange(-(1 << (gi.EXP_BITS - 1)), 1 << (gi.EXP_BITS - 1))
    grid_x, grid_e = (a.reshape(-1) for a in np.meshgrid(xs, exps))
    table = np.arange(-(2 << SIG_INDEX_BITS), (2 << SIG_INDEX_BITS) + 1)
    return (np.concatenate([grid_x, table]), np.concatenate([grid_e, np.full(len(table), -gi.SIG_FRAC)]))


def domain(unit: str, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """(arguments, expected results) of `unit` as the integers its ports carry."""
    if unit == "recip":
        m = rng.permutation(np.arange(gi.FACTOR_ONE, 1 << MANT))
        return m.tolist(), gi.recip16(m).tolist()
    if unit == "rsqrt":
        m = rng.permutation(np.arange(1 << (MANT - 2), 1 << MANT))
        return m.tolist(), gi.rsqrt16(m).tolist()
    if unit == "exp2":
        x = rng.permutation(np.arange(1 << EXP2_ARG_BITS))
        return x.tolist(), gi.exp2_neg(x).tolist()
    if unit == "sincos":
        p = phases(rng)
        s, c = gi.sin_q14(p), gi.cos_q14(p)
        return p.tolist(), ((s & 0xFFFF) | ((c & 0xFFFF) << 16)).tolist()
    if unit == "rsqrt_factor":
        x = rng.permutation(wide_sums(rng))
        mantissa, exponent = gi.rsqrt_factor(x)
        return x.tolist(), (mantissa | ((exponent & 0xFF) << MANT)).tolist()
    if unit == "sigmoid":
        x, e = sigmoid_cases(rng)
        order = rng.permutation(len(x))
        x, e = x[order], e[order]
        return ((x & 0xFFFFFFFF) | ((e & 0xFF) << gi.ACC_BITS)).tolist(), gi.sigmoid_q15(x, e).tolist()
    pos, omega = rope_cases(rng)
    expected = np.array([gi.rope_phase(np.array([p]), np.array([w]))[0, 0] for p, w in zip(pos, omega)])
    return (pos | (omega << MANT)).tolist(), expected.tolist()


# ---------------------------------------------------------------- models (no simulator)

def test_models_equal_reference() -> None:
    rng = np.random.default_rng(0)
    m = np.arange(gi.FACTOR_ONE, 1 << MANT)
    assert np.array_equal(Recip16.model(m), gi.recip16(m))
    m = np.arange(1 << (MANT - 2), 1 << MANT)
    assert np.array_equal(Rsqrt16.model(m), gi.rsqrt16(m))
    x = np.arange(1 << EXP2_ARG_BITS)
    assert np.array_equal(Exp2Neg.model(x), gi.exp2_neg(x))
    assert gi.EXP_SAT < len(x) and (Exp2Neg.model(x[gi.EXP_SAT:]) == 0).all()
    p = phases(rng)
    s, c = SinCos.model(p)
    assert np.array_equal(s, gi.sin_q14(p)) and np.array_equal(c, gi.cos_q14(p))
    pos, omega = rope_cases(rng)
    assert np.array_equal(RopePhase.model(pos, omega),
                          [gi.rope_phase(np.array([a]), np.array([w]))[0, 0] for a, w in zip(pos, omega)])
    x = wide_sums(rng)
    for got, want in zip(RsqrtFactor.model(x), gi.rsqrt_factor(x)):
        assert np.array_equal(got, want)
    x, e = sigmoid_cases(rng)
    assert np.array_equal(SigmoidQ15.model(x, e), gi.sigmoid_q15(x, e))


# ---------------------------------------------------------------- cocotb side

# A stream run that takes longer than this many cycles per argument has lost a result.
CYCLES_PER_ARG_LIMIT = 4 * Recip16.ITERATIONS


async def through(dut, unit: str, args: list[int], p_valid: float,
                  p_ready: float) -> tuple[list[int], list[int], list[int]]:
    """Stream `args` through `unit`: offered with probability p_valid per cycle (an offer is held until
    taken), results read with probability p_ready. Returns the results and, for latency checks, the
    cycle each argument was taken and the cycle each result was read."""
    port = lambda name: getattr(dut, f"{unit}__{name}")
    i_valid, i_ready, i_payload = port("i__valid"), port("i__ready"), port("i__payload")
    o_valid, o_ready, o_payload = port("o__valid"), port("o__ready"), port("o__payload")
    results, taken, read = [], [], []
    k, offering, cycle, held = 0, False, 0, None
    while len(results) < len(args):
        assert cycle < CYCLES_PER_ARG_LIMIT * len(args), f"{unit}: {len(results)} of {len(args)} results came out"
        await FallingEdge(dut.clk)
        if not offering and k < len(args) and random.random() < p_valid:
            offering = True
            i_payload.value = args[k]
        i_valid.value = int(offering)
        ready = random.random() < p_ready
        o_ready.value = int(ready)
        await ReadOnly()
        if held is not None:  # a result shown and not read must stay shown, unchanged
            assert o_valid.value and o_payload.value.to_unsigned() == held, \
                f"{unit}: result {len(results)} changed while stalled"
        if offering and i_ready.value:
            offering, k = False, k + 1
            taken.append(cycle)
        held = None
        if o_valid.value:
            value = o_payload.value.to_unsigned()
            if ready:
                results.append(value)
                read.append(cycle)
            else:
                held = value
        cycle += 1
    return results, taken, read


async def check_unit(dut, unit: str) -> None:
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for name in UNITS:
        getattr(dut, f"{name}__i__valid").value = 0
        getattr(dut, f"{name}__o__ready").value = 0
    await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    random.seed(int(os.environ.get("COCOTB_RANDOM_SEED", "1")))
    args, expected = domain(unit, np.random.default_rng(1))
    cls = UNITS[unit]

    # Unstalled: the cycle contract of the docstring.
    n = 32
    results, taken, read = await through(dut, unit, args[:n], 1.0, 1.0)
    assert results == expected[:n]
    if cls is Recip16:
        assert all(r - t == Recip16.ITERATIONS for t, r in zip(taken, read)), (taken, read)
        assert all(b - a == Recip16.ITERATIONS for a, b in zip(taken, taken[1:])), taken
    else:
        assert all(r - t == cls.LATENCY for t, r in zip(taken, read)), (taken, read)
        assert taken == list(range(taken[0], taken[0] + n)), f"{unit} did not take one argument per cycle"

    # The whole domain with random gaps and backpressure (a sparse and a dense mix).
    half = (len(args) - n) // 2 + n
    for lo, hi, p_valid, p_ready in ((n, half, 0.5, 0.9), (half, len(args), 0.9, 0.5)):
        results, _, _ = await through(dut, unit, args[lo:hi], p_valid, p_ready)
        bad = [j for j, (got, want) in enumerate(zip(results, expected[lo:hi])) if got != want]
        assert not bad, (f"{unit}: {len(bad)} wrong results, first: argument {args[lo + bad[0]]:#x} gave "
                         f"{results[bad[0]]:#x}, expected {expected[lo + bad[0]]:#x}")

    # Nothing more comes out.
    await FallingEdge(dut.clk)
    getattr(dut, f"{unit}__i__valid").value = 0
    for _ in range(CYCLES_PER_ARG_LIMIT):
        await FallingEdge(dut.clk)
        assert not getattr(dut, f"{unit}__o__valid").value, f"{unit}: a result after the last argument's"


simlib.cocotb_cases(globals(), UNITS, "whole_domain", check_unit)


# ---------------------------------------------------------------- pytest side

def test_units_whole_domain() -> None:
    """One Verilator build and one simulator run for every unit (a cocotb test each), so the
    reference is imported once."""
    simlib.run("sim_tests.test_nonlinear", simlib.build(simlib.UnitBank(UNITS), TOPLEVEL), TOPLEVEL)


def test_lint_clean(tmp_path: Path) -> None:
    """verilator -Wall with the project's waivers."""
    result = simlib.lint(simlib.UnitBank(UNITS), TOPLEVEL, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
