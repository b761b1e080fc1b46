"""Properties 1, 2 and 7: the lanes' arithmetic and the CRC."""
from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, signed
from amaranth.asserts import AnyConst, AnySeq
from amaranth.hdl import Assert, Assume

from hw.crc import CRC16, crc16_step
from hw.lane import LaneArray
from sw.protocol import CRC_INIT

from .common import Harness, config, crc_textbook, keeper, past, trit_times


def lane_products(cfg, weights, acts):
    """Spec: per lane, the exact dot product of one (weight word, activation word) pair."""
    k = cfg.k_per_cycle
    width = 8 + 2 + k.bit_length()
    dots = []
    for lane in range(cfg.lanes):
        total = Const(0, signed(width))
        for j in range(k):
            code = weights[2 * (lane * k + j):2 * (lane * k + j) + 2]
            total = total + trit_times(code, acts[8 * j:8 * j + 8])
        dots.append(total[:width].as_signed())
    return dots, width


class LanePair(Harness):
    """P1: every lane of a LaneArray with one or two inputs per lane computes exactly
    t_a*a + t_b*b, for every pair of trit codes (the reserved code included) and every
    pair of int8 values (-128 included). Each cycle is a one-pair tile (valid = last = 1),
    so `sums` must equal the products of the inputs `latency` cycles earlier."""

    def __init__(self, k: int) -> None:
        self.cfg = config(f"pair{k}", lanes=4 // k, k_per_cycle=k, max_k=16)

    def build(self, m: Module) -> None:
        cfg = self.cfg
        m.submodules.dut = dut = LaneArray(cfg)
        weights, acts = AnySeq(cfg.weight_word_bits), AnySeq(8 * cfg.k_per_cycle)
        m.d.comb += [dut.valid.eq(1), dut.last.eq(1), dut.weights.eq(weights), dut.acts.eq(acts)]
        dots, _ = lane_products(cfg, weights, acts)
        for lane, dot in enumerate(dots):
            expected = past(m, dot, dut.latency, name=f"expected{lane}")
            got = dut.sums[cfg.acc_bits * lane:cfg.acc_bits * (lane + 1)].as_signed()
            with m.If(dut.sums_valid):
                m.d.comb += Assert(got == expected)
        # and the result does come out: sums_valid every cycle once the pipeline is full
        filled = past(m, Const(1), dut.latency, name="filled")
        with m.If(filled):
            m.d.comb += Assert(dut.sums_valid)


class LaneAccumulate(Harness):
    """P2: for any sequence of tiles, each of at most max_k / k_per_cycle valid k-steps, with
    idle cycles anywhere, a lane's `sums` at a tile's last step equals the exact (wide)
    dot product of the whole tile: the accumulator never overflows and never loses a term.

    Invariants (needed for k-induction, asserted every cycle): the accumulator stage holds the
    sum of the tile's steps so far modulo 2**acc_bits, that sum is at most 128 * k per step in
    magnitude, and a tile never has more steps than allowed."""

    def __init__(self, lanes: int, k: int, max_k: int) -> None:
        self.cfg = config(f"acc{lanes}x{k}", lanes=lanes, k_per_cycle=k, max_k=max_k,
                          act_depth=max(8, max_k // k))

    def build(self, m: Module) -> None:
        cfg = self.cfg
        k, bits = cfg.k_per_cycle, cfg.acc_bits
        max_steps = -(-cfg.max_k // k)
        m.submodules.dut = dut = LaneArray(cfg)
        valid, last = AnySeq(1), AnySeq(1)
        weights, acts = AnySeq(cfg.weight_word_bits), AnySeq(8 * k)
        m.d.comb += [dut.valid.eq(valid), dut.last.eq(last), dut.weights.eq(weights), dut.acts.eq(acts)]

        dots, dot_width = lane_products(cfg, weights, acts)
        d_valid = past(m, valid, dut.latency, name="d_valid")
        d_last = past(m, last, dut.latency, name="d_last")
        steps = Signal(range(max_steps + 1))  # valid steps already in the accumulator this tile
        # the environment: a tile has at most max_steps valid steps (cols <= max_k)
        m.d.comb += Assume(~(d_valid & ~d_last & (steps == max_steps - 1)))
        m.d.comb += Assert(steps < max_steps)
        with m.If(d_valid):
            m.d.sync += steps.eq(Mux(d_last, 0, steps + 1))

        wide = bits + 8
        for lane, dot in enumerate(dots):
            d_dot = past(m, dot, dut.latency, name=f"d_dot{lane}")
            ref_acc = Signal(signed(wide), name=f"ref_acc{lane}")
            ref_total = Signal(signed(wide), name=f"ref_total{lane}")
            m.d.comb += ref_total.eq(ref_acc + d_dot)
            with m.If(d_valid):
                m.d.sync += ref_acc.eq(Mux(d_last, 0, ref_total))
            got = dut.sums[bits * lane:bits * (lane + 1)]
            bound = 128 * k * steps
            m.d.comb += [
                Assert((ref_acc <= bound) & (ref_acc >= -bound)),
                Assert(got == ref_total[:bits]),  # the accumulator register, modulo its width
            ]
            with m.If(d_valid):  # a real step: exact, with no wrap-around
                m.d.comb += [Assert(got.as_signed() == ref_total),
                             Assert((ref_total < (1 << (bits - 1))) & (ref_total >= -(1 << (bits - 1))))]


class CrcStep(Harness):
    """P7a: the gateware's one-byte CRC step (an XOR network derived from sw.protocol.crc16)
    equals the bit-serial CRC-16/CCITT-FALSE for every 16-bit state and every byte."""

    def build(self, m: Module) -> None:
        state, byte = AnyConst(16), AnyConst(8)
        m.d.comb += Assert(crc16_step(state, byte) == crc_textbook(state, byte, keeper(m, "spec_bit")))


class CrcRunning(Harness):
    """P7b: the CRC16 component's `value` is always the CRC of the bytes fed since the last
    `first`, for any sequence of bytes, gaps and restarts (k-induction)."""

    def build(self, m: Module) -> None:
        m.submodules.dut = dut = CRC16()
        data, valid, first = AnySeq(8), AnySeq(1), AnySeq(1)
        m.d.comb += [dut.data.eq(data), dut.valid.eq(valid), dut.first.eq(first)]
        ref = Signal(16, init=CRC_INIT)
        with m.If(valid):
            m.d.sync += ref.eq(crc_textbook(Mux(first, CRC_INIT, ref), data, keeper(m, "spec_bit")))
        m.d.comb += Assert(dut.value == ref)


def crc_exhaustive() -> tuple[bool, str]:
    """P7c (enumeration): the bit-serial spec equals sw.protocol.crc16 for all 2**24
    (state, byte) pairs, so P7a ties the gateware to the protocol's own function."""
    import numpy as np

    from sw.protocol import crc16

    states = np.arange(1 << 16, dtype=np.uint32)
    for byte in range(256):
        spec = crc_textbook(states, np.uint32(byte))
        one = bytes([byte])
        ref = np.fromiter((crc16(one, s) for s in range(1 << 16)), dtype=np.uint32, count=1 << 16)
        if not np.array_equal(spec, ref):
            bad = int(np.flatnonzero(spec != ref)[0])
            return False, f"byte {byte:#04x} state {bad:#06x}: spec {int(spec[bad]):#06x} crc16 {int(ref[bad]):#06x}"
    return True, "all 16,777,216 (state, byte) pairs agree"
