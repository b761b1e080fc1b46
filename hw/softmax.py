"""The softmax row unit of the integer decoder (docs/arithmetic.md, stages 4 and 5), bit-exact to
`IntegerModel._attention` from the aligned scores to the 1/sum factor:

    max   = max_j t_j                                      [int48]
    xs_j  = scale_saturating(max - t_j, c, EXP_SAT)        [uint15]  c = eq + ek* + EXP_FRAC, per row
    p_j   = exp2_neg(xs_j)                                 [uint16]  through Exp2Neg
    sum   = sum_j p_j                                      [uint32]
    (sm, es) = factor(sum);  r = recip16(sm)               [UF, uint16]  through Recip16

The weighted V sum and `u = (am * r) >> 16`, `eu = ... - es - 15` are the caller's (they need the
V accumulator); this unit hands it `r` and `es`.
"""

import numpy as np
from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bitlane.contract.intmath import (
    ACC_BITS, EXP_BITS, EXP_SAT, MANT_BITS, PROB_BITS, WIDE_BITS, bit_length, exp2_neg, factor, fits, recip16,
    scale_saturating,
)
from bitlane.contract.decoder import SOFTMAX_LATENCY, SOFTMAX_ROW_LATENCY
from bitlane.hw.nonlinear import EXP2_ARG_BITS, UF_LAYOUT, Exp2Neg, Recip16, _bit_length

# The row's exponent c = eq + ek* + EXP_FRAC: two int8 exponents and 10, so 10 bits signed.
SCALE_BITS = EXP_BITS + 2
# scale_saturating's test: bit_length(x) + c > bit_length(EXP_SAT).
EXP_SAT_LEN = EXP_SAT.bit_length()
# Right shifts from WIDE_BITS + 1 on give 0 for every x < 2^48 (with rounding), as do longer ones.
MAX_RIGHT = WIDE_BITS + 1


def softmax_row(t: np.ndarray, c: int) -> dict[str, np.ndarray | int]:
    """One visible row the reference's way (the lines of `IntegerModel._attention`, with the
    contract's primitives): row max, exp2 arguments, weights, their sum, the sum as a UF factor and
    its reciprocal mantissa."""
    t = np.asarray(t, dtype=np.int64)
    t_max = t.max()
    x = fits("score difference", t_max - t, WIDE_BITS)
    xs = scale_saturating(x, np.int64(c), EXP_SAT)
    p = exp2_neg(xs)
    total = fits("softmax sum", p.sum(), ACC_BITS, signed=False)
    sm, es = factor(total)
    return {"max": int(t_max), "xs": xs, "p": p, "sum": int(total), "mantissa": int(sm), "exponent": int(es),
            "recip": int(recip16(sm))}


