"""bitlane wire protocol, version 2: every constant, and a sans-IO codec.

This module is the single definition of every number and record in
docs/protocol.md. The host driver, the functional model (sw/model_device.py)
and the gateware command processor (hw/cmdproc.py) all import them from here:
each wire record is one dataclass whose fields, declared with `wire(bits)`,
give the struct codec here, the host's dataclass, and the gateware's Amaranth
layout (hw/records.py).

Sans-IO: nothing here reads or writes a port. `encode_frame` turns a request or
response into bytes; `FrameDecoder.feed` turns received bytes into events
(`Frame` or `BadFrame`); `HostCodec` is the host's half (sequence numbers,
frame splitting, response checking) that the driver and the cocotb tests share. The same code therefore runs over TCP, a UART, inside
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
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import astuple, dataclass, field, fields
from enum import IntEnum, IntFlag
from typing import Any, ClassVar

import numpy as np

from .config import CoreConfig

PROTOCOL_VERSION = 2

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
    MEM_WRITE = 0x08  # SDRAM (the MEM_* section at the end), a device whose INFO has sdram_words
    MEM_CRC = 0x09
    MEM_READ = 0x0A
    # decoder mode (version 2): a device whose INFO has Feature.DECODER
    LOAD_PROGRAM = 0x20
    WRITE_BANK = 0x21
    DECODE_SETUP = 0x22
    DECODE = 0x23
    ERROR = 0xFF

    @property
    def response(self) -> int:
        """CMD of the success response to this request."""
        return self | RESPONSE_FLAG


REQUESTS = frozenset(c for c in Cmd if c is not Cmd.ERROR)
# The decoder engine's commands: a device without Feature.DECODER answers them UNKNOWN_CMD.
DECODER_REQUESTS = frozenset({Cmd.LOAD_PROGRAM, Cmd.WRITE_BANK, Cmd.DECODE_SETUP, Cmd.DECODE})


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
    NOT_READY = 0x07     # DECODE before a program is loaded (LOAD_PROGRAM) and set up (DECODE_SETUP)
    BAD_POSITION = 0x08  # DECODE from a position that is neither 0 nor the next one, or past the context
    FAULT = 0x09         # the engine stopped inside a program (a value left its width); restart at position 0


# The error codes only decoder commands produce.
DECODER_ERRORS = frozenset({ErrorCode.NOT_READY, ErrorCode.BAD_POSITION, ErrorCode.FAULT})


class Feature(IntFlag):
    """Feature bits of the capability record."""

    DECODER = 0x01  # the decoder engine (contract/decoder.py) and its commands
    KV_SDRAM = 0x02  # its KV cache can be staged from SDRAM (KVLOAD, KVAPPEND's store: contract/kv_stream.py)


# ---------------------------------------------------------------- wire records

_STRUCT_CODES = {8: "B", 16: "H", 32: "I", 64: "Q"}


def wire(bits: int, default: int | None = None) -> Any:
    """A field of a wire record: an unsigned integer `bits` wide, little-endian, in declaration order."""
    if bits not in _STRUCT_CODES:
        raise ValueError(f"wire fields are 8, 16, 32 or 64 bits, not {bits}")
    return field(metadata={"bits": bits}) if default is None else field(default=default, metadata={"bits": bits})


class WireRecord:
    """Base of the wire records. Subclasses are made with `@wire_record`."""

    FIELDS: ClassVar[tuple[tuple[str, int], ...]]  # (name, bits), the one definition of the layout
    SIZE: ClassVar[int]  # bytes on the wire
    WHAT: ClassVar[str]  # where it travels, for error messages: "INFO response"
    _struct: ClassVar[struct.Struct]

    def pack(self) -> bytes:
        return self._struct.pack(*astuple(self))

    @classmethod
    def unpack(cls, payload: bytes):
        _expect_len(cls.WHAT, payload, cls.SIZE)
        return cls(*cls._struct.unpack(payload))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name, _ in self.FIELDS}


def wire_record(what: str):
    """Class decorator: make a WireRecord whose fields are declared with `wire` a frozen dataclass
    and derive its field table, struct codec and size from those fields; `what` says where the
    record travels ("INFO response")."""

    def make(cls: type) -> type:
        cls = dataclass(frozen=True)(cls)
        cls.FIELDS = tuple((f.name, f.metadata["bits"]) for f in fields(cls))
        cls._struct = struct.Struct("<" + "".join(_STRUCT_CODES[bits] for _, bits in cls.FIELDS))
        cls.SIZE = cls._struct.size
        cls.WHAT = what
        return cls

    return make


@wire_record("WRITE_* address")
class WriteHeader(WireRecord):
    """Leads a WRITE_WEIGHTS / WRITE_ACT payload; whole memory words follow."""

    addr: int = wire(32)  # word address


@wire_record("RUN request")
class RunArgs(WireRecord):
    """RUN request: weights [rows, cols] from word w_base times n_vectors activation vectors from
    word a_base, results from output word o_base."""

    w_base: int = wire(32)
    a_base: int = wire(32)
    o_base: int = wire(32)
    rows: int = wire(16)
    cols: int = wire(16)
    n_vectors: int = wire(16)


@wire_record("READ_OUT request")
class ReadOutRequest(WireRecord):
    """READ_OUT request: `count` int32 results from element `addr`."""

    addr: int = wire(32)
    count: int = wire(16)


@wire_record("RUN response")
class RunResponse(WireRecord):
    """RUN response: the clock cycles from the run's start to its end (mod 2^32)."""

    cycles: int = wire(32)


