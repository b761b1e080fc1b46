"""Property 8: UART loopback and the UART bridge's FIFOs."""
from __future__ import annotations

from amaranth import Module, Signal
from amaranth.asserts import AnyConst, AnySeq
from amaranth.hdl import Assert, Assume

from .common import Harness
from .props_stream import check_output, drive_input


def nth_tracker(m: Module, n, in_take, in_data, out_take, out_data, width: int = 3, gate=1):
    """The N-th byte out must be the N-th byte in, and nothing comes out that did not go in
    (checked while `gate`). Returns (rec_valid, received, in_count, out_count)."""
    in_count, out_count = Signal(width), Signal(width)
    rec, rec_valid, received = Signal(8), Signal(), Signal()
    with m.If(in_take):
        m.d.sync += in_count.eq(in_count + 1)
        with m.If(in_count == n):
            m.d.sync += [rec.eq(in_data), rec_valid.eq(1)]
    with m.If(out_take):
        m.d.sync += out_count.eq(out_count + 1)
        with m.If(gate):
            m.d.comb += Assert(out_count < in_count)
            with m.If(out_count == n):
                m.d.comb += [Assert(rec_valid), Assert(out_data == rec)]
                m.d.sync += received.eq(1)
    return rec_valid, received, in_count, out_count


class UartLoopback(Harness):
    """P8a: UartRx of UartTx's pin, at the same divisor (any divisor from MIN_DIVISOR up to
    `max_divisor`), returns every byte in order, each exactly once, none lost, no framing
    error, back to back, each within 10 bit times + 4 cycles of being taken by UartTx."""

    def __init__(self, max_divisor: int = 7, nth: int = 2) -> None:
        self.max_divisor, self.nth = max_divisor, nth

    def build(self, m: Module) -> None:
        from hw.uart import MIN_DIVISOR, UartRx, UartTx

        bits = self.max_divisor.bit_length()
        m.submodules.tx = tx = UartTx(bits)
        m.submodules.rx = rx = UartRx(bits)
        divisor = AnyConst(bits)
        m.d.comb += Assume((divisor >= MIN_DIVISOR) & (divisor <= self.max_divisor))
        m.d.comb += [tx.divisor.eq(divisor), rx.divisor.eq(divisor), rx.pin.eq(tx.pin)]
        drive_input(m, tx.data, "tx_data")
        n = AnyConst(max(1, (self.nth - 1).bit_length()))
        m.d.comb += Assume(n < self.nth)
        rec_valid, received, _, _ = nth_tracker(m, n, tx.data.valid & tx.data.ready, tx.data.payload,
                                                rx.data.valid, rx.data.payload)
        m.d.comb += Assert(~rx.framing_error)
        age = Signal(8)
        with m.If(rec_valid & ~received):
            m.d.sync += age.eq(age + 1)
            m.d.comb += Assert(age <= 10 * divisor + 4)


class BridgeLoopback(Harness):
    """P8b: the UartStreamBridge with its tx pin wired to its rx pin: bytes written into `tx`
    come out of `rx` in order, none duplicated or invented, and, while `overruns` has not
    counted, none lost; with a consumer that is always ready no overrun or framing error ever
    happens and each byte arrives within a bounded time. The rx stream obeys the stream rules."""

    def __init__(self, divisor: int = 4, nth: int = 3, fifo_depth: int = 2, always_ready: bool = False) -> None:
        self.divisor, self.nth, self.fifo_depth, self.always_ready = divisor, nth, fifo_depth, always_ready

    def build(self, m: Module) -> None:
        from hw.uart import UartStreamBridge

        bits = self.divisor.bit_length()
        m.submodules.dut = dut = UartStreamBridge(divisor_bits=bits, fifo_depth=self.fifo_depth, counter_bits=4)
        m.d.comb += [dut.divisor.eq(self.divisor), dut.rx_pin.eq(dut.tx_pin)]
        drive_input(m, dut.tx, "tx")
        check_output(m, dut.rx, "rx", free_ready=not self.always_ready)
        if self.always_ready:
            m.d.comb += dut.rx.ready.eq(1)
        n = AnyConst(2)
        m.d.comb += Assume(n < self.nth)
        rec_valid, received, _, _ = nth_tracker(m, n, dut.tx.valid & dut.tx.ready, dut.tx.payload,
                                                dut.rx.valid & dut.rx.ready, dut.rx.payload,
                                                gate=dut.overruns == 0)
        m.d.comb += Assert(dut.framing_errors == 0)
        if self.always_ready:
            m.d.comb += Assert(dut.overruns == 0)
            age = Signal(9)
            with m.If(rec_valid & ~received):
                m.d.sync += age.eq(age + 1)
                # up to fifo_depth + 1 bytes ahead of it in the tx path, 10 bits each
                m.d.comb += Assert(age <= (self.fifo_depth + 2) * 10 * self.divisor + 8)
