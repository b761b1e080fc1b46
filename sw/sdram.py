"""Blobs in the device's SDRAM: loaded once, verified, and reused while the device holds them.

    from bitlane.sw.sdram import load_blob
    result = load_blob(acc, blob, addr=0, progress=True)   # acc: any Link (bitlane.connect(url))
    result.skipped        # True: the device already held exactly this blob there; nothing was sent

`load_blob` works with the MEM_* commands of docs/protocol.md:

1. A blob that does not fit the device's SDRAM (INFO's `sdram_words`) from `addr` is refused
   before anything is sent, with one line giving both sizes (`SdramLoadError`).
2. MEM_CRC of the region: if it equals the blob's CRC-32, the device still holds it (from an
   earlier run, say) and nothing is written.
3. Otherwise MEM_WRITE frames, pipelined as deep as the transport allows, with a progress bar
   in bytes and bytes/s on stderr.
4. MEM_CRC again: a CRC other than the blob's raises `SdramLoadError`.

An odd-length blob is padded with one zero byte to whole 16-bit words (the CRCs cover it too).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bitlane.contract import protocol as p
from bitlane.contract.protocol import BitlaneError

from .link import Link

# MEM_WRITE frames per transact() call: the progress bar moves between calls.
FRAMES_PER_STEP = 32

Progress = Callable[[int, int], None]  # (bytes written so far, total bytes)


class SdramLoadError(BitlaneError):
    """A blob that does not fit the SDRAM, a device without SDRAM, or a load that did not verify."""


@dataclass(frozen=True)
class LoadResult:
    addr: int  # first SDRAM word
    nbytes: int  # bytes in the region (the blob, padded to whole words)
    crc: int  # CRC-32 of the region, as the device computed it
    skipped: bool  # the device already held the blob: nothing was written
    seconds: float  # from the first request to the verifying CRC

    @property
    def bytes_per_s(self) -> float:
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for the user."""
        where = f"{self.nbytes:,} bytes at SDRAM word {self.addr}, CRC-32 0x{self.crc:08x}"
        if self.skipped:
            return f"already loaded: {where} (checked in {self.seconds:.2f} s; nothing written)"
        return f"loaded {where}, verified, in {self.seconds:.2f} s ({self.bytes_per_s / 1e3:,.1f} kB/s)"


def _size(nbytes: int) -> str:
    return f"{nbytes:,} bytes ({nbytes / 2**20:.2f} MiB)"


def check_fits(caps: p.Capabilities, nbytes: int, addr: int = 0, device: str = "the device") -> None:
    """Raise SdramLoadError, naming both sizes, unless `nbytes` fit the SDRAM from word `addr`."""
    if caps.sdram_words == 0:
        raise SdramLoadError(f"{device} has no SDRAM (its INFO reports 0 words); a blob of {_size(nbytes)} "
                             "needs a board with SDRAM, e.g. model://ulx3s or sim://ulx3s")
    if addr < 0:
        raise SdramLoadError(f"SDRAM word address {addr} is negative")
    room = max(0, caps.sdram_bytes - addr * p.MEM_WORD_BYTES)
    if nbytes > room:
        if addr == 0:
            raise SdramLoadError(f"blob of {_size(nbytes)} does not fit the SDRAM of {device}: {_size(room)}")
        raise SdramLoadError(f"blob of {_size(nbytes)} does not fit the SDRAM of {device} from word {addr}: "
                             f"{room:,} of its {caps.sdram_bytes:,} bytes are left there")


def load_blob(link: Link, blob: bytes | bytearray | memoryview, addr: int = 0, *,
              progress: bool | Progress = False, force: bool = False) -> LoadResult:
    """Put `blob` into the device's SDRAM from word `addr` unless it is there already (`force`:
    write it anyway), and verify it by MEM_CRC. `progress`: True for a bar on stderr, or a
    callback (bytes written, total)."""
    data = bytes(blob)
    check_fits(link.caps, len(data), addr, link.transport.description)  # the SDRAM holds whole words
    if len(data) % p.MEM_WORD_BYTES:
        data += bytes(p.MEM_WORD_BYTES - len(data) % p.MEM_WORD_BYTES)
    if not data:
        raise SdramLoadError("nothing to load: the blob is empty")
    words = len(data) // p.MEM_WORD_BYTES
    want = p.crc32(data)
    started = time.perf_counter()
    if not force:
        held = link.mem_crc(addr, words)
        if held == want:
            return LoadResult(addr, len(data), held, True, time.perf_counter() - started)

    bar = None
    if progress is True:
        from tqdm import tqdm
        bar = tqdm(total=len(data), unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr,
                   desc=f"SDRAM <- {link.transport.description}", leave=False)
        progress = lambda done, _total: bar.update(done - bar.n)  # noqa: E731
    requests = list(p.HostCodec.mem_write_requests(addr, data, link.caps))
    step_bytes = link.caps.max_write_words(p.MEM_WORD_BYTES) * p.MEM_WORD_BYTES
    try:
        for first in range(0, len(requests), FRAMES_PER_STEP):
            link.transact(requests[first:first + FRAMES_PER_STEP])
            if progress:
                progress(min(len(data), (first + FRAMES_PER_STEP) * step_bytes), len(data))
    finally:
        if bar is not None:
            bar.close()
    got = link.mem_crc(addr, words)
    seconds = time.perf_counter() - started
    if got != want:
        raise SdramLoadError(f"{link.transport.description}: SDRAM words {addr}..{addr + words - 1} read back with "
                             f"CRC-32 0x{got:08x}, the blob's is 0x{want:08x}: the load did not verify")
    return LoadResult(addr, len(data), got, False, seconds)
