"""The lane array: `lanes` exact ternary dot products, `k_per_cycle` (trit, int8) pairs each per cycle.

Arithmetic without multipliers or explicit negation. A trit code selects +x, -x or 0; -x is
formed as ~x + 1, where ~x is a free bitwise invert (as int8 it never overflows, even for
x = -128) and the +1 of every negated input is fed into some adder of the tree as its
carry-in. A binary tree of n inputs has n - 1 adders and the accumulator is one more, so the
n negation bits of a lane exactly fill the carry-in of every adder: no extra adder at all.

Every tree level is registered, so the longest combinational path is one adder of the tree
(or the accumulator) however large `k_per_cycle` is; the latency grows by log2(k_per_cycle).
"""
from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.config import CoreConfig

# 2-bit trit codes of docs/protocol.md: 0b00 = 0, 0b01 = +1, 0b11 = -1, 0b10 reserved (reads as 0).
# So bit 0 says "nonzero" and bit 1 (only together with bit 0) says "negative".


class LaneArray(wiring.Component):
    """`lanes` mux-and-add lanes with adder trees and exact accumulators.

    Each cycle with `valid` set the lanes consume one weight word (lanes * k_per_cycle trits,
    trit (lane l, column j) at bits 2*(l*k_per_cycle + j) + 1 .. 2*(l*k_per_cycle + j)) and one
    activation word (k_per_cycle int8, column j at bits 8*j + 7 .. 8*j). With `first` set the
    accumulators restart from this pair's products, else they add to what they hold.
    `sums` (lane l at bits acc_bits*l ..) and `sums_valid` show the accumulators `latency`
    cycles after the pair was presented.
    """

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self.levels = (config.k_per_cycle - 1).bit_length()  # adder-tree levels
        # one register stage after the select muxes, one per tree level, the accumulator
        self.latency = 1 + self.levels + 1
        super().__init__({
            "valid": In(1),
            "first": In(1),
            "weights": In(config.weight_word_bits),
            "acts": In(8 * config.k_per_cycle),
            "sums": Out(config.acc_bits * config.lanes),
            "sums_valid": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.config
        k = cfg.k_per_cycle

        # Control travels beside the data, one register per stage up to the accumulator.
        valid, first = self.valid, self.first
        for stage in range(1 + self.levels):
            valid_q, first_q = Signal(name=f"valid_s{stage}"), Signal(name=f"first_s{stage}")
            m.d.sync += [valid_q.eq(valid), first_q.eq(first)]
            valid, first = valid_q, first_q

        acts = [self.acts[8 * j:8 * j + 8].as_signed() for j in range(k)]
        for lane in range(cfg.lanes):
            # Stage 0: select +x / ~x / 0 per input; remember which inputs were negated.
            terms, carries = [], []
            for j in range(k):
                code = self.weights[2 * (lane * k + j):2 * (lane * k + j) + 2]
                term = Signal(signed(8), name=f"l{lane}_term{j}")
                negated = Signal(name=f"l{lane}_neg{j}")
                m.d.sync += [
                    term.eq(Mux(code[0], acts[j] ^ code[1].replicate(8), 0)),
                    negated.eq(code[0] & code[1]),
                ]
                terms.append(term)
                carries.append(negated)

            # Tree levels: each adder takes one pending negation bit as its carry-in.
            for level in range(self.levels):
                next_terms, next_carries = [], []
                for i in range(0, len(terms), 2):
                    if i + 1 < len(terms):
                        width = max(terms[i].shape().width, terms[i + 1].shape().width) + 1
                        total = terms[i] + terms[i + 1] + carries.pop(0)
                    else:
                        width = terms[i].shape().width
                        total = terms[i]
                    s = Signal(signed(width), name=f"l{lane}_lv{level}_{i // 2}")
                    m.d.sync += s.eq(total)
                    next_terms.append(s)
                delayed = []
                for c in carries:  # carries not yet used wait for the next level
                    c_q = Signal(name=f"{c.name}_d")
                    m.d.sync += c_q.eq(c)
                    delayed.append(c_q)
                terms, carries = next_terms, delayed
            assert len(terms) == 1 and len(carries) == 1, "k_per_cycle must be a power of two"

            # Accumulator: the last negation bit is its carry-in.
            acc = Signal(signed(cfg.acc_bits), name=f"l{lane}_acc")
            with m.If(valid):
                m.d.sync += acc.eq(Mux(first, 0, acc) + terms[0] + carries[0])
            m.d.comb += self.sums[cfg.acc_bits * lane:cfg.acc_bits * (lane + 1)].eq(acc)

        m.d.sync += self.sums_valid.eq(valid)
        return m
