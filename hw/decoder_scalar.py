"""The decoder engine's scalar unit: every scalar op of contract/decoder.py on 48-bit registers.

Per-vector arithmetic is rare (a few dozen ops per layer against thousands of vector elements), so
the unit is small and sequential: one adder, one priority encoder with its barrel shifter (the
contract's ``factor``), one unsigned 16 x 16 multiplier, and the existing ``Recip16`` and
``RsqrtFactor``; a short state machine walks each op through them.

Cycle contract (from ``start`` to ``done``, inclusive of the start cycle): MOVI, ADD, SUB, MAX 1 cycle;
NSHIFT 2 (its operand's bit length is registered first); FACTOR 3; FMUL 4; RSQRT ``RsqrtFactor.LATENCY + 2``;
QFACTOR ``Recip16.ITERATIONS + 4``; EPS ``Recip16.ITERATIONS + 9`` (measured by sim_tests/test_decoder_scalar.py):
contract/decoder.py's `scalar_cycles(op)`. Each normalization (``factor``) takes a cycle for the bit length of
its value, registered, and one for the shift and the exponent (`NORMALIZE_CYCLES`): in one cycle the two
were the ULX3S core's critical path once the register file's read was registered.
"""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

from bitlane.contract.decoder import (NORMALIZE_CYCLES, RECIP_CYCLES, REG_BITS, RSQRT_CYCLES, SCALAR_OPS, Op,
                                      scalar_cycles)
from bitlane.contract.intmath import EPS_LIMIT, FACTOR_ONE, MANT_BITS, Q_SHIFT, RECIP_SHIFT
from bitlane.hw.nonlinear import Recip16, RsqrtFactor, _bit_length

EPS_SAT_BITS = EPS_LIMIT.bit_length()  # scale_saturating's limit 2^46 has 47 bits
QUANT_RECIP_DROP = RECIP_SHIFT - Q_SHIFT - 1
# the contract's cycle model (contract/decoder.py SCALAR_CYCLES) counts these units' latencies
assert Recip16.ITERATIONS == RECIP_CYCLES and RsqrtFactor.LATENCY == RSQRT_CYCLES, "contract/decoder.py's cycles"
assert NORMALIZE_CYCLES == 1, "contract/decoder.py's cycles: `_Step.NORMALIZE` is one cycle"


PAIR_RESULT = frozenset({Op.FACTOR, Op.FMUL, Op.RSQRT, Op.QFACTOR})
# MOVI, ADD, SUB, MAX: the contract's one-cycle scalar ops (one adder or comparator)
ALU_OPS = tuple(sorted(op for op in SCALAR_OPS if scalar_cycles(op) == 1))


class _Step(enum.Enum, shape=4):
    IDLE = 0
    MUL = 1        # FMUL: normalize the product
    FACTOR = 2     # finish with factor(value, base)
    RSQRT = 3      # wait for RsqrtFactor
    QUANT = 4      # QFACTOR: factor(M) is ready, start the reciprocal
    QUANT_WAIT = 5 # QFACTOR: wait for it, 127 x r >> 7
    EPS_RECIP = 6  # EPS: wait for 1/scale
    EPS_MUL1 = 7   # EPS: normalize eps (x) inv
    EPS_MUL2 = 8   # EPS: multiply by inv again
    EPS_MUL3 = 9   # EPS: normalize
    EPS_TERM = 10  # EPS: t is ready
    EPS_SHIFT = 11 # EPS: the saturating shift
    NORMALIZE = 12 # `value` was just set: its bit length is registered, then `after`
    NSHIFT = 13    # x1's bit length is registered: the shift


