"""Property 8: UART loopback and the UART bridge's FIFOs."""
from __future__ import annotations

from amaranth import Module, Mux, Signal
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


class BridgeFifos(Harness):
    """P8b: the UartStreamBridge's FIFOs and wiring lose and reorder nothing. The bridge's UartRx
    and UartTx are replaced by free stand-ins (elaboration substitutes them by name): the receiver
    delivers any byte in any cycle, the transmitter takes bytes whenever it likes, the consumer of
    `rx` stalls at will. Then: the N-th byte out of `rx` is the N-th byte the receiver delivered
    while no overrun has been counted, nothing is invented; a delivered byte is dropped only when
    the rx FIFO is full, and then `overruns` counts it; the N-th byte the transmitter takes is
    the N-th byte written into `tx`, nothing invented; `rx` obeys the stream rules. (That the
    line itself carries each byte is uart-loopback.)"""

    def __init__(self, fifo_depth: int = 2, nth: int = 4) -> None:
        self.fifo_depth, self.nth = fifo_depth, nth

    def build(self, m: Module) -> None:
        import hw.uart as uart_module
        from amaranth.lib import stream, wiring
        from amaranth.lib.wiring import In, Out

        class FreeRx(wiring.Component):
            def __init__(self):
                super().__init__({"divisor": In(3), "pin": In(1, init=1),
                                  "data": Out(stream.Signature(8, always_ready=True)), "framing_error": Out(1)})

            def elaborate(self, platform):
                mm = Module()
                mm.d.comb += [self.data.valid.eq(AnySeq(1)), self.data.payload.eq(AnySeq(8)),
                              self.framing_error.eq(0)]
                return mm

        class FreeTx(wiring.Component):
            def __init__(self):
                super().__init__({"divisor": In(3), "data": In(stream.Signature(8)), "pin": Out(1, init=1)})

            def elaborate(self, platform):
                mm = Module()
                mm.d.comb += self.data.ready.eq(AnySeq(1))
                return mm

        rx_unit, tx_unit = FreeRx(), FreeTx()
        bridge = uart_module.UartStreamBridge(divisor_bits=3, fifo_depth=self.fifo_depth, counter_bits=4)
        saved = uart_module.UartRx, uart_module.UartTx
        uart_module.UartRx, uart_module.UartTx = (lambda bits: rx_unit), (lambda bits: tx_unit)
        try:
            bridge_module = bridge.elaborate(None)
        finally:
            uart_module.UartRx, uart_module.UartTx = saved
        m.submodules.dut = bridge_module
        m.d.comb += [bridge.divisor.eq(4), bridge.rx_pin.eq(1)]
        drive_input(m, bridge.tx, "tx")
        check_output(m, bridge.rx, "rx")

        bits = max(1, (self.nth - 1).bit_length())
        n = AnyConst(bits)
        m.d.comb += Assume(n < self.nth)
        delivered = rx_unit.data.valid
        nth_tracker(m, n, delivered, rx_unit.data.payload, bridge.rx.valid & bridge.rx.ready, bridge.rx.payload,
                    width=bits + 2, gate=bridge.overruns == 0)
        nth_tracker(m, n, bridge.tx.valid & bridge.tx.ready, bridge.tx.payload,
                    tx_unit.data.valid & tx_unit.data.ready, tx_unit.data.payload, width=bits + 2)
        # an overrun is counted exactly when a delivered byte finds the rx FIFO full (until saturation)
        full = Signal()
        m.d.comb += full.eq(~bridge_module.submodules.rx_fifo.w_rdy)
        overruns_q = Signal(4)
        m.d.sync += overruns_q.eq(bridge.overruns)
        dropped_q = Signal()
        m.d.sync += dropped_q.eq(delivered & full)
        m.d.comb += Assert(bridge.overruns == Mux(dropped_q & (overruns_q != 15), overruns_q + 1, overruns_q))
