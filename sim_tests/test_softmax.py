"""The softmax row unit (hw/softmax.py) against the integer reference (bitlane.golden.integer).

Without a simulator: `softmax_row` (the reference's softmax lines with the contract's primitives)
equals what `IntegerModel._attention` itself produces (its "attn.probs" probe: the weights and the
sum) on every row of every head and layer of a small random model run over 300 tokens, with the
scores and row exponents recomputed from its "attn.q" / "attn.k" probes; and `SoftmaxRow.model`
equals `softmax_row` on those rows and on random and edge rows.

Then the unit under Verilator takes rows of lengths 1..300 (the buffer's depth): rows of that
model, all-equal scores, one dominant score, scores saturating the exp2 argument, the int48
extremes, the row exponent's extremes, random rows; unstalled (the docstring's cycle contract),
then with random input gaps and random backpressure on both outputs. Every weight, argument and
per-row result is compared integer for integer, and a result shown and not read must not change.
"""
import os
import random
from pathlib import Path

import cocotb
import numpy as np
import torch
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

from bitlane import golden
from bitlane.golden import integer as gi
from bitlane.hw.softmax import SCALE_BITS, SoftmaxRow, softmax_row
from sim_tests import simlib

TOPLEVEL = "softmax"
MAX_LEN = 300
WIDE = gi.WIDE_BITS
T_MIN, T_MAX = -(1 << (WIDE - 1)), (1 << (WIDE - 1)) - 1
C_MIN, C_MAX = -2 * 128 + gi.EXP_FRAC, 2 * 127 + gi.EXP_FRAC  # eq + ek* + 10 over int8 exponents
SMALL = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=MAX_LEN, rope_theta=10000.0)


# ---------------------------------------------------------------- the rows and the reference

def model_rows(tokens: int = MAX_LEN, seed: int = 0) -> list[tuple[np.ndarray, int, np.ndarray, int]]:
    """Every softmax row of a small random model over `tokens` tokens: (t, c, p, sum), t and c
    recomputed from the q / k probes the reference's way, p and sum from its own "attn.probs" probe."""
    torch.manual_seed(seed)
    model = golden.BitNetForCausalLM(golden.BitNetConfig(**SMALL))
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if name.endswith("norm.weight"):
                prm.add_(0.1 * torch.randn(prm.shape))
    model.freeze()
    im = gi.convert(model.eval())
    seen: dict[tuple[str, int], tuple] = {}
    im.hidden(np.random.default_rng(seed).integers(0, 256, tokens)[None],
              probe=lambda stage, i, m, e: seen.__setitem__((stage, i), (m, e)))
    rows = []
    for layer in range(len(im.layers)):
        qm, eq = seen["attn.q", layer]
        km, ek = seen["attn.k", layer]
        p, total = seen["attn.probs", layer]
        eq, ek = eq[..., 0], ek[..., 0]
        groups = qm.shape[1] // km.shape[1]
        km, ek = np.repeat(km, groups, axis=1), np.repeat(ek, groups, axis=1)
        for h in range(qm.shape[1]):
            for pos in range(tokens):
                ek_max = ek[0, h, :pos + 1].max()
                dot = gi.int_matmul(qm[0, h, pos][None], km[0, h, :pos + 1].T)[0]
                t = dot >> (ek_max - ek[0, h, :pos + 1])
                c = int(eq[0, h, pos] + ek_max + gi.EXP_FRAC)
                rows.append((t, c, p[0, h, pos, :pos + 1], int(total[0, h, pos, 0])))
                assert not p[0, h, pos, pos + 1:].any()
    return rows


