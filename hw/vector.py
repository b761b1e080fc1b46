"""Vector unit of the integer decoder (docs/arithmetic.md, stage 1 "RMSNorm + absmax quantization" and
stage 6 "Residual add"), bit-exact to golden/integer.py (`sum_squares`, `norm_quant`, `quantize_int8`,
`IntegerModel._residual_add`) and contract/intmath.py (`factor_mul`).

    VectorReduce   max|x| and sum(x^2) of a streamed vector      1 element per cycle, result 2 cycles after `last`
    NormGain       x16 = x >> s, z = x16 * g (normalize, gain)    1 element per cycle, latency 2; 1 cycle per vector to load s
    QuantFactor    max|z| -> (c, shift) of quantize_int8          once per vector: 17 cycles (Recip16 inside)
    QuantInt8      q = clamp((z >> shift) * c + 2^22 >> 23)       1 element per cycle, latency 3
    EpsTerm        RMSNorm's eps term n eps / (scale 2^s)^2       once per vector: 20 cycles (Recip16 inside)
    FactorMul      UF x UF -> UF (factor_mul)                     1 per cycle, latency 2
    ResidualAdd    h + round((acc >> ex) * f.m * 2^(ex+f.e+rf))   1 element per cycle, latency 4

How they make `norm_quant(x, g, scale, eps)`: a `VectorReduce(32, squares=False)` pass over `x` gives
`max|x|`; a `NormGain` pass turns it into the normalize shift `s` and streams `x16 = x >> s` into a
`VectorReduce(16)` (the sum of squares) and `z = x16 * g` into a `VectorReduce(32, squares=False)`
(`M = max|z|`) and a buffer; `QuantFactor` turns `M` into the per-vector `c = (127 * recip16(Mu)) >> 7`
and `shift = eM + 1` (`(Mu, eM) = factor(M)`), and a last pass streams `z` through `QuantInt8`.
`EpsTerm` gives the eps term that completes the sum of squares `ss`, and the ratio is
`FactorMul(factor(M), RsqrtFactor(ss))` (hw/nonlinear.py). sim_tests/test_vector.py composes the
models this way and checks `q` and the ratio against the reference.

Interface: vectors are streams of elements whose payload carries a `last` bit on the vector's final
element (`amaranth.lib.stream`, valid/ready, payload held while valid and not ready). Per-vector
parameters are streams too: `QuantInt8` holds its `f` payload for every element of a vector and
consumes it with the element marked `last`. Like hw/nonlinear.py, a pipeline advances all stages
together (`advance = ~o.valid | o.ready`), so a stalled output holds every stage.

Each unit has a `model()`: a numpy restatement of its datapath that the tests check equal to the
contract's functions, and the gateware equal to both.
"""

import numpy as np
from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from bitlane.contract.intmath import (
    ACC_BITS, EPS_LIMIT, EXP_BITS, FACTOR_ONE, MANT_BITS, RES_BITS, Q_MAX, Q_SHIFT, RECIP_SHIFT, WIDE_BITS, bit_length,
)
from bitlane.hw.nonlinear import UF_LAYOUT, Recip16, _bit_length

# quantize_int8's per-element shift: z >> (eM + 1) with eM = bit_length(M) - 16 for a 32-bit M in
# [1, 2^31]: from -14 (a left shift, M = 1) to 17. A signed 6-bit field.
QUANT_SHIFT_BITS = 6
QUANT_SHIFT_MIN = 1 - (MANT_BITS - 1)  # M = 1: eM = -15
QUANT_LEFT_BITS = (-QUANT_SHIFT_MIN).bit_length()
# The quantizer's factor c = (127 * recip16(Mu)) >> 7 < 2^16.
QUANT_RECIP_DROP = RECIP_SHIFT - Q_SHIFT - 1
QUANT_FACTOR_LAYOUT = data.StructLayout({"c": unsigned(MANT_BITS), "shift": signed(QUANT_SHIFT_BITS)})
Q_BITS = 8
# The residual add's per-vector factor: UF f and the normalize shift of acc (<= 17 for int32).
RESIDUAL_FACTOR_LAYOUT = data.StructLayout({"mantissa": unsigned(MANT_BITS), "exponent": signed(EXP_BITS),
                                            "norm_shift": unsigned(5)})
# RMSNorm's eps term: [0, 2^46]; its exponents (two int8 exponents, the reciprocal's -31, two shifts
# of 16 and -2s) stay inside 12 bits.
EPS_BITS = EPS_LIMIT.bit_length()
EPS_EXP_BITS = 12
RESIDUAL_SHIFT_BITS = EXP_BITS + 3  # -(ex + f.e + res_frac): |.| < 2^10


