"""Nonlinear units of the integer decoder (docs/arithmetic.md, "Units"), bit-exact to contract/intmath.py.

    Recip16      floor((2^31 - 1) / m)             iterative: 16 cycles per result, no multiplier
    Rsqrt16      ~2^22 / sqrt(m)                   latency 5: seed ROM + Newton step, 3 multipliers
    RsqrtFactor  x^-1/2 of a uint48 as a UF factor latency 8: priority encoder, even shift, Rsqrt16's stages
    Exp2Neg      ~2^15 * 2^(-x / 1024)             latency 2: 1024-entry ROM + barrel shift
    SinCos       sin, cos of a uint32 phase in Q14 latency 2: quarter-wave ROM, two read ports
    RopePhase    pos * omega mod 2^32              latency 2: 2 multipliers
    SigmoidQ15   2^15 sigmoid(x 2^e)               latency 4: priority encoder, shift, 1024-entry ROM

All but Recip16 take one argument per cycle.

Interface: every unit takes its argument on an `amaranth.lib.stream` input `i` and gives its result
on a stream output `o` (valid/ready, payload held while valid and not ready). Streams rather than
start/done because the callers are streaming passes (a softmax row through Exp2Neg, d/2 RoPE phases
through RopePhase and SinCos), so a pipelined unit must take one argument per cycle and apply
backpressure without dropping or repeating one; the once-per-vector Recip16 uses the same interface
so any unit can be swapped behind one FIFO or scheduler.

Pipelined units advance all stages together: a stage moves on when the output register is empty or
being read (`advance = ~o.valid | o.ready`), and `i.ready = advance`. The block RAM read ports are
enabled by the same signal, so a stall holds every stage including the RAM's output register; the
cost is a combinational path from `o.ready` to `i.ready`, which a caller that needs it cut puts a
stream register in front of.

Each unit has a `model()`: a numpy restatement of its datapath (the same registers, mirroring and
shifts as the gateware) that the tests check equal to the contract function over the whole domain,
and the gateware equal to both. (Rsqrt16's datapath is the contract's formula itself, so its model
is that function.)
"""

import numpy as np
from amaranth import Cat, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bitlane.contract.intmath import (
    ACC_BITS, EXP2_TABLE, EXP_BITS, EXP_FRAC, EXP_SAT, MANT_BITS, PHASE_BITS, PROB_BITS, RECIP_NUM, RSQRT_FRAC,
    RSQRT_SEED, RSQRT_SEED_BITS, RSQRT_SQ_SHIFT, RSQRT_T_FRAC, RSQRT_T_SHIFT, SIG_FRAC, SIG_RANGE_BITS,
    SIGMOID_TABLE, SINE_INDEX_BITS, SINE_TABLE, TRIG_FRAC, WIDE_BITS, bit_length, rsqrt16,
)

# The seed table is indexed by the top RSQRT_SEED_BITS of m in [2^14, 2^16); the lowest quarter of
# those indices (m < 2^14) is outside the domain and not stored.
RSQRT_SEED_BASE = 1 << (RSQRT_SEED_BITS - 2)
# Seeds and results alike are below 2^15 (2^22 / sqrt(2^14)).
RSQRT_BITS = int(RSQRT_SEED.max()).bit_length()
# The exp2 unit's argument: 0..EXP_SAT and, for a caller that does not saturate, anything below
# twice that (every such value shifts the table entry, <= 2^15, right by >= 16 bits to 0).
EXP2_ARG_BITS = EXP_SAT.bit_length()
# The sigmoid table's index: |x| with SIG_FRAC fraction bits below 2^SIG_RANGE_BITS.
SIG_INDEX_BITS = SIG_FRAC + SIG_RANGE_BITS
# A UF factor: uint16 mantissa in [2^15, 2^16) and a signed exponent.
UF_LAYOUT = data.StructLayout({"mantissa": unsigned(MANT_BITS), "exponent": signed(EXP_BITS)})
# Sine: the phase's top two bits are the quadrant, the next SINE_INDEX_BITS index the table.
SINE_PHASE_BITS = SINE_INDEX_BITS + 2


