"""The SDRAM on model://ulx3s: the MEM_* commands of the functional model, the driver's
loader (sw/sdram.py: refuse what does not fit, write with progress, verify by MEM_CRC, reuse
what the device holds) and `bitlane sdram-load`. The same on sim://ulx3s and the UART-level
board: sim_tests/test_sdram_sim.py."""
from __future__ import annotations

import random

import pytest

import bitlane
from bitlane.cli import main as cli
from bitlane.contract import protocol as p
from bitlane.contract.protocol import Cmd, DeviceError, ErrorCode
from bitlane.sw.sdram import SdramLoadError, check_fits, load_blob

WORDS = 1 << 24


@pytest.fixture
def device():
    with bitlane.connect("model://ulx3s") as acc:
        yield acc


def test_mem_commands(device) -> None:
    assert device.caps.sdram_words == WORDS
    device.mem_write(WORDS - 3, b"abcdef")
    assert device.mem_read(WORDS - 4, 4) == b"\0\0abcdef"
    assert device.mem_crc(WORDS - 3, 3) == p.crc32(b"abcdef")
    assert device.mem_crc(0, WORDS) == p.crc32(bytes(2 * WORDS - 6) + b"abcdef")
    most = device.caps.max_mem_read_count
    for cmd, payload, code in [
            (Cmd.MEM_WRITE, p.mem_write(WORDS - 1, bytes(4)), ErrorCode.BAD_ADDRESS),
            (Cmd.MEM_WRITE, p.mem_write(0, bytes(3)), ErrorCode.BAD_LENGTH),
            (Cmd.MEM_CRC, p.mem_crc(1, WORDS), ErrorCode.BAD_ADDRESS),
            (Cmd.MEM_CRC, p.mem_crc(0, 0), ErrorCode.BAD_ARGUMENT),
            (Cmd.MEM_READ, p.mem_read(0, most + 1), ErrorCode.BAD_ARGUMENT),
            (Cmd.MEM_READ, p.mem_read(WORDS - 1, 2), ErrorCode.BAD_ADDRESS)]:
        with pytest.raises(DeviceError) as refused:
            device.request(cmd, payload)
        assert (refused.value.code, refused.value.request) == (code, cmd)
    assert device.mem_read(WORDS - 4, 4) == b"\0\0abcdef"


def test_without_sdram_every_region_is_outside() -> None:
    with bitlane.connect("model://tiny") as acc:
        assert acc.caps.sdram_words == 0
        with pytest.raises(DeviceError, match="BAD_ADDRESS"):
            acc.mem_write(0, b"ab")
        with pytest.raises(SdramLoadError, match="model://tiny has no SDRAM"):
            load_blob(acc, b"ab")


def test_load_verify_reuse(device) -> None:
    blob = random.Random(1).randbytes(100_001)
    seen = []
    result = load_blob(device, blob, addr=1000, progress=lambda done, total: seen.append((done, total)))
    assert not result.skipped and result.nbytes == 100_002 and result.crc == p.crc32(blob + b"\0")
    assert seen == sorted(seen) and seen[-1] == (100_002, 100_002) and len(seen) > 1
    assert device.mem_read(1000, 4) == blob[:8]
    frames = device.stats.frames
    again = load_blob(device, blob, addr=1000)
    assert again.skipped and device.stats.frames == frames + 1  # one MEM_CRC, nothing written
    assert "already loaded" in again.summary() and "loaded 100,002 bytes" in result.summary()
    assert not load_blob(device, blob, addr=1000, force=True).skipped
    assert not load_blob(device, blob[:-1] + b"x", addr=1000).skipped


def test_too_large_is_refused_before_anything_is_written(device) -> None:
    frames = device.stats.frames
    with pytest.raises(SdramLoadError) as refused:
        load_blob(device, bytes(2 * WORDS + 1))
    message = str(refused.value)
    assert "\n" not in message and "33,554,433 bytes" in message and "33,554,432 bytes" in message
    with pytest.raises(SdramLoadError, match="from word 10: 33,554,412 of its 33,554,432 bytes"):
        load_blob(device, bytes(2 * WORDS - 19), addr=10)
    assert device.stats.frames == frames  # not a single request
    check_fits(device.caps, 2 * WORDS)  # exactly full fits
    with pytest.raises(SdramLoadError, match="empty"):
        load_blob(device, b"")


def test_a_load_that_does_not_verify_is_an_error(device, monkeypatch) -> None:
    crcs = iter([0, 1])  # before: not held; after: not what was sent
    monkeypatch.setattr(device, "mem_crc", lambda addr, count: next(crcs))
    with pytest.raises(SdramLoadError, match=r"CRC-32 0x00000001, the blob's is 0x[0-9a-f]{8}: the load did not verify"):
        load_blob(device, b"abcd")


def test_cli(tmp_path, capsys) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(random.Random(2).randbytes(5000))
    assert cli(["sdram-load", str(blob), "--device", "model://ulx3s", "--addr", "12"]) == 0
    assert capsys.readouterr().out.startswith("loaded 5,000 bytes at SDRAM word 12, CRC-32 0x")
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(2 * WORDS + 2)
    assert cli(["sdram-load", str(big), "--device", "model://ulx3s"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("bitlane sdram-load: error: blob of 33,554,434 bytes (32.00 MiB) does not fit the SDRAM of "
                   "model://ulx3s: 33,554,432 bytes (32.00 MiB)")
    assert cli(["sdram-load", str(blob), "--device", "model://tiny"]) == 1
    assert "has no SDRAM" in capsys.readouterr().err