def element_layout(width: int) -> data.StructLayout:
    """One element of a streamed vector: a signed `width`-bit value and the vector's last-element flag."""
    return data.StructLayout({"value": signed(width), "last": unsigned(1)})


class VectorReduce(wiring.Component):
    """``max|x|`` and (optionally) the exact ``sum(x * x)`` of a streamed integer vector.

    Stage 1 registers ``|x|`` and, with ``squares``, the square ``x * x`` (one signed 16 x 16
    multiply: one DSP); stage 2 folds them into a running maximum and a ``WIDE_BITS`` (48-bit)
    accumulator. When the element marked ``last`` leaves stage 2, the results are loaded into the
    output register and the running values restart from 0, so the next vector can follow with
    no gap.

    For RMSNorm (``width=16``) this is ``sum(x16 * x16)`` of ``sum_squares`` (before its eps term)
    and ``max|x16|``; with ``width=32, squares=False`` it is the absmax of ``quantize_int8``'s int32
    input and of ``normalize``. The sum is exact for any vector of fewer than ``2^18`` int16 elements
    (each square is at most ``2^30``), far above the hidden and intermediate sizes.

    Cycle contract: one element per cycle; the element marked ``last`` taken in cycle ``t`` gives the
    vector's result as ``o.valid`` in cycle ``t + 2`` (if ``o.ready`` was high in between), held until
    read. ``i.ready = ~o.valid | o.ready``: a result not read stalls both stages.

    Parameters
    ----------
    width : int
        Bits of the signed elements (16 for mantissas, 32 for gain products and residuals).
    squares : bool
        Build the multiplier and the 48-bit accumulator (``width`` must be at most 16).

    Members
    -------
    i : ``In(stream.Signature(StructLayout({"value": signed(width), "last": unsigned(1)})))``
    o : ``Out(stream.Signature(StructLayout({"absmax": unsigned(width), "sumsq": unsigned(48)})))``
        ``absmax`` in ``[0, 2^(width-1)]``; ``sumsq`` is 0 without ``squares``.
    """

    LATENCY = 2

    def __init__(self, width: int = MANT_BITS, squares: bool = True) -> None:
        if squares and width > MANT_BITS:
            raise ValueError(f"sum of squares of {width}-bit values: the multiplier is {MANT_BITS} x {MANT_BITS}")
        self.width, self.squares = width, squares
        super().__init__({
            "i": In(stream.Signature(element_layout(width))),
            "o": Out(stream.Signature(data.StructLayout({"absmax": unsigned(width), "sumsq": unsigned(WIDE_BITS)}))),
        })

    @staticmethod
    def model(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(max|x|, sum(x^2)) along the last axis, in int64 (what the output register holds)."""
        x = np.asarray(x, dtype=np.int64)
        return np.abs(x).max(axis=-1), (x * x).sum(axis=-1)

    def elaborate(self, platform) -> Module:
        m = Module()
        w = self.width
        advance = Signal()
        valid1, last1 = Signal(), Signal()
        magnitude1 = Signal(w)
        square1 = Signal(2 * w - 1)          # <= 2^(2w-2)
        running_max = Signal(w)
        running_sum = Signal(WIDE_BITS)
        x = self.i.payload.value
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]
        new_max = Mux(magnitude1 > running_max, magnitude1, running_max)
        new_sum = (running_sum + square1)[:WIDE_BITS]
        with m.If(advance):
            m.d.sync += [
                valid1.eq(self.i.valid), last1.eq(self.i.payload.last),
                magnitude1.eq(Mux(x[-1], -x, x)[:w]),
                self.o.valid.eq(valid1 & last1),
            ]
            if self.squares:
                m.d.sync += square1.eq((x * x)[:2 * w - 1])
            with m.If(valid1):
                m.d.sync += [
                    running_max.eq(Mux(last1, 0, new_max)),
                    self.o.payload.absmax.eq(new_max),
                ]
                if self.squares:
                    m.d.sync += [
                        running_sum.eq(Mux(last1, 0, new_sum)),
                        self.o.payload.sumsq.eq(new_sum),
                    ]
        return m


class QuantFactor(wiring.Component):
    """The per-vector half of ``quantize_int8``: ``M = max|z|`` -> ``(c, shift)``.

    In the cycle ``M`` is taken: ``(Mu, eM) = factor(M)`` (priority encoder and a barrel shift of
    ``M`` into ``[2^15, 2^16)``; ``M = 0`` gives ``Mu = 2^15``, ``eM = 0``, the contract's
    ``max(Mu, 2^15)``), registered with ``shift = eM + 1``. Then ``Recip16`` divides (16 cycles),
    and the output is ``c = (127 * recip16(Mu)) >> 7`` (a shift and a subtract, no multiplier).

    Cycle contract: one ``M`` at a time; ``M`` taken in cycle ``t`` gives ``o.valid`` in cycle
    ``t + 17``, held until read; ``i.ready`` is high when the unit holds no argument, so with
    ``o.ready`` high a new ``M`` is taken every 18 cycles. Used once per vector, overlapped with the
    vector's second pass (or the next vector's first).

    Members
    -------
    i : ``In(stream.Signature(unsigned(32)))``
        ``M = max|z|`` in ``[0, 2^31]``.
    o : ``Out(stream.Signature(StructLayout({"c": unsigned(16), "shift": signed(6)})))``
        What ``QuantInt8.f`` takes.
    """

    i: In(stream.Signature(unsigned(ACC_BITS)))
    o: Out(stream.Signature(QUANT_FACTOR_LAYOUT))

    LATENCY = 1 + Recip16.ITERATIONS

    @staticmethod
    def model(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(c, shift) in numpy: the datapath's shift, clamp at 2^15, reciprocal and 127x."""
        M = np.asarray(M, dtype=np.int64)
        s = bit_length(M) - MANT_BITS
        mu = np.where(s >= 0, M >> np.maximum(s, 0), M << np.maximum(-s, 0))
        mu = np.where(M == 0, FACTOR_ONE, mu)
        r = Recip16.model(mu)
        return ((r << 7) - r) >> QUANT_RECIP_DROP, np.where(M == 0, 0, s) + 1

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.recip = recip = Recip16()
        busy, sent = Signal(), Signal()
        mu = Signal(MANT_BITS)
        shift = Signal(signed(QUANT_SHIFT_BITS))
        M = self.i.payload
        length = _bit_length(M)
        s = Signal(signed(QUANT_SHIFT_BITS + 1))
        m.d.comb += s.eq(length - MANT_BITS)
        r = recip.o.payload
        m.d.comb += [
            self.i.ready.eq(~busy),
            recip.i.valid.eq(busy & ~sent), recip.i.payload.eq(mu),
            self.o.valid.eq(recip.o.valid), recip.o.ready.eq(self.o.ready),
            self.o.payload.c.eq((((r << 7) - r) >> QUANT_RECIP_DROP)[:MANT_BITS]),
            self.o.payload.shift.eq(shift),
        ]
        with m.If(self.i.valid & ~busy):
            m.d.sync += [
                busy.eq(1), sent.eq(0),
                mu.eq(Mux(M == 0, FACTOR_ONE,
                          Mux(s[-1], M << (-s).as_unsigned()[:QUANT_LEFT_BITS], M >> s.as_unsigned()))[:MANT_BITS]),
                shift.eq(Mux(M == 0, 0, s) + 1),
            ]
        with m.If(recip.i.valid & recip.i.ready):
            m.d.sync += sent.eq(1)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += busy.eq(0)
        return m


