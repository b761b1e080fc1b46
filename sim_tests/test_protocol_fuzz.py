"""Bounded protocol fuzzer (issue 14): a storm of random bytes and random, edge-case and broken
frames fed to the functional model (`model://tiny`) and the Verilated gateware (`sim://tiny`).

Every answer must be byte-identical between the two (but the `cycles` of a COUNTERS record,
which the model only estimates), the device must still answer INFO after the
storm, and a product computed after it must be exact. Options (environment):

    BITLANE_FUZZ_SEED=N      first seed (default 0)
    BITLANE_FUZZ_FRAMES=N    frames per seed (default 2000)
    BITLANE_FUZZ_SEEDS=N     number of seeds (default 3; make test runs 6000 frames in ~5 s)

Longer run: BITLANE_FUZZ_SEED=100 BITLANE_FUZZ_SEEDS=10 BITLANE_FUZZ_FRAMES=20000 \
    .venv/bin/python -m pytest -s sim_tests/test_protocol_fuzz.py
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

import sw
from hw.config import preset
from sw import protocol as p
from sw.protocol import ESC, SYNC, Cmd
from sw.transport import ModelTransport

CFG = preset("tiny")
SEED = int(os.environ.get("BITLANE_FUZZ_SEED", "0"))
SEEDS = int(os.environ.get("BITLANE_FUZZ_SEEDS", "3"))
FRAMES = int(os.environ.get("BITLANE_FUZZ_FRAMES", "2000"))
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
    acc = sw.connect("sim://tiny", timeout=30)
    yield acc, ModelTransport(CFG)
    acc.close()


def without_cycles(counters: dict) -> dict:
    return {k: v for k, v in counters.items() if k != "cycles"}


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
        if got != expected and normalized(got) != normalized(expected):
            exp_events, got_events = normalized(expected), normalized(got)
            first = next((i for i, (a, b) in enumerate(zip(exp_events, got_events)) if a != b), None)
            pytest.fail(f"seed {seed}, frames {start}..: answer {first} differs: model "
                        f"{exp_events[first] if first is not None else None} sim "
                        f"{got_events[first] if first is not None else None}")
        for event in p.FrameDecoder().feed(expected):
            name = (p.ErrorCode(event.payload[0]).name if event.cmd == Cmd.ERROR
                    else f"{p.cmd_name(event.cmd & ~p.RESPONSE_FLAG)} ok")
            tally[name] = tally.get(name, 0) + 1
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
