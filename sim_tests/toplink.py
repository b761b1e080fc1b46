"""The host end of BitlaneTop's byte streams, inside cocotb.

`HostLink` plays the host: bytes to send go out on `rx` with random gaps in
`rx__valid`, `tx__ready` is random every cycle, and every byte the device
sends is fed to the host codec (`contract.protocol.HostCodec`, the one the
driver's `Link` uses), so the gateware is checked against the same request
building, frame splitting and response checking as the driver. It also checks that
the device keeps the stream rules on `tx` (once valid, hold the byte until taken).

All ports are driven on falling clock edges and sampled in the read-only phase
right after, so the rising edge sees exactly what was sampled.
"""
from __future__ import annotations

from collections import deque

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

from bitlane.contract import protocol as p
from bitlane.contract.config import CoreConfig
from bitlane.contract.packing import pack_activations, pack_weights, tiles

PERIOD_NS = 10


class LinkError(AssertionError):
    """The device answered with something other than the expected response."""


class HostLink:
    def __init__(self, dut, cfg: CoreConfig, rng: np.random.Generator, *,
                 rx_gap: float = 0.3, tx_stall: float = 0.3, period_ps: int = PERIOD_NS * 1000) -> None:
        self.dut, self.cfg, self.rng = dut, cfg, rng
        self.period_ps = period_ps
        self.rx_gap, self.tx_stall = rx_gap, tx_stall  # probabilities of an idle rx / a stalled tx cycle
        self.outgoing = bytearray()
        self.codec = p.HostCodec()
        self.caps = p.Capabilities.from_config(cfg)
        self.events: deque[p.Event] = deque()
        self.received = 0  # bytes the device sent
        self.cycle = 0

    async def start(self) -> None:
        dut = self.dut
        cocotb.start_soon(Clock(dut.clk, self.period_ps, unit="ps").start())
        dut.rx__valid.value = 0
        dut.rx__payload.value = 0
        dut.tx__ready.value = 0
        dut.rst.value = 1
        await FallingEdge(dut.clk)
        await FallingEdge(dut.clk)
        dut.rst.value = 0
        cocotb.start_soon(self._clocked())

    async def _clocked(self) -> None:
        dut, rng = self.dut, self.rng
        rx_valid = False
        tx_held = None  # the tx byte offered but not taken last cycle
        while True:
            await FallingEdge(dut.clk)
            if not rx_valid and self.outgoing and rng.random() >= self.rx_gap:
                rx_valid = True  # once offered, a byte stays offered until taken
            dut.rx__valid.value = int(rx_valid)
            dut.rx__payload.value = self.outgoing[0] if rx_valid else 0
            tx_ready = rng.random() >= self.tx_stall
            dut.tx__ready.value = int(tx_ready)
            await ReadOnly()
            self.cycle += 1
            if rx_valid and dut.rx__ready.value:
                del self.outgoing[0]
                rx_valid = False
            if dut.tx__valid.value:
                byte = int(dut.tx__payload.value)
                if tx_held is not None and byte != tx_held:
                    raise LinkError(f"tx byte changed from 0x{tx_held:02X} to 0x{byte:02X} before it was taken")
                if tx_ready:
                    self.received += 1
                    self.events.extend(self.codec.feed(bytes([byte])))
                    tx_held = None
                else:
                    tx_held = byte
            elif tx_held is not None:
                raise LinkError(f"tx valid dropped before byte 0x{tx_held:02X} was taken")

    def send(self, data: bytes) -> None:
        """Queue raw bytes for the device."""
        self.outgoing += data

    async def next_event(self, timeout_cycles: int = 200_000) -> p.Event:
        """The next response the host decodes."""
        start = self.cycle
        while not self.events:
            if self.cycle - start > timeout_cycles:
                raise LinkError(f"no response within {timeout_cycles} cycles "
                                f"({len(self.outgoing)} bytes still unsent)")
            await FallingEdge(self.dut.clk)
        return self.events.popleft()

    async def quiet(self, cycles: int = 64) -> None:
        """Wait until everything is sent, then `cycles` more; no response may arrive meanwhile."""
        while self.outgoing:
            await FallingEdge(self.dut.clk)
        for _ in range(cycles):
            await FallingEdge(self.dut.clk)
        if self.events:
            raise LinkError(f"unexpected response {self.events[0]}")

    # ---------------------------------------------------------------- requests

    @property
    def seq(self) -> int:
        """SEQ of the latest request."""
        return self.codec.seq

    async def transact(self, cmd: int, payload: bytes = b"") -> p.Event:
        """Send one request frame; return the response event (any)."""
        _, frame = self.codec.frame(cmd, payload)
        self.send(frame)
        return await self.next_event()

    async def request(self, cmd: p.Cmd, payload: bytes = b"") -> bytes:
        """Send one request; return the success response's payload, raise DeviceError for an ERROR
        answer and ProtocolError for anything else unexpected (as the driver does)."""
        event = await self.transact(cmd, payload)
        return self.codec.response(event, cmd, self.seq)

    async def expect_error(self, code: p.ErrorCode, cmd: int, payload: bytes = b"") -> None:
        """Send one request that the device must reject with `code`."""
        event = await self.transact(cmd, payload)
        expect_error(event, code, cmd, self.seq)

    async def info(self) -> p.Capabilities:
        return p.Capabilities.unpack(await self.request(p.Cmd.INFO))

    async def counters(self) -> p.Counters:
        return p.Counters.unpack(await self.request(p.Cmd.COUNTERS))

    async def write(self, cmd: p.Cmd, addr: int, data: bytes) -> None:
        """WRITE_WEIGHTS / WRITE_ACT of whole words from `addr`, split into frames as large as allowed."""
        for request, payload in p.HostCodec.write_requests(cmd, addr, data, self.caps):
            if await self.request(request, payload) != b"":
                raise LinkError(f"{cmd.name}: non-empty response")

    async def run(self, w_base: int, a_base: int, o_base: int, rows: int, cols: int, n: int = 1) -> int:
        return p.unpack_run_response(await self.request(p.Cmd.RUN, p.run(w_base, a_base, o_base, rows, cols, n)))

    async def read_out(self, addr: int, count: int) -> np.ndarray:
        """`count` results from element `addr`, split into frames as large as allowed."""
        out = []
        for first, n in p.HostCodec.read_requests(addr, count, self.caps):
            out += p.unpack_results(await self.request(p.Cmd.READ_OUT, p.read_out(first, n)), n)
        return np.array(out, dtype=np.int64)

    async def product(self, trits: np.ndarray, q: np.ndarray, w_base: int = 0, a_base: int = 0,
                      o_base: int = 0) -> np.ndarray:
        """Load trits [R, C] and activations q [N, C], run, read back acc [N, R] (int64)."""
        cfg = self.cfg
        (rows, cols), n = trits.shape, q.shape[0]
        row_tiles, _ = tiles(rows, cols, cfg.lanes, cfg.k_per_cycle)
        await self.write(p.Cmd.WRITE_WEIGHTS, w_base, pack_weights(trits, cfg.lanes, cfg.k_per_cycle))
        await self.write(p.Cmd.WRITE_ACT, a_base, pack_activations(q, cfg.k_per_cycle))
        await self.run(w_base, a_base, o_base, rows, cols, n)
        padded = row_tiles * cfg.lanes
        got = (await self.read_out(o_base * cfg.lanes, n * padded)).reshape(n, padded)
        if np.any(got[:, rows:]):
            raise LinkError(f"{rows}x{cols}: rows past R are not 0")
        return got[:, :rows]


def expect_error(event: p.Event, code: p.ErrorCode, cmd: int, seq: int) -> None:
    """`event` must be the device's ERROR response (code, request CMD, SEQ)."""
    if not isinstance(event, p.Frame) or event.cmd != p.Cmd.ERROR:
        raise LinkError(f"expected an ERROR {code.name} response, got {event}")
    got_code, got_cmd = p.unpack_error(event.payload)
    if (got_code, got_cmd, event.seq) != (code, cmd, seq):
        raise LinkError(f"expected ERROR {code.name} for cmd 0x{cmd:02X} seq {seq}, got code "
                        f"0x{got_code:02X} cmd 0x{got_cmd:02X} seq {event.seq}")
