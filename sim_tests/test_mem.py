"""The MEM_* commands through BitlaneTop with SDRAM: host frames in, the SDRAM port
(hw/sdram_port.py: async FIFOs, controller in its own 100 MHz domain) out to the checking
SDRAM model (sim_tests/sdram_model.py, with its C++ twin), the core at 30 MHz (the ULX3S's core clock
until it went to 45 MHz).

Regions written with MEM_WRITE are read back with MEM_READ and checked with MEM_CRC against
zlib; the model's own memory must equal the reference word for word; regions past the end of
the SDRAM, zero counts and bad lengths are refused with the protocol's error codes and neither
read nor write the SDRAM. Every SDRAM timing rule is checked on every edge throughout.
"""
from __future__ import annotations

import random

import cocotb
import numpy as np
import pytest
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, Timer

from bitlane.contract import protocol as p
from bitlane.contract.config import preset
from bitlane.contract.protocol import Cmd, ErrorCode
from bitlane.hw.sdram import SdramGeometry
from bitlane.hw.sdram_port import SdramPort, board_read_delay
from bitlane.hw.top import BitlaneTop
from sim_tests import simlib
from sim_tests.coresim import random_acts, random_trits
from sim_tests.sdram_model import CppSdramModel, SdramModel, attach
from sim_tests.toplink import HostLink

TOPLEVEL = "bitlane_top"
GEOMETRY = SdramGeometry()
# The tiny core with the ULX3S's SDRAM and clocks: quick to build, the board's memory system.
CONFIG = preset("tiny").with_(name="tiny-sdram", clock_hz=30_000_000, sdram_words=GEOMETRY.words,
                              sdram_clock_hz=100_000_000)
CORE_PERIOD_PS = 2 * round(0.5e12 / CONFIG.clock_hz)  # cocotb wants an even period
WORDS = CONFIG.sdram_words


class SdramSide:
    """The DUT as `attach` sees an SDRAM controller: its clock is the `sdram` domain's."""

    def __init__(self, dut) -> None:
        self._dut = dut
        self.clk = dut.sdram_clk

    def __getattr__(self, name: str):
        return getattr(self._dut, name)


def split(addr: int) -> tuple[int, int, int]:
    """Word address -> (bank, row, column), as the controller maps it."""
    g = GEOMETRY
    return ((addr >> g.col_bits) & (g.banks - 1), addr >> (g.col_bits + g.bank_bits),
            addr & ((1 << g.col_bits) - 1))


async def connect(dut, seed: int, twin: bool = True) -> tuple[HostLink, SdramModel]:
    """Both clocks, both resets, a fresh SDRAM model from the first edge in reset (its power-up)."""
    cocotb.start_soon(Clock(dut.sdram_clk, 1e9 / CONFIG.sdram_clock_hz, unit="ns").start())
    dut.sdram_rst.value = 1
    model = SdramModel(CONFIG.sdram_clock_hz, seed=seed)
    read_delay = board_read_delay(CONFIG.sdram_clock_hz)
    cocotb.start_soon(attach(SdramSide(dut), model, prefix="sdram__", read_delay=read_delay,
                             twin=CppSdramModel(CONFIG.sdram_clock_hz) if twin else None))
    link = HostLink(dut, CONFIG, np.random.default_rng(seed), period_ps=CORE_PERIOD_PS)
    await link.start()
    await Timer(50, unit="ns")
    await FallingEdge(dut.sdram_clk)
    dut.sdram_rst.value = 0
    return link, model


async def mem_write(link: HostLink, addr: int, data: bytes) -> None:
    for cmd, payload in p.HostCodec.mem_write_requests(addr, data, link.caps):
        assert await link.request(cmd, payload) == b""


async def mem_read(link: HostLink, addr: int, count: int) -> bytes:
    out = b""
    for cmd, payload in p.HostCodec.mem_read_requests(addr, count, link.caps):
        out += await link.request(cmd, payload)
    assert len(out) == count * p.MEM_WORD_BYTES
    return out


async def mem_crc(link: HostLink, addr: int, count: int) -> int:
    return p.MemCrc.unpack(await link.request(Cmd.MEM_CRC, p.mem_crc(addr, count))).crc


def model_bytes(model: SdramModel, addr: int, count: int) -> bytes:
    """What the model's SDRAM holds at `addr`, little-endian words (unwritten words included)."""
    return b"".join(model.word(*split(a)).to_bytes(2, "little") for a in range(addr, addr + count))


