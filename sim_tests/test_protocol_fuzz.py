"""Bounded protocol fuzzer (issue 14): a storm of random bytes and random, edge-case and broken
frames fed to the functional model (`model://tiny`) and the Verilated gateware (`sim://tiny`).

Every answer must be byte-identical between the two (but the `cycles` of a COUNTERS record,
which the model only estimates), the device must still answer INFO after the
storm, and a product computed after it must be exact. Options (environment):

    BITLANE_FUZZ_SEED=N      first seed (default 0)
    BITLANE_FUZZ_FRAMES=N    frames per seed (default 2000)
    BITLANE_FUZZ_SEEDS=N     number of seeds (default 3; make test runs 6000 frames in ~5 s)

The decoder storm does the same for protocol v2's decoder commands on `model://sim` and `sim://sim`
with the shipped h128 model loaded (BITLANE_FUZZ_DECODER_FRAMES, default 400 per seed, 2 seeds):
LOAD_PROGRAM, WRITE_BANK, DECODE_SETUP and DECODE right or wrong in one way, among garbage, broken
frames and v1 requests; afterwards the device must decode the reference's hidden states.

Longer run: BITLANE_FUZZ_SEED=100 BITLANE_FUZZ_SEEDS=10 BITLANE_FUZZ_FRAMES=20000 \
    .venv/bin/python -m pytest -s sim_tests/test_protocol_fuzz.py
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

import bitlane
from bitlane.contract.config import preset
from bitlane.contract import protocol as p
from bitlane.contract.protocol import ESC, SYNC, Cmd
from bitlane.sw.transport import ModelTransport

CFG = preset("tiny")
SEED = int(os.environ.get("BITLANE_FUZZ_SEED", "0"))
SEEDS = int(os.environ.get("BITLANE_FUZZ_SEEDS", "3"))
FRAMES = int(os.environ.get("BITLANE_FUZZ_FRAMES", "2000"))
DECODER_FRAMES = int(os.environ.get("BITLANE_FUZZ_DECODER_FRAMES", "400"))
DECODER_SEEDS = 2
H128 = "models/bitnet-kjv-h128"
BATCH = 40  # frames written before their answers are collected (keeps the TCP buffers small)


class StormMaker:
    """Random protocol traffic for one CoreConfig, biased towards the edges of every check."""

    def __init__(self, cfg, rng: np.random.Generator) -> None:
        self.cfg, self.rng = cfg, rng
        self.caps = p.Capabilities.from_config(cfg)
        self.kinds: dict[str, int] = {}

    def _int(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))

    def _bytes(self, n: int) -> bytes:
        return self.rng.integers(0, 256, n, dtype=np.uint8).tobytes()

    def _edge(self, limit: int, span: int = 3) -> int:
        """A value at, just below or just past `limit`, or anywhere below it, or huge."""
        r = self.rng.random()
        if r < 0.6:
            return max(0, limit + self._int(-span, 1))
        if r < 0.9:
            return self._int(0, max(0, limit))
        return self._int(0, 0xFFFFFFFF)

    def _seq(self) -> int:
        return self._int(0, 255)

    def write(self, cmd: Cmd) -> bytes:
        cfg = self.cfg
        word = cfg.weight_word_bytes if cmd == Cmd.WRITE_WEIGHTS else cfg.act_word_bytes
        depth = cfg.weight_depth if cmd == Cmd.WRITE_WEIGHTS else cfg.act_depth
        most = self.caps.max_write_words(word)
        words = self.rng.choice([1, most, self._int(1, most)])
        addr = self._edge(depth - words) & 0xFFFFFFFF
        data = self._bytes(words * word)
        if self.rng.random() < 0.1:  # a part word
            data = data[:-1] if len(data) > 1 else data + b"\x00"
        return p.encode_frame(cmd, self._seq(), p.write_weights(addr, data))

    def run(self) -> bytes:
        cfg = self.cfg
        cols = self.rng.choice([1, cfg.max_k, cfg.max_k + 1, self._int(1, 64), 0])
        ks = -(-cols // cfg.k_per_cycle)
        max_rt = max(1, min(cfg.out_depth, cfg.weight_depth // max(1, ks)))
        rt = self._int(1, max_rt)
        rows = rt * cfg.lanes - self._int(0, cfg.lanes - 1)
        if self.rng.random() < 0.05:
            rows = 0
        max_n = max(1, min(cfg.act_depth // max(1, ks), cfg.out_depth // rt))
        n = self.rng.choice([1, max_n, self._int(1, max_n), 0 if self.rng.random() < 0.05 else 1])
        w = self._edge(cfg.weight_depth - rt * ks)
        a = self._edge(cfg.act_depth - n * ks)
        o = self._edge(cfg.out_depth - n * rt)
        payload = p.run(w & 0xFFFFFFFF, a & 0xFFFFFFFF, o & 0xFFFFFFFF, rows & 0xFFFF, cols & 0xFFFF, n & 0xFFFF)
        return p.encode_frame(Cmd.RUN, self._seq(), payload)

    def read_out(self) -> bytes:
        cfg = self.cfg
        most = self.caps.max_read_count
        count = self.rng.choice([1, most, most + 1, self._int(1, most), 0])
        addr = self._edge(cfg.out_depth * cfg.lanes - count)
        return p.encode_frame(Cmd.READ_OUT, self._seq(), p.read_out(addr & 0xFFFFFFFF, count & 0xFFFF))

    def length_limit(self) -> bytes:
        """Frames whose LEN sits at a limit: 0, max_payload, max_payload + 1, 0xFFFF."""
        cfg = self.cfg
        cmd = int(self.rng.choice([c for c in p.REQUESTS] + [0x00, 0x42, 0xFF]))
        length = int(self.rng.choice([0, 1, cfg.max_payload - 1, cfg.max_payload, cfg.max_payload + 1,
                                      p.RUN_REQUEST_BYTES, p.READ_OUT_REQUEST_BYTES, 0xFFFF]))
        if length > cfg.max_payload:  # only the header matters: the receiver rejects it there
            body = bytes((cmd, self._seq(), length & 0xFF, length >> 8)) + self._bytes(self._int(0, 8))
            return bytes([SYNC]) + p.stuff(body)
        return p.encode_frame(cmd, self._seq(), self._bytes(length))

    def broken(self, frame: bytes) -> bytes:
        """A frame spoiled on the wire: a flipped bit, cut short, a byte dropped or doubled."""
        f = bytearray(frame)
        r = self.rng.random()
        i = self._int(1, len(f) - 1)
        if r < 0.4:
            f[i] ^= 1 << self._int(0, 7)
        elif r < 0.7:
            del f[i:]
        elif r < 0.85:
            del f[i]
        else:
            f.insert(i, f[i])
        return bytes(f)

    def garbage(self) -> bytes:
        alphabet = np.array([SYNC, ESC, 0x00, 0xFF, 0x5E, 0x5D, 0x7F], dtype=np.uint8)
        n = self._int(1, 24)
        raw = self.rng.integers(0, 256, n, dtype=np.uint8)
        special = self.rng.random(n) < 0.3
        raw[special] = self.rng.choice(alphabet, int(special.sum()))
        return raw.tobytes()

    def frame(self) -> bytes:
        r = self.rng.random()
        if r < 0.12:
            kind, data = "garbage", self.garbage()
        elif r < 0.22:
            kind, data = "length-limit", self.length_limit()
        else:
            cmd = self.rng.choice(["INFO", "RESET", "WRITE_WEIGHTS", "WRITE_ACT", "RUN", "READ_OUT",
                                   "COUNTERS-bad", "unknown"], p=[.11, .01, .2, .2, .2, .18, .04, .06])
            if cmd == "INFO":
                data = p.encode_frame(Cmd.INFO, self._seq())
            elif cmd == "RESET":
                data = p.encode_frame(Cmd.RESET, self._seq())
            elif cmd in ("WRITE_WEIGHTS", "WRITE_ACT"):
                data = self.write(Cmd[cmd])
            elif cmd == "RUN":
                data = self.run()
            elif cmd == "READ_OUT":
                data = self.read_out()
            elif cmd == "COUNTERS-bad":  # a good COUNTERS would carry `cycles`, which the model only estimates
                data = p.encode_frame(Cmd.COUNTERS, self._seq(), self._bytes(self._int(1, 4)))
            else:
                data = p.encode_frame(int(self.rng.choice([0, 8, 0x42, 0x81, 0xFF])), self._seq(),
                                      self._bytes(self._int(0, 6)))
            kind = cmd
            if self.rng.random() < 0.12:
                kind, data = "broken", self.broken(data)
        self.kinds[str(kind)] = self.kinds.get(str(kind), 0) + 1
        return data


def normalized(data: bytes) -> list:
    """The answers, with a COUNTERS record's `cycles` (which the model only estimates) left out:
    every other answer byte must be identical."""
    events = []
    for event in p.FrameDecoder().feed(data):
        if isinstance(event, p.Frame) and event.cmd == Cmd.COUNTERS.response:
            event = (event.seq, without_cycles(p.Counters.unpack(event.payload).as_dict()))
        events.append(event)
    return events


def answers(data: bytes) -> int:
    return len(p.FrameDecoder().feed(data))


def collect(transport, n: int, timeout: float = 30.0) -> bytes:
    got, count, decoder = b"", 0, p.FrameDecoder()
    deadline = time.monotonic() + timeout
    while count < n:
        assert time.monotonic() < deadline, f"only {count} of {n} answers within {timeout} s"
        chunk = transport.read(0.5)
        if not chunk:
            transport.check_alive()
        got += chunk
        count += len(decoder.feed(chunk))
    assert count == n, f"{count} answers where {n} were expected"
    return got


@pytest.fixture
def pair():
    """A fresh simulated device and a fresh model (memories all zero) for each seed: RESET clears
    counters but not memories, and the product after a storm writes the device's memories."""
    acc = bitlane.connect("sim://tiny", timeout=30)
    yield acc, ModelTransport(CFG)
    acc.close()


