"""Properties 3 and 5: byte stuffing round trip, and the stream rules of every stream component."""
from __future__ import annotations

from amaranth import Module, Signal, Value
from amaranth.asserts import AnyConst, AnySeq
from amaranth.hdl import Assert, Assume
from amaranth.lib import wiring

from sw.protocol import SYNC

from .common import Harness, past


def drive_input(m: Module, stream, name: str) -> None:
    """A free producer on `stream` that obeys the stream rules (an assumption): once valid is
    up it stays up, with the same payload, until the transfer."""
    m.d.comb += [stream.valid.eq(AnySeq(1)), stream.payload.eq(AnySeq(len(Value.cast(stream.payload))))]
    held = past(m, stream.valid & ~stream.ready, name=f"{name}_held")
    payload_q = past(m, Value.cast(stream.payload), name=f"{name}_payload")
    with m.If(held):
        m.d.comb += Assume(stream.valid & (Value.cast(stream.payload) == payload_q))


def check_output(m: Module, stream, name: str, free_ready: bool = True) -> None:
    """Assert the stream rules on an output: a valid that has not transferred stays valid, with
    the same payload, in the next cycle."""
    if free_ready and not getattr(stream.signature, "always_ready", False):
        m.d.comb += stream.ready.eq(AnySeq(1))
    held = past(m, stream.valid & ~stream.ready, name=f"{name}_held")
    payload_q = past(m, Value.cast(stream.payload), name=f"{name}_payload")
    with m.If(held):
        m.d.comb += [Assert(stream.valid), Assert(Value.cast(stream.payload) == payload_q)]


class StreamRules(Harness):
    """P5: a component's output streams obey the stream rules whenever its input streams do;
    every other input is free (AnySeq), constants (AnyConst) where `consts` names them."""

    def __init__(self, make, inputs: list[str], outputs: list[str], consts: set | None = None) -> None:
        self.make, self.inputs, self.outputs = make, inputs, outputs
        self.consts = consts or set()

    def build(self, m: Module) -> None:
        dut = self.make()
        m.submodules.dut = dut
        for name, member in dut.signature.members.items():
            port = getattr(dut, name)
            if name in self.inputs:
                drive_input(m, port, name)
            elif name in self.outputs:
                check_output(m, port, name)
            elif member.is_port and member.flow == wiring.In:
                m.d.comb += port.eq(AnyConst(len(port)) if name in self.consts else AnySeq(len(port)))
            elif member.is_signature and member.flow == wiring.Out:  # e.g. the core bus: drive its inputs
                for path, sub, value in port.signature.flatten(port):
                    if sub.flow == wiring.In:
                        m.d.comb += value.eq(AnySeq(len(value)))


class StuffRoundTrip(Harness):
    """P3: Stuffer -> Unstuffer is the identity on symbol streams (the N-th symbol out equals the
    N-th symbol in, for an arbitrary N; nothing is created), under any input stream and any
    backpressure; and the wire stream between them holds a SYNC byte only for a frame-start
    mark: every SYNC on the wire is matched by an earlier frame-start symbol."""

    def build(self, m: Module) -> None:
        from hw.framing import Stuffer, Unstuffer

        m.submodules.stuffer = stuffer = Stuffer()
        m.submodules.unstuffer = unstuffer = Unstuffer()
        wiring.connect(m, stuffer.o, unstuffer.i)
        drive_input(m, stuffer.i, "sym_in")
        m.d.comb += unstuffer.o.ready.eq(AnySeq(1))

        n = AnyConst(5)
        in_count, out_count = Signal(6), Signal(6)
        rec_data, rec_sync, rec_valid = Signal(8), Signal(), Signal()
        sin, sout = stuffer.i, unstuffer.o
        with m.If(sin.valid & sin.ready):
            m.d.sync += in_count.eq(in_count + 1)
            with m.If(in_count == n):
                m.d.sync += [rec_data.eq(sin.payload.data), rec_sync.eq(sin.payload.sync), rec_valid.eq(1)]
        with m.If(sout.valid & sout.ready):
            m.d.sync += out_count.eq(out_count + 1)
            m.d.comb += Assert(out_count < in_count)  # nothing comes out that did not go in
            with m.If(out_count == n):
                m.d.comb += [Assert(rec_valid), Assert(sout.payload.sync == rec_sync)]
                with m.If(~rec_sync):
                    m.d.comb += Assert(sout.payload.data == rec_data)

        syncs_in, syncs_wire = Signal(6), Signal(6)
        with m.If(sin.valid & sin.ready & sin.payload.sync):
            m.d.sync += syncs_in.eq(syncs_in + 1)
        wire = stuffer.o
        with m.If(wire.valid & wire.ready & (wire.payload == SYNC)):
            m.d.sync += syncs_wire.eq(syncs_wire + 1)
            m.d.comb += Assert(syncs_wire < syncs_in)
