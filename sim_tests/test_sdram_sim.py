"""The simulated ULX3S with its SDRAM: `sim://ulx3s` (the Verilated top behind the TCP harness)
and the UART-level board, both with the C++ timing-checking SDRAM model (hw/sim/sdram_model.h)
on the controller's pins, driven through the host driver.

Regions go in with MEM_WRITE, come back with MEM_READ and MEM_CRC; refused regions change
nothing; answers equal the functional model's (model://ulx3s) byte for byte; the loader
(sw/sdram.py) loads, verifies and reuses a blob. A model stricter than the part the controller
is built for must stop the simulator with the broken rule.

The first run builds sim://ulx3s (~1-2 min) and the UART-level ULX3S (~1 min).
"""
from __future__ import annotations

import random
from dataclasses import replace

import pytest

import bitlane
from bitlane.contract import protocol as p
from bitlane.contract.config import preset
from bitlane.contract.protocol import Cmd, DeviceError, ErrorCode
from bitlane.devices import sim_transport
from bitlane.hw.sdram import SdramTiming
from bitlane.hw.sim.build import build_harness
from bitlane.hw.sim.uart_sim import UartSimBoard
from bitlane.sw import Accelerator
from bitlane.sw.sdram import SdramLoadError, load_blob
from bitlane.sw.transport import SimTransport, TransportError

ULX3S = preset("ulx3s")
WORDS = ULX3S.sdram_words
ROW = 512  # words per SDRAM row


@pytest.fixture(scope="module")
def sim():
    acc = bitlane.connect("sim://ulx3s", timeout=120)
    yield acc
    acc.close()


def regions(rng: random.Random) -> list[tuple[int, bytes]]:
    """Bottom, row and bank boundaries, the top, random places; 1 word to several frames."""
    spots = [(0, 1), (ROW - 3, 7), (4 * ROW - 1, 2), (WORDS - 5, 5), (rng.randrange(WORDS - 2000), 1300)]
    return [(addr, rng.randbytes(2 * count)) for addr, count in spots]


def test_info_reports_the_sdram(sim) -> None:
    assert sim.caps == p.Capabilities.from_config(ULX3S)
    assert sim.caps.sdram_words == WORDS and sim.caps.sdram_bytes == 32 << 20


def test_write_crc_read(sim) -> None:
    written = regions(random.Random(1))
    for addr, data in written:
        sim.mem_write(addr, data)
    for addr, data in written:
        words = len(data) // 2
        assert sim.mem_crc(addr, words) == p.crc32(data), f"MEM_CRC at {addr:#x}"
        assert sim.mem_read(addr, words) == data, f"MEM_READ at {addr:#x}"
    assert sim.counters()["frames_bad"] == 0


def test_refused_regions_change_nothing(sim) -> None:
    sim.mem_write(WORDS - 8, bytes(range(16)))
    before = sim.mem_crc(WORDS - 8, 8)
    most = sim.caps.max_mem_read_count
    for cmd, payload, code in [
            (Cmd.MEM_WRITE, p.mem_write(WORDS - 1, bytes(4)), ErrorCode.BAD_ADDRESS),
            (Cmd.MEM_WRITE, p.mem_write(0xFFFFFFFF, bytes(2)), ErrorCode.BAD_ADDRESS),
            (Cmd.MEM_WRITE, p.mem_write(0, bytes(3)), ErrorCode.BAD_LENGTH),
            (Cmd.MEM_CRC, p.mem_crc(WORDS - 8, 9), ErrorCode.BAD_ADDRESS),
            (Cmd.MEM_CRC, p.mem_crc(0, 0), ErrorCode.BAD_ARGUMENT),
            (Cmd.MEM_READ, p.mem_read(WORDS, 1), ErrorCode.BAD_ADDRESS),
            (Cmd.MEM_READ, p.mem_read(0, most + 1), ErrorCode.BAD_ARGUMENT)]:
        with pytest.raises(DeviceError) as refused:
            sim.request(cmd, payload)
        assert (refused.value.code, refused.value.request) == (code, cmd), payload.hex()
    assert sim.mem_crc(WORDS - 8, 8) == before
    assert sim.mem_read(WORDS - 8, 8) == bytes(range(16))


