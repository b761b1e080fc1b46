"""bitlane wire protocol, version 1: every constant, and a sans-IO codec.

This module is the single definition of every number in docs/protocol.md. The
host driver, the functional model (sw/model_device.py) and the gateware command
processor (hw/cmdproc.py) all import their constants from here.

Sans-IO: nothing here reads or writes a port. `encode_frame` turns a request or
response into bytes; `FrameDecoder.feed` turns received bytes into events
(`Frame` or `BadFrame`). The same code therefore runs over TCP, a UART, inside
the functional model and inside cocotb tests.

Receiver state machine (device and host alike), exactly as implemented by
`FrameDecoder`:

* HUNT: bytes other than SYNC are dropped and counted (`dropped_bytes`).
  SYNC starts a frame.
* In a frame, ESC marks the next byte as stuffed (it is XORed with 0x20,
  whatever it is); every other non-SYNC byte is taken as is.
* SYNC anywhere inside a frame (even right after the opening SYNC, or right
  after an ESC) cuts that frame short: a `BadFrame(TRUNCATED)` event carrying
  the CMD and SEQ received so far (0 where not received), and a new frame
  starts at this SYNC.
* When the 4 header bytes are in and LEN > max_payload: `BadFrame(BAD_LENGTH)`,
  then HUNT (the rest of that frame is dropped and counted as dropped bytes).
* When LEN + 2 more bytes are in: CRC mismatch gives `BadFrame(BAD_CRC)`,
  otherwise a `Frame`. Either way back to HUNT.

Checks past the CRC (known command, length for the command, arguments,
addresses) are the device's business, not the framing layer's: see
`sw/model_device.py` and `hw/cmdproc.py`.
"""
from __future__ import annotations

import binascii
import struct
from dataclasses import astuple, dataclass
from enum import IntEnum
from typing import Iterable

PROTOCOL_VERSION = 1

SYNC = 0x7E
ESC = 0x7D
ESC_XOR = 0x20  # a stuffed byte b is sent as ESC, b ^ ESC_XOR
RESPONSE_FLAG = 0x80  # success response CMD = request CMD | RESPONSE_FLAG

HEADER_BYTES = 4  # CMD, SEQ, LEN_LO, LEN_HI
CRC_BYTES = 2
MAX_LEN_FIELD = 0xFFFF

CRC_POLY = 0x1021
CRC_INIT = 0xFFFF


class Cmd(IntEnum):
    """Request codes, and the ERROR response code."""

    INFO = 0x01
    WRITE_WEIGHTS = 0x02
    WRITE_ACT = 0x03
    RUN = 0x04
    READ_OUT = 0x05
    COUNTERS = 0x06
    RESET = 0x07
    ERROR = 0xFF

    @property
    def response(self) -> int:
        """CMD of the success response to this request."""
        return self | RESPONSE_FLAG


REQUESTS = frozenset(c for c in Cmd if c is not Cmd.ERROR)


def cmd_name(cmd: int) -> str:
    """'RUN' for a known code, '0x42' otherwise."""
    return Cmd(cmd).name if cmd in Cmd._value2member_map_ else f"0x{cmd:02X}"


class ErrorCode(IntEnum):
    BAD_CRC = 0x01
    UNKNOWN_CMD = 0x02
    BAD_LENGTH = 0x03
    BAD_ADDRESS = 0x04
    BAD_ARGUMENT = 0x05
    TRUNCATED = 0x06


# Fixed payload sizes (bytes).
ADDR_BYTES = 4  # u32 word address leading WRITE_WEIGHTS / WRITE_ACT / READ_OUT
RUN_REQUEST_BYTES = 18  # w_base u32, a_base u32, o_base u32, rows u16, cols u16, n_vectors u16
RUN_RESPONSE_BYTES = 4  # cycles u32
READ_OUT_REQUEST_BYTES = 6  # addr u32, count u16
ERROR_PAYLOAD_BYTES = 2  # code u8, request CMD u8
RESULT_BYTES = 4  # one int32 result of READ_OUT
CAPABILITIES_BYTES = 28
COUNTERS_BYTES = 36