def _pipeline(m: Module, i: stream.Interface, o: stream.Interface, stages: int) -> Signal:
    """Valid bits of a `stages`-deep pipeline from `i` to `o` that stalls as a whole.

    Returns `advance`, high in cycles where every stage register loads its predecessor (the caller
    guards its data registers and RAM read enables with it)."""
    advance = Signal()
    valid = [Signal(name=f"valid{k + 1}") for k in range(stages)]
    m.d.comb += [advance.eq(~valid[-1] | o.ready), i.ready.eq(advance), o.valid.eq(valid[-1])]
    with m.If(advance):
        m.d.sync += Cat(valid).eq(Cat(i.valid, *valid[:-1]))
    return advance


class Recip16(wiring.Component):
    """Reciprocal unit: ``floor((2^31 - 1) / m)`` by restoring division (``recip16`` of the contract).

    One quotient bit per cycle: the 16 low bits of the constant dividend ``RECIP_NUM`` shift into
    the partial remainder while the quotient bits shift in behind them, in one 16-bit register. The
    dividend's top bits, ``RECIP_NUM >> 16``, are the initial remainder (< 2^15 <= m, so the
    quotient fits 16 bits). The first iteration runs in the cycle the argument is taken.

    Cycle contract: an argument taken in cycle ``t`` gives its result as ``o.valid`` from cycle
    ``t + 16`` until it is read; ``i.ready`` is high when the unit is empty or its result is being
    read, so with ``o.ready`` held high one result leaves every 16 cycles. Used once per vector
    (the quantizer's 127/max, the softmax 1/sum, the eps term's 1/scale), so no multiplier and no
    unrolling.

    Members
    -------
    i : ``In(stream.Signature(unsigned(16)))``
        ``m`` in ``[2^15, 2^16)``; other values give an unspecified result.
    o : ``Out(stream.Signature(unsigned(16)))``
        The quotient, in ``[2^15, 2^16)``.
    """

    i: In(stream.Signature(unsigned(MANT_BITS)))
    o: Out(stream.Signature(unsigned(MANT_BITS)))

    ITERATIONS = MANT_BITS

    @staticmethod
    def model(m: np.ndarray) -> np.ndarray:
        """The datapath in numpy: remainder and dividend/quotient shift register, 16 steps."""
        m = np.asarray(m, dtype=np.int64)
        remainder = np.full(m.shape, RECIP_NUM >> MANT_BITS, dtype=np.int64)
        shifter = np.full(m.shape, RECIP_NUM & ((1 << MANT_BITS) - 1), dtype=np.int64)
        for _ in range(MANT_BITS):
            trial = (remainder << 1) | (shifter >> (MANT_BITS - 1))
            take = trial >= m
            remainder = np.where(take, trial - m, trial)
            shifter = ((shifter << 1) & ((1 << MANT_BITS) - 1)) | take
        return shifter

    def elaborate(self, platform) -> Module:
        m = Module()
        divisor = Signal(MANT_BITS)
        remainder = Signal(MANT_BITS)  # always < divisor
        shifter = Signal(MANT_BITS)    # dividend bits not yet used, then the quotient bits behind them
        left = Signal(range(self.ITERATIONS))  # iterations still to run after this cycle's
        busy = Signal()

        # One iteration on either the registers or, when an argument is taken, the initial values.
        load = self.i.valid & self.i.ready
        d = Mux(load, self.i.payload, divisor)
        r = Mux(load, RECIP_NUM >> MANT_BITS, remainder)
        s = Mux(load, RECIP_NUM & ((1 << MANT_BITS) - 1), shifter)
        trial = Cat(s[-1], r)  # (r << 1) | next dividend bit: 17 bits
        take = trial >= d
        m.d.comb += [
            self.i.ready.eq(~busy & (~self.o.valid | self.o.ready)),
            self.o.payload.eq(shifter),
        ]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(load | busy):
            m.d.sync += [
                divisor.eq(d),
                remainder.eq(Mux(take, trial - d, trial)),
                shifter.eq(Cat(take, s[:-1])),
            ]
        with m.If(load):
            m.d.sync += [busy.eq(1), left.eq(self.ITERATIONS - 2)]
        with m.Elif(busy):
            m.d.sync += left.eq(left - 1)
            with m.If(left == 0):
                m.d.sync += [busy.eq(0), self.o.valid.eq(1)]
        return m


