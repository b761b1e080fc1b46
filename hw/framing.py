"""Framing of the wire protocol (docs/protocol.md) on byte streams.

    rx bytes -> Unstuffer -> FrameReceiver -> (header + staged payload)
    (response body bytes) -> StreamRegister -> FrameSender -> Stuffer -> tx bytes

Between the stuffing layer and the frame layer travel *symbols*: either a
frame-start mark (the unstuffed view of SYNC) or one unstuffed byte. Every
constant comes from `sw.protocol`.
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bitlane.contract.protocol import ESC, ESC_XOR, RUN_REQUEST_BYTES, SYNC, ErrorCode

from .crc import CRC16

#: A received symbol. `escaped`: one ESC wire byte came right before this
#: symbol (so a data byte took two wire bytes; a SYNC after a dangling ESC
#: ends one wire byte that carried nothing). Used to count dropped wire bytes.
RxSymbol = data.StructLayout({"data": 8, "sync": 1, "escaped": 1})

#: A symbol to send: a frame-start mark (`sync`) or the byte `data`.
TxSymbol = data.StructLayout({"data": 8, "sync": 1})

#: A response body byte (CMD, SEQ, LEN, payload); `last` ends the body.
BodyByte = data.StructLayout({"data": 8, "last": 1})

#: Everything about a received frame but its payload. `error` is 0 for a
#: frame that passed the framing checks, else the ErrorCode that rejects it.
FrameHeader = data.StructLayout({"cmd": 8, "seq": 8, "length": 16, "error": 8})

#: Leading payload bytes the receiver keeps in registers as well, so that the
#: command processor sees every fixed-size argument at once (RUN has the most).
ARG_BYTES = RUN_REQUEST_BYTES


class Unstuffer(wiring.Component):
    """Wire bytes to symbols: SYNC becomes a frame-start mark, `ESC b` becomes
    `b ^ ESC_XOR` (whatever `b` is, except SYNC, which always marks a frame).
    """

    i: In(stream.Signature(8))
    o: Out(stream.Signature(RxSymbol))

    def elaborate(self, platform) -> Module:
        m = Module()
        escaped = Signal()  # the last byte taken was an ESC
        m.d.comb += self.o.payload.escaped.eq(escaped)
        with m.If(self.i.payload == SYNC):
            m.d.comb += [self.o.payload.sync.eq(1), self.o.valid.eq(self.i.valid),
                         self.i.ready.eq(self.o.ready)]
        with m.Elif((self.i.payload == ESC) & ~escaped):
            m.d.comb += self.i.ready.eq(1)  # swallowed: it only marks the next byte
            with m.If(self.i.valid):
                m.d.sync += escaped.eq(1)
        with m.Else():
            m.d.comb += [self.o.payload.data.eq(Mux(escaped, self.i.payload ^ ESC_XOR, self.i.payload)),
                         self.o.valid.eq(self.i.valid), self.i.ready.eq(self.o.ready)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += escaped.eq(0)
        return m


class StreamRegister(wiring.Component):
    """One register stage on a stream, so that the logic producing the payload
    and the logic consuming it are separate timing paths (ready passes through)."""

    def __init__(self, shape) -> None:
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.i.ready):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload)]
        return m


class Stuffer(wiring.Component):
    """Symbols to wire bytes: a frame-start mark becomes SYNC, a data byte equal
    to SYNC or ESC becomes `ESC, b ^ ESC_XOR`, any other byte goes as is.

    The output is registered and `i.ready` depends only on `o.ready` and state,
    never on the data, so the response path (memory read, byte select, escape
    check) ends at this register instead of running on into the handshakes.
    """

    i: In(stream.Signature(TxSymbol))
    o: Out(stream.Signature(8))

    def elaborate(self, platform) -> Module:
        m = Module()
        byte = self.i.payload.data
        stuffed = Signal()  # an ESC is out (or going out); `stuffed_byte` must follow it
        stuffed_byte = Signal(8)
        can_load = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(can_load & ~stuffed)
        with m.If(can_load):
            m.d.sync += self.o.valid.eq(stuffed | self.i.valid)
            with m.If(stuffed):
                m.d.sync += [self.o.payload.eq(stuffed_byte), stuffed.eq(0)]
            with m.Elif(self.i.payload.sync):
                m.d.sync += self.o.payload.eq(SYNC)
            with m.Elif((byte == SYNC) | (byte == ESC)):
                m.d.sync += [self.o.payload.eq(ESC), stuffed.eq(self.i.valid), stuffed_byte.eq(byte ^ ESC_XOR)]
            with m.Else():
                m.d.sync += self.o.payload.eq(byte)
        return m


class FrameSender(wiring.Component):
    """Wraps each response body (CMD .. payload, ended by `last`) into a frame:
    a frame-start mark before it, its CRC (little-endian) after it."""

    i: In(stream.Signature(BodyByte))
    o: Out(stream.Signature(TxSymbol))

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.crc = crc = CRC16()
        first = Signal()  # the next body byte is the first of its frame
        m.d.comb += [crc.data.eq(self.i.payload.data), crc.first.eq(first)]
        with m.FSM():
            with m.State("START"):
                m.d.comb += [self.o.payload.sync.eq(1), self.o.valid.eq(self.i.valid)]
                with m.If(self.o.valid & self.o.ready):
                    m.d.sync += first.eq(1)
                    m.next = "BODY"
            with m.State("BODY"):
                m.d.comb += [self.o.payload.data.eq(self.i.payload.data), self.o.valid.eq(self.i.valid),
                             self.i.ready.eq(self.o.ready), crc.valid.eq(self.i.valid & self.i.ready)]
                with m.If(self.i.valid & self.i.ready):
                    m.d.sync += first.eq(0)
                    with m.If(self.i.payload.last):
                        m.next = "CRC_LO"
            with m.State("CRC_LO"):
                m.d.comb += [self.o.payload.data.eq(crc.value[:8]), self.o.valid.eq(1)]
                with m.If(self.o.ready):
                    m.next = "CRC_HI"
            with m.State("CRC_HI"):
                m.d.comb += [self.o.payload.data.eq(crc.value[8:]), self.o.valid.eq(1)]
                with m.If(self.o.ready):
                    m.next = "START"
        return m


class FrameReceiver(wiring.Component):
    """Parses symbols into frames, staging the payload in a memory.

    Applies the framing rules of docs/protocol.md: hunting for SYNC (counting
    the wire bytes it drops), TRUNCATED on a SYNC inside a frame, BAD_LENGTH as
    soon as LEN exceeds `max_payload`, BAD_CRC at the end. Each frame, good or
    bad, is offered once on `frame`; the receiver takes no symbol while it is
    offered, so the staged payload (`buf_addr` -> `buf_data` one cycle later)
    and `args` (the first ARG_BYTES payload bytes) stay put until the command
    processor takes it.
    """

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        super().__init__({
            "i": In(stream.Signature(RxSymbol)),
            "frame": Out(stream.Signature(FrameHeader)),
            "args": Out(8 * ARG_BYTES),
            "buf_addr": In(range(max_payload)),
            "buf_data": Out(8),
            "dropped": Out(2),  # wire bytes dropped while hunting, this cycle
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.staging = staging = Memory(shape=8, depth=self.max_payload, init=[])
        wr = staging.write_port()
        rd = staging.read_port()
        m.submodules.crc = crc = CRC16()

        sym = self.i.payload
        header = self.frame.payload
        count = Signal(range(self.max_payload + 1))  # payload bytes received
        crc_lo = Signal(8)
        after_offer = Signal()  # 1: a SYNC already started the next frame; 0: hunt
        take = self.i.valid & self.i.ready

        m.d.comb += [rd.addr.eq(self.buf_addr), self.buf_data.eq(rd.data),
                     wr.addr.eq(count), wr.data.eq(sym.data),
                     crc.data.eq(sym.data), self.i.ready.eq(~self.frame.valid)]

        def cut_by_sync():
            """A SYNC inside a frame: offer it as TRUNCATED, the SYNC starts the next."""
            with m.If(take & sym.sync):
                m.d.sync += [header.error.eq(ErrorCode.TRUNCATED), after_offer.eq(1)]
                m.next = "OFFER"

        def body_byte():
            """Condition for a data byte of the frame arriving this cycle."""
            return take & ~sym.sync

        with m.FSM():
            with m.State("HUNT"):
                with m.If(take):
                    m.d.comb += self.dropped.eq(Mux(sym.sync, sym.escaped, 1 + sym.escaped))
                    with m.If(sym.sync):
                        m.d.sync += [header.cmd.eq(0), header.seq.eq(0)]  # as received: nothing yet
                        m.next = "CMD"
            with m.State("CMD"):
                cut_by_sync()
                m.d.comb += [crc.valid.eq(body_byte()), crc.first.eq(1)]
                with m.If(body_byte()):
                    m.d.sync += header.cmd.eq(sym.data)
                    m.next = "SEQ"
            with m.State("SEQ"):
                cut_by_sync()
                m.d.comb += crc.valid.eq(body_byte())
                with m.If(body_byte()):
                    m.d.sync += header.seq.eq(sym.data)
                    m.next = "LEN_LO"
            with m.State("LEN_LO"):
                cut_by_sync()
                m.d.comb += crc.valid.eq(body_byte())
                with m.If(body_byte()):
                    m.d.sync += header.length[:8].eq(sym.data)
                    m.next = "LEN_HI"
            with m.State("LEN_HI"):
                cut_by_sync()
                m.d.comb += crc.valid.eq(body_byte())
                length = Cat(header.length[:8], sym.data)
                with m.If(body_byte()):
                    m.d.sync += [header.length[8:].eq(sym.data), count.eq(0)]
                    with m.If(length > self.max_payload):
                        m.d.sync += [header.error.eq(ErrorCode.BAD_LENGTH), after_offer.eq(0)]
                        m.next = "OFFER"
                    with m.Elif(length == 0):
                        m.next = "CRC_LO"
                    with m.Else():
                        m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                cut_by_sync()
                m.d.comb += [crc.valid.eq(body_byte()), wr.en.eq(body_byte())]
                with m.If(body_byte()):
                    with m.If(count < ARG_BYTES):
                        m.d.sync += self.args.word_select(count[:(ARG_BYTES - 1).bit_length()], 8).eq(sym.data)
                    m.d.sync += count.eq(count + 1)
                    with m.If(count + 1 == header.length):
                        m.next = "CRC_LO"
            with m.State("CRC_LO"):
                cut_by_sync()
                with m.If(body_byte()):
                    m.d.sync += crc_lo.eq(sym.data)
                    m.next = "CRC_HI"
            with m.State("CRC_HI"):
                cut_by_sync()
                with m.If(body_byte()):
                    good = Cat(crc_lo, sym.data) == crc.value
                    m.d.sync += [header.error.eq(Mux(good, 0, ErrorCode.BAD_CRC)), after_offer.eq(0)]
                    m.next = "OFFER"
            with m.State("OFFER"):
                m.d.comb += self.frame.valid.eq(1)
                with m.If(self.frame.ready):
                    with m.If(after_offer):
                        m.d.sync += [header.cmd.eq(0), header.seq.eq(0)]
                        m.next = "CMD"
                    with m.Else():
                        m.next = "HUNT"
        return m