def without_cycles(counters: dict) -> dict:
    return {k: v for k, v in counters.items() if k != "cycles"}


def compare_and_tally(seed: int, start: int, got: bytes, expected: bytes, tally: dict[str, int]) -> list:
    """Fail unless the device's answers to a batch equal the model's; count the model's answers by kind
    into `tally`. Returns the model's answer frames."""
    if got != expected and normalized(got) != normalized(expected):
        exp_events, got_events = normalized(expected), normalized(got)
        first = next((i for i, (a, b) in enumerate(zip(exp_events, got_events)) if a != b), None)
        pytest.fail(f"seed {seed}, frames {start}..: answer {first} differs: model "
                    f"{exp_events[first] if first is not None else None} sim "
                    f"{got_events[first] if first is not None else None}")
    events = list(p.FrameDecoder().feed(expected))
    for event in events:
        name = (p.ErrorCode(event.payload[0]).name if event.cmd == Cmd.ERROR
                else f"{p.cmd_name(event.cmd & ~p.RESPONSE_FLAG)} ok")
        tally[name] = tally.get(name, 0) + 1
    return events


@pytest.mark.parametrize("seed", range(SEED, SEED + SEEDS))
def test_protocol_storm(pair, seed):
    device, model = pair
    rng = np.random.default_rng(seed)
    maker = StormMaker(CFG, rng)
    sim = device.transport
    device.reset()
    model.write(p.encode_frame(Cmd.RESET, 0))  # both start from cleared counters
    model.read(0)
    total_answers = total_bytes = 0
    tally: dict[str, int] = {}  # answers: "RUN ok", or the error code
    for start in range(0, FRAMES, BATCH):
        batch = b"".join(maker.frame() for _ in range(min(BATCH, FRAMES - start)))
        if start + BATCH >= FRAMES:
            batch += p.encode_frame(Cmd.INFO, 0x5A)  # ends the storm in step: the device is hunting after it
        model.write(batch)
        expected = model.read(0)
        sim.write(batch)
        got = collect(sim, answers(expected))
        compare_and_tally(seed, start, got, expected, tally)
        total_answers += answers(expected)
        total_bytes += len(batch)
    # still alive and in step: INFO, the counters (but `cycles`) equal, and an exact product
    model_counters = p.Counters.unpack(
        p.FrameDecoder().feed((model.write(p.encode_frame(Cmd.COUNTERS, 1)), model.read(0))[1])[0].payload).as_dict()
    sim_counters = device.counters()
    assert without_cycles(sim_counters) == without_cycles(model_counters)
    assert device.info() == p.Capabilities.from_config(CFG)
    t = rng.integers(-1, 2, (13, 77), dtype=np.int8)
    q = rng.integers(-128, 128, (77, 3), dtype=np.int8)
    q[0] = -128
    np.testing.assert_array_equal(device.matmul(t, q), t.astype(np.int64) @ q.astype(np.int64))
    print(f"\nseed {seed}: {FRAMES} frames, {total_bytes} bytes, {total_answers} answers, sent {sorted(maker.kinds.items())}, "
          f"answers {sorted(tally.items())}, final counters {sim_counters}")