class SoftmaxRow(wiring.Component):
    """Softmax of one attention row, up to the 1/sum factor (see the module docstring).

    Pass 1 takes the row's aligned scores ``t_j`` (one per cycle, ``last`` on the final one; the
    row's length is its visible length, the masked scores are not sent), writes them into a
    ``max_len`` x 48 ``Memory`` and keeps the running maximum. Pass 2 reads them back, one per
    cycle, through a pipeline: RAM read, ``x = max - t``, the saturating scale (``x`` against a
    per-row mask of the bits that saturate, barrel shift with round half up), ``min(., EXP_SAT)``,
    then ``Exp2Neg`` (2 stages); each ``(p_j, xs_j)`` leaves on ``o`` and ``p_j`` is added to the
    sum as it is read. After the row's last weight is read, the sum is factored (priority encoder,
    then shift: two cycles), ``Recip16`` takes the mantissa (16 cycles), and ``row`` offers the
    max, the sum, its factor and the reciprocal until read. Then the unit takes the next row.
    The row's shift amounts (the saturation mask, the right shift) are registered from ``c`` when
    ``last`` is taken.

    Cycle contract: for a row of ``n`` scores with the last taken in cycle ``L`` and no
    backpressure, ``o`` shows ``p_j`` in cycle ``L + 1 + LATENCY + j`` (one per cycle) and ``row``
    is valid from cycle ``L + n + LATENCY + ROW_LATENCY``; ``i.ready`` is high again the cycle
    after ``row`` is read. So a row of ``n`` scores occupies the unit for ``2 n + LATENCY +
    ROW_LATENCY`` cycles (``2 n + 25``; plus input gaps and output stalls), about one weight every
    two cycles; ``i.ready`` is low from the cycle after the last score until then. A low
    ``o.ready`` stalls the whole pass-2 pipeline (Exp2Neg's stall rule); ``i.ready`` is a state
    bit, so no path runs from ``o.ready`` or ``row.ready`` to ``i.ready``.

    A row longer than ``max_len`` (no ``last`` within ``max_len`` scores) is outside the
    contract. ``c`` must be the same on every score of a row; the unit uses the one given with
    ``last``.

    Parameters
    ----------
    max_len : int
        The longest row (the context length): the depth of the row buffer.

    Members
    -------
    i : ``In(stream.Signature(StructLayout({"t": signed(48), "c": signed(10), "last": 1})))``
        ``t_j = dot_j >> (ek* - ek_j)`` and the row's exponent ``c = eq + ek* + EXP_FRAC``.
    o : ``Out(stream.Signature(StructLayout({"p": unsigned(16), "xs": unsigned(15), "last": 1})))``
        The exp2 weight ``p_j`` in ``[0, 2^15]`` and its argument ``xs_j`` in ``[0, EXP_SAT]``, in
        row order, ``last`` on the row's final one.
    row : ``Out(stream.Signature(StructLayout({"max": signed(48), "sum": unsigned(32),
    "factor": UF_LAYOUT, "recip": unsigned(16)})))``
        Per row: ``max_j t_j``, ``sum_j p_j``, ``factor(sum)`` as ``(mantissa, exponent)`` and
        ``recip16(mantissa)``.
    """

    # (contract/decoder.py's cycle model counts them: SOFTMAX_LATENCY, SOFTMAX_ROW_LATENCY)
    LATENCY = SOFTMAX_LATENCY  # issue (RAM address), RAM data, x, scale, min, Exp2Neg x 2 -> o.valid
    ROW_LATENCY = SOFTMAX_ROW_LATENCY  # sum, bit length, factor registers, Recip16 (RECIP_CYCLES)

    I_LAYOUT = data.StructLayout({"t": signed(WIDE_BITS), "c": signed(SCALE_BITS), "last": 1})
    O_LAYOUT = data.StructLayout({"p": unsigned(PROB_BITS + 1), "xs": unsigned(EXP2_ARG_BITS), "last": 1})
    ROW_LAYOUT = data.StructLayout({"max": signed(WIDE_BITS), "sum": unsigned(ACC_BITS), "factor": UF_LAYOUT,
                                    "recip": unsigned(MANT_BITS)})

    def __init__(self, max_len: int) -> None:
        if max_len < 1:
            raise ValueError("max_len must be at least 1")
        self.max_len = max_len
        super().__init__({
            "i": In(stream.Signature(self.I_LAYOUT)),
            "o": Out(stream.Signature(self.O_LAYOUT)),
            "row": Out(stream.Signature(self.ROW_LAYOUT)),
        })

    @staticmethod
    def model(t: np.ndarray, c: int) -> dict[str, np.ndarray | int]:
        """The datapath in numpy: the running max, x, the scale as the gateware does it (saturation
        by a mask of the bits at and above 2^(15 - c), left shift of the low bits, or
        ((x >> (s - 1)) + 1) >> 1 for a right shift s <= 49), Exp2Neg's model,
        the sum, the factor (priority encoder, shift) and Recip16's model."""
        t = np.asarray(t, dtype=np.int64)
        t_max = t[0]
        for v in t[1:]:
            t_max = max(t_max, v)
        x = t_max - t
        k = EXP_SAT_LEN - c  # bit_length(x) + c > 15 <=> x has a bit at or above 2^k
        mask = (1 << WIDE_BITS) - 1
        over = (x & (mask if k <= 0 else 0 if k >= WIDE_BITS else (mask << k) & mask)) != 0
        if c >= 0:
            v = np.where(x == 0, 0, (x & ((1 << EXP_SAT_LEN) - 1)) << min(c, EXP_SAT_LEN))
        else:
            s = min(-c, MAX_RIGHT)
            v = ((x >> (s - 1)) + 1) >> 1
        xs = np.where(over | (v >= EXP_SAT), EXP_SAT, v)
        p = Exp2Neg.model(xs)
        total = int(p.sum())
        s = int(bit_length(np.int64(total))) - MANT_BITS
        sm = total >> s if s > 0 else total << -s
        es = 0 if total == 0 else s
        return {"max": int(t_max), "xs": xs, "p": p, "sum": total, "mantissa": sm, "exponent": es,
                "recip": int(Recip16.model(np.int64(sm)))}

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.exp2 = exp2 = Exp2Neg()
        m.submodules.recip = recip = Recip16()
        m.submodules.buffer = buffer = Memory(shape=signed(WIDE_BITS), depth=self.max_len, init=[])
        write = buffer.write_port()
        read = buffer.read_port()

        count = Signal(range(self.max_len))   # pass 1: scores taken; pass 2: next address to read
        end = Signal(range(self.max_len))     # the row's last address
        t_max = Signal(signed(WIDE_BITS))
        c = Signal(signed(SCALE_BITS))
        total = Signal(ACC_BITS)
        s1 = Signal(range(MAX_RIGHT))  # the row's right shift s = min(-c, 49) less one (used when c < 0)
        over_mask = Signal(WIDE_BITS)  # the row's bits of x at and above 2^(15 - c): any set saturates
        k = Signal(signed(SCALE_BITS + 1))
        m.d.comb += k.eq(EXP_SAT_LEN - self.i.payload.c)

        # ---- pass 1
        take = self.i.valid & self.i.ready
        m.d.comb += [write.addr.eq(count), write.data.eq(self.i.payload.t), write.en.eq(take)]

        # ---- pass 2 pipeline: stages advance together with Exp2Neg's (its i.ready is its advance)
        advance = exp2.i.ready
        issue = Signal()
        v1, v2, v3, v4 = (Signal(name=f"valid{k}") for k in range(1, 5))
        l1, l2, l3, l4, l5, l6 = (Signal(name=f"last{k}") for k in range(1, 7))
        x = Signal(WIDE_BITS)
        over = Signal()
        v = Signal(WIDE_BITS)
        xs = Signal(EXP2_ARG_BITS)
        xs5, xs6 = Signal(EXP2_ARG_BITS), Signal(EXP2_ARG_BITS)
        m.d.comb += [read.addr.eq(count), read.en.eq(advance)]

        # the scale: x * 2^c, saturating (scale_saturating with rounding)
        left = Mux(x == 0, 0, x[:EXP_SAT_LEN] << c[:4])  # only used when not over: then c <= 15
        right = ((x >> s1) + 1) >> 1
        with m.If(advance):
            m.d.sync += [
                v1.eq(issue), v2.eq(v1), v3.eq(v2), v4.eq(v3),
                l1.eq(count == end), l2.eq(l1), l3.eq(l2), l4.eq(l3), l5.eq(l4), l6.eq(l5),
                x.eq(t_max - read.data),
                over.eq((x & over_mask).any()),
                v.eq(Mux(c >= 0, left, right)),
                xs.eq(Mux(over | (v >= EXP_SAT), EXP_SAT, v)),
                xs5.eq(xs), xs6.eq(xs5),
            ]
        m.d.comb += [
            exp2.i.valid.eq(v4), exp2.i.payload.eq(xs),
            self.o.valid.eq(exp2.o.valid), exp2.o.ready.eq(self.o.ready),
            self.o.payload.p.eq(exp2.o.payload), self.o.payload.xs.eq(xs6), self.o.payload.last.eq(l6),
        ]

        # ---- the factor of the sum and its reciprocal
        sm = Signal(MANT_BITS)
        es = Signal(signed(EXP_BITS))
        shift = Signal(signed(7))  # bit_length(sum) - 16, registered
        shift_right, shift_left = Signal(range(ACC_BITS - MANT_BITS + 1)), Signal(range(MANT_BITS + 1))
        m.d.comb += [shift_right.eq(shift), shift_left.eq(-shift)]
        m.d.comb += [
            recip.i.payload.eq(sm),
            self.row.valid.eq(recip.o.valid), recip.o.ready.eq(self.row.ready),
            self.row.payload.max.eq(t_max), self.row.payload.sum.eq(total),
            self.row.payload.factor.mantissa.eq(sm), self.row.payload.factor.exponent.eq(es),
            self.row.payload.recip.eq(recip.o.payload),
        ]

        with m.FSM():
            with m.State("LOAD"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(take):
                    m.d.sync += [count.eq(count + 1), t_max.eq(self.i.payload.t)]
                    with m.If((count != 0) & (t_max > self.i.payload.t)):
                        m.d.sync += t_max.eq(t_max)
                    with m.If(self.i.payload.last):
                        m.d.sync += [count.eq(0), end.eq(count), c.eq(self.i.payload.c), total.eq(0),
                                     s1.eq(Mux(-self.i.payload.c > MAX_RIGHT, MAX_RIGHT - 1, -self.i.payload.c - 1)),
                                     over_mask.eq(Mux(k <= 0, (1 << WIDE_BITS) - 1,
                                                      Mux(k >= WIDE_BITS, 0, ((1 << WIDE_BITS) - 1) << k[:6])))]
                        m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += issue.eq(1)
                with m.If(advance):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == end):
                        m.d.sync += count.eq(0)
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If(self.o.valid & self.o.ready & self.o.payload.last):
                    m.next = "FACTOR"
            with m.State("FACTOR"):
                m.d.sync += shift.eq(_bit_length(total) - MANT_BITS)
                m.next = "SHIFT"
            with m.State("SHIFT"):
                m.d.sync += [
                    sm.eq(Mux(shift > 0, total >> shift_right, total << shift_left)),
                    es.eq(Mux(total == 0, 0, shift)),
                ]
                m.next = "RECIP"
            with m.State("RECIP"):
                m.d.comb += recip.i.valid.eq(1)
                with m.If(recip.i.ready):
                    m.next = "ROW"
            with m.State("ROW"):
                with m.If(self.row.valid & self.row.ready):
                    m.next = "LOAD"
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += total.eq(total + self.o.payload.p)
        return m
