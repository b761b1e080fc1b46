"""The lane array: `lanes` exact ternary dot products, `k_per_cycle` (trit, int8) pairs each per cycle.

Arithmetic without multipliers and without an explicit negation per input, shaped for
4-input-LUT FPGAs with carry chains (iCE40 SB_CARRY, ECP5 CCU2C). Inputs are taken in pairs
(a, b) with trits t_a, t_b and signs s_a, s_b (the trit code's high bit):

    t_a*a + t_b*b = s_a * (a' + s_a*s_b*b')        a' = a if t_a != 0 else 0, b' likewise

The inner sum is one adder whose b operand is inverted (with +1 as carry-in) when the signs
differ: one LUT per bit of b does zeroing and inversion together, a' is zeroed by its
register's synchronous reset, and the outer sign costs nothing: `sum ^ s_a` folds into the
adder's own sum LUT (whose fourth input is otherwise unused), and the +1 that completes the
negation (two's complement: -u = ~u + 1) becomes the carry-in of a later adder. A tree of
k/2 pair sums has k/2 - 1 adders and the accumulator is one more, so the k/2 pending +1s
exactly fill their carry-ins: no extra adder at all. -128 needs no care: a' and b' stay
int8 and only sums are negated, in widths that hold the result.

Every tree level is registered, so the longest combinational path is one adder of the tree
(or the accumulator) however large `k_per_cycle` is; latency grows by log2(k_per_cycle).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from amaranth import Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from bitlane.contract.config import CoreConfig
from bitlane.contract.packing import CODE_TO_TRIT

# 2-bit trit codes of docs/protocol.md: 0b00 = 0, 0b01 = +1, 0b11 = -1, 0b10 reserved (reads as 0).
# So bit 0 says "nonzero" and bit 1 is the sign, which does not matter where bit 0 is clear:
# the reserved code reads as 0 with no extra logic.


class LaneArray(wiring.Component):
    """`lanes` mux-and-add lanes with adder trees and exact accumulators.

    Each cycle with `valid` set the lanes consume one weight word (lanes * k_per_cycle trits,
    trit (lane l, column j) at bits 2*(l*k_per_cycle + j) + 1 .. 2*(l*k_per_cycle + j)) and one
    activation word (k_per_cycle int8, column j at bits 8*j + 7 .. 8*j), adding its products
    to the accumulators. `last` marks a tile's last pair: `latency` cycles later `sums`
    (lane l at bits acc_bits*l ..) holds the tile's dot products for one cycle, flagged by
    `sums_valid`, and the accumulators start again from zero for the next pair.

    The accumulator register holds the sum *before* the current pair and is cleared by its
    flip-flops' synchronous reset after a tile's last pair, so no mux sits in front of the
    accumulator adder; the tile's result is that adder's output, taken in the same cycle.
    """

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self.levels = config.adder_levels
        # one register stage after the select muxes, one per tree level; the accumulator
        # adder's output is the result (contract/config.py defines it for both sides)
        self.latency = config.lane_latency
        super().__init__({
            "valid": In(1),
            "last": In(1),
            "weights": In(config.weight_word_bits),
            "acts": In(8 * config.k_per_cycle),
            "sums": Out(config.acc_bits * config.lanes),
            "sums_valid": Out(1),
        })

    @staticmethod
    def model(items: Iterable[tuple[int, int, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Bit-exact model of the tile results: `items` are the (valid, last, codes [lanes, k] 2-bit
        trit codes, acts [k] int8) the lanes are fed, one per cycle; each tile's result (int64 per
        lane, shown `latency` cycles after its `last` pair) is the exact dot product of its pairs."""
        results, acc = [], None
        for valid, last, codes, acts in items:
            if valid:
                step = CODE_TO_TRIT.astype(np.int64)[np.asarray(codes)] @ np.asarray(acts, dtype=np.int64)
                acc = step if acc is None else acc + step
                if last:
                    results.append(acc)
                    acc = None
        return results

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.config
        k = cfg.k_per_cycle

        # Control travels beside the data, one register per stage up to the accumulator.
        valid, last = self.valid, self.last
        for stage in range(self.latency):
            valid_q, last_q = Signal(name=f"valid_s{stage}"), Signal(name=f"last_s{stage}")
            m.d.sync += [valid_q.eq(valid), last_q.eq(last)]
            valid, last = valid_q, last_q

        acts = [self.acts[8 * j:8 * j + 8].as_signed() for j in range(k)]
        if k == 1:  # a lone input is paired with a constant zero
            acts.append(Const(0, signed(8)))
        for lane in range(cfg.lanes):
            codes = [self.weights[2 * (lane * k + j):2 * (lane * k + j) + 2] for j in range(k)]
            if k == 1:
                codes.append(Const(0, 2))

            # Stage 0: zero a' and b', invert b where the signs differ (carry-in `differ`).
            pairs = []
            for i in range(0, len(codes), 2):
                (code_a, x_a), (code_b, x_b) = (codes[i], acts[i]), (codes[i + 1], acts[i + 1])
                a = Signal(signed(8), name=f"l{lane}_a{i // 2}", reset_less=True)
                b = Signal(signed(8), name=f"l{lane}_b{i // 2}", reset_less=True)
                differ = Signal(name=f"l{lane}_differ{i // 2}", reset_less=True)
                negative = Signal(name=f"l{lane}_neg{i // 2}", reset_less=True)
                differ_now = code_b[0] & (code_a[1] ^ code_b[1])
                m.d.sync += [
                    a.eq(Mux(code_a[0], x_a, 0)),
                    b.eq(Mux(code_b[0], x_b ^ differ_now.replicate(8), 0)),
                    differ.eq(differ_now),
                    negative.eq(code_a[1]),
                ]
                pairs.append((a, b, differ, negative))

            # Pair level: (a' + b'' + differ) ^ s_a; the +1 of that negation is left pending.
            terms, carries = [], []
            for i, (a, b, differ, negative) in enumerate(pairs):
                term = Signal(signed(9), name=f"l{lane}_pair{i}", reset_less=True)
                pending = Signal(name=f"l{lane}_pending{i}", reset_less=True)
                m.d.sync += [term.eq((a + b + differ) ^ negative.replicate(9)), pending.eq(negative)]
                terms.append(term)
                carries.append(pending)

            # Tree levels: each adder takes one pending +1 as its carry-in.
            for level in range(1, self.levels):
                next_terms = []
                for i in range(0, len(terms), 2):
                    width = max(terms[i].shape().width, terms[i + 1].shape().width) + 1
                    s = Signal(signed(width), name=f"l{lane}_lv{level}_{i // 2}", reset_less=True)
                    m.d.sync += s.eq(terms[i] + terms[i + 1] + carries.pop(0))
                    next_terms.append(s)
                delayed = []
                for c in carries:  # +1s not yet used wait for the next level
                    c_q = Signal(name=f"{c.name}_d", reset_less=True)
                    m.d.sync += c_q.eq(c)
                    delayed.append(c_q)
                terms, carries = next_terms, delayed
            assert len(terms) == 1 and len(carries) == 1, "k_per_cycle must be a power of two"

            # Accumulator: the last pending +1 is its carry-in.
            acc = Signal(signed(cfg.acc_bits), name=f"l{lane}_acc")
            total = Signal(signed(cfg.acc_bits), name=f"l{lane}_total")
            m.d.comb += total.eq(acc + terms[0] + carries[0])
            with m.If(valid):
                m.d.sync += acc.eq(Mux(last, 0, total))
            m.d.comb += self.sums[cfg.acc_bits * lane:cfg.acc_bits * (lane + 1)].eq(total)

        m.d.comb += self.sums_valid.eq(valid & last)
        return m
