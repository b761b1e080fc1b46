"""Loading the ULX3S's SDRAM over the protocol: load rate at 3 Mbaud and MEM_CRC rate, in device cycles.

    .venv/bin/python bench/sdram_load_bench.py [--kib 64] [--crc-words 1048576] [--usb-latency-ms 0.125]

1. The UART-level ULX3S (hw/sim/uart_sim.py: the board logic driven bit by bit at its serial
   pins at 3 Mbaud, the SDRAM controller in its 100 MHz domain with the checking SDRAM model on
   its pins): sw/sdram.py's `load_blob` of a random blob (MEM_CRC, MEM_WRITE frames, MEM_CRC).
   The device's own cycle counter (COUNTERS, at the `ulx3s` preset's clock) gives the time a board takes, the UART's
   wire time included; the USB-UART bridge's latency is not simulated, so `frames x latency` is
   added for the projection (one frame in flight on a serial link). Printed: bytes/s and the
   projected load time of a 20 MB model.
2. sim://ulx3s: MEM_CRC over `crc-words` words: device cycles per word (the CRC takes a word
   per core cycle while the SDRAM keeps up: 16 bits x 45 MHz = 90 MB/s against the SDRAM's 100).
3. The loader's wall-clock rate on model://ulx3s and sim://ulx3s (host and simulator speed, not
   a board's).
4. With --sim-speed: what the SDRAM domain costs the simulator: core cycles per second of the
   same products (1024 x 1024 trits, 8 vectors, 3 times) on sim://ulx3s and on the same core
   built without SDRAM (one more Verilator build, ~1 min).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL_BYTES = 20_000_000  # the projection's model: ~80M ternary weights at 2 bits


def device_cycles(acc, action) -> tuple[int, int]:
    """(device cycles, request frames) that `action()` took, from COUNTERS before and after."""
    before, frames = acc.counters()["cycles"], acc.stats.frames
    action()
    return acc.counters()["cycles"] - before, acc.stats.frames - frames - 1  # less the COUNTERS itself


def main(argv: list[str] | None = None) -> int:
    import bitlane
    from bitlane.contract.config import preset
    from bitlane.hw.boards import board
    from bitlane.hw.sim.uart_sim import UartSimBoard
    from bitlane.sw.sdram import load_blob

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kib", type=int, default=64, help="blob size for the UART-level load (KiB)")
    parser.add_argument("--crc-words", type=int, default=1 << 20, help="MEM_CRC region on sim://ulx3s (words)")
    parser.add_argument("--usb-latency-ms", type=float, default=0.125, help="added per frame for the projection")
    parser.add_argument("--sim-speed", action="store_true", help="also compare simulator speed without SDRAM")
    args = parser.parse_args(argv)
    spec, clock = board("ulx3s"), preset("ulx3s").clock_hz
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    blob = random.Random(1).randbytes(args.kib * 1024)

    with UartSimBoard("ulx3s", log=log) as sim, bitlane.connect(sim.url, timeout=600) as acc:
        wall = time.perf_counter()
        cycles, frames = device_cycles(acc, lambda: load_blob(acc, blob))
        wall = time.perf_counter() - wall
        skip_cycles, _ = device_cycles(acc, lambda: load_blob(acc, blob))
    seconds = cycles / clock + frames * args.usb_latency_ms / 1e3
    rate = len(blob) / seconds
    print(f"UART-level ULX3S, {spec.baud / 1e6:g} Mbaud: {len(blob):,} bytes in {frames} frames, {cycles:,} device "
          f"cycles = {cycles / clock * 1e3:.1f} ms + {frames} x {args.usb_latency_ms} ms USB latency "
          f"-> {rate / 1e3:.1f} kB/s ({rate * 10 / spec.baud:.1%} of the line's {spec.baud / 10 / 1e3:.0f} kB/s); "
          f"simulated in {wall:.0f} s")
    print(f"  projected for a {MODEL_BYTES / 1e6:g} MB model: {MODEL_BYTES / rate:.0f} s to load; "
          f"{skip_cycles:,} cycles ({skip_cycles / clock * 1e3:.2f} ms) to find it already loaded "
          f"(MEM_CRC of {len(blob):,} bytes), {MODEL_BYTES / 2 / clock:.2f} s for {MODEL_BYTES / 1e6:g} MB")

    with bitlane.connect("sim://ulx3s", timeout=600, log=log) as acc:
        acc.mem_crc(0, 1)  # the SDRAM's power-up wait
        wall = time.perf_counter()
        cycles, _ = device_cycles(acc, lambda: acc.mem_crc(0, args.crc_words))
        wall = time.perf_counter() - wall
        print(f"sim://ulx3s MEM_CRC of {args.crc_words:,} words: {cycles:,} device cycles "
              f"({args.crc_words / cycles:.3f} words/cycle = {2 * args.crc_words / cycles * clock / 1e6:.1f} MB/s "
              f"at {clock / 1e6:g} MHz); simulated in {wall:.1f} s")
        big = random.Random(2).randbytes(1 << 20)
        for url, device in (("sim://ulx3s", acc), ("model://ulx3s", bitlane.connect("model://ulx3s"))):
            result = load_blob(device, big)
            print(f"{url}: load_blob of {len(big):,} bytes in {result.seconds:.2f} s wall clock "
                  f"({result.bytes_per_s / 1e6:.2f} MB/s of host and simulator time)")
    if args.sim_speed:
        sim_speed(log)
    return 0


def sim_speed(log) -> None:
    import numpy as np

    from bitlane.contract.config import preset
    from bitlane.devices import sim_transport
    from bitlane.sw import Accelerator

    rng = np.random.default_rng(0)
    trits = rng.integers(-1, 2, (1024, 1024), dtype=np.int8)
    q = rng.integers(-128, 128, (1024, 8), dtype=np.int8)
    ulx3s = preset("ulx3s")
    for config in (ulx3s, ulx3s.with_(name="ulx3s-nosdram", sdram_words=0, sdram_clock_hz=0)):
        with Accelerator(sim_transport(config, log=log), timeout=600) as acc:
            acc.matmul(trits, q)  # weights resident from here
            before, wall = acc.counters()["cycles"], time.perf_counter()
            for _ in range(3):
                acc.matmul(trits, q)
            wall, cycles = time.perf_counter() - wall, acc.counters()["cycles"] - before
            print(f"sim://{config.name}: {cycles:,} core cycles in {wall:.2f} s = {cycles / wall / 1e3:.0f}k cycles/s")


if __name__ == "__main__":
    sys.exit(main())
