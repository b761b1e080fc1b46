"""8N1 UART with FIFOs, presenting the serial pins as two byte streams.

The baud rate is a whole number of clock cycles per bit (`divisor`), given as an
input port so that one elaborated design can run at any rate: the board tops tie
it to a constant (which synthesis folds away), the tests sweep it at run time.

    rx_pin -> UartRx -> rx FIFO -> rx stream   (to the command processor)
    tx_pin <- UartTx <- tx FIFO <- tx stream   (from the command processor)

The receiver cannot be held off (the host does not do flow control), so a byte
arriving while the rx FIFO is full is dropped and counted in `overruns`; a byte
whose stop bit reads low is dropped and counted in `framing_errors`.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UartConfigError", "baud_divisor", "UartRx", "UartTx", "UartStreamBridge", "MIN_DIVISOR"]

# The receiver finds the start edge to within one cycle and samples mid-bit, so
# the sampling point is off by up to one cycle: at 4 cycles per bit that is a
# quarter bit, the least margin we accept.
MIN_DIVISOR = 4
# A 10-bit frame sampled mid-bit tolerates about 5 % total rate mismatch between
# the two ends; allow this side at most a third of it.
MAX_BAUD_ERROR = 0.015


class UartConfigError(ValueError):
    """A baud rate the clock cannot produce accurately enough."""


def baud_divisor(clock_hz: int, baud: int) -> int:
    """Clock cycles per bit for `baud` at `clock_hz`, checked for accuracy."""
    if clock_hz <= 0 or baud <= 0:
        raise UartConfigError(f"clock {clock_hz} Hz and baud {baud} must both be positive")
    divisor = round(clock_hz / baud)
    if divisor < MIN_DIVISOR:
        raise UartConfigError(
            f"baud {baud} at {clock_hz / 1e6:g} MHz is {clock_hz / baud:.2f} cycles per bit; "
            f"the receiver needs at least {MIN_DIVISOR} (raise the clock or lower the baud)")
    error = abs(clock_hz / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise UartConfigError(
            f"baud {baud} at {clock_hz / 1e6:g} MHz: divisor {divisor} gives "
            f"{clock_hz / divisor:.0f} baud, {error:.1%} off (at most {MAX_BAUD_ERROR:.1%} allowed)")
    return divisor


class UartRx(wiring.Component):
    """8N1 receiver: `data` carries one byte per good frame (it cannot wait)."""

    def __init__(self, divisor_bits: int = 16) -> None:
        super().__init__({
            "divisor": In(divisor_bits),  # clock cycles per bit, >= MIN_DIVISOR
            "pin": In(1, init=1),
            "data": Out(stream.Signature(8, always_ready=True)),
            "framing_error": Out(1),  # one-cycle pulse per frame with a low stop bit
        })
        self._divisor_bits = divisor_bits

    def elaborate(self, platform) -> Module:
        m = Module()
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.pin, line, init=1)

        timer = Signal(self._divisor_bits)  # cycles to the next sampling point, minus one
        shift = Signal(8)
        bits_left = Signal(range(8))

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    # First sample in the middle of the start bit.
                    m.d.sync += timer.eq((self.divisor >> 1) - 1)
                    m.next = "START"
            with m.State("START"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), bits_left.eq(7)]
                    # A start bit gone high by its middle was a glitch.
                    with m.If(line):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "DATA"
            with m.State("DATA"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), shift.eq(Cat(shift[1:], line)),
                                 bits_left.eq(bits_left - 1)]
                    with m.If(bits_left == 0):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(line):
                        m.d.comb += self.data.valid.eq(1)
                        # Hunt for the next start edge from the middle of the stop bit,
                        # which tolerates a sender slightly faster than us.
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += self.framing_error.eq(1)
                        # A low stop bit may be a break: wait for the idle level so
                        # that the rest of it is not taken for a start bit.
                        m.next = "WAIT_IDLE"
            with m.State("WAIT_IDLE"):
                with m.If(line):
                    m.next = "IDLE"
        m.d.comb += self.data.payload.eq(shift)
        return m


class UartTx(wiring.Component):
    """8N1 transmitter: takes a byte from `data` whenever the line is free."""

    def __init__(self, divisor_bits: int = 16) -> None:
        super().__init__({
            "divisor": In(divisor_bits),  # clock cycles per bit, >= 1
            "data": In(stream.Signature(8)),
            "pin": Out(1, init=1),
        })
        self._divisor_bits = divisor_bits

    def elaborate(self, platform) -> Module:
        m = Module()
        timer = Signal(self._divisor_bits)  # cycles left in the current bit, minus one
        frame = Signal(10, init=~0)  # bits still to send, LSB first; idle line is high
        bits_left = Signal(range(11))

        last_cycle_of_frame = (bits_left == 1) & (timer == 0)
        m.d.comb += [
            self.pin.eq(frame[0]),
            # Take the next byte in the last cycle of a stop bit, so that frames go
            # back to back at exactly 10 bits each.
            self.data.ready.eq((bits_left == 0) | last_cycle_of_frame),
        ]
        with m.If(bits_left != 0):
            m.d.sync += timer.eq(timer - 1)
            with m.If(timer == 0):
                m.d.sync += [timer.eq(self.divisor - 1), frame.eq(Cat(frame[1:], Const(1))),
                             bits_left.eq(bits_left - 1)]
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += [
                frame.eq(Cat(Const(0), self.data.payload, Const(1))),
                timer.eq(self.divisor - 1),
                bits_left.eq(10),
            ]
        return m


class UartStreamBridge(wiring.Component):
    """UART pins to a pair of byte streams, with FIFOs and error counters.

    `rx` carries the bytes received on `rx_pin`; `tx` takes the bytes to send on
    `tx_pin`. The counters saturate instead of wrapping.
    """

    def __init__(self, *, divisor_bits: int = 16, fifo_depth: int = 16, counter_bits: int = 16) -> None:
        if fifo_depth < 2:
            raise UartConfigError(f"fifo_depth must be >= 2, got {fifo_depth}")
        super().__init__({
            "divisor": In(divisor_bits),
            "rx_pin": In(1, init=1),
            "tx_pin": Out(1, init=1),
            "rx": Out(stream.Signature(8)),
            "tx": In(stream.Signature(8)),
            "framing_errors": Out(counter_bits),
            "overruns": Out(counter_bits),
        })
        self._divisor_bits = divisor_bits
        self._fifo_depth = fifo_depth

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.receiver = receiver = UartRx(self._divisor_bits)
        m.submodules.transmitter = transmitter = UartTx(self._divisor_bits)
        m.submodules.rx_fifo = rx_fifo = fifo.SyncFIFOBuffered(width=8, depth=self._fifo_depth)
        m.submodules.tx_fifo = tx_fifo = fifo.SyncFIFOBuffered(width=8, depth=self._fifo_depth)

        m.d.comb += [
            receiver.divisor.eq(self.divisor),
            transmitter.divisor.eq(self.divisor),
            receiver.pin.eq(self.rx_pin),
            self.tx_pin.eq(transmitter.pin),

            rx_fifo.w_data.eq(receiver.data.payload),
            rx_fifo.w_en.eq(receiver.data.valid),
            self.rx.payload.eq(rx_fifo.r_data),
            self.rx.valid.eq(rx_fifo.r_rdy),
            rx_fifo.r_en.eq(self.rx.ready),

            tx_fifo.w_data.eq(self.tx.payload),
            tx_fifo.w_en.eq(self.tx.valid),
            self.tx.ready.eq(tx_fifo.w_rdy),
            transmitter.data.payload.eq(tx_fifo.r_data),
            transmitter.data.valid.eq(tx_fifo.r_rdy),
            tx_fifo.r_en.eq(transmitter.data.ready),
        ]

        def count(counter: Signal, event) -> None:
            with m.If(event & (counter != (1 << len(counter)) - 1)):
                m.d.sync += counter.eq(counter + 1)

        count(self.framing_errors, receiver.framing_error)
        count(self.overruns, receiver.data.valid & ~rx_fifo.w_rdy)
        return m