class QuantInt8(wiring.Component):
    """The per-element half of ``quantize_int8``: ``q = clamp((zq * c + 2^22) >> 23, -128, 127)``
    with ``zq = z >> shift`` (arithmetic, truncating; a left shift for ``shift < 0``).

    Stage 1: the barrel shift to the int16 ``zq``; stage 2: the signed 16 x unsigned 16 product
    (one DSP); stage 3: round half up and saturate to int8. ``(c, shift)`` come from
    ``QuantFactor`` once per vector on ``f``.

    Cycle contract: fully pipelined, latency 3, one element per cycle. An element is taken when
    ``i.valid``, ``f.valid`` and the pipeline advances; ``f`` is consumed with the element marked
    ``last``, so vectors follow each other with no gap when their factors are ready. A low
    ``o.ready`` stalls every stage. Elements outside the contract (``zq`` not fitting int16, i.e.
    ``|z| > M``) give an unspecified code.

    Members
    -------
    f : ``In(stream.Signature(StructLayout({"c": unsigned(16), "shift": signed(6)})))``
        The vector's factor, held for all its elements.
    i : ``In(stream.Signature(StructLayout({"value": signed(32), "last": unsigned(1)})))``
        ``z``.
    o : ``Out(stream.Signature(StructLayout({"value": signed(8), "last": unsigned(1)})))``
        ``q``, with the element's ``last``.
    """

    f: In(stream.Signature(QUANT_FACTOR_LAYOUT))
    i: In(stream.Signature(element_layout(ACC_BITS)))
    o: Out(stream.Signature(element_layout(Q_BITS)))

    LATENCY = 3

    @staticmethod
    def model(z: np.ndarray, c: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """q in numpy for elements z with their vector's (c, shift) (broadcast)."""
        z, c, shift = (np.asarray(a, dtype=np.int64) for a in (z, c, shift))
        zq = np.where(shift >= 0, z >> np.maximum(shift, 0), z << np.maximum(-shift, 0))
        zq = ((zq + (1 << (MANT_BITS - 1))) & ((1 << MANT_BITS) - 1)) - (1 << (MANT_BITS - 1))  # int16 register
        return np.clip((zq * c + (1 << (Q_SHIFT - 1))) >> Q_SHIFT, -Q_MAX - 1, Q_MAX)

    def elaborate(self, platform) -> Module:
        m = Module()
        advance = Signal()
        valid = [Signal(name=f"valid{k + 1}") for k in range(self.LATENCY)]
        last = [Signal(name=f"last{k + 1}") for k in range(self.LATENCY)]
        zq1 = Signal(signed(MANT_BITS))
        c1 = Signal(MANT_BITS)
        p2 = Signal(signed(2 * MANT_BITS))
        take = Signal()
        z, shift = self.i.payload.value, self.f.payload.shift
        m.d.comb += [
            advance.eq(~valid[-1] | self.o.ready),
            take.eq(advance & self.i.valid & self.f.valid),
            self.i.ready.eq(advance & self.f.valid),
            self.f.ready.eq(advance & self.i.valid & self.i.payload.last),
            self.o.valid.eq(valid[-1]), self.o.payload.last.eq(last[-1]),
        ]
        rounded = (p2 + (1 << (Q_SHIFT - 1))) >> Q_SHIFT  # in [-256, 256]
        with m.If(advance):
            m.d.sync += [
                valid[0].eq(take), last[0].eq(self.i.payload.last),
                zq1.eq(Mux(shift[-1], z << (-shift).as_unsigned()[:QUANT_LEFT_BITS], z >> shift.as_unsigned()[:QUANT_SHIFT_BITS - 1])),
                c1.eq(self.f.payload.c),
                p2.eq(zq1 * c1),
                self.o.payload.value.eq(Mux(rounded > Q_MAX, Q_MAX, Mux(rounded < -Q_MAX - 1, -Q_MAX - 1, rounded))),
                *(later.eq(earlier) for earlier, later in zip(valid, valid[1:])),
                *(later.eq(earlier) for earlier, later in zip(last, last[1:])),
            ]
        return m


class NormGain(wiring.Component):
    """RMSNorm's element pass (``sum_squares`` / ``norm_quant``): ``x16 = x >> s`` (``normalize``)
    and the gain product ``z = x16 * g``.

    ``s = max(0, bit_length(M) - 15)`` is computed from the vector's ``M = max|x|`` (a
    ``VectorReduce(32, squares=False)`` pass) by a priority encoder when ``f`` is taken, in a cycle of
    its own before the vector's first element; then stage 1 shifts each element to the int16
    ``x16`` and stage 2 multiplies it by its int16 gain (one DSP). ``x16`` goes on with ``z`` (for a
    ``VectorReduce(16)`` sum-of-squares pass while ``z`` feeds an absmax pass and the quantizer).

    Cycle contract: latency 2 (an element taken in cycle ``t`` is ``o.valid`` in cycle ``t + 2``
    without backpressure), one element per cycle within a vector; ``f`` is taken one cycle before
    the vector's first element can be, and the vector's ``last`` element frees the unit for the next
    ``f``: one idle cycle per vector. A low ``o.ready`` stalls both stages.

    Members
    -------
    f : ``In(stream.Signature(unsigned(32)))``
        ``M = max|x|`` of the vector.
    i : ``In(stream.Signature(StructLayout({"value": signed(32), "gain": signed(16), "last": unsigned(1)})))``
        ``x`` (e.g. the residual) and the element's gain.
    o : ``Out(stream.Signature(StructLayout({"x16": signed(16), "z": signed(32), "last": unsigned(1)})))``
    """

    f: In(stream.Signature(unsigned(ACC_BITS)))
    i: In(stream.Signature(data.StructLayout({"value": signed(RES_BITS), "gain": signed(MANT_BITS),
                                              "last": unsigned(1)})))
    o: Out(stream.Signature(data.StructLayout({"x16": signed(MANT_BITS), "z": signed(2 * MANT_BITS),
                                               "last": unsigned(1)})))

    LATENCY = 2

    @staticmethod
    def model(x: np.ndarray, gain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x16, z) along the last axis in numpy: the shift from max|x|, the shift, the product."""
        x = np.asarray(x, dtype=np.int64)
        s = np.maximum(bit_length(np.abs(x).max(axis=-1, keepdims=True)) - (MANT_BITS - 1), 0)
        x16 = x >> s
        return x16, x16 * np.asarray(gain, dtype=np.int64)

    def elaborate(self, platform) -> Module:
        m = Module()
        advance, take, loaded = Signal(), Signal(), Signal()
        shift = Signal(range(RES_BITS - MANT_BITS + 2))  # 0..17
        valid1, valid2, last1 = Signal(), Signal(), Signal()
        x16_1, g1 = Signal(signed(MANT_BITS)), Signal(signed(MANT_BITS))
        length = _bit_length(self.f.payload)
        i = self.i.payload
        m.d.comb += [
            advance.eq(~valid2 | self.o.ready),
            take.eq(advance & self.i.valid & loaded),
            self.i.ready.eq(advance & loaded),
            self.f.ready.eq(~loaded),
            self.o.valid.eq(valid2),
        ]
        with m.If(self.f.valid & ~loaded):
            m.d.sync += [loaded.eq(1),
                         shift.eq(Mux(length > MANT_BITS - 1, length - (MANT_BITS - 1), 0))]
        with m.If(take & i.last):
            m.d.sync += loaded.eq(0)
        with m.If(advance):
            m.d.sync += [
                valid1.eq(take), last1.eq(i.last), x16_1.eq(i.value >> shift), g1.eq(i.gain),
                valid2.eq(valid1), self.o.payload.last.eq(last1),
                self.o.payload.x16.eq(x16_1), self.o.payload.z.eq(x16_1 * g1),
            ]
        return m


class ResidualAdd(wiring.Component):
    """The residual add of docs/arithmetic.md stage 6 (``IntegerModel._residual_add``):
    ``h + delta`` with ``a = acc >> ex`` (``normalize(acc)``: ``ex`` comes from a ``VectorReduce``
    pass over ``acc``), ``p = a * f.m`` and ``delta = round(p * 2^(ex + f.e + res_frac))``, round half
    up for a right shift, exact for a left shift.

    Stage 1: the normalize shift to the int16 ``a`` and the per-vector shift ``s = -(ex + f.e +
    res_frac)``; stage 2: the signed 16 x unsigned 16 product (one DSP); stage 3: ``delta``: for
    ``s > 0`` ``((p >> min(s - 1, 31)) + 1) >> 1`` (equal to ``(p + 2^(s-1)) >> s``, and 0 for every
    ``s >= 32``), else ``p << -s``; stage 4: ``h + delta``.

    Cycle contract: fully pipelined, latency 4, one element per cycle; ``f`` is consumed with the
    element marked ``last`` (as in ``QuantInt8``); a low ``o.ready`` stalls every stage. Elements
    the reference refuses (``delta`` or ``h + delta`` outside int32) give an unspecified value.

    Members
    -------
    res_frac : ``In(signed(8))``
        The model's residual fraction bits (a configuration constant).
    f : ``In(stream.Signature(StructLayout({"mantissa": unsigned(16), "exponent": signed(8), "norm_shift": unsigned(5)})))``
        The vector's factor ``f`` (UF, e.g. ``ratio (x) C_o``) and its normalize shift ``ex``, held for
        all its elements.
    i : ``In(stream.Signature(StructLayout({"acc": signed(32), "h": signed(32), "last": unsigned(1)})))``
        The BitLinear accumulator and the residual element.
    o : ``Out(stream.Signature(StructLayout({"value": signed(32), "last": unsigned(1)})))``
        The new residual element.
    """

    res_frac: In(signed(EXP_BITS))
    f: In(stream.Signature(RESIDUAL_FACTOR_LAYOUT))
    i: In(stream.Signature(data.StructLayout({"acc": signed(ACC_BITS), "h": signed(RES_BITS), "last": unsigned(1)})))
    o: Out(stream.Signature(element_layout(RES_BITS)))

    LATENCY = 4

    @staticmethod
    def model(h: np.ndarray, acc: np.ndarray, mantissa, exponent, norm_shift, res_frac) -> np.ndarray:
        """The datapath in numpy (per-vector values broadcast), results wrapped to int32 as the register."""
        h, acc = np.asarray(h, dtype=np.int64), np.asarray(acc, dtype=np.int64)
        a = ((acc >> norm_shift) + (1 << 15)) % (1 << 16) - (1 << 15)
        p = a * mantissa
        s = -(np.asarray(norm_shift) + exponent + res_frac)
        right = ((p >> np.clip(s - 1, 0, RES_BITS - 1)) + 1) >> 1
        left = p << np.clip(-s, 0, RES_BITS - 1)
        value = h + np.where(s > 0, right, left)
        return (value + (1 << 31)) % (1 << 32) - (1 << 31)

    def elaborate(self, platform) -> Module:
        m = Module()
        advance, take = Signal(), Signal()
        valid = [Signal(name=f"valid{k + 1}") for k in range(self.LATENCY)]
        last = [Signal(name=f"last{k + 1}") for k in range(self.LATENCY)]
        h = [Signal(signed(RES_BITS), name=f"h{k + 1}") for k in range(self.LATENCY - 1)]
        a1 = Signal(signed(MANT_BITS))
        m1 = Signal(MANT_BITS)
        s1, s2 = Signal(signed(RESIDUAL_SHIFT_BITS)), Signal(signed(RESIDUAL_SHIFT_BITS))
        p2 = Signal(signed(2 * MANT_BITS))
        delta3 = Signal(signed(RES_BITS))
        f, i = self.f.payload, self.i.payload
        m.d.comb += [
            advance.eq(~valid[-1] | self.o.ready),
            take.eq(advance & self.i.valid & self.f.valid),
            self.i.ready.eq(advance & self.f.valid),
            self.f.ready.eq(advance & self.i.valid & i.last),
            self.o.valid.eq(valid[-1]), self.o.payload.last.eq(last[-1]),
        ]
        # min(s - 1, 31) and min(-s, 31) as 5-bit shift amounts
        right = Mux(s2 > RES_BITS, RES_BITS - 1, (s2 - 1)[:5])
        left = Mux(-s2 > RES_BITS - 1, RES_BITS - 1, (-s2)[:5])
        with m.If(advance):
            m.d.sync += [
                valid[0].eq(take), last[0].eq(i.last), h[0].eq(i.h),
                a1.eq(i.acc >> f.norm_shift), m1.eq(f.mantissa),
                s1.eq(-(f.norm_shift + f.exponent + self.res_frac)),
                p2.eq(a1 * m1), s2.eq(s1),
                delta3.eq(Mux(s2 > 0, ((p2 >> right) + 1) >> 1, p2 << left)),
                self.o.payload.value.eq(h[-1] + delta3),
                *(later.eq(earlier) for earlier, later in zip(valid, valid[1:])),
                *(later.eq(earlier) for earlier, later in zip(last, last[1:])),
                *(later.eq(earlier) for earlier, later in zip(h, h[1:])),
            ]
        return m


class FactorMul(wiring.Component):
    """Product of two UF factors (``factor_mul`` of the contract): the per-vector ``(x)`` of
    docs/arithmetic.md (``ratio = factor(max|z|) (x) rsqrt_factor(ss)``, ``f_W = ratio (x) C_W``, the eps
    term's ``EPS_n (x) inv (x) inv``).

    Stage 1: the unsigned 16 x 16 product (one DSP) and the exponent sum; stage 2: renormalize. A
    product of two mantissas in ``[2^15, 2^16)`` lies in ``[2^30, 2^32)``, so the shift is 16 when bit
    31 is set and 15 otherwise (truncating); a zero operand gives ``(0, 0)``.

    Cycle contract: fully pipelined, latency 2, one pair per cycle; a low ``o.ready`` stalls both
    stages. Mantissas outside ``{0} u [2^15, 2^16)`` give an unspecified result.

    Members
    -------
    i : ``In(stream.Signature(StructLayout({"a": UF, "b": UF})))``
        UF = ``StructLayout({"mantissa": unsigned(16), "exponent": signed(8)})``.
    o : ``Out(stream.Signature(StructLayout({"mantissa": unsigned(16), "exponent": signed(10)})))``
        The exponent is two bits wider than a UF's: the sum of two int8 exponents and the shift is
        not checked by the contract here (only where a factor is stored).
    """

    i: In(stream.Signature(data.StructLayout({"a": UF_LAYOUT, "b": UF_LAYOUT})))
    o: Out(stream.Signature(data.StructLayout({"mantissa": unsigned(MANT_BITS), "exponent": signed(EXP_BITS + 2)})))

    LATENCY = 2

    @staticmethod
    def model(am, ae, bm, be) -> tuple[np.ndarray, np.ndarray]:
        """(mantissa, exponent) in numpy: the product, bit 31 chooses the shift."""
        p = np.asarray(am, dtype=np.int64) * np.asarray(bm, dtype=np.int64)
        shift = np.where(p >> (2 * MANT_BITS - 1), MANT_BITS, MANT_BITS - 1)
        return p >> shift, np.where(p == 0, 0, np.asarray(ae) + np.asarray(be) + shift)

    def elaborate(self, platform) -> Module:
        m = Module()
        advance = Signal()
        valid1 = Signal()
        p1 = Signal(2 * MANT_BITS)
        e1 = Signal(signed(EXP_BITS + 1))
        a, b = self.i.payload.a, self.i.payload.b
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]
        top = p1[-1]
        with m.If(advance):
            m.d.sync += [
                valid1.eq(self.i.valid), p1.eq(a.mantissa * b.mantissa), e1.eq(a.exponent + b.exponent),
                self.o.valid.eq(valid1),
                self.o.payload.mantissa.eq(Mux(top, p1 >> MANT_BITS, p1 >> (MANT_BITS - 1))),
                self.o.payload.exponent.eq(Mux(p1 == 0, 0, e1 + Mux(top, MANT_BITS, MANT_BITS - 1))),
            ]
        return m


class EpsTerm(wiring.Component):
    """RMSNorm's eps term of ``sum_squares``: ``min(round(t 2^-2s), 2^46)`` with
    ``t = EPS_n (x) inv (x) inv``, ``inv = (recip16(scale.m), -31 - scale.e)`` (``1/scale``), ``s`` the
    vector's normalize shift; the caller adds it to ``VectorReduce(16)``'s sum of squares.

    A small sequencer around one ``Recip16`` and one unsigned 16 x 16 multiplier: cycle 0 takes the
    arguments and starts the reciprocal of ``max(scale.m, 2^15)``; when it is done (16 cycles later),
    two cycles each form a factor product (multiply and renormalize by 15 or 16, zero stays zero),
    and one cycle the saturating shift by ``c = t.e - 2s``: ``2^46`` when ``t.m != 0`` and
    ``16 + c > 47``, else ``t.m << c`` (at most ``2^46``) or, for ``c < 0``, round half up
    ``((t.m >> (-c - 1)) + 1) >> 1``.

    Cycle contract: one argument at a time; taken in cycle ``t``, the result is ``o.valid`` in cycle
    ``t + 20`` and held until read; ``i.ready`` is high when the unit holds no argument. Once per
    norm per token, overlapped with the vector's passes.

    Members
    -------
    i : ``In(stream.Signature(StructLayout({"scale": UF, "eps": UF, "shift": unsigned(5)})))``
        ``scale`` the input vector's scale (UF), ``eps`` the model's ``EPS_n`` (UF, ``(0, 0)`` for none),
        ``shift`` the normalize shift ``s`` of the vector.
    o : ``Out(stream.Signature(unsigned(47)))``
        The term, in ``[0, 2^46]``.
    """

    i: In(stream.Signature(data.StructLayout({"scale": UF_LAYOUT, "eps": UF_LAYOUT, "shift": unsigned(5)})))
    o: Out(stream.Signature(unsigned(EPS_BITS)))

    LATENCY = 1 + Recip16.ITERATIONS + 3

    @staticmethod
    def model(scale_m, scale_e, eps_m, eps_e, shift) -> np.ndarray:
        """The datapath in numpy: reciprocal, two renormalized products, the saturating shift."""
        scale_m, scale_e, eps_m, eps_e, shift = (np.asarray(a, dtype=np.int64)
                                                 for a in (scale_m, scale_e, eps_m, eps_e, shift))
        inv_m, inv_e = Recip16.model(np.maximum(scale_m, FACTOR_ONE)), -RECIP_SHIFT - scale_e
        t_m, t_e = FactorMul.model(*FactorMul.model(eps_m, eps_e, inv_m, inv_e), inv_m, inv_e)
        c = t_e - 2 * shift
        over = (t_m != 0) & (MANT_BITS + c > EPS_BITS)
        left = np.minimum(t_m << np.clip(c, 0, EPS_BITS - MANT_BITS), EPS_LIMIT)
        right = ((t_m >> np.clip(-c - 1, 0, MANT_BITS)) + 1) >> 1
        return np.where(over, EPS_LIMIT, np.where(c >= 0, left, right))

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.recip = recip = Recip16()
        busy, sent = Signal(), Signal()
        step = Signal(range(4))  # after the reciprocal: 0, 1 the products, 2 the shift, 3 done
        scale_e = Signal(signed(EXP_BITS))
        eps_m, eps_e = Signal(MANT_BITS), Signal(signed(EXP_BITS))
        shift = Signal(5)
        inv_m = Signal(MANT_BITS)
        t_m, t_e = Signal(MANT_BITS), Signal(signed(EPS_EXP_BITS))
        i = self.i.payload
        m.d.comb += [
            self.i.ready.eq(~busy),
            recip.i.valid.eq(busy & ~sent),
        ]
        scale_m = Signal(MANT_BITS)  # registered: recip.i.payload holds while the reciprocal waits
        m.d.comb += recip.i.payload.eq(Mux(scale_m[-1], scale_m, FACTOR_ONE))
        with m.If(self.i.valid & ~busy):
            m.d.sync += [busy.eq(1), sent.eq(0), step.eq(0), scale_m.eq(i.scale.mantissa),
                         scale_e.eq(i.scale.exponent), eps_m.eq(i.eps.mantissa), eps_e.eq(i.eps.exponent),
                         shift.eq(i.shift)]
        with m.If(recip.i.valid & recip.i.ready):
            m.d.sync += sent.eq(1)
        inv_e = -RECIP_SHIFT - scale_e
        # the factor product of (a_m, a_e) and the reciprocal, renormalized (zero stays zero)
        a_m = Mux(step == 0, eps_m, t_m)
        a_e = Mux(step == 0, eps_e, t_e)
        p = Signal(2 * MANT_BITS)
        m.d.comb += p.eq(a_m * Mux(step == 0, recip.o.payload, inv_m))
        top = p[-1]
        c = Signal(signed(EPS_EXP_BITS + 1))
        m.d.comb += c.eq(t_e - 2 * shift)
        left = (t_m << c.as_unsigned()[:5])[:EPS_BITS]
        right = ((t_m >> (-c - 1).as_unsigned()[:5]) + 1) >> 1
        result = Signal(EPS_BITS)
        m.d.comb += [recip.o.ready.eq(step == 0), self.o.valid.eq(step == 3), self.o.payload.eq(result)]
        with m.If(busy & ((step == 1) | (recip.o.valid & (step == 0)))):
            m.d.sync += [
                t_m.eq(Mux(top, p >> MANT_BITS, p >> (MANT_BITS - 1))),
                t_e.eq(Mux(p == 0, 0, a_e + inv_e + Mux(top, MANT_BITS, MANT_BITS - 1))),
                step.eq(step + 1),
            ]
            with m.If(step == 0):
                m.d.sync += inv_m.eq(recip.o.payload)
        with m.If(busy & (step == 2)):
            m.d.sync += [
                step.eq(3),
                result.eq(Mux((t_m != 0) & (c > EPS_BITS - MANT_BITS), EPS_LIMIT,
                              Mux(c >= 0, Mux(left > EPS_LIMIT, EPS_LIMIT, left),
                                  Mux(-c - 1 > MANT_BITS, 0, right)))),
            ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += [busy.eq(0), step.eq(0)]
        return m


def quantize_int8(z: np.ndarray) -> np.ndarray:
    """The units' composition in numpy (a VectorReduce pass, QuantFactor, a QuantInt8 pass): what the
    tests compare with golden.integer.quantize_int8."""
    z = np.asarray(z, dtype=np.int64)
    absmax, _ = VectorReduce.model(z)
    c, shift = QuantFactor.model(absmax)
    return QuantInt8.model(z, c[..., None], shift[..., None])


# Every unit by the name the tests and the benchmark use (with the parameters they are built with).
UNITS: dict[str, object] = {
    "reduce16": lambda: VectorReduce(MANT_BITS, squares=True),
    "absmax32": lambda: VectorReduce(ACC_BITS, squares=False),
    "quant_factor": QuantFactor,
    "quant_int8": QuantInt8,
    "norm_gain": NormGain,
    "residual": ResidualAdd,
    "factor_mul": FactorMul,
    "eps_term": EpsTerm,
}