@cocotb.test()
async def write_read_crc(dut) -> None:
    """Regions at the bottom and top of the SDRAM, across row and bank boundaries and at random
    addresses, 1 to 700 words (several frames): read back, CRC-checked, stored exactly; a
    product on the core in between still exact."""
    link, model = await connect(dut, 1)
    rng = random.Random(1)
    caps = await link.info()
    assert caps == p.Capabilities.from_config(CONFIG) and caps.sdram_words == WORDS
    row = 1 << GEOMETRY.col_bits
    regions = [(0, 1), (row - 2, 5), (4 * row - 3, 7), (WORDS - 3, 3), (WORDS - 1, 1),
               (rng.randrange(WORDS - 700), 700)]
    regions += [(rng.randrange(WORDS - 300), rng.randrange(1, 300)) for _ in range(4)]
    ref: dict[int, int] = {}
    for addr, count in regions:
        data = rng.randbytes(2 * count)
        await mem_write(link, addr, data)
        for i in range(count):
            ref[addr + i] = int.from_bytes(data[2 * i:2 * i + 2], "little")
    trits, q = random_trits(link.rng, (5, 11)), random_acts(link.rng, (2, 11))
    assert np.array_equal(await link.product(trits, q), q.astype(np.int64) @ trits.astype(np.int64).T)
    for addr, count in regions:
        want = b"".join(ref[a].to_bytes(2, "little") for a in range(addr, addr + count))
        got = await mem_read(link, addr, count)
        assert got == want, f"MEM_READ {addr:#x} x {count}: first difference at byte " \
                            f"{next(i for i in range(len(got)) if got[i] != want[i])}"
        assert await mem_crc(link, addr, count) == p.crc32(want), f"MEM_CRC {addr:#x} x {count}"
    stored = {(r << (GEOMETRY.col_bits + GEOMETRY.bank_bits)) | (b << GEOMETRY.col_bits) | c: w
              for (b, r, c), w in model.mem.items()}
    assert stored == ref
    counters = await link.counters()
    assert counters.frames_bad == 0
    dut._log.info(f"{len(regions)} regions, {len(ref)} words; SDRAM commands {model.counts}")


@cocotb.test()
async def refused_regions_touch_nothing(dut) -> None:
    """Past the end, wrapping 32-bit addresses, zero or too large counts, bad lengths: each
    refused with its error code, and the SDRAM sees no READ or WRITE at all."""
    link, model = await connect(dut, 2)
    most = link.caps.max_mem_read_count
    refused = [
        (ErrorCode.BAD_ADDRESS, Cmd.MEM_WRITE, p.mem_write(WORDS - 1, bytes(4))),
        (ErrorCode.BAD_ADDRESS, Cmd.MEM_WRITE, p.mem_write(WORDS, bytes(2))),
        (ErrorCode.BAD_ADDRESS, Cmd.MEM_WRITE, p.mem_write(0xFFFFFFFF, bytes(2))),
        (ErrorCode.BAD_LENGTH, Cmd.MEM_WRITE, p.mem_write(0, bytes(3))),
        (ErrorCode.BAD_LENGTH, Cmd.MEM_WRITE, p.mem_write(0, b"")),
        (ErrorCode.BAD_ADDRESS, Cmd.MEM_CRC, p.mem_crc(WORDS - 5, 6)),
        (ErrorCode.BAD_ADDRESS, Cmd.MEM_CRC, p.mem_crc(1, 0xFFFFFFFF)),
        (ErrorCode.BAD_ADDRESS, Cmd.MEM_CRC, p.mem_crc(0xFFFFFFFF, 0xFFFFFFFF)),
        (ErrorCode.BAD_ARGUMENT, Cmd.MEM_CRC, p.mem_crc(0, 0)),
        (ErrorCode.BAD_LENGTH, Cmd.MEM_CRC, p.mem_crc(0, 1)[:-1]),
        (ErrorCode.BAD_ADDRESS, Cmd.MEM_READ, p.mem_read(WORDS - 1, 2)),
        (ErrorCode.BAD_ARGUMENT, Cmd.MEM_READ, p.mem_read(0, 0)),
        (ErrorCode.BAD_ARGUMENT, Cmd.MEM_READ, p.mem_read(0, most + 1)),
        (ErrorCode.BAD_LENGTH, Cmd.MEM_READ, p.mem_read(0, 1) + b"\x00"),
    ]
    for code, cmd, payload in refused:
        await link.expect_error(code, cmd, payload)
    assert await mem_read(link, WORDS - most, most) == model_bytes(model, WORDS - most, most)
    assert "WRITE" not in model.counts and model.counts["READ"] == most, model.counts
    counters = await link.counters()
    assert counters.frames_bad == len(refused)


