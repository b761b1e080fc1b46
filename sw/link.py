"""The host's link to a bitlane device: requests out, checked responses back, in bounded time.

Every request is answered within a bounded time, or a `DeviceTimeout` is raised; a corrupted or
unexpected response raises `ProtocolError`; after either, `reset()` resynchronizes the link and the
call can be retried. Framing, sequence numbers and response checks are the sans-IO
`contract.protocol.HostCodec`, which the cocotb tests drive too; this class adds the transport,
pipelining, deadlines and byte counts.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Iterable

from bitlane.contract import protocol as p
from bitlane.contract.packing import tiles
from bitlane.contract.protocol import Cmd, ProtocolError

from .transport import DeviceTimeout, Transport

# A RUN of c cycles may take c / SLOWEST_CYCLES_PER_S seconds beyond the base timeout
# (the simulator is the slowest device; it runs at ~1e6 cycles/s or more).
SLOWEST_CYCLES_PER_S = 50_000


@dataclass
class LinkStats:
    """Bytes and work as seen from the host, since connect."""

    wire_bytes_out: int = 0
    wire_bytes_in: int = 0
    payload_bytes_out: int = 0
    payload_bytes_in: int = 0
    frames: int = 0
    run_cycles: int = 0  # sum of the cycles reported by RUN responses
    useful_macs: int = 0  # rows * cols * vectors of every product, without padding

    @property
    def wire_bytes(self) -> int:
        return self.wire_bytes_out + self.wire_bytes_in

    @property
    def efficiency(self) -> float:
        """Payload bytes / bytes on the wire, both directions."""
        return (self.payload_bytes_out + self.payload_bytes_in) / max(1, self.wire_bytes)

    def snapshot(self) -> "LinkStats":
        return LinkStats(**vars(self))


class Link:
    """A connected bitlane device: requests and responses (`Accelerator` adds weights and products)."""

    def __init__(self, transport: Transport, timeout: float = 10.0) -> None:
        self.transport = transport
        self.timeout = timeout
        self.stats = LinkStats()
        self.codec = p.HostCodec()
        self._events: deque[p.Event] = deque()
        self._desynced = False
        self._last_wait = timeout
        self.reset()
        self.caps = self.info()
        self.codec.decoder.max_payload = self.caps.max_payload

    # ------------------------------------------------------------ requests

    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.transport.description}>"

    def _send(self, frames: list[bytes]) -> None:
        data = b"".join(frames)
        self.stats.wire_bytes_out += len(data)
        self.transport.write(data)

    def _next_event(self, deadline: float, waiting_for: str) -> p.Event:
        while not self._events:
            left = deadline - time.monotonic()
            if left <= 0:
                self.transport.check_alive()
                self._desynced = True
                raise DeviceTimeout(f"{self.transport.description}: no answer to {waiting_for} "
                                    f"within {self._last_wait:.1f} s")
            data = self.transport.read(min(left, 0.5))
            if data:
                self.stats.wire_bytes_in += len(data)
                self._events.extend(self.codec.feed(data))
            else:
                self.transport.check_alive()
        return self._events.popleft()

    def _wait_s(self, cmd: Cmd, payload: bytes) -> float:
        if cmd == Cmd.DECODE:  # the engine's cycles per token are the program's: the base timeout each
            return self.timeout * max(1, p.DecodeArgs.unpack(payload[:p.DecodeArgs.SIZE]).count)
        if cmd == Cmd.MEM_CRC:  # a word per cycle
            return self.timeout + p.MemRegion.unpack(payload).count / SLOWEST_CYCLES_PER_S
        if cmd != Cmd.RUN:
            return self.timeout
        a = p.RunArgs.unpack(payload)
        rt, ks = tiles(a.rows, a.cols, self.caps.lanes, self.caps.k_per_cycle)
        return self.timeout + a.n_vectors * rt * ks / SLOWEST_CYCLES_PER_S

    def transact(self, requests: Iterable[tuple[Cmd, bytes]]) -> list[bytes]:
        """Send requests (pipelined up to the transport's depth), return their response payloads in order.

        A device ERROR answer raises DeviceError after the requests already in flight are
        answered (the link stays in sync); a timeout or bad response raises and leaves the
        link needing `reset()`.
        """
        if self._desynced:
            raise ProtocolError(f"{self.transport.description}: link out of sync after an earlier error; "
                                "call reset() first")
        requests = list(requests)
        results: list[bytes] = []
        in_flight: deque[tuple[int, Cmd, bytes]] = deque()
        depth = max(1, self.transport.pipeline_depth)
        error: p.DeviceError | None = None
        sent = 0
        while len(results) < len(requests) and (error is None or in_flight):
            frames = []
            while error is None and sent < len(requests) and len(in_flight) + len(frames) < depth:
                cmd, payload = requests[sent]
                seq, frame = self.codec.frame(cmd, payload)
                frames.append(frame)
                in_flight.append((seq, cmd, payload))
                self.stats.payload_bytes_out += len(payload)
                sent += 1
            if frames:
                self._send(frames)
            seq, cmd, payload = in_flight[0]
            self._last_wait = self._wait_s(cmd, payload)
            event = self._next_event(time.monotonic() + self._last_wait, f"{p.cmd_name(cmd)} (seq {seq})")
            in_flight.popleft()
            try:
                results.append(self.codec.response(event, cmd, seq))
            except p.DeviceError as e:
                error = error or e
                results.append(b"")
            except ProtocolError as e:
                self._desynced = True
                raise ProtocolError(f"{self.transport.description}: {e}; call reset() and retry") from None
            self.stats.frames += 1
            self.stats.payload_bytes_in += len(event.payload)
        if error is not None:
            raise error
        return results

    def request(self, cmd: Cmd, payload: bytes = b"") -> bytes:
        return self.transact([(cmd, payload)])[0]

    def reset(self) -> None:
        """Resynchronize the link and clear the device's counters and error state (memories are kept)."""
        deadline = time.monotonic() + self.timeout
        while self.transport.read(0.02):  # drop whatever is still arriving
            if time.monotonic() > deadline:
                raise DeviceTimeout(f"{self.transport.description}: the device does not stop sending")
        self.codec.restart()
        self._events.clear()
        seq, frame = self.codec.frame(Cmd.RESET)
        self._send([frame])
        self._last_wait = self.timeout
        while True:  # skip answers to frames cut short by our SYNC, late answers of earlier requests
            event = self._next_event(deadline, f"RESET (seq {seq})")
            if isinstance(event, p.Frame) and event.cmd == Cmd.RESET.response and event.seq == seq:
                break
        self._desynced = False

    def info(self) -> p.Capabilities:
        caps = p.Capabilities.unpack(self.request(Cmd.INFO))
        if caps.version != p.PROTOCOL_VERSION:
            raise ProtocolError(f"{self.transport.description}: device speaks protocol version {caps.version}, "
                                f"this driver version {p.PROTOCOL_VERSION}")
        return caps

    def counters(self) -> dict[str, int]:
        """Device counters since connect / reset: cycles, busy_cycles, stall_cycles, frames_ok, ..."""
        return p.Counters.unpack(self.request(Cmd.COUNTERS)).as_dict()

    # ------------------------------------------------------------ SDRAM (MEM_*)

    def mem_write(self, addr: int, data: bytes) -> None:
        """Write `data` (whole 16-bit words, little-endian) to the SDRAM from word `addr`, as many
        words per frame as fit, pipelined (sw/sdram.py loads blobs with a progress bar)."""
        self.transact(p.HostCodec.mem_write_requests(addr, data, self.caps))

    def mem_read(self, addr: int, count: int) -> bytes:
        """`count` SDRAM words from word `addr`, as bytes (little-endian words)."""
        return b"".join(self.transact(p.HostCodec.mem_read_requests(addr, count, self.caps)))

    def mem_crc(self, addr: int, count: int) -> int:
        """The device's CRC-32 (`contract.protocol.crc32`) of `count` SDRAM words from word `addr`."""
        return p.MemCrc.unpack(self.request(Cmd.MEM_CRC, p.mem_crc(addr, count))).crc
