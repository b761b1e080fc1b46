"""The vector unit (hw/vector.py) against the integer reference (bitlane.golden.integer).

Without a simulator, each unit's `model()` is compared with the reference: `VectorReduce` with
`sum_squares` (eps 0) over normalized vectors, `NormGain` with its x16 and gain product,
`QuantFactor` with the per-vector half of `quantize_int8` over every M below 2^16, every bit length's
extremes and random M, `QuantInt8` with `quantize_int8`, `EpsTerm` with `sum_squares`' eps lines,
`FactorMul` with `factor_mul`, `ResidualAdd` with `IntegerModel._residual_add`; and the models
composed into `norm_quant` (q and ratio).

Then the units, built once under Verilator side by side in one `simlib.UnitBank`, take vectors of lengths
1..2560 (primes, powers of two and their neighbours, hidden sizes): random vectors at every
magnitude, all -32768 / all 32767 (int32: the extremes of the gain product and of int32), zeros, a
single nonzero, all equal; the per-vector units their edge and random arguments. Inputs come with
random gaps (per-vector factors with their own gaps) and outputs meet random backpressure; each
result is compared with the reference integer for integer, a result held back must not change, and
an unstalled run checks each unit's latency and throughput against its docstring.
"""
import os
import random
from pathlib import Path
from types import SimpleNamespace

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

from bitlane.golden import integer as gi
from bitlane.hw.vector import UNITS, EpsTerm, FactorMul, NormGain, QuantFactor, QuantInt8, ResidualAdd, VectorReduce, quantize_int8
from sim_tests import simlib

TOPLEVEL = "vector"
MANT = gi.MANT_BITS
HIDDEN = 2560  # bitnet-b1.58-2B-4T's hidden size: the longest vector tested
LENGTHS = [1, 2, 3, 5, 7, 13, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 383, 384, 509, 1000,
           HIDDEN - 1, HIDDEN]
NO_EPS = (np.int64(0), np.int64(0))
RES_FRAC = 18  # the residual add's res_frac port (h128's): the cases vary f.e instead
ONE = (np.int64(gi.FACTOR_ONE), np.int64(-(MANT - 1)))  # scale 1.0 (the eps term is 0 anyway)


# ---------------------------------------------------------------- the vectors and the reference

def residuals(rng: np.random.Generator) -> list[np.ndarray]:
    """int32 vectors (RMSNorm inputs) of every length at magnitudes from 1 bit to 31 bits."""
    out = []
    for k, n in enumerate(LENGTHS):
        bits = 1 + (k * 7) % 31
        out.append(rng.integers(-(1 << bits), 1 << bits, n))
    return out


def mantissa_vectors(rng: np.random.Generator) -> list[np.ndarray]:
    """int16 vectors: the normalized residuals, raw random int16, and the extremes."""
    n = HIDDEN
    single = np.zeros(n, dtype=np.int64)
    single[rng.integers(n)] = -(1 << (MANT - 1))
    return ([gi.normalize(h)[0] for h in residuals(rng)]
            + [rng.integers(-(1 << (MANT - 1)), 1 << (MANT - 1), k) for k in (1, 17, 1024, 2047)]
            + [np.full(n, -(1 << (MANT - 1))), np.full(n, (1 << (MANT - 1)) - 1), np.zeros(100, dtype=np.int64),
               single, np.array([1]), np.array([-1]), np.full(333, -12345)])


def gain_products(rng: np.random.Generator) -> list[np.ndarray]:
    """int32 quantizer inputs z: gain products x16 * g of every length and magnitude, the int32 and
    gain-product extremes, zeros, a single nonzero and all-equal vectors."""
    out = []
    for h in residuals(rng):
        x16 = gi.normalize(h)[0]
        g = rng.integers(-(1 << 15), 1 << 15, len(h)) >> rng.integers(0, 15)
        out.append(x16 * g)
    out += [rng.integers(-(1 << b), 1 << b, n) for b, n in ((0, 50), (1, 9), (8, 129), (20, 700), (31, 257))]
    single = np.zeros(HIDDEN, dtype=np.int64)
    single[rng.integers(HIDDEN)] = 12345
    return out + [np.full(HIDDEN, -(1 << 30)), np.full(1000, (1 << 30) - 1), np.full(64, -(1 << 31)),
                  np.full(64, (1 << 31) - 1), np.zeros(200, dtype=np.int64), single, np.array([-1]),
                  np.array([3]), np.full(77, -7), np.array([-(1 << 31), (1 << 31) - 1, 0, 1, -1])]