class Rsqrt16(wiring.Component):
    """Inverse square root ``y ~ 2^22 / sqrt(m)`` (``rsqrt16`` of the contract).

    Stage 1 reads the seed ``RSQRT_SEED[(m >> 6) - 256]`` from a 768 x 15 ROM (one block RAM) and
    stage 2 registers it (the block RAM's clock-to-output is too slow to feed a multiplier in the
    same cycle: 76 MHz on the ECP5 without this stage). Stages 3-5 are the Newton step, one
    unsigned 16 x 16 multiply each (one DSP each), with the shifts of the contract: ``a = y*y >> 15``,
    ``t = m*a >> 13``, ``y' = y*((3*2^16 - t) >> 2) >> 15``.

    Cycle contract: fully pipelined, latency 5 (an argument taken in cycle ``t`` is ``o.valid``
    in cycle ``t + 5`` if ``o.ready`` was high in between), one argument per cycle; a low
    ``o.ready`` stalls every stage (see the module docstring).

    Members
    -------
    i : ``In(stream.Signature(unsigned(16)))``
        ``m`` in ``[2^14, 2^16)``; other values give an unspecified result.
    o : ``Out(stream.Signature(unsigned(15)))``
        ``y`` in ``[2^14 - 1, 2^15)``.
    """

    i: In(stream.Signature(unsigned(MANT_BITS)))
    o: Out(stream.Signature(unsigned(RSQRT_BITS)))

    LATENCY = 5

    # The datapath is the contract's formula stage for stage; its model is that function.
    model = staticmethod(rsqrt16)

    def elaborate(self, platform) -> Module:
        m = Module()
        advance = _pipeline(m, self.i, self.o, self.LATENCY)
        m.d.comb += self.o.payload.eq(_rsqrt_stages(m, advance, self.i.payload))
        return m


def _rsqrt_stages(m: Module, advance: Value, arg: Value) -> Signal:
    """Rsqrt16's five stages on `arg` (taken when `advance`): returns the stage-5 result register."""
    m.submodules.seed = seed = Memory(shape=unsigned(RSQRT_BITS), depth=len(RSQRT_SEED),
                                      init=[int(v) for v in RSQRT_SEED])
    read = seed.read_port()
    m.d.comb += [read.en.eq(advance), read.addr.eq(arg[MANT_BITS - RSQRT_SEED_BITS:] - RSQRT_SEED_BASE)]
    # Registers named by the stage that holds them.
    m1, m2, m3 = Signal(MANT_BITS), Signal(MANT_BITS), Signal(MANT_BITS)
    y2, y3, y4, y5 = Signal(RSQRT_BITS), Signal(RSQRT_BITS), Signal(RSQRT_BITS), Signal(RSQRT_BITS)
    a3 = Signal(2 * RSQRT_BITS - RSQRT_SQ_SHIFT)
    t4 = Signal(RSQRT_T_FRAC + 2)  # t ~ 2^16; the seed's error keeps it well below 3 * 2^16
    h = Signal(MANT_BITS)
    m.d.comb += h.eq(((3 << RSQRT_T_FRAC) - t4) >> (RSQRT_T_FRAC - RSQRT_SQ_SHIFT + 1))
    with m.If(advance):
        m.d.sync += [
            m1.eq(arg),
            m2.eq(m1), y2.eq(read.data),
            m3.eq(m2), y3.eq(y2), a3.eq((y2 * y2) >> RSQRT_SQ_SHIFT),
            y4.eq(y3), t4.eq((m3 * a3) >> RSQRT_T_SHIFT),
            y5.eq((y4 * h) >> RSQRT_SQ_SHIFT),
        ]
    return y5