class ScalarUnit(wiring.Component):
    """Executes one scalar op of contract/decoder.py (MOVI .. EPS).

    Members
    -------
    start : ``In(1)``
        One-cycle pulse while idle; samples ``op`` and the operands (``imm``: held until ``done``).
    op : ``In(8)``
        The ``Op``.
    imm : ``In(signed(32))``
    x1, x1b, x2, x2b, x3 : ``In(signed(48))``
        ``R[r1], R[r1 | 1], R[r2], R[r2 | 1], R[r3]`` (pairs are UF factors: mantissa, exponent).
    done : ``Out(1)``
        One-cycle pulse with the result.
    w0, w1 : ``Out(signed(48))``
        ``R[r0]`` and, for a pair result (``PAIR_RESULT``), ``R[r0 | 1]``; valid with ``done``.
    """

    start: In(1)
    op: In(8)
    imm: In(signed(32))
    x1: In(signed(REG_BITS))
    x1b: In(signed(REG_BITS))
    x2: In(signed(REG_BITS))
    x2b: In(signed(REG_BITS))
    x3: In(signed(REG_BITS))
    done: Out(1)
    w0: Out(signed(REG_BITS))
    w1: Out(signed(REG_BITS))

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.recip = recip = Recip16()
        m.submodules.rsqrt = rsqrt = RsqrtFactor()
        step = Signal(_Step)
        shift = Signal(signed(REG_BITS))
        # `factor(value, base)`: the one normalizer (priority encoder, registered; barrel shift). A step
        # that sets `value` goes through NORMALIZE to the step that uses norm_m, norm_e (`normalize`).
        value = Signal(REG_BITS)  # non-negative
        base = Signal(signed(REG_BITS))
        length = Signal(range(REG_BITS + 1))
        m.d.sync += length.eq(_bit_length(value))
        after = Signal(_Step)

        def normalize(x, then: _Step) -> list:
            return [value.eq(x), after.eq(then), step.eq(_Step.NORMALIZE)]

        s = Signal(signed(8))
        m.d.comb += s.eq(length - MANT_BITS)
        norm_m = Signal(MANT_BITS)
        m.d.comb += norm_m.eq(Mux(s[-1], value << (-s).as_unsigned()[:5], value >> s.as_unsigned()))
        norm_e = Signal(signed(REG_BITS))
        m.d.comb += norm_e.eq(Mux(value == 0, 0, base + s))
        # the multiplier and the eps chain's state
        mul_a, mul_b = Signal(MANT_BITS), Signal(MANT_BITS)
        product = Signal(2 * MANT_BITS)
        m.d.comb += product.eq(mul_a * mul_b)
        inv_m, inv_e = Signal(MANT_BITS), Signal(signed(REG_BITS))
        t_m, t_e = Signal(MANT_BITS), Signal(signed(REG_BITS))
        eps_m, eps_e = Signal(MANT_BITS), Signal(signed(REG_BITS))
        quant_shift = Signal(signed(REG_BITS))

        m.d.comb += [recip.o.ready.eq(1), rsqrt.o.ready.eq(1)]
        m.d.sync += [self.done.eq(0), recip.i.valid.eq(0), rsqrt.i.valid.eq(0)]

        def finish(w0, w1=0):
            m.d.sync += [self.done.eq(1), self.w0.eq(w0), self.w1.eq(w1), step.eq(_Step.IDLE)]

        # the one-cycle ops (ALU_OPS): computed from the operands, registered as w0 at start
        alu = Signal(signed(REG_BITS))
        # NSHIFT's bit length of x1, registered every cycle; its second cycle subtracts the held imm
        x1_length = Signal(range(REG_BITS + 1))
        m.d.sync += x1_length.eq(_bit_length(self.x1.as_unsigned()))
        bits = Signal(signed(REG_BITS))
        m.d.comb += bits.eq(x1_length - (self.imm - 1))
        with m.Switch(self.op):
            with m.Case(Op.MOVI):
                m.d.comb += alu.eq(self.imm)
            with m.Case(Op.ADD):
                m.d.comb += alu.eq(self.x1 + self.x2 + self.imm)
            with m.Case(Op.SUB):
                m.d.comb += alu.eq(self.x1 - self.x2 + self.imm)
            with m.Case(Op.MAX):
                m.d.comb += alu.eq(Mux(self.x1 > self.x2, self.x1, self.x2))

        with m.Switch(step):
            with m.Case(_Step.IDLE):
                with m.If(self.start):
                    with m.Switch(self.op):
                        with m.Case(*ALU_OPS):
                            finish(alu)
                        with m.Case(Op.NSHIFT):
                            m.d.sync += step.eq(_Step.NSHIFT)
                        with m.Case(Op.FACTOR):
                            m.d.sync += [base.eq(self.x2), *normalize(self.x1, _Step.FACTOR)]
                        with m.Case(Op.FMUL):
                            m.d.sync += [mul_a.eq(self.x1), mul_b.eq(self.x2), base.eq(self.x1b + self.x2b),
                                         step.eq(_Step.MUL)]
                        with m.Case(Op.RSQRT):
                            m.d.sync += [rsqrt.i.valid.eq(1),
                                         # x1 > 0 from its sign and an OR tree, not a 48-bit subtraction
                                         rsqrt.i.payload.eq(Mux(~self.x1[-1] & self.x1.any(), self.x1, 1)),
                                         step.eq(_Step.RSQRT)]
                        with m.Case(Op.QFACTOR):
                            m.d.sync += [base.eq(0), *normalize(self.x1, _Step.QUANT)]
                        with m.Case(Op.EPS):
                            scale_m = self.x1[:MANT_BITS]
                            m.d.sync += [recip.i.valid.eq(1),
                                         recip.i.payload.eq(Mux(scale_m[-1], scale_m, FACTOR_ONE)),
                                         inv_e.eq(-RECIP_SHIFT - self.x1b), eps_m.eq(self.x2), eps_e.eq(self.x2b),
                                         shift.eq(self.x3), step.eq(_Step.EPS_RECIP)]
            with m.Case(_Step.NORMALIZE):
                m.d.sync += step.eq(after)
            with m.Case(_Step.NSHIFT):
                finish(Mux(bits > 0, bits, 0))
            with m.Case(_Step.MUL):
                m.d.sync += normalize(product, _Step.FACTOR)
            with m.Case(_Step.FACTOR):
                finish(norm_m, norm_e)
            with m.Case(_Step.RSQRT):
                with m.If(rsqrt.o.valid):
                    finish(rsqrt.o.payload.mantissa, rsqrt.o.payload.exponent)
            with m.Case(_Step.QUANT):
                m.d.sync += [recip.i.valid.eq(1), recip.i.payload.eq(Mux(norm_m[-1], norm_m, FACTOR_ONE)),
                             quant_shift.eq(norm_e + 1), step.eq(_Step.QUANT_WAIT)]
            with m.Case(_Step.QUANT_WAIT):
                with m.If(recip.o.valid):
                    r = recip.o.payload
                    finish((((r << 7) - r) >> QUANT_RECIP_DROP)[:MANT_BITS], quant_shift)
            with m.Case(_Step.EPS_RECIP):
                with m.If(recip.o.valid):
                    m.d.sync += [inv_m.eq(recip.o.payload), mul_a.eq(eps_m), mul_b.eq(recip.o.payload),
                                 base.eq(eps_e + inv_e), step.eq(_Step.EPS_MUL1)]
            with m.Case(_Step.EPS_MUL1):
                # inv_e is added to the base here, so that EPS_MUL2's norm_e + inv_e is one addition
                m.d.sync += [base.eq(base + inv_e), *normalize(product, _Step.EPS_MUL2)]
            with m.Case(_Step.EPS_MUL2):
                m.d.sync += [mul_a.eq(norm_m), mul_b.eq(inv_m), base.eq(Mux(value == 0, inv_e, base + s)),
                             step.eq(_Step.EPS_MUL3)]
            with m.Case(_Step.EPS_MUL3):
                m.d.sync += normalize(product, _Step.EPS_TERM)
            with m.Case(_Step.EPS_TERM):
                m.d.sync += [t_m.eq(norm_m), t_e.eq(norm_e - 2 * shift), step.eq(_Step.EPS_SHIFT)]
            with m.Case(_Step.EPS_SHIFT):
                # scale_saturating(t_m, c, 2^46) with c = t.e - 2s, round half up; t_m is 0 or 16 bits.
                # c's ranges are told from its bits (OR and AND trees), not by 48-bit comparisons, whose
                # carry chains before the shifter and the limit's comparison after it were the ULX3S
                # core's critical path: c >= 0 shifts left by c < 2^SMALL (beyond, a non-zero t_m is
                # over the limit); -2^SMALL <= c < 0 shifts right by -c, clamped at MANT_BITS + 1.
                c = t_e
                small = (EPS_SAT_BITS - MANT_BITS + 1).bit_length() - 1  # 2^small - 1 = 31: t_m << 31 < 2^47
                negative = c[-1]
                over = (t_m != 0) & ~negative & c[small:].any()  # MANT_BITS + c > EPS_SAT_BITS: c >= 2^small
                left = (t_m << c[:small])[:EPS_SAT_BITS]
                near = c[small:].all()  # -2^small <= c < 0: -c from the low bits
                minus_c = (-c[:small + 1])[:small + 1]
                down = Mux(near & (minus_c <= MANT_BITS + 1), minus_c, MANT_BITS + 1)[:5]
                right = ((t_m >> (down - 1).as_unsigned()[:5]) + 1) >> 1  # == (t_m + 2^(down-1)) >> down
                finish(Mux(over, EPS_LIMIT, Mux(~negative, Mux(left > EPS_LIMIT, EPS_LIMIT, left), right)))
        return m