def edge_rows(rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Synthetic rows in the reference's score format (int48 t, x = max - t below 2^47)."""
    rows = []
    rnd = lambda n, bits: rng.integers(-(1 << bits), 1 << bits, n)
    for n in (1, 2, 3, 7, 31, 32, 33, 64, 127, 128, 129, 255, 256, 299, MAX_LEN):
        rows.append((rnd(n, int(rng.integers(1, 40))), int(rng.integers(-40, 20))))
    rows += [
        (np.full(MAX_LEN, 12345), 0),                                   # all equal
        (np.full(17, T_MAX), C_MAX), (np.full(9, T_MIN), C_MIN),        # the int48 extremes, c's extremes
        (np.array([T_MAX, 0, 1, T_MAX, (1 << 46)]), -37),               # x up to 2^47 - 1, rounded right shift
        (np.array([0, -(1 << 47) + 1, -5]), -47), (np.array([0, -(1 << 47) + 1, -5]), -48),
        (np.array([0, -(1 << 47) + 1, -5]), -60), (np.array([-(1 << 40), 0, 3]), C_MIN),
        (np.array([7, 3, 7, -1]), C_MAX), (np.array([7, 6, 7, 5]), 14), (np.array([7, 6, 7, 5]), 13),
        (np.array([7, 6, 7, 5]), 15), (np.array([3, 2, 1, 0]), 12),
    ]
    for c in (0, 1, 2, 15, 16):                                         # x around the saturation bound 2^(15 - c)
        rows.append((-np.array([0, 1 << 15, (1 << 15) + 5, (1 << 16) - 1, (1 << 14) + 3, (1 << 16) + 7]) >> c, c))
    dominant = rnd(50, 10)
    dominant[int(rng.integers(50))] = 1 << 30
    rows.append((dominant, 0))                                          # one dominant score
    rows.append((rnd(200, 30), 20))                                     # all but the max saturate
    rows.append((rnd(100, 20), -10))                                    # arguments around EXP_SAT
    rows.append((rng.integers(0, 1 << 14, 120), gi.EXP_FRAC - 10))      # unscaled: x itself
    for _ in range(20):
        n = int(rng.integers(1, MAX_LEN + 1))
        rows.append((rnd(n, int(rng.integers(1, 47))), int(rng.integers(-60, 30))))
    return [(np.asarray(t, dtype=np.int64), c) for t, c in rows]


ROW_KEYS = ("max", "xs", "p", "sum", "mantissa", "exponent", "recip")


def test_reference_rows_equal_integer_model() -> None:
    """softmax_row and SoftmaxRow.model are the reference's own weights and sums, every row."""
    rows = model_rows()
    assert len(rows) == 2 * 4 * MAX_LEN
    for t, c, p, total in rows:
        want = softmax_row(t, c)
        assert np.array_equal(want["p"], p) and want["sum"] == total
        got = SoftmaxRow.model(t, c)
        assert all(np.array_equal(got[k], want[k]) for k in ROW_KEYS)


def test_model_equals_reference_edges() -> None:
    rng = np.random.default_rng(2)
    rows = edge_rows(rng) + [(rng.integers(-(1 << b), 1 << b, int(rng.integers(1, 64))),
                              int(rng.integers(C_MIN, C_MAX + 1))) for b in rng.integers(1, 47, 3000)]
    for t, c in rows:
        want, got = softmax_row(t, c), SoftmaxRow.model(t, c)
        assert all(np.array_equal(got[k], want[k]) for k in ROW_KEYS), (t, c)


# ---------------------------------------------------------------- cocotb side

def sim_rows() -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(1)
    ref = model_rows(MAX_LEN)
    heads = len(ref) // MAX_LEN
    picks = [(k % heads) * MAX_LEN + pos for k, pos in enumerate((0, 1, 2, 5, 16, 63, 64, 150, 298, 299))]
    return edge_rows(rng) + [(ref[j][0], ref[j][1]) for j in picks]


def expected(rows) -> tuple[list[int], list[int]]:
    """The `o` and `row` payloads the unit must give."""
    o, per_row = [], []
    for t, c in rows:
        r = softmax_row(t, c)
        o += [int(p) | (int(xs) << 16) | (int(k == len(t) - 1) << 31) for k, (p, xs) in enumerate(zip(r["p"], r["xs"]))]
        per_row.append((r["max"] & ((1 << WIDE) - 1)) | (r["sum"] << 48) | (r["mantissa"] << 80)
                       | ((r["exponent"] & 0xFF) << 96) | (r["recip"] << 104))
    return o, per_row


def inputs(rows) -> list[int]:
    mask = (1 << WIDE) - 1
    return [(int(v) & mask) | ((c & ((1 << SCALE_BITS) - 1)) << WIDE) | (int(k == len(t) - 1) << (WIDE + SCALE_BITS))
            for t, c in rows for k, v in enumerate(t)]


async def through(dut, payloads: list[int], n_o: int, n_row: int, p_valid: float, p_ready: float):
    """Offer the scores (probability p_valid per cycle, held until taken), read both outputs with
    probability p_ready each. Returns (o payloads, row payloads, take cycles, o read cycles, row read cycles)."""
    outs = {"o": ([], []), "row": ([], [])}
    held = dict.fromkeys(outs)
    taken, offering, cycle = [], False, 0
    limit = 12 * len(payloads) + 200 * n_row + 1000
    while len(outs["o"][0]) < n_o or len(outs["row"][0]) < n_row:
        assert cycle < limit, f"{len(outs['o'][0])} of {n_o} weights, {len(outs['row'][0])} of {n_row} rows"
        await FallingEdge(dut.clk)
        if not offering and len(taken) < len(payloads) and random.random() < p_valid:
            offering = True
            dut.i__payload.value = payloads[len(taken)]
        dut.i__valid.value = int(offering)
        ready = {name: random.random() < p_ready for name in outs}
        for name, r in ready.items():
            getattr(dut, f"{name}__ready").value = int(r)
        await ReadOnly()
        if offering and dut.i__ready.value:
            offering = False
            taken.append(cycle)
        for name, (got, when) in outs.items():
            valid, payload = getattr(dut, f"{name}__valid").value, getattr(dut, f"{name}__payload").value
            if held[name] is not None:
                assert valid and payload.to_unsigned() == held[name], f"{name}: result {len(got)} changed"
            held[name] = None
            if valid:
                if ready[name]:
                    got.append(payload.to_unsigned())
                    when.append(cycle)
                else:
                    held[name] = payload.to_unsigned()
        cycle += 1
    await FallingEdge(dut.clk)
    dut.i__valid.value = 0
    return outs["o"][0], outs["row"][0], taken, outs["o"][1], outs["row"][1]


@cocotb.test()
async def softmax_rows(dut) -> None:
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    dut.row__ready.value = 0
    await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    random.seed(int(os.environ.get("COCOTB_RANDOM_SEED", "1")))
    rows = sim_rows()
    payloads = inputs(rows)
    want_o, want_row = expected(rows)

    def check(got: list[int], want: list[int], what: str) -> None:
        bad = [j for j, (a, b) in enumerate(zip(got, want)) if a != b]
        assert len(got) == len(want) and not bad, \
            f"{what}: {len(bad)} wrong, first #{bad[0]}: {got[bad[0]]:#x}, expected {want[bad[0]]:#x}"

    # Unstalled: the cycle contract.
    o, row, taken, o_at, row_at = await through(dut, payloads, len(want_o), len(want_row), 1.0, 1.0)
    check(o, want_o, "weights, unstalled")
    check(row, want_row, "rows, unstalled")
    start = 0
    for r, (t, _) in enumerate(rows):
        n = len(t)
        last = taken[start + n - 1]
        assert taken[start:start + n] == list(range(taken[start], taken[start] + n)), \
            f"row {r}: not one score per cycle"
        assert o_at[start:start + n] == list(range(last + 1 + SoftmaxRow.LATENCY, last + 1 + SoftmaxRow.LATENCY + n)), \
            f"row {r}: weights' cycles"
        assert row_at[r] == last + n + SoftmaxRow.LATENCY + SoftmaxRow.ROW_LATENCY, f"row {r}: row result's cycle"
        if r + 1 < len(rows):
            assert taken[start + n] == row_at[r] + 1, f"row {r + 1}: first score not taken right after row {r}"
        start += n

    # Random gaps and backpressure, a sparse and a dense mix.
    for p_valid, p_ready in ((0.5, 0.9), (0.9, 0.5)):
        o, row, _, _, _ = await through(dut, payloads, len(want_o), len(want_row), p_valid, p_ready)
        check(o, want_o, f"weights, p_valid {p_valid}, p_ready {p_ready}")
        check(row, want_row, f"rows, p_valid {p_valid}, p_ready {p_ready}")

    for _ in range(4 * SoftmaxRow.ROW_LATENCY):
        await FallingEdge(dut.clk)
        assert not dut.o__valid.value and not dut.row__valid.value, "a result after the last"


# ---------------------------------------------------------------- pytest side

def test_softmax_rows() -> None:
    simlib.run("sim_tests.test_softmax", simlib.build(SoftmaxRow(MAX_LEN), TOPLEVEL), TOPLEVEL)


def test_lint_clean(tmp_path: Path) -> None:
    """verilator -Wall with the project's waivers."""
    result = simlib.lint(SoftmaxRow(MAX_LEN), TOPLEVEL, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