@cocotb.test()
async def crc_spans_several_requests(dut) -> None:
    """A MEM_CRC longer than one controller request (65,536 words), over written and never
    written words, equals zlib's CRC-32 of what the SDRAM holds."""
    link, model = await connect(dut, 3, twin=False)
    addr, count = 70_001, 66_000
    await mem_write(link, addr + 65_530, random.Random(3).randbytes(40))
    got = await mem_crc(link, addr, count)
    assert got == p.crc32(model_bytes(model, addr, count))


@cocotb.test()
async def differential_vs_model(dut) -> None:
    """Random MEM_* traffic, good and bad (past the end, zero counts, odd lengths, truncated
    frames), byte for byte the functional model's answers (sw/model_device.py). A window is
    written first so that every region read lies in written words (the model's never-written
    words are 0, the SDRAM model's a function of the address)."""
    from bitlane.sw.model_device import ModelDevice

    link, _ = await connect(dut, 4, twin=False)
    rng = random.Random(4)
    device, decoder = ModelDevice(CONFIG), p.FrameDecoder()
    base, size = WORDS - 3000, 3000  # the window: the top of the SDRAM
    requests = [(cmd, payload) for cmd, payload in p.HostCodec.mem_write_requests(
        base, rng.randbytes(2 * size), link.caps)]
    most_write = link.caps.max_write_words(p.MEM_WORD_BYTES)
    for _ in range(150):
        count = rng.choice([0, 1, rng.randrange(1, 200), link.caps.max_mem_read_count,
                            link.caps.max_mem_read_count + 1])
        addr = base + rng.randrange(size - min(count, size) + 1)
        if rng.random() < 0.15:  # past the end
            addr = rng.choice([WORDS - count + 1, WORDS - count + 100, WORDS, 0xFFFFFFFF])
        kind = rng.choice([Cmd.MEM_WRITE, Cmd.MEM_READ, Cmd.MEM_CRC, Cmd.MEM_CRC])
        if kind == Cmd.MEM_WRITE:
            payload = p.mem_write(addr, rng.randbytes(2 * min(count, most_write) + (rng.random() < 0.1)))
        elif kind == Cmd.MEM_READ:
            payload = p.mem_read(addr, count)
        else:
            payload = p.mem_crc(addr, count)
        requests.append((kind, payload))
    kinds: dict[str, int] = {}
    for seq, (cmd, payload) in enumerate(requests + [(Cmd.COUNTERS, b"")]):
        frame = p.encode_frame(cmd, seq & 0xFF, payload)
        if rng.random() < 0.03:
            frame = frame[:rng.randrange(1, len(frame))]  # cut short by the next frame's SYNC
        link.send(frame)
        for want in decoder.feed(device.process(frame)):
            got = await link.next_event()
            name = p.ErrorCode(want.payload[0]).name if want.cmd == Cmd.ERROR else Cmd(want.cmd & 0x7F).name
            kinds[name] = kinds.get(name, 0) + 1
            if want.cmd == Cmd.COUNTERS.response:  # the model's cycle count is an estimate
                got, want = p.Counters.unpack(got.payload), p.Counters.unpack(want.payload)
                assert (got.frames_ok, got.frames_bad) == (want.frames_ok, want.frames_bad), (got, want)
            else:
                assert (got.cmd, got.seq, got.payload) == (want.cmd, want.seq, want.payload), \
                    f"{cmd.name} {payload[:8].hex()}: device {got}, model {want}"
    dut._log.info(f"responses compared: {dict(sorted(kinds.items()))}")
    assert {"MEM_WRITE", "MEM_READ", "MEM_CRC", "BAD_ADDRESS", "BAD_ARGUMENT", "BAD_LENGTH"} <= set(kinds)


PORT_RATIO = 4