class DecoderStormMaker(StormMaker):
    """Random decoder-mode traffic for a configuration with a decoder on which `image` (a compiled model)
    is loaded, biased towards the edges of every check. The frames a device accepts keep it able to
    run the model: LOAD_PROGRAM and CONST writes rewrite what is there, DECODE_SETUP is the image's,
    MAIN is the program's scratch (it reads no word it has not written), DECODE continues the sequence
    or restarts it. `next_pos()` is the device's next position as the model has it when a frame is made."""

    def __init__(self, cfg, rng: np.random.Generator, model, image, next_pos) -> None:
        super().__init__(cfg, rng)
        self.model, self.image, self.next_pos = model, image, next_pos
        self.shape = cfg.decoder

    def load_program(self) -> bytes:
        from bitlane.contract.decoder import Instruction, Op
        program, depth = self.image.program, self.shape.program_depth
        most = (self.cfg.max_payload - p.ProgramHeader.SIZE) // Instruction.SIZE
        n = int(self.rng.choice([1, self._int(1, 8), most]))
        index = self._int(0, len(program) - 1)
        body = b"".join(ins.pack() for ins in (program + [Instruction(Op.HALT)] * n)[index:index + n])
        r = self.rng.random()
        if r < 0.15:  # an op outside the instruction set in one of them
            i = self._int(0, n - 1) * Instruction.SIZE
            op = int(self.rng.choice([v for v in range(256) if v not in Op._value2member_map_]))
            body = body[:i] + bytes([op]) + body[i + 1:]
        elif r < 0.3:  # past the program memory
            index = int(self.rng.choice([depth - n + 1, depth, self._int(depth - n + 1, 0xFFFF)]))
        elif r < 0.4:  # a part instruction
            body = body[:-self._int(1, Instruction.SIZE - 1)] if self.rng.random() < 0.5 else body + self._bytes(1)
        return p.encode_frame(Cmd.LOAD_PROGRAM, self._seq(), p.ProgramHeader(index).pack() + body)

    def write_bank(self) -> bytes:
        from bitlane.contract.decoder import Bank
        most = (self.cfg.max_payload - p.BankWriteHeader.SIZE) // p.BANK_WORD_BYTES
        n = int(self.rng.choice([1, self._int(1, 16), most]))
        if self.rng.random() < 0.5:  # CONST: the image's own words
            bank, depth = Bank.CONST, self.shape.const_depth
            addr = self._int(0, max(0, len(self.image.const) - n))
            words = np.asarray(self.image.const[addr:addr + n], dtype=np.int64)
            words = np.concatenate([words, np.zeros(n - len(words), dtype=np.int64)])
        else:  # MAIN: anything
            bank, depth = Bank.MAIN, self.shape.main_depth
            addr = self._int(0, depth - n)
            words = self.rng.integers(-1 << 31, 1 << 31, n)
        data = words.astype("<i4").tobytes()
        r = self.rng.random()
        if r < 0.15:
            bank = int(self.rng.choice([Bank.COPY, Bank.OUT, Bank.ACT, 5, 0xFF]))
        elif r < 0.3:
            addr = self._edge(depth - n)
        elif r < 0.4:
            data = data[:-self._int(1, 3)] if self.rng.random() < 0.7 else b""
        return p.encode_frame(Cmd.WRITE_BANK, self._seq(), p.BankWriteHeader(addr & 0xFFFFFFFF, bank).pack() + data)

    def decode_setup(self) -> bytes:
        from bitlane.contract.decoder import REGISTERS
        im, main = self.image, self.shape.main_depth
        fields = [im.hidden, im.emb_addr, im.out_addr, im.out_exp_reg]
        r = self.rng.random()
        if r < 0.6:
            which = self._int(0, 3)
            fields[which] = int(self.rng.choice(
                [[0, main, main + 1, 0xFFFF], [main - im.hidden + 1, main, 0xFFFF],
                 [main - im.hidden + 1, 0xFFFF], [0, REGISTERS, 0xFF]][which]))
        payload = p.decode_setup(*fields)
        if r > 0.9:
            payload = payload[:-1] if self.rng.random() < 0.5 else payload + b"\x00"
        return p.encode_frame(Cmd.DECODE_SETUP, self._seq(), payload)

    def decode(self) -> bytes:
        hidden, context = self.image.hidden, self.shape.context
        count = self._int(1, 2)
        pos = 0 if self.rng.random() < 0.2 or self.next_pos() + count > context else self.next_pos()
        r = self.rng.random()
        if r < 0.1:
            pos = int(self.rng.choice([self.next_pos() + 1, max(1, self.next_pos() - 1), context, 0xFFFF]))
        elif r < 0.15:
            count = 0
        elif r < 0.2:
            count = p.Capabilities.from_config(self.cfg).max_decode_count(hidden) + 1  # LEN > max_payload
        rows = self.model.embedding[self.rng.integers(0, len(self.model.embedding), count)].astype("<i2").tobytes()
        payload = p.DecodeArgs(pos, count).pack() + rows
        if 0.2 <= r < 0.3:  # a row too short or too long, or the count wrong for the rows
            payload = payload[:-2] if r < 0.24 else payload + bytes(2 * hidden) if r < 0.27 else \
                p.DecodeArgs(pos, count + 1).pack() + rows
        return p.encode_frame(Cmd.DECODE, self._seq(), payload)

    def frame(self) -> bytes:
        r = self.rng.random()
        if r < 0.08:
            kind, data = "garbage", self.garbage()
        elif r < 0.14:
            kind, data = "length-limit", self.length_limit()
        else:
            kind = str(self.rng.choice(["LOAD_PROGRAM", "WRITE_BANK", "DECODE_SETUP", "DECODE", "INFO", "RESET",
                                        "COUNTERS-bad", "unknown"], p=[.2, .2, .15, .25, .06, .04, .04, .06]))
            if kind == "INFO":
                data = p.encode_frame(Cmd.INFO, self._seq())
            elif kind == "RESET":
                data = p.encode_frame(Cmd.RESET, self._seq())
            elif kind == "COUNTERS-bad":
                data = p.encode_frame(Cmd.COUNTERS, self._seq(), self._bytes(self._int(1, 4)))
            elif kind == "unknown":
                data = p.encode_frame(int(self.rng.choice([0, 8, 0x24, 0x2F, 0xA3, 0xFF])), self._seq(),
                                      self._bytes(self._int(0, 6)))
            else:
                data = getattr(self, kind.lower())()
            if self.rng.random() < 0.1:
                kind, data = "broken", self.broken(data)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return data

    def length_limit(self) -> bytes:
        """Frames whose LEN sits at a limit, of the decoder commands and the v1 requests that leave the
        memories alone."""
        cmd = int(self.rng.choice(sorted(p.DECODER_REQUESTS) + [Cmd.INFO, Cmd.COUNTERS, Cmd.RESET, 0x42]))
        length = int(self.rng.choice([0, 1, p.DecodeArgs.SIZE, p.DecodeSetup.SIZE, self.cfg.max_payload,
                                      self.cfg.max_payload + 1, 0xFFFF]))
        if length > self.cfg.max_payload:
            body = bytes((cmd, self._seq(), length & 0xFF, length >> 8)) + self._bytes(self._int(0, 8))
            return bytes([SYNC]) + p.stuff(body)
        # zeros: none of these lengths is a whole LOAD_PROGRAM (2 + 24 n), a DECODE of them counts 0 tokens
        return p.encode_frame(cmd, self._seq(), bytes(length))