def _bit_length(x: Value) -> Value:
    """The contract's `bit_length` as logic (a priority encoder): one level per bit of the result,
    each asking whether any bit at or above 2^j is set and shifting those down if so."""
    digits = []
    for j in reversed(range((len(x) - 1).bit_length())):
        big = x[1 << j:].any()
        x = Mux(big, x >> (1 << j), x)[:1 << j]
        digits.insert(0, big)
    return Cat(*digits) + x[0]


class RsqrtFactor(wiring.Component):
    """``x^-1/2`` of a wide sum of squares as a UF factor (``rsqrt_factor`` of the contract).

    Stage 1: priority encoder, ``L = bit_length(x)``; stage 2: even shift ``2k``, ``k = (L - 15) >> 1``
    (right for ``k > 0``, left otherwise), into ``m`` in ``[2^14, 2^16)``; stages 3-7: ``Rsqrt16``'s
    datapath on ``m``; stage 8: ``y`` in ``[2^14 - 1, 2^15)`` shifted left by 1 or 2 into
    ``[2^15, 2^16)``, exponent ``-22 - k - shift``.

    Cycle contract: fully pipelined, latency 8, one argument per cycle; a low ``o.ready`` stalls
    every stage. Its stage 1 (a 48-bit priority encoder, six levels of muxes) is the slowest path
    of the units (78 MHz on the ECP5-85F); split it over two stages if the clock target rises.

    Members
    -------
    i : ``In(stream.Signature(unsigned(48)))``
        ``x > 0`` (0 gives an unspecified result).
    o : ``Out(stream.Signature(StructLayout({"mantissa": unsigned(16), "exponent": signed(8)})))``
        ``x^-1/2 ~ mantissa * 2^exponent``, mantissa in ``[2^15, 2^16)``.
    """

    i: In(stream.Signature(unsigned(WIDE_BITS)))
    o: Out(stream.Signature(UF_LAYOUT))

    LATENCY = 2 + Rsqrt16.LATENCY + 1
    SHIFT_LEFT_BITS = (MANT_BITS - 2).bit_length()  # x >= 1: a left shift is by at most 14 (2k >= -14)

    @staticmethod
    def model(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The datapath in numpy: (mantissa, exponent)."""
        x = np.asarray(x, dtype=np.int64)
        k = (bit_length(x) - (MANT_BITS - 1)) >> 1
        m = np.where(k > 0, x >> np.maximum(2 * k, 0), x << np.maximum(-2 * k, 0))
        y = rsqrt16(m)
        shift = np.where(y >> (RSQRT_BITS - 1), 1, 2)
        return y << shift, -RSQRT_FRAC - k - shift

    def elaborate(self, platform) -> Module:
        m = Module()
        advance = _pipeline(m, self.i, self.o, self.LATENCY)
        x1 = Signal(WIDE_BITS)
        length1 = Signal(range(WIDE_BITS + 1))
        k = [Signal(signed(EXP_BITS), name=f"k{stage}") for stage in range(2, 3 + Rsqrt16.LATENCY)]
        m2 = Signal(MANT_BITS)
        two_k = Signal(signed(EXP_BITS))
        m.d.comb += two_k.eq((length1 - (MANT_BITS - 1)) & ~1)  # 2k: rounded down to even
        y = _rsqrt_stages(m, advance, m2)
        top = y[RSQRT_BITS - 1]
        with m.If(advance):
            m.d.sync += [
                x1.eq(self.i.payload), length1.eq(_bit_length(self.i.payload)),
                k[0].eq(two_k >> 1),
                m2.eq(Mux(two_k[-1], x1 << (-two_k).as_unsigned()[:self.SHIFT_LEFT_BITS], x1 >> two_k.as_unsigned())),
                *(later.eq(earlier) for earlier, later in zip(k, k[1:])),
                self.o.payload.mantissa.eq(Mux(top, y << 1, y << 2)),
                self.o.payload.exponent.eq(-RSQRT_FRAC - k[-1] - Mux(top, 1, 2)),
            ]
        return m


class Exp2Neg(wiring.Component):
    """``p ~ 2^15 * 2^(-x / 1024)`` for a softmax argument ``x >= 0`` (``exp2_neg`` of the contract).

    Stage 1 reads ``EXP2_TABLE[x mod 1024]`` (1024 x 16 ROM, one block RAM); stage 2 shifts it
    right by ``x >> 10`` and registers it. Saturation needs no logic: from ``x = EXP_SAT`` (16.0)
    on the shift is >= 16 and every entry (<= 2^15) shifts out to 0, which is the contract's
    ``min(x, EXP_SAT)``.

    Cycle contract: fully pipelined, latency 2, one argument per cycle; a low ``o.ready`` stalls
    every stage.

    Members
    -------
    i : ``In(stream.Signature(unsigned(15)))``
        ``x``, 10 fraction bits, any value below ``2 * EXP_SAT``.
    o : ``Out(stream.Signature(unsigned(16)))``
        ``p`` in ``[0, 2^15]``.
    """

    i: In(stream.Signature(unsigned(EXP2_ARG_BITS)))
    o: Out(stream.Signature(unsigned(int(EXP2_TABLE.max()).bit_length())))

    LATENCY = 2

    @staticmethod
    def model(x: np.ndarray) -> np.ndarray:
        """The datapath in numpy: table lookup, then an unsaturated shift."""
        x = np.asarray(x, dtype=np.int64)
        return EXP2_TABLE[x & ((1 << EXP_FRAC) - 1)] >> (x >> EXP_FRAC)

    def elaborate(self, platform) -> Module:
        m = Module()
        advance = _pipeline(m, self.i, self.o, self.LATENCY)
        m.submodules.table = table = Memory(shape=self.o.payload.shape(), depth=len(EXP2_TABLE),
                                            init=[int(v) for v in EXP2_TABLE])
        read = table.read_port()
        shift = Signal(EXP2_ARG_BITS - EXP_FRAC)
        m.d.comb += [read.en.eq(advance), read.addr.eq(self.i.payload[:EXP_FRAC])]
        with m.If(advance):
            m.d.sync += [shift.eq(self.i.payload[EXP_FRAC:]), self.o.payload.eq(read.data >> shift)]
        return m


class SinCos(wiring.Component):
    """``sin`` and ``cos`` of a phase (a uint32 fraction of a turn) in Q14 (``sin_q14``/``cos_q14``).

    The top 12 phase bits are 2 quadrant bits and a 10-bit index into the quarter-wave
    ``SINE_TABLE`` (1024 x 15, one block RAM read through both of its ports): odd quadrants read
    the table mirrored (index ``~i``), the upper two negate. ``cos`` is ``sin`` a quarter turn on:
    the same index with quadrant + 1.

    Cycle contract: fully pipelined, latency 2, one phase (two results) per cycle; a low
    ``o.ready`` stalls every stage.

    Members
    -------
    i : ``In(stream.Signature(unsigned(32)))``
        The phase.
    o : ``Out(stream.Signature(StructLayout({"sin": signed(16), "cos": signed(16)})))``
        ``sin`` and ``cos`` in ``[-2^14, 2^14]``.
    """

    i: In(stream.Signature(unsigned(PHASE_BITS)))
    o: Out(stream.Signature(data.StructLayout({"sin": signed(TRIG_FRAC + 2), "cos": signed(TRIG_FRAC + 2)})))

    LATENCY = 2

    @staticmethod
    def model(phase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The datapath in numpy: (sin, cos) from quadrant, mirrored index and negation."""
        top = np.asarray(phase, dtype=np.int64) >> (PHASE_BITS - SINE_PHASE_BITS)
        i = top & ((1 << SINE_INDEX_BITS) - 1)
        out = []
        for quadrant in (top >> SINE_INDEX_BITS, ((top >> SINE_INDEX_BITS) + 1) & 3):
            value = SINE_TABLE[np.where(quadrant & 1, i ^ ((1 << SINE_INDEX_BITS) - 1), i)]
            out.append(np.where(quadrant >> 1, -value, value))
        return out[0], out[1]

    def elaborate(self, platform) -> Module:
        m = Module()
        advance = _pipeline(m, self.i, self.o, self.LATENCY)
        m.submodules.table = table = Memory(shape=unsigned(int(SINE_TABLE.max()).bit_length()),
                                            depth=len(SINE_TABLE), init=[int(v) for v in SINE_TABLE])
        top = self.i.payload[PHASE_BITS - SINE_PHASE_BITS:]
        index, quadrant = top[:SINE_INDEX_BITS], top[SINE_INDEX_BITS:]
        quadrants = {"sin": quadrant, "cos": (quadrant + 1)[:2]}
        for name, q in quadrants.items():
            read = table.read_port()
            negate = Signal(name=f"{name}_negate")
            m.d.comb += [read.en.eq(advance), read.addr.eq(Mux(q[0], ~index, index))]
            with m.If(advance):
                m.d.sync += [negate.eq(q[1]),
                             getattr(self.o.payload, name).eq(Mux(negate, -read.data, read.data))]
        return m


class RopePhase(wiring.Component):
    """RoPE phase ``pos * omega mod 2^32`` (``rope_phase`` of the contract), exact.

    ``omega`` (turns per position, UQ0.32) is split in 16-bit halves: two unsigned 16 x 16
    multiplies (two DSPs) in stage 1, then ``(pos * hi << 16) + pos * lo`` with the carry out of
    bit 31 dropped in stage 2.

    Cycle contract: fully pipelined, latency 2, one (position, omega) per cycle; a low ``o.ready``
    stalls every stage.

    Members
    -------
    i : ``In(stream.Signature(StructLayout({"position": unsigned(16), "omega": unsigned(32)})))``
    o : ``Out(stream.Signature(unsigned(32)))``
        The phase.
    """

    i: In(stream.Signature(data.StructLayout({"position": unsigned(MANT_BITS), "omega": unsigned(PHASE_BITS)})))
    o: Out(stream.Signature(unsigned(PHASE_BITS)))

    LATENCY = 2

    @staticmethod
    def model(position: np.ndarray, omega: np.ndarray) -> np.ndarray:
        """The datapath in numpy for element-wise (position, omega) pairs."""
        pos, omega = np.asarray(position, dtype=np.int64), np.asarray(omega, dtype=np.int64)
        hi = pos * (omega >> MANT_BITS)
        lo = pos * (omega & ((1 << MANT_BITS) - 1))
        return ((hi << MANT_BITS) + lo) & ((1 << PHASE_BITS) - 1)

    def elaborate(self, platform) -> Module:
        m = Module()
        advance = _pipeline(m, self.i, self.o, self.LATENCY)
        pos, omega = self.i.payload.position, self.i.payload.omega
        hi, lo = Signal(2 * MANT_BITS), Signal(2 * MANT_BITS)
        with m.If(advance):
            m.d.sync += [
                hi.eq(pos * omega[MANT_BITS:]), lo.eq(pos * omega[:MANT_BITS]),
                self.o.payload.eq((hi << MANT_BITS) + lo),  # truncated to 32 bits: the carry is dropped
            ]
        return m


class SigmoidQ15(wiring.Component):
    """SiLU's ``2^15 sigmoid(x 2^e)`` (``sigmoid_q15`` of the contract).

    Stage 1: ``|x|``, the sign, ``c = e + 7``; stage 2: priority encoder ``L = bit_length(|x|)`` and the
    barrel shift ``|x| 2^c`` (left or right, truncated to 11 bits); stage 3: saturation when
    ``x != 0`` and ``L + c > 11`` (the shifted value would not fit) or the 11-bit index is >= 1024, and the
    1024 x 16 table read (one block RAM) at the low 10 bits; stage 4: ``2^15`` if saturated, else the
    entry, mirrored to ``2^15 - value`` for ``x < 0``.

    Cycle contract: fully pipelined, latency 4, one argument per cycle; a low ``o.ready`` stalls
    every stage.

    Members
    -------
    i : ``In(stream.Signature(StructLayout({"x": signed(32), "e": signed(8)})))``
    o : ``Out(stream.Signature(unsigned(16)))``
        In ``[0, 2^15]``.
    """

    i: In(stream.Signature(data.StructLayout({"x": signed(ACC_BITS), "e": signed(EXP_BITS)})))
    o: Out(stream.Signature(unsigned(PROB_BITS + 1)))

    LATENCY = 4

    @staticmethod
    def model(x: np.ndarray, e: np.ndarray) -> np.ndarray:
        """The datapath in numpy."""
        x, e = np.asarray(x, dtype=np.int64), np.asarray(e, dtype=np.int64)
        magnitude, c = np.abs(x), e + SIG_FRAC
        over = (magnitude > 0) & (bit_length(magnitude) + c > SIG_INDEX_BITS + 1)
        shifted = np.where(c >= 0, magnitude << np.clip(c, 0, SIG_INDEX_BITS + 1),
                           magnitude >> np.clip(-c, 0, ACC_BITS)) & ((2 << SIG_INDEX_BITS) - 1)
        saturated = over | (shifted >> SIG_INDEX_BITS).astype(bool)
        value = np.where(saturated, 1 << PROB_BITS, SIGMOID_TABLE[shifted & ((1 << SIG_INDEX_BITS) - 1)])
        return np.where(x < 0, (1 << PROB_BITS) - value, value)

    def elaborate(self, platform) -> Module:
        m = Module()
        advance = _pipeline(m, self.i, self.o, self.LATENCY)
        m.submodules.table = table = Memory(shape=self.o.payload.shape(), depth=len(SIGMOID_TABLE),
                                            init=[int(v) for v in SIGMOID_TABLE])
        read = table.read_port()
        magnitude1 = Signal(ACC_BITS)
        c1, c2 = Signal(signed(EXP_BITS + 1)), Signal(signed(EXP_BITS + 1))
        negative = [Signal(name=f"negative{stage}") for stage in range(1, 4)]
        length2 = Signal(range(ACC_BITS + 1))
        shifted2 = Signal(SIG_INDEX_BITS + 1)
        saturated3 = Signal()
        x = self.i.payload.x
        # Only a left shift by at most SIG_INDEX_BITS + 1 can leave the result unsaturated.
        left = c1.as_unsigned()[:(SIG_INDEX_BITS + 1).bit_length()]
        m.d.comb += [read.en.eq(advance), read.addr.eq(shifted2[:SIG_INDEX_BITS])]
        with m.If(advance):
            m.d.sync += [
                magnitude1.eq(Mux(x[-1], -x, x)), negative[0].eq(x[-1]), c1.eq(self.i.payload.e + SIG_FRAC),
                length2.eq(_bit_length(magnitude1)), c2.eq(c1),
                shifted2.eq(Mux(c1[-1], magnitude1 >> (-c1).as_unsigned(), magnitude1 << left)),
                saturated3.eq(length2.any() & (length2 + c2 > SIG_INDEX_BITS + 1) | shifted2[SIG_INDEX_BITS]),
                *(later.eq(earlier) for earlier, later in zip(negative, negative[1:])),
            ]
            value = Mux(saturated3, 1 << PROB_BITS, read.data)
            m.d.sync += self.o.payload.eq(Mux(negative[-1], (1 << PROB_BITS) - value, value))
        return m


# Every unit by the name the tests and the benchmark use.
UNITS: dict[str, type[wiring.Component]] = {
    "recip": Recip16, "rsqrt": Rsqrt16, "rsqrt_factor": RsqrtFactor, "exp2": Exp2Neg, "sincos": SinCos,
    "rope": RopePhase, "sigmoid": SigmoidQ15,
}