_RUN = struct.Struct("<IIIHHH")
_READ_OUT = struct.Struct("<IH")
_ADDR = struct.Struct("<I")
_CYCLES = struct.Struct("<I")
_CAPABILITIES = struct.Struct("<BBHHHIIIII")
_COUNTERS = struct.Struct("<QQQIII")
assert _RUN.size == RUN_REQUEST_BYTES and _READ_OUT.size == READ_OUT_REQUEST_BYTES
assert _CAPABILITIES.size == CAPABILITIES_BYTES and _COUNTERS.size == COUNTERS_BYTES


class BitlaneError(Exception):
    """Base of every error the host side raises about the device or its link."""


class ProtocolError(BitlaneError):
    """A response that breaks the protocol (wrong SEQ, wrong CMD, bad record)."""


class DeviceError(BitlaneError):
    """The device answered a request with an ERROR frame."""

    def __init__(self, code: int, request: int, seq: int = 0, detail: str = "") -> None:
        self.code = _error_code(code)
        self.request = request
        self.seq = seq
        name = cmd_name(request)
        code_name = self.code.name if isinstance(self.code, ErrorCode) else f"0x{code:02X}"
        msg = f"device rejected {name} (seq {seq}): {code_name}"
        super().__init__(f"{msg}: {detail}" if detail else msg)


def _error_code(code: int) -> ErrorCode | int:
    try:
        return ErrorCode(code)
    except ValueError:
        return code


def crc16(data: bytes | bytearray | memoryview, crc: int = CRC_INIT) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no xorout).

    binascii.crc_hqx is exactly this polynomial without reflection; passing
    `crc` continues a running CRC over several pieces.
    """
    return binascii.crc_hqx(data, crc)


def stuff(data: bytes | bytearray) -> bytes:
    """Escape every SYNC and ESC byte (ESC first, so inserted ESCs stay single)."""
    return (bytes(data)
            .replace(bytes([ESC]), bytes([ESC, ESC ^ ESC_XOR]))
            .replace(bytes([SYNC]), bytes([ESC, SYNC ^ ESC_XOR])))


def encode_frame(cmd: int, seq: int, payload: bytes | bytearray = b"") -> bytes:
    """SYNC + stuffed(CMD, SEQ, LEN, PAYLOAD, CRC)."""
    if not 0 <= cmd <= 0xFF:
        raise ValueError(f"frame CMD must be a byte, got {cmd}")
    if not 0 <= seq <= 0xFF:
        raise ValueError(f"frame SEQ must be a byte, got {seq}")
    if len(payload) > MAX_LEN_FIELD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds the u16 LEN field")
    body = bytes((cmd, seq, len(payload) & 0xFF, len(payload) >> 8)) + bytes(payload)
    crc = crc16(body)
    return bytes([SYNC]) + stuff(body + bytes((crc & 0xFF, crc >> 8)))


def encode_error(code: ErrorCode, request_cmd: int, seq: int) -> bytes:
    """The ERROR response frame for a rejected request."""
    return encode_frame(Cmd.ERROR, seq, bytes((code, request_cmd)))


@dataclass(frozen=True)
class Frame:
    """A received frame whose CRC checked out."""

    cmd: int
    seq: int
    payload: bytes


@dataclass(frozen=True)
class BadFrame:
    """A frame the framing layer rejected; cmd/seq as received (0 if not received)."""

    code: ErrorCode
    cmd: int
    seq: int

    def error_frame(self) -> bytes:
        """The device's answer to this frame."""
        return encode_error(self.code, self.cmd, self.seq)


Event = Frame | BadFrame