@wire_record("ERROR response")
class ErrorRecord(WireRecord):
    """ERROR response: what was wrong with which request."""

    code: int = wire(8)
    request: int = wire(8)


@wire_record("LOAD_PROGRAM index")
class ProgramHeader(WireRecord):
    """Leads a LOAD_PROGRAM payload; whole instruction records (contract.decoder.Instruction) follow."""

    index: int = wire(16)  # program memory address of the first instruction


@wire_record("WRITE_BANK address")
class BankWriteHeader(WireRecord):
    """Leads a WRITE_BANK payload; int32 words follow."""

    addr: int = wire(32)  # word address in the bank
    bank: int = wire(8)   # contract.decoder.Bank: MAIN or CONST


@wire_record("DECODE_SETUP request")
class DecodeSetup(WireRecord):
    """Where DECODE puts each embedding row and finds each final hidden state (sw.decoder_program's
    DecoderImage): `hidden` values from MAIN word emb_addr in, from MAIN word out_addr out, the
    exponent in register out_exp_reg."""

    hidden: int = wire(16)
    emb_addr: int = wire(16)
    out_addr: int = wire(16)
    out_exp_reg: int = wire(8)


@wire_record("DECODE request")
class DecodeArgs(WireRecord):
    """Leads a DECODE payload: `count` tokens from position `pos`; count int16 rows of `hidden` follow."""

    pos: int = wire(16)
    count: int = wire(16)


@wire_record("DECODE response")
class DecodeResponse(WireRecord):
    """Leads a DECODE response: the engine's cycles for all its tokens (mod 2^32); count hidden states
    (int16 x hidden, then an int8 exponent) follow."""

    cycles: int = wire(32)