def test_answers_equal_the_functional_model(sim) -> None:
    """The same MEM_* requests (over words both have written) to model://ulx3s and sim://ulx3s."""
    rng = random.Random(2)
    with bitlane.connect("model://ulx3s") as model:
        base = 5_000_000
        requests = list(p.HostCodec.mem_write_requests(base, rng.randbytes(4000), sim.caps))
        for _ in range(40):
            addr, count = base + rng.randrange(1990), rng.choice([1, 2, rng.randrange(1, 10), 10])
            requests.append(rng.choice([(Cmd.MEM_READ, p.mem_read(addr, count)),
                                        (Cmd.MEM_CRC, p.mem_crc(addr, count)),
                                        (Cmd.MEM_WRITE, p.mem_write(addr, rng.randbytes(2 * count)))]))
        assert sim.transact(requests) == model.transact(requests)


def test_loader_loads_verifies_and_reuses(sim) -> None:
    blob = random.Random(3).randbytes(30_001)  # odd: padded to whole words
    first = load_blob(sim, blob, addr=77_777)
    assert not first.skipped and first.crc == p.crc32(blob + b"\0") and first.nbytes == 30_002
    again = load_blob(sim, blob, addr=77_777)
    assert again.skipped and again.crc == first.crc
    changed = bytearray(blob)
    changed[12345] ^= 1
    assert not load_blob(sim, bytes(changed), addr=77_777).skipped
    assert sim.mem_read(77_777 + 12345 // 2, 1) == bytes(changed[12344:12346])
    frames = sim.counters()["frames_ok"]
    with pytest.raises(SdramLoadError, match=r"blob of 33,554,433 bytes .* does not fit the SDRAM of sim://ulx3s: "
                                             r"33,554,432 bytes"):
        load_blob(sim, bytes(WORDS * 2 + 1))
    assert sim.counters()["frames_ok"] == frames + 1  # nothing but this COUNTERS went to the device


def test_a_stricter_model_stops_the_simulator() -> None:
    """The harness's model must check: one whose tRCD exceeds what the controller waits (2 cycles
    at the ULX3S's 50 MHz = 40 ns) ends the simulator at the first access, naming the rule."""
    config = preset("tiny").with_(name="tiny-sdram", clock_hz=30_000_000, sdram_words=WORDS,
                                  sdram_clock_hz=ULX3S.sdram_clock_hz)
    waited_ns = SdramTiming().cycles(config.sdram_clock_hz).rcd * 1e9 / config.sdram_clock_hz
    exe = build_harness(config, sdram_model_timing=replace(SdramTiming(), t_rcd_ns=waited_ns + 1))
    acc = Accelerator(SimTransport(exe, "sim://tiny-sdram (strict model)", config.max_payload), timeout=30)
    try:
        with pytest.raises(TransportError, match=r"exited with code 3: .*SDRAM rule broken: .*ACTIVATE to WRITE\) "
                                                 rf"violated: {waited_ns:.1f} ns < {waited_ns + 1:g} ns"):
            acc.mem_write(0, b"ab")
            acc.mem_crc(0, 1)
    finally:
        acc.close()
    with Accelerator(sim_transport(config), timeout=30) as fine:  # the part's own rules: no complaint
        fine.mem_write(0, b"ab")
        assert fine.mem_crc(0, 1) == p.crc32(b"ab")


def test_uart_level_board_has_its_sdram() -> None:
    """The ULX3S at its serial pins (3 Mbaud): the SDRAM behind the UART, as on the board."""
    data = random.Random(4).randbytes(1200)
    with UartSimBoard("ulx3s") as board:
        with bitlane.connect(board.url, timeout=120) as acc:
            assert acc.caps.sdram_words == WORDS
            result = load_blob(acc, data, addr=WORDS - 600)
            assert not result.skipped and acc.mem_read(WORDS - 600, 600) == data
            assert load_blob(acc, data, addr=WORDS - 600).skipped
            with pytest.raises(DeviceError, match="BAD_ADDRESS"):
                acc.mem_crc(WORDS - 600, 601)
            assert acc.counters()["frames_bad"] == 1
        assert "0 framing errors" in board.stderr_tail() or board.process.poll() is None