@cocotb.test()
async def wide_port(dut) -> None:
    """SdramPort alone with 4 SDRAM words per port word (64 bits at 30 MHz for 16 at 100 MHz):
    writes with gaps, then reads with a stalling consumer, of 1 to 300 port words each, back to
    back in the request FIFO; read words equal the written ones and the model holds each
    SDRAM word where the port word's place says (lowest first)."""
    from cocotb.triggers import ReadOnly
    rng = random.Random(5)
    cocotb.start_soon(Clock(dut.clk, CORE_PERIOD_PS, unit="ps").start())
    cocotb.start_soon(Clock(dut.sdram_clk, 1e9 / CONFIG.sdram_clock_hz, unit="ns").start())
    model = SdramModel(CONFIG.sdram_clock_hz, seed=5)
    dut.rst.value = dut.sdram_rst.value = 1
    dut.mem__req__valid.value = dut.mem__w_data__valid.value = dut.mem__r_data__ready.value = 0
    cocotb.start_soon(attach(SdramSide(dut), model, prefix="pins__", read_delay=board_read_delay(CONFIG.sdram_clock_hz),
                             twin=CppSdramModel(CONFIG.sdram_clock_hz)))
    await Timer(100, unit="ns")
    await FallingEdge(dut.clk)
    dut.rst.value = dut.sdram_rst.value = 0
    port_words = WORDS // PORT_RATIO
    regions = [(0, 1), (port_words - 7, 7), (rng.randrange(port_words - 300), 300), (129, 128)]
    written = {(addr, count): [rng.getrandbits(16 * PORT_RATIO) for _ in range(count)] for addr, count in regions}
    requests = [(addr, count, 1) for addr, count in regions] + [(addr, count, 0) for addr, count in regions]
    words_out = [w for addr, count in regions for w in written[(addr, count)]]
    want_in = list(words_out)
    got: list[int] = []
    addr_bits = (port_words - 1).bit_length()  # request layout: addr, count (16 - log2(ratio) bits), write
    count_bits = len(dut.mem__req__payload) - addr_bits - 1
    assert count_bits == 16 - 2
    cycles = 0
    while len(got) < len(want_in):
        cycles += 1
        assert cycles < 100_000, f"{len(got)} of {len(want_in)} words read"
        await FallingEdge(dut.clk)
        if requests:
            addr, count, write = requests[0]
            dut.mem__req__valid.value = 1
            dut.mem__req__payload.value = addr | (count - 1) << addr_bits | write << (addr_bits + count_bits)
        else:
            dut.mem__req__valid.value = 0
        offer = bool(words_out) and rng.random() < 0.7
        dut.mem__w_data__valid.value = int(offer)
        if offer:
            dut.mem__w_data__payload.value = words_out[0]
        ready = rng.random() < 0.6
        dut.mem__r_data__ready.value = int(ready)
        await ReadOnly()
        if requests and dut.mem__req__ready.value:
            requests.pop(0)
        if offer and dut.mem__w_data__ready.value:
            words_out.pop(0)
        if ready and dut.mem__r_data__valid.value:
            got.append(int(dut.mem__r_data__payload.value))
    assert got == want_in
    for (addr, count), words in written.items():
        for i, word in enumerate(words):
            for j in range(PORT_RATIO):
                sdram_addr = (addr + i) * PORT_RATIO + j
                assert model.word(*split(sdram_addr)) == (word >> 16 * j) & 0xFFFF, hex(sdram_addr)


@pytest.fixture(scope="module")
def build():
    return simlib.build(BitlaneTop(CONFIG), TOPLEVEL)


@pytest.mark.parametrize("case", ["write_read_crc", "refused_regions_touch_nothing", "crc_spans_several_requests",
                                  "differential_vs_model"])
def test_mem(build, case: str) -> None:
    simlib.run("sim_tests.test_mem", build, TOPLEVEL, testcase=case, name=f"test_mem-{case}")


def test_wide_port() -> None:
    build = simlib.build(SdramPort(CONFIG.sdram_clock_hz, ratio=PORT_RATIO), "sdram_port")
    simlib.run("sim_tests.test_mem", build, "sdram_port", testcase="wide_port", name="test_mem-wide_port")


def test_port_lints_clean(tmp_path) -> None:
    """The SDRAM port with a wide word, `verilator -Wall` with the project's waivers."""
    result = simlib.lint(SdramPort(CONFIG.sdram_clock_hz, ratio=PORT_RATIO), "sdram_port", tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