@wire_record("INFO response")
class Capabilities(WireRecord):
    """INFO record: what the device is, as the host must know it. The decoder fields are 0 on a device
    without Feature.DECODER."""

    version: int = wire(8)
    acc_bits: int = wire(8)
    lanes: int = wire(16)
    k_per_cycle: int = wire(16)
    max_payload: int = wire(16)
    weight_depth: int = wire(32)
    act_depth: int = wire(32)
    out_depth: int = wire(32)
    max_k: int = wire(32)
    clock_hz: int = wire(32)
    features: int = wire(8)  # Feature bits
    dec_layers: int = wire(8)
    dec_kv_heads: int = wire(8)
    dec_head_dim: int = wire(8)
    dec_context: int = wire(16)
    dec_program_depth: int = wire(16)
    dec_main_depth: int = wire(32)
    dec_const_depth: int = wire(32)
    dec_copy_depth: int = wire(32)
    dec_vector_lanes: int = wire(8)  # elements the decoder's vector unit processes per cycle
    sdram_words: int = wire(32)  # 16-bit words the MEM_* commands address; 0 = no SDRAM

    @classmethod
    def from_config(cls, config: CoreConfig) -> "Capabilities":
        """The INFO record a device of this configuration answers."""
        d = config.decoder
        decoder = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0) if d is None else (
            Feature.DECODER | (Feature.KV_SDRAM if d.kv_sdram else 0), d.layers, d.kv_heads, d.head_dim, d.context, d.program_depth, d.main_depth,
            d.const_depth, d.copy_depth, d.vector_lanes)
        return cls(PROTOCOL_VERSION, config.acc_bits, config.lanes, config.k_per_cycle, config.max_payload,
                   config.weight_depth, config.act_depth, config.out_depth, config.max_k, config.clock_hz, *decoder,
                   config.sdram_words)

    @property
    def decoder(self) -> bool:
        """Has the device the decoder engine?"""
        return bool(self.features & Feature.DECODER)

    def max_decode_count(self, hidden: int) -> int:
        """Most tokens one DECODE carries for a model of `hidden`: its request and its response both fit
        max_payload (0: not even one)."""
        return max(0, (self.max_payload - DecodeResponse.SIZE) // hidden_state_bytes(hidden))

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

    @property
    def sdram_bytes(self) -> int:
        return self.sdram_words * MEM_WORD_BYTES

    @property
    def max_mem_read_count(self) -> int:
        """Largest MEM_READ count (SDRAM words per response frame)."""
        return self.max_payload // MEM_WORD_BYTES


@wire_record("COUNTERS response")
class Counters(WireRecord):
    """COUNTERS record."""

    cycles: int = wire(64, 0)
    busy_cycles: int = wire(64, 0)
    stall_cycles: int = wire(64, 0)
    frames_ok: int = wire(32, 0)
    frames_bad: int = wire(32, 0)
    dropped_bytes: int = wire(32, 0)


# Payload sizes (bytes), derived from the records.
ADDR_BYTES = WriteHeader.SIZE
RUN_REQUEST_BYTES = RunArgs.SIZE
RUN_RESPONSE_BYTES = RunResponse.SIZE
READ_OUT_REQUEST_BYTES = ReadOutRequest.SIZE
ERROR_PAYLOAD_BYTES = ErrorRecord.SIZE
CAPABILITIES_BYTES = Capabilities.SIZE
COUNTERS_BYTES = Counters.SIZE
RESULT_BYTES = 4  # one int32 result of READ_OUT
BANK_WORD_BYTES = 4  # one int32 word of WRITE_BANK
ROW_VALUE_BYTES = 2  # one int16 value of an embedding row or a final hidden state
EXPONENT_BYTES = 1  # the int8 exponent of a final hidden state


def hidden_state_bytes(hidden: int) -> int:
    """One final hidden state in a DECODE response: int16 x hidden, then the int8 exponent. It is larger
    than the request's embedding row, so it bounds the tokens per DECODE."""
    return hidden * ROW_VALUE_BYTES + EXPONENT_BYTES


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


# ---------------------------------------------------------------- payloads

def write_weights(addr: int, data: bytes | bytearray) -> bytes:
    """WRITE_WEIGHTS payload: word address, then whole weight words."""
    return WriteHeader(addr).pack() + bytes(data)


def write_act(addr: int, data: bytes | bytearray) -> bytes:
    """WRITE_ACT payload: word address, then whole activation words."""
    return WriteHeader(addr).pack() + bytes(data)


def run(w_base: int, a_base: int, o_base: int, rows: int, cols: int, n_vectors: int = 1) -> bytes:
    """RUN payload."""
    return RunArgs(w_base, a_base, o_base, rows, cols, n_vectors).pack()


def read_out(addr: int, count: int) -> bytes:
    """READ_OUT payload: element address, element count."""
    return ReadOutRequest(addr, count).pack()


def unpack_addr(payload: bytes) -> tuple[int, bytes]:
    """Split a WRITE_* payload into (word address, data)."""
    return WriteHeader.unpack(payload[:ADDR_BYTES]).addr, payload[ADDR_BYTES:]


def unpack_read_out_request(payload: bytes) -> tuple[int, int]:
    request = ReadOutRequest.unpack(payload)
    return request.addr, request.count


def pack_run_response(cycles: int) -> bytes:
    return RunResponse(cycles & 0xFFFFFFFF).pack()


def unpack_run_response(payload: bytes) -> int:
    """RUN response: the clock cycles the run took."""
    return RunResponse.unpack(payload).cycles


def pack_results(values: Iterable[int]) -> bytes:
    values = list(values)
    return struct.pack(f"<{len(values)}i", *values)


def unpack_results(payload: bytes, count: int) -> tuple[int, ...]:
    """READ_OUT response: `count` int32 results."""
    _expect_len("READ_OUT response", payload, count * RESULT_BYTES)
    return struct.unpack(f"<{count}i", payload)


def unpack_error(payload: bytes) -> tuple[int, int]:
    """ERROR payload: (code, request CMD)."""
    record = ErrorRecord.unpack(payload)
    return record.code, record.request


def decode_setup(hidden: int, emb_addr: int, out_addr: int, out_exp_reg: int) -> bytes:
    """DECODE_SETUP payload."""
    return DecodeSetup(hidden, emb_addr, out_addr, out_exp_reg).pack()


def decode_request_bytes(count: int, hidden: int) -> int:
    """LEN of a DECODE of `count` embedding rows of `hidden` int16 values."""
    return DecodeArgs.SIZE + count * hidden * ROW_VALUE_BYTES


def decode_response_bytes(count: int, hidden: int) -> int:
    """LEN of the answer to a DECODE of `count` tokens."""
    return DecodeResponse.SIZE + count * hidden_state_bytes(hidden)


def unpack_decode_response(payload: bytes, count: int, hidden: int) -> tuple[int, np.ndarray, np.ndarray]:
    """DECODE response: (cycles, final hidden states int16 [count, hidden], exponents int8 [count])."""
    _expect_len("DECODE response", payload, decode_response_bytes(count, hidden))
    states = np.frombuffer(payload, dtype=np.dtype([("y", "<i2", (hidden,)), ("e", "i1")]),
                           offset=DecodeResponse.SIZE)
    return DecodeResponse.unpack(payload[:DecodeResponse.SIZE]).cycles, states["y"].copy(), states["e"].copy()


def pack_decode_response(cycles: int, y: np.ndarray, e: np.ndarray) -> bytes:
    """DECODE response from the engine's outputs: y [count, hidden] and e [count], already in int16 / int8."""
    hidden = y.shape[1]
    states = np.zeros(len(y), dtype=np.dtype([("y", "<i2", (hidden,)), ("e", "i1")]))
    states["y"], states["e"] = y, e
    return DecodeResponse(cycles & 0xFFFFFFFF).pack() + states.tobytes()


def request_length_ok(cmd: int, length: int, caps: Capabilities) -> bool:
    """Is LEN valid for this (known) request? Failing this is BAD_LENGTH. (A DECODE's length also depends
    on its count and the hidden size of DECODE_SETUP: `decode_request_bytes`, checked by the device.)"""
    from .decoder import Instruction  # contract.decoder builds its records with this module

    if cmd in (Cmd.INFO, Cmd.COUNTERS, Cmd.RESET):
        return length == 0
    if cmd == Cmd.RUN:
        return length == RUN_REQUEST_BYTES
    if cmd == Cmd.READ_OUT:
        return length == READ_OUT_REQUEST_BYTES
    if cmd in MEM_LENGTH_RULES:
        return MEM_LENGTH_RULES[cmd](length)
    if cmd == Cmd.DECODE_SETUP:
        return length == DecodeSetup.SIZE
    if cmd == Cmd.DECODE:
        return length >= DecodeArgs.SIZE
    if cmd == Cmd.LOAD_PROGRAM:
        return length > ProgramHeader.SIZE and (length - ProgramHeader.SIZE) % Instruction.SIZE == 0
    if cmd == Cmd.WRITE_BANK:
        return length > BankWriteHeader.SIZE and (length - BankWriteHeader.SIZE) % BANK_WORD_BYTES == 0
    word = caps.weight_word_bytes if cmd == Cmd.WRITE_WEIGHTS else caps.act_word_bytes
    return length > ADDR_BYTES and (length - ADDR_BYTES) % word == 0


def _expect_len(what: str, payload: bytes, n: int) -> None:
    if len(payload) != n:
        raise ProtocolError(f"{what}: expected {n} payload bytes, got {len(payload)}")


# ---------------------------------------------------------------- the host's half

class HostCodec:
    """The host side of the protocol, sans IO: what every host (the driver's `Link`, the cocotb
    tests' `HostLink`) does between its requests and the bytes on its wire.

    It numbers request frames, splits writes and reads into frames the device accepts, decodes
    received bytes, and checks each response against the request it answers.
    """

    def __init__(self, max_payload: int = MAX_LEN_FIELD) -> None:
        self.decoder = FrameDecoder(max_payload)
        self.seq = 0

    def frame(self, cmd: int, payload: bytes = b"") -> tuple[int, bytes]:
        """(SEQ, frame bytes) of the next request."""
        self.seq = (self.seq + 1) & 0xFF
        return self.seq, encode_frame(cmd, self.seq, payload)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        return self.decoder.feed(data)

    def restart(self, max_payload: int | None = None) -> None:
        """Forget any partly received frame (after a resynchronization)."""
        self.decoder = FrameDecoder(self.decoder.max_payload if max_payload is None else max_payload)

    @staticmethod
    def response(event: Event, cmd: int, seq: int) -> bytes:
        """The payload of the success response to request (`cmd`, `seq`).

        An ERROR answer raises `DeviceError` (the link is still in step); anything else that is
        not the expected answer raises `ProtocolError` (the link is out of step)."""
        what = f"the response to {cmd_name(cmd)} (seq {seq})"
        if isinstance(event, BadFrame):
            raise ProtocolError(f"corrupted frame ({event.code.name}) where {what} was expected")
        if event.seq != seq:
            raise ProtocolError(f"got seq {event.seq} (cmd 0x{event.cmd:02X}) where {what} was expected")
        if event.cmd == Cmd.ERROR:
            code, request = unpack_error(event.payload)
            raise DeviceError(code, request, seq)
        if event.cmd != cmd | RESPONSE_FLAG:
            raise ProtocolError(f"got cmd 0x{event.cmd:02X} as {what}")
        return event.payload

    @staticmethod
    def write_requests(cmd: Cmd, addr: int, data: bytes, caps: Capabilities) -> Iterator[tuple[Cmd, bytes]]:
        """WRITE_WEIGHTS / WRITE_ACT requests for `data` (whole words) from word `addr`, as many words
        per frame as fit."""
        word_bytes = caps.weight_word_bytes if cmd == Cmd.WRITE_WEIGHTS else caps.act_word_bytes
        if len(data) % word_bytes:
            raise ValueError(f"{cmd_name(cmd)}: {len(data)} bytes is not a whole number of {word_bytes}-byte words")
        step = caps.max_write_words(word_bytes) * word_bytes
        for off in range(0, len(data), step):
            yield cmd, WriteHeader(addr + off // word_bytes).pack() + bytes(data[off:off + step])

    @staticmethod
    def load_program_requests(index: int, program: Sequence[WireRecord], caps: Capabilities
                              ) -> Iterator[tuple[Cmd, bytes]]:
        """LOAD_PROGRAM requests for contract.decoder.Instruction records from program address `index`,
        as many whole instructions per frame as fit."""
        if not program:
            raise ValueError("LOAD_PROGRAM: an empty program")
        size = type(program[0]).SIZE
        step = (caps.max_payload - ProgramHeader.SIZE) // size
        for off in range(0, len(program), step):
            yield Cmd.LOAD_PROGRAM, ProgramHeader(index + off).pack() + b"".join(
                ins.pack() for ins in program[off:off + step])

    @staticmethod
    def write_bank_requests(bank: int, addr: int, words, caps: Capabilities) -> Iterator[tuple[Cmd, bytes]]:
        """WRITE_BANK requests for int32 `words` from word `addr` of `bank`, as many words per frame as fit."""
        words = np.asarray(words, dtype=np.int64)
        if words.size == 0 or words.min() < -(1 << 31) or words.max() >= 1 << 31:
            raise ValueError(f"WRITE_BANK: {words.size} words, expected one or more int32")
        data = words.astype("<i4").tobytes()
        step = (caps.max_payload - BankWriteHeader.SIZE) // BANK_WORD_BYTES * BANK_WORD_BYTES
        for off in range(0, len(data), step):
            yield Cmd.WRITE_BANK, BankWriteHeader(addr + off // BANK_WORD_BYTES, bank).pack() + data[off:off + step]

    @staticmethod
    def decode_requests(pos: int, rows, caps: Capabilities) -> Iterator[tuple[int, int, tuple[Cmd, bytes]]]:
        """(first position, count, DECODE request) for int16 embedding rows [T, hidden] from position
        `pos`, as many rows per frame as the device's max_payload lets request and answer carry."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[0] == 0:
            raise ValueError(f"DECODE: expected int16 rows [tokens, hidden], got shape {rows.shape}")
        if rows.min() < -(1 << 15) or rows.max() >= 1 << 15:
            raise ValueError("DECODE: embedding values outside int16")
        most = caps.max_decode_count(rows.shape[1])
        if most < 1:
            raise ValueError(f"DECODE: one hidden state of {rows.shape[1]} values takes "
                             f"{decode_response_bytes(1, rows.shape[1])} bytes, more than the device's "
                             f"max_payload {caps.max_payload}")
        for first in range(0, len(rows), most):
            chunk = rows[first:first + most]
            yield pos + first, len(chunk), (Cmd.DECODE, DecodeArgs(pos + first, len(chunk)).pack()
                                             + chunk.astype("<i2").tobytes())

    @staticmethod
    def read_requests(addr: int, count: int, caps: Capabilities) -> Iterator[tuple[int, int]]:
        """(first element, count) of the READ_OUT requests that read `count` results from `addr`."""
        most = caps.max_read_count
        for first in range(addr, addr + count, most):
            yield first, min(most, addr + count - first)

    @staticmethod
    def mem_write_requests(addr: int, data: bytes, caps: Capabilities) -> Iterator[tuple[Cmd, bytes]]:
        """MEM_WRITE requests for `data` (whole 16-bit words) from SDRAM word `addr`, as many words per
        frame as fit."""
        if len(data) % MEM_WORD_BYTES:
            raise ValueError(f"MEM_WRITE: {len(data)} bytes is not a whole number of {MEM_WORD_BYTES}-byte words")
        step = caps.max_write_words(MEM_WORD_BYTES) * MEM_WORD_BYTES
        for off in range(0, len(data), step):
            yield Cmd.MEM_WRITE, mem_write(addr + off // MEM_WORD_BYTES, data[off:off + step])

    @staticmethod
    def mem_read_requests(addr: int, count: int, caps: Capabilities) -> Iterator[tuple[Cmd, bytes]]:
        """MEM_READ requests that read `count` SDRAM words from word `addr`."""
        most = caps.max_mem_read_count
        for first in range(addr, addr + count, most):
            yield Cmd.MEM_READ, mem_read(first, min(most, addr + count - first))


# ---------------------------------------------------------------- SDRAM (MEM_*)
#
# The board's SDRAM (CoreConfig.sdram_words 16-bit words, reported in the INFO record) as one
# flat array of 16-bit words, little-endian on the wire: MEM_WRITE stores a region, MEM_READ
# returns one, MEM_CRC returns the CRC-32 of one without sending it (to verify a load, and to
# tell whether a model is still loaded). Words never written read as whatever the chip holds.

MEM_WORD_BYTES = 2  # an SDRAM word


@wire_record("MEM_CRC request")
class MemRegion(WireRecord):
    """MEM_CRC request: `count` SDRAM words from word `addr`."""

    addr: int = wire(32)
    count: int = wire(32)


@wire_record("MEM_READ request")
class MemReadRequest(WireRecord):
    """MEM_READ request: `count` SDRAM words from word `addr`."""

    addr: int = wire(32)
    count: int = wire(16)


@wire_record("MEM_CRC response")
class MemCrc(WireRecord):
    """MEM_CRC response: `crc32` of the region's bytes."""

    crc: int = wire(32)


MEM_CRC_REQUEST_BYTES = MemRegion.SIZE
MEM_READ_REQUEST_BYTES = MemReadRequest.SIZE
MEM_CRC_RESPONSE_BYTES = MemCrc.SIZE

# LEN rules of the MEM_* requests (request_length_ok): MEM_WRITE is an address and whole words.
MEM_LENGTH_RULES = {
    Cmd.MEM_WRITE: lambda length: length > ADDR_BYTES and (length - ADDR_BYTES) % MEM_WORD_BYTES == 0,
    Cmd.MEM_CRC: lambda length: length == MEM_CRC_REQUEST_BYTES,
    Cmd.MEM_READ: lambda length: length == MEM_READ_REQUEST_BYTES,
}


def crc32(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """The CRC of MEM_CRC: CRC-32/ISO-HDLC (zlib's, reflected poly 0xEDB88320, init and xorout
    0xFFFFFFFF); `crc` continues a running CRC over several pieces. crc32(b"123456789") == 0xCBF43926."""
    return zlib.crc32(data, crc)


def mem_write(addr: int, data: bytes | bytearray) -> bytes:
    """MEM_WRITE payload: SDRAM word address, then whole 16-bit words."""
    return WriteHeader(addr).pack() + bytes(data)


def mem_crc(addr: int, count: int) -> bytes:
    """MEM_CRC payload."""
    return MemRegion(addr, count).pack()


def mem_read(addr: int, count: int) -> bytes:
    """MEM_READ payload."""
    return MemReadRequest(addr, count).pack()
