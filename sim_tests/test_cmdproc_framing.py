"""Unit tests of the framing components in Amaranth's Python simulator (no Verilator build).

* CRC16 against its model (the protocol's crc16) over random messages, fed in pieces;
* FrameSender + Stuffer: random response bodies become exactly `encode_frame`'s bytes,
  under random valid gaps and random ready;
* Unstuffer: every wire byte sequence (including ESC before SYNC, ESC ESC) gives the
  symbols of the protocol's receiver rules, under random backpressure.
"""
import random

from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.sim import Simulator

from bitlane.contract import protocol as p
from bitlane.hw.crc import CRC16
from bitlane.hw.framing import BodyByte, FrameSender, Stuffer, Unstuffer


async def send_stream(ctx, port, items, rng, gap=0.3):
    """Offer `items` (payload values) on a stream, with random idle cycles between them."""
    for item in items:
        while rng.random() < gap:
            ctx.set(port.valid, 0)
            await ctx.tick()
        ctx.set(port.payload, item)
        ctx.set(port.valid, 1)
        await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


async def collect_stream(ctx, port, count, rng, stall=0.3):
    """Take `count` payloads off a stream with random ready; checks that an offered payload
    stays offered, unchanged, until taken."""
    out = []
    offered = None
    while len(out) < count:
        ready = rng.random() >= stall
        ctx.set(port.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
        if offered is not None:
            assert valid and payload == offered, f"stream dropped or changed {offered} before it was taken"
        offered = payload if valid and not ready else None
        if valid and ready:
            out.append(payload)
    ctx.set(port.ready, 0)
    return out


def run(dut, *testbenches, deadline=200_000):
    """Simulate until every testbench has finished; fail if one is still waiting at `deadline` cycles."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    finished = []
    for tb in testbenches:
        async def wrapped(ctx, tb=tb):
            await tb(ctx)
            finished.append(tb.__name__)
        sim.add_testbench(wrapped)
    sim.run_until(deadline * 1e-6)
    waiting = {tb.__name__ for tb in testbenches} - set(finished)
    assert not waiting, f"still waiting after {deadline} cycles: {sorted(waiting)}"


def test_crc16_matches_protocol():
    rng = random.Random(1)
    dut = CRC16()
    messages = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))) for _ in range(20)]
    messages.append(b"123456789")

    async def tb(ctx):
        for msg in messages:
            for i, byte in enumerate(msg):
                ctx.set(dut.data, byte)
                ctx.set(dut.first, i == 0)
                ctx.set(dut.valid, 1)
                await ctx.tick()
                if rng.random() < 0.3:  # an idle cycle keeps the value
                    ctx.set(dut.valid, 0)
                    await ctx.tick()
            ctx.set(dut.valid, 0)
            if msg:
                assert ctx.get(dut.value) == CRC16.model(msg), msg.hex()
    run(dut, tb)


class SenderChain(wiring.Component):
    """FrameSender -> Stuffer, the response path of the command processor."""

    def __init__(self):
        self.sender, self.stuffer = FrameSender(), Stuffer()
        super().__init__({"i": wiring.In(stream.Signature(BodyByte)), "o": wiring.Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.sender, m.submodules.stuffer = self.sender, self.stuffer
        wiring.connect(m, wiring.flipped(self.i), self.sender.i)
        wiring.connect(m, self.sender.o, self.stuffer.i)
        wiring.connect(m, self.stuffer.o, wiring.flipped(self.o))
        return m


def test_sender_and_stuffer_write_encode_frame():
    rng = random.Random(2)
    dut = SenderChain()
    frames = []
    for _ in range(12):
        cmd, seq = rng.choice([0x81, 0xFF, p.SYNC, p.ESC]), rng.choice([0, p.SYNC, p.ESC, rng.randrange(256)])
        payload = bytes(rng.choice([p.SYNC, p.ESC, rng.randrange(256)]) for _ in range(rng.randrange(0, 30)))
        frames.append((cmd, seq, payload))
    wire = b"".join(p.encode_frame(*f) for f in frames)
    bodies = []
    for cmd, seq, payload in frames:
        body = bytes([cmd, seq, len(payload) & 0xFF, len(payload) >> 8]) + payload
        bodies += [{"data": b, "last": i == len(body) - 1} for i, b in enumerate(body)]

    async def source(ctx):
        await send_stream(ctx, dut.i, bodies, rng)

    async def sink(ctx):
        got = await collect_stream(ctx, dut.o, len(wire), rng)
        assert bytes(got) == wire

    run(dut, source, sink)


def test_unstuffer_symbols():
    rng = random.Random(3)
    dut = Unstuffer()
    # wire bytes -> expected (data, sync, escaped) symbols, by the rules of docs/protocol.md
    cases = [
        (bytes([0x12]), [(0x12, 0, 0)]),
        (bytes([p.SYNC]), [(0, 1, 0)]),
        (bytes([p.ESC, 0x5E]), [(p.SYNC, 0, 1)]),
        (bytes([p.ESC, 0x5D]), [(p.ESC, 0, 1)]),
        (bytes([p.ESC, p.ESC]), [(p.ESC ^ p.ESC_XOR, 0, 1)]),
        (bytes([p.ESC, p.SYNC]), [(0, 1, 1)]),  # a dangling ESC: the SYNC still marks a frame
        (bytes([p.ESC, 0x00]), [(0x20, 0, 1)]),
    ]
    for _ in range(40):
        b = rng.choice([p.SYNC, p.ESC, 0x5E, 0x5D, rng.randrange(256)])
        cases.append((bytes([b]), None))
    wire, symbols, escaped = b"", [], False
    for data, expected in cases:  # listed cases first; the random bytes get their symbols by the rules
        wire += data
        if expected is None:
            b = data[0]
            if b == p.SYNC:
                expected, escaped = [(0, 1, int(escaped))], False
            elif b == p.ESC and not escaped:
                expected, escaped = [], True
            else:
                expected, escaped = [(b ^ p.ESC_XOR if escaped else b, 0, int(escaped))], False
        symbols += expected
    if escaped:
        wire += b"\x00"
        symbols.append((0x20, 0, 1))

    async def source(ctx):
        await send_stream(ctx, dut.i, list(wire), rng)

    async def sink(ctx):
        got = await collect_stream(ctx, dut.o, len(symbols), rng)
        got = [(0 if s.sync else s.data, s.sync, s.escaped) for s in got]
        assert got == symbols

    run(dut, source, sink)