@pytest.fixture(scope="module")
def decoder_pair():
    """sim://sim and model://sim with h128 loaded."""
    from bitlane.golden.integer import IntegerModel
    from bitlane.sw import Accelerator
    from bitlane.sw.decoder_session import load_decoder, plan_decoder

    model = IntegerModel.load(H128)
    device = bitlane.connect("sim://sim", timeout=60)
    twin = Accelerator(ModelTransport(preset("sim")))
    image = plan_decoder(model, device.caps)
    for acc in (device, twin):
        load_decoder(model, image, acc)
    yield device, twin, model, image
    device.close()


@pytest.mark.parametrize("seed", range(SEED, SEED + DECODER_SEEDS))
def test_decoder_storm(decoder_pair, seed):
    device, twin, model, image = decoder_pair
    cfg = preset("sim")
    state = twin.transport.device
    rng = np.random.default_rng(seed)
    maker = DecoderStormMaker(cfg, rng, model, image, lambda: state.next_pos)
    sim = device.transport
    device.reset()
    twin.reset()
    tally: dict[str, int] = {}
    decoded = 0
    for start in range(0, DECODER_FRAMES, BATCH):
        batch, expected = b"", b""
        for _ in range(min(BATCH, DECODER_FRAMES - start)):  # each frame made once the model has the one before
            data = maker.frame()
            twin.transport.write(data)
            expected += twin.transport.read(0)
            batch += data
        batch += p.encode_frame(Cmd.INFO, 0x5A)  # ends the batch in step: the device is hunting after it
        twin.transport.write(p.encode_frame(Cmd.INFO, 0x5A))
        expected += twin.transport.read(0)
        sim.write(batch)
        got = collect(sim, answers(expected), timeout=120)
        for event in compare_and_tally(seed, start, got, expected, tally):
            if event.cmd == Cmd.DECODE.response:
                decoded += (len(event.payload) - p.DecodeResponse.SIZE) // p.hidden_state_bytes(image.hidden)
    assert not tally.get("FAULT"), "the model faulted: the storm must keep the program runnable"
    for code in ("BAD_POSITION", "BAD_ARGUMENT", "BAD_ADDRESS", "BAD_LENGTH", "BAD_CRC", "TRUNCATED", "UNKNOWN_CMD",
                 "DECODE ok", "LOAD_PROGRAM ok", "WRITE_BANK ok", "DECODE_SETUP ok"):
        assert code in tally, f"the storm missed {code}: {tally}"
    assert without_cycles(device.counters()) == without_cycles(twin.counters())
    # the device still decodes the reference's hidden states, from position 0 (and so does its twin, which
    # keeps the two in step for the next seed)
    ids = np.array([5, 17, 42])
    y, e = model.hidden(ids[None], None)
    request = p.DecodeArgs(0, 3).pack() + model.embedding[ids].astype("<i2").tobytes()
    answer = device.request(Cmd.DECODE, request)
    assert answer == twin.request(Cmd.DECODE, request)
    _, y_dev, e_dev = p.unpack_decode_response(answer, 3, image.hidden)
    assert np.array_equal(y_dev, y[0]) and np.array_equal(e_dev, e[0, :, 0])
    print(f"\nseed {seed}: {DECODER_FRAMES} frames, {decoded} tokens decoded, sent {sorted(maker.kinds.items())}, "
          f"answers {sorted(tally.items())}")