class FrameDecoder:
    """Incremental receiver: feed bytes, get `Frame` / `BadFrame` events.

    Chunks are processed with bytes.find / slicing, so multi-megabyte weight
    streams decode at C speed, not one Python step per byte.
    """

    def __init__(self, max_payload: int = MAX_LEN_FIELD) -> None:
        self.max_payload = max_payload
        self.dropped_bytes = 0
        self._in_frame = False
        self._escaped = False
        self._buf = bytearray()  # unstuffed bytes of the current frame (after SYNC)
        self._need = 0  # unstuffed bytes still missing before the next decision

    @property
    def hunting(self) -> bool:
        return not self._in_frame

    def _start_frame(self) -> None:
        self._in_frame = True
        self._escaped = False
        self._buf.clear()
        self._need = HEADER_BYTES

    def _cut(self) -> BadFrame:
        buf = self._buf
        return BadFrame(ErrorCode.TRUNCATED, buf[0] if len(buf) > 0 else 0, buf[1] if len(buf) > 1 else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        data = bytes(data)
        events: list[Event] = []
        i, end = 0, len(data)
        while i < end:
            if not self._in_frame:
                s = data.find(SYNC, i)
                if s < 0:
                    self.dropped_bytes += end - i
                    return events
                self.dropped_bytes += s - i
                self._start_frame()
                i = s + 1
                continue
            if data[i] == SYNC:
                events.append(self._cut())
                self._start_frame()
                i += 1
                continue
            if self._escaped:
                self._buf.append(data[i] ^ ESC_XOR)
                self._escaped = False
                self._need -= 1
                i += 1
            else:
                # Take up to `need` plain bytes, stopping at the next SYNC or ESC.
                stop = min(end, i + self._need)
                s = data.find(SYNC, i, stop)
                if s >= 0:
                    stop = s
                e = data.find(ESC, i, stop)
                if e >= 0:
                    self._buf += data[i:e]
                    self._need -= e - i
                    self._escaped = True
                    i = e + 1
                    continue
                self._buf += data[i:stop]
                self._need -= stop - i
                i = stop
            if self._need == 0:
                event = self._decide()
                if event is not None:
                    events.append(event)
        return events

    def _decide(self) -> Event | None:
        """Called whenever `need` bytes have arrived: after the header, and at frame end."""
        buf = self._buf
        length = buf[2] | buf[3] << 8
        if len(buf) == HEADER_BYTES:
            if length > self.max_payload:
                self._in_frame = False
                return BadFrame(ErrorCode.BAD_LENGTH, buf[0], buf[1])
            self._need = length + CRC_BYTES
            return None
        self._in_frame = False
        body = bytes(buf[:-CRC_BYTES])
        if crc16(body) != buf[-2] | buf[-1] << 8:
            return BadFrame(ErrorCode.BAD_CRC, buf[0], buf[1])
        return Frame(buf[0], buf[1], body[HEADER_BYTES:])


# ---------------------------------------------------------------- request payloads

def write_weights(addr: int, data: bytes | bytearray) -> bytes:
    """WRITE_WEIGHTS payload: word address, then whole weight words."""
    return _ADDR.pack(addr) + bytes(data)


def write_act(addr: int, data: bytes | bytearray) -> bytes:
    """WRITE_ACT payload: word address, then whole activation words."""
    return _ADDR.pack(addr) + bytes(data)


def run(w_base: int, a_base: int, o_base: int, rows: int, cols: int, n_vectors: int = 1) -> bytes:
    """RUN payload (18 bytes)."""
    return _RUN.pack(w_base, a_base, o_base, rows, cols, n_vectors)


def read_out(addr: int, count: int) -> bytes:
    """READ_OUT payload: element address, element count."""
    return _READ_OUT.pack(addr, count)


@dataclass(frozen=True)
class RunArgs:
    w_base: int
    a_base: int
    o_base: int
    rows: int
    cols: int
    n_vectors: int

    @classmethod
    def unpack(cls, payload: bytes) -> "RunArgs":
        return cls(*_RUN.unpack(payload))


def unpack_addr(payload: bytes) -> tuple[int, bytes]:
    """Split a WRITE_* payload into (word address, data)."""
    return _ADDR.unpack_from(payload)[0], payload[ADDR_BYTES:]


def unpack_read_out_request(payload: bytes) -> tuple[int, int]:
    return _READ_OUT.unpack(payload)


# ---------------------------------------------------------------- response payloads

def pack_run_response(cycles: int) -> bytes:
    return _CYCLES.pack(cycles & 0xFFFFFFFF)


def unpack_run_response(payload: bytes) -> int:
    """RUN response: the clock cycles the run took."""
    _expect_len("RUN response", payload, RUN_RESPONSE_BYTES)
    return _CYCLES.unpack(payload)[0]


def pack_results(values: Iterable[int]) -> bytes:
    values = list(values)
    return struct.pack(f"<{len(values)}i", *values)


def unpack_results(payload: bytes, count: int) -> tuple[int, ...]:
    """READ_OUT response: `count` int32 results."""
    _expect_len("READ_OUT response", payload, count * RESULT_BYTES)
    return struct.unpack(f"<{count}i", payload)


def unpack_error(payload: bytes) -> tuple[int, int]:
    """ERROR payload: (code, request CMD)."""
    _expect_len("ERROR response", payload, ERROR_PAYLOAD_BYTES)
    return payload[0], payload[1]


def request_length_ok(cmd: int, length: int, caps: "Capabilities") -> bool:
    """Is LEN valid for this (known) request? Failing this is BAD_LENGTH."""
    if cmd in (Cmd.INFO, Cmd.COUNTERS, Cmd.RESET):
        return length == 0
    if cmd == Cmd.RUN:
        return length == RUN_REQUEST_BYTES
    if cmd == Cmd.READ_OUT:
        return length == READ_OUT_REQUEST_BYTES
    word = caps.weight_word_bytes if cmd == Cmd.WRITE_WEIGHTS else caps.act_word_bytes
    return length > ADDR_BYTES and (length - ADDR_BYTES) % word == 0


def _expect_len(what: str, payload: bytes, n: int) -> None:
    if len(payload) != n:
        raise ProtocolError(f"{what}: expected {n} payload bytes, got {len(payload)}")


@dataclass(frozen=True)
class Capabilities:
    """INFO record: what the device is, as the host must know it."""

    version: int
    acc_bits: int
    lanes: int
    k_per_cycle: int
    max_payload: int
    weight_depth: int
    act_depth: int
    out_depth: int
    max_k: int
    clock_hz: int

    @classmethod
    def from_config(cls, config) -> "Capabilities":
        """The INFO record a device of this configuration answers."""
        return cls(PROTOCOL_VERSION, config.acc_bits, config.lanes, config.k_per_cycle, config.max_payload,
                   config.weight_depth, config.act_depth, config.out_depth, config.max_k, config.clock_hz)

    def pack(self) -> bytes:
        return _CAPABILITIES.pack(*astuple(self))

    @classmethod
    def unpack(cls, payload: bytes) -> "Capabilities":
        _expect_len("INFO response", payload, CAPABILITIES_BYTES)
        return cls(*_CAPABILITIES.unpack(payload))

    @property
    def weight_word_bytes(self) -> int:
        return self.lanes * self.k_per_cycle // 4

    @property
    def act_word_bytes(self) -> int:
        return self.k_per_cycle

    @property
    def max_read_count(self) -> int:
        """Largest READ_OUT count (results per response frame)."""
        return self.max_payload // RESULT_BYTES

    def max_write_words(self, word_bytes: int) -> int:
        """Whole words one WRITE_* frame carries after its address."""
        return (self.max_payload - ADDR_BYTES) // word_bytes


@dataclass(frozen=True)
class Counters:
    """COUNTERS record."""

    cycles: int = 0
    busy_cycles: int = 0
    stall_cycles: int = 0
    frames_ok: int = 0
    frames_bad: int = 0
    dropped_bytes: int = 0

    def pack(self) -> bytes:
        return _COUNTERS.pack(*astuple(self))

    @classmethod
    def unpack(cls, payload: bytes) -> "Counters":
        _expect_len("COUNTERS response", payload, COUNTERS_BYTES)
        return cls(*_COUNTERS.unpack(payload))

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self.__dataclass_fields__, astuple(self)))