def absmax_cases(rng: np.random.Generator) -> np.ndarray:
    """M for QuantFactor: 0, every M below 2^16, and every bit length's extremes and random values."""
    lengths = np.repeat(np.arange(1, gi.ACC_BITS + 1), 100)
    top = np.int64(1) << (lengths - 1)
    inside = top | (rng.integers(0, 1 << 62, len(top)) & (top - 1))
    return np.concatenate([[0], np.arange(1, 1 << MANT), top, 2 * top - 1, inside, [1 << 31]])


def quant_factor_reference(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-vector half of gi.quantize_int8, from its own lines: c and the shift eM + 1."""
    Mu, eM = gi.factor(M)
    c = (gi.Q_MAX * gi.recip16(np.maximum(Mu, gi.FACTOR_ONE))) >> (gi.RECIP_SHIFT - gi.Q_SHIFT - 1)
    return c, eM + 1


def norm_cases(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(x, gain) per vector: the residuals of every length and magnitude with random gains (at a
    random magnitude), and the extremes: int32 ends, zeros, a single nonzero, all equal, values that
    already fit int16 (shift 0) and just do not (shift 1)."""
    out = []
    for h in residuals(rng):
        out.append((h, rng.integers(-(1 << 15), 1 << 15, len(h)) >> rng.integers(0, 15)))
    n = HIDDEN
    single = np.zeros(n, dtype=np.int64)
    single[rng.integers(n)] = (1 << 31) - 1
    g = rng.integers(-(1 << 15), 1 << 15, n)
    for x in (np.full(n, -(1 << 31)), np.full(n, (1 << 31) - 1), np.zeros(n, dtype=np.int64), single,
              np.full(n, 1000), np.full(n, -(1 << 15)), np.full(n, (1 << 15) - 1), np.full(n, 1 << 15)):
        out.append((x, g))
    out.append((np.array([-(1 << 31)]), np.array([-(1 << 15)])))
    out.append((np.array([-(1 << 15) + 1]), np.array([-(1 << 15)])))
    return out


def factor_pairs(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(am, ae, bm, be): every pair of edge mantissas (0, 2^15, 2^15 + 1, sqrt-ish, 2^16 - 1) and
    exponents (int8 ends, 0), and random UF pairs."""
    ms = np.array([0, gi.FACTOR_ONE, gi.FACTOR_ONE + 1, 46341, 46340, (1 << MANT) - 2, (1 << MANT) - 1])
    es = np.array([-128, -1, 0, 1, 127])
    grid = [a.reshape(-1) for a in np.meshgrid(ms, es, ms, es)]
    n = 5000
    rand = [rng.integers(gi.FACTOR_ONE, 1 << MANT, n), rng.integers(-128, 128, n),
            rng.integers(gi.FACTOR_ONE, 1 << MANT, n), rng.integers(-128, 128, n)]
    return tuple(np.concatenate([g, r]) for g, r in zip(grid, rand))


def eps_cases(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(scale_m, scale_e, eps_m, eps_e, shift) with the expected term from sum_squares' own lines:
    real settings (the residual's scale 2^-res_frac, EPS_n of h128/h256/2B-4T), eps 0, every
    normalize shift, mantissas and exponents at their ends, random; only cases whose rounding shift
    stays below 64 (the reference shifts int64: beyond that numpy's shift is undefined)."""
    n = 3000
    sm = np.concatenate([[gi.FACTOR_ONE] * 6, rng.integers(gi.FACTOR_ONE, 1 << MANT, n), [0, 1, (1 << MANT) - 1]])
    se = np.concatenate([[-33, -32, -30, -20, 0, 10], rng.integers(-128, 128, n // 2), rng.integers(-40, -10, n - n // 2),
                         [-128, 127, 0]])
    em = np.concatenate([[gi.factor(np.int64(k))[0] for k in (128 * 1e-5 * 2 ** 40, 256 * 1e-5 * 2 ** 40,
                                                                2560 * 1e-6 * 2 ** 40, 1, 0, 65535)],
                         rng.integers(gi.FACTOR_ONE, 1 << MANT, n), [gi.FACTOR_ONE, (1 << MANT) - 1, 0]])
    ee = np.concatenate([[-50, -50, -50, -128, 0, 127], rng.integers(-128, 128, n // 2), rng.integers(-50, 0, n - n // 2),
                         [-128, 127, 5]])
    sh = np.concatenate([[0, 1, 3, 17, 31, 16], rng.integers(0, 18, n), [0, 17, 5]])
    sm, se, em, ee, sh = (np.concatenate([a, np.resize(a, 18 * 4)]) for a in (sm, se, em, ee, sh))
    sh[-72:] = np.arange(72) % 18
    out = []
    for args in zip(sm, se, em, ee, sh):
        scale, eps = (np.int64(args[0]), np.int64(args[1])), (np.int64(args[2]), np.int64(args[3]))
        inverse = (gi.recip16(np.maximum(scale[0], gi.FACTOR_ONE)), -gi.RECIP_SHIFT - scale[1])
        term = gi.factor_mul(gi.factor_mul(eps, inverse), inverse)
        c = term[1] - 2 * args[4]
        if term[0] != 0 and c < -63:
            continue
        out.append((*args, int(gi.scale_saturating(term[0], c, gi.EPS_LIMIT))))
    return tuple(np.array(a, dtype=np.int64) for a in zip(*out))


def residual_reference(h, acc, f, res_frac: int) -> np.ndarray:
    """IntegerModel._residual_add itself, on a stand-in model that has only the residual format."""
    model = SimpleNamespace(int_config=SimpleNamespace(res_frac=res_frac))
    return gi.IntegerModel._residual_add(model, h, acc, f, "test")


def residual_cases(rng: np.random.Generator) -> list[tuple]:
    """(h, acc, (f.m, f.e), res_frac, expected) per vector, every one accepted by the reference:
    random accumulators of every magnitude and length, random factors and residual formats (a case the
    reference refuses, its delta or sum leaving int32, is drawn again), and the extremes: int32
    accumulators, zeros, a single nonzero, all equal; shifts of exactly 0, 1, 31, 32, 33 and beyond,
    left shifts, residuals at the ends of int32."""
    out = []

    def add(h, acc, m, e, res_frac) -> bool:
        h, acc, f = np.asarray(h, dtype=np.int64), np.asarray(acc, dtype=np.int64), (np.int64(m), np.int64(e))
        try:
            out.append((h, acc, f, res_frac, residual_reference(h, acc, f, res_frac)))
            return True
        except gi.WidthError:
            return False

    for k, n in enumerate(LENGTHS):
        bits = 1 + (k * 5) % 31
        while not add(rng.integers(-(1 << 29), 1 << 29, n), rng.integers(-(1 << bits), 1 << bits, n),
                      rng.integers(gi.FACTOR_ONE, 1 << MANT), rng.integers(-60, 10), RES_FRAC):
            pass
    n = 300
    single = np.zeros(n, dtype=np.int64)
    single[rng.integers(n)] = -(1 << 31)
    big, small = (1 << 31) - 1, -(1 << 31)
    zeros, ones = np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)
    for acc in (np.full(n, small), np.full(n, big), single, np.full(n, -77)):
        ex = int(gi.normalize(acc)[1][0])
        for s in (0, 1, 2, 31, 32, 33, 40, 63):  # s = -(ex + f.e + res_frac); the reference shifts int64: s < 64
            assert add(zeros, acc, (1 << MANT) - 1, -s - ex - RES_FRAC, RES_FRAC)
    assert add(zeros, ones, gi.FACTOR_ONE, 15 - RES_FRAC, RES_FRAC)            # left shift by 15: 2^30
    assert add(zeros, -ones, gi.FACTOR_ONE, 15 - RES_FRAC, RES_FRAC)           # -2^30
    assert add(np.full(n, big), zeros, 40000, 0, RES_FRAC)               # h at the ends, delta 0
    assert add(np.full(n, small), zeros, 40000, 0, RES_FRAC)
    assert add(np.full(n, big - 3), np.full(n, 5), gi.FACTOR_ONE, -19 - RES_FRAC, RES_FRAC)  # 5 2^15 2^-19 rounds to 0
    assert add(np.full(n, small + 1), -ones, gi.FACTOR_ONE, -15 - RES_FRAC, RES_FRAC)  # delta exactly -1
    return out


# ---------------------------------------------------------------- models (no simulator)

def test_models_equal_reference() -> None:
    rng = np.random.default_rng(0)
    for h in residuals(rng):
        x16, ss = gi.sum_squares(h, ONE, NO_EPS, "test")
        absmax, sumsq = VectorReduce.model(x16)
        assert sumsq == ss[0] and absmax == np.abs(x16).max()
        assert gi.normalize(h)[1][0] == np.maximum(gi.bit_length(VectorReduce.model(h)[0]) - (MANT - 1), 0)
    M = absmax_cases(rng)
    for got, want in zip(QuantFactor.model(M), quant_factor_reference(M)):
        assert np.array_equal(got, want)
    for z in gain_products(rng):
        assert np.array_equal(quantize_int8(z), gi.quantize_int8(z, "test"))
        c, shift = quant_factor_reference(np.abs(z).max())
        assert np.array_equal(QuantInt8.model(z, c, shift), gi.quantize_int8(z, "test"))
    am, ae, bm, be = factor_pairs(rng)
    for got, want in zip(FactorMul.model(am, ae, bm, be), gi.factor_mul((am, ae), (bm, be))):
        assert np.array_equal(got, want)
    *args, want = eps_cases(rng)
    assert np.array_equal(EpsTerm.model(*args), want)
    for x, gain in norm_cases(rng):
        x16, z = NormGain.model(x, gain)
        want16, _ = gi.sum_squares(x, ONE, NO_EPS, "test")
        assert np.array_equal(x16, want16) and np.array_equal(z, gi.fits("gain", want16 * gain, 2 * MANT))
    for h, acc, f, res_frac, expected in residual_cases(rng):
        ex = gi.normalize(acc)[1][0]
        assert np.array_equal(ResidualAdd.model(h, acc, f[0], f[1], ex, res_frac), expected)


def test_models_compose_norm_quant() -> None:
    """Stage 1 (`norm_quant`) from the units' models: a VectorReduce(32) pass for max|x|, NormGain,
    VectorReduce(16) for sum(x16^2) and VectorReduce(32) for max|z|, QuantFactor and QuantInt8 for q, and
    EpsTerm for the sum's eps term, RsqrtFactor and FactorMul for the ratio. Equal to the reference for
    real scales and eps, the residual's and a sub-norm's."""
    from bitlane.hw.nonlinear import RsqrtFactor
    rng = np.random.default_rng(3)
    eps = gi.factor(np.int64(round(2560 * 1e-5 * 2 ** 40)), -40)
    for k, (x, _) in enumerate(norm_cases(rng)):
        gain = rng.integers(1 << 14, 1 << 15, len(x)) * rng.choice([-1, 1], len(x))
        scale = (np.int64(gi.FACTOR_ONE), np.int64(-18 - 15)) if k % 2 else gi.factor(rng.integers(1, 1 << 20), -30)
        q_want, ratio_want = gi.norm_quant(x[None], gain, scale, eps, "test")
        x16, z = NormGain.model(x, gain)
        _, sumsq = VectorReduce.model(x16)
        s = gi.normalize(x)[1][0]
        ss = sumsq + EpsTerm.model(scale[0], scale[1], eps[0], eps[1], s)
        absmax_z, _ = VectorReduce.model(z)
        c, shift = QuantFactor.model(absmax_z)
        assert np.array_equal(QuantInt8.model(z, c, shift), q_want[0])
        zu, ze = gi.factor(absmax_z)  # the UF of max|z|: QuantFactor's (Mu, eM) before the clamp
        ratio = FactorMul.model(zu, ze, *RsqrtFactor.model(np.maximum(ss, 1)))
        assert ratio[0] == ratio_want[0][0, 0] and ratio[1] == ratio_want[1][0, 0]


# ---------------------------------------------------------------- cocotb side

def elements(vectors: list[np.ndarray], width: int) -> list[int]:
    """The vectors as element payloads: value (two's complement, `width` bits) and `last` above it."""
    mask = (1 << width) - 1
    return [(int(v) & mask) | (int(k == len(x) - 1) << width) for x in vectors for k, v in enumerate(x)]


async def through(dut, unit: str, inputs: dict[str, list[int]], results: int, p_valid: float,
                  p_ready: float) -> tuple[list[int], dict[str, list[int]], list[int]]:
    """Offer each input stream's payloads (each stream with probability p_valid per cycle, an offer held
    until taken) and read `results` results with probability p_ready. Returns the results, the cycle
    each payload was taken per stream and the cycle each result was read."""
    port = lambda name: getattr(dut, f"{unit}__{name}")
    o_valid, o_ready, o_payload = port("o__valid"), port("o__ready"), port("o__payload")
    streams = {name: (port(f"{name}__valid"), port(f"{name}__ready"), port(f"{name}__payload")) for name in inputs}
    out, taken, read = [], {name: [] for name in inputs}, []
    offering = dict.fromkeys(inputs, False)
    cycle, held = 0, None
    limit = 8 * sum(map(len, inputs.values())) + 40 * results + 100
    while len(out) < results:
        assert cycle < limit, f"{unit}: {len(out)} of {results} results came out"
        await FallingEdge(dut.clk)
        for name, (valid, _, payload) in streams.items():
            k = len(taken[name])
            if not offering[name] and k < len(inputs[name]) and random.random() < p_valid:
                offering[name] = True
                payload.value = inputs[name][k]
            valid.value = int(offering[name])
        ready = random.random() < p_ready
        o_ready.value = int(ready)
        await ReadOnly()
        if held is not None:  # a result shown and not read must stay shown, unchanged
            assert o_valid.value and o_payload.value.to_unsigned() == held, f"{unit}: result {len(out)} changed"
        for name, (_, i_ready, _) in streams.items():
            if offering[name] and i_ready.value:
                offering[name] = False
                taken[name].append(cycle)
        held = None
        if o_valid.value:
            value = o_payload.value.to_unsigned()
            if ready:
                out.append(value)
                read.append(cycle)
            else:
                held = value
        cycle += 1
    await FallingEdge(dut.clk)
    for valid, _, _ in streams.values():
        valid.value = 0
    return out, taken, read


def cases(unit: str, rng: np.random.Generator) -> tuple[dict[str, list[int]], list[int], list[int]]:
    """(input payloads per stream, expected results, input index per result whose take the result
    follows: the vector's last element or the argument)."""
    if unit in ("reduce16", "absmax32"):
        width = MANT if unit == "reduce16" else gi.ACC_BITS
        vectors = mantissa_vectors(rng) if unit == "reduce16" else gain_products(rng)
        expected = []
        for x in vectors:
            absmax = int(np.abs(x).max())
            sumsq = int((x * x).sum()) if unit == "reduce16" else 0
            expected.append(absmax | (sumsq << width))
        return {"i": elements(vectors, width)}, expected, list(np.cumsum([len(x) for x in vectors]) - 1)
    if unit == "quant_factor":
        every = absmax_cases(rng)  # 0, the bit lengths' extremes and 2^31 always; a random sample of the rest
        top = np.int64(1) << np.arange(gi.ACC_BITS)
        edges = np.concatenate([[0, 1 << 31], top, 2 * top - 1])
        M = rng.permutation(np.concatenate([edges, rng.choice(every, 3000 - len(edges), replace=False)]))
        c, shift = quant_factor_reference(M)
        return {"i": M.tolist()}, (c | ((shift & 0x3F) << MANT)).tolist(), list(range(len(M)))
    if unit == "eps_term":
        sm, se, em, ee, sh, want = eps_cases(rng)
        args = sm | ((se & 0xFF) << 16) | (em << 24) | ((ee & 0xFF) << 40) | (sh << 48)
        return {"i": args.tolist()}, want.tolist(), list(range(len(sm)))
    if unit == "factor_mul":
        am, ae, bm, be = factor_pairs(rng)
        mant, exp = gi.factor_mul((am, ae), (bm, be))
        args = am | ((ae & 0xFF) << 16) | (bm << 24) | ((be & 0xFF) << 40)
        return {"i": args.tolist()}, (mant | ((exp & 0x3FF) << 16)).tolist(), list(range(len(am)))
    if unit == "norm_gain":
        factors, elems, expected = [], [], []
        for x, gain in norm_cases(rng):
            x16, _ = gi.normalize(x)
            z = x16 * gain
            factors.append(int(np.abs(x).max()))
            elems += [(int(a) & 0xFFFFFFFF) | ((int(g) & 0xFFFF) << 32) | (int(k == len(x) - 1) << 48)
                      for k, (a, g) in enumerate(zip(x, gain))]
            expected += [(int(a) & 0xFFFF) | ((int(b) & 0xFFFFFFFF) << 16) | (int(k == len(x) - 1) << 48)
                         for k, (a, b) in enumerate(zip(x16, z))]
        return {"f": factors, "i": elems}, expected, list(range(len(expected)))
    if unit == "residual":
        factors, elems, expected = [], [], []
        for h, acc, f, res_frac, want in residual_cases(rng):
            ex = int(gi.normalize(acc)[1][0])
            factors.append(int(f[0]) | ((int(f[1]) & 0xFF) << MANT) | (ex << (MANT + gi.EXP_BITS)))
            w = gi.RES_BITS
            elems += [(int(a) & 0xFFFFFFFF) | ((int(b) & 0xFFFFFFFF) << w) | (int(k == len(h) - 1) << 2 * w)
                      for k, (a, b) in enumerate(zip(acc, h))]
            expected += [(int(v) & 0xFFFFFFFF) | (int(k == len(h) - 1) << w) for k, v in enumerate(want)]
        return {"f": factors, "i": elems}, expected, list(range(len(expected)))
    vectors = gain_products(rng)
    factors, expected = [], []
    for z in vectors:
        c, shift = quant_factor_reference(np.abs(z).max())
        factors.append(int(c) | ((int(shift) & 0x3F) << MANT))
        q = gi.quantize_int8(z, "test")
        expected += [(int(v) & 0xFF) | (int(k == len(z) - 1) << 8) for k, v in enumerate(q)]
    return {"f": factors, "i": elements(vectors, gi.ACC_BITS)}, expected, list(range(len(expected)))


async def check_unit(dut, unit: str) -> None:
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for name in UNITS:
        for port in ("i", "f"):
            if hasattr(dut, f"{name}__{port}__valid"):
                getattr(dut, f"{name}__{port}__valid").value = 0
        getattr(dut, f"{name}__o__ready").value = 0
    dut.residual__res_frac.value = RES_FRAC
    await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    random.seed(int(os.environ.get("COCOTB_RANDOM_SEED", "1")))
    inputs, expected, after = cases(unit, np.random.default_rng(1))

    def check(got: list[int], want: list[int], what: str) -> None:
        bad = [j for j, (a, b) in enumerate(zip(got, want)) if a != b]
        assert len(got) == len(want) and not bad, \
            f"{unit} ({what}): {len(bad)} wrong results, first #{bad[0]}: {got[bad[0]]:#x}, expected {want[bad[0]]:#x}"

    # Unstalled: the cycle contract of the docstring, on everything.
    out, taken, read = await through(dut, unit, inputs, len(expected), 1.0, 1.0)
    check(out, expected, "unstalled")
    stream = taken["i"]
    if unit in ("quant_factor", "eps_term"):
        latency = QuantFactor.LATENCY if unit == "quant_factor" else EpsTerm.LATENCY
        period = latency + 1
        assert all(b - a == period for a, b in zip(stream, stream[1:])), stream[:10]
    else:
        latency = {"quant_int8": QuantInt8.LATENCY, "residual": ResidualAdd.LATENCY, "norm_gain": NormGain.LATENCY,
                   "factor_mul": FactorMul.LATENCY}.get(unit, VectorReduce.LATENCY)
        gaps = [b - a for a, b in zip(stream, stream[1:])]
        ends = set()
        if unit == "norm_gain":  # NormGain loads each vector's shift in a cycle of its own
            ends = set((np.cumsum([len(x) for x, _ in norm_cases(np.random.default_rng(1))]) - 1).tolist())
        assert all(g == 1 or (k in ends and g == 2) for k, g in enumerate(gaps)), f"{unit}: not one element per cycle"
    assert all(r - stream[k] == latency for k, r in zip(after, read)), f"{unit}: latency"

    # Random gaps and backpressure, a sparse and a dense mix.
    for p_valid, p_ready in ((0.5, 0.9), (0.9, 0.5)):
        out, _, _ = await through(dut, unit, inputs, len(expected), p_valid, p_ready)
        check(out, expected, f"p_valid {p_valid}, p_ready {p_ready}")

    # Nothing more comes out.
    for _ in range(4 * EpsTerm.LATENCY):
        await FallingEdge(dut.clk)
        assert not getattr(dut, f"{unit}__o__valid").value, f"{unit}: a result after the last"


simlib.cocotb_cases(globals(), UNITS, "vectors", check_unit)


# ---------------------------------------------------------------- pytest side

def test_units_vectors() -> None:
    """One Verilator build and one simulator run for every unit (a cocotb test each)."""
    simlib.run("sim_tests.test_vector", simlib.build(simlib.UnitBank(UNITS), TOPLEVEL), TOPLEVEL)


def test_lint_clean(tmp_path: Path) -> None:
    """verilator -Wall with the project's waivers."""
    result = simlib.lint(simlib.UnitBank(UNITS), TOPLEVEL, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
