"""SDRAM controller bandwidth in simulation, refresh on, against the checking SDRAM model.

    .venv/bin/python bench/sdram_bench.py

The Verilated `SdramController` (hw/sdram.py), at the two ULX3S operating points of
docs/sdram.md (50 MHz with read_delay 0, 100 MHz with read_delay 1), runs with the timing-checking model of
sim_tests/sdram_model.py on its pins (any protocol or timing violation aborts the bench)
and the consumer always ready. Each pattern's figure is words moved / cycles from its
first word to its last, i.e. the fraction of the SDRAM's peak of 2 bytes x clock; the
cycles include every refresh, row change and request gap in that span.

- sequential read / write: 2 requests of 65,536 consecutive words (256 KB in all);
- random read / write: single words at random addresses (each usually a row miss);
- random read x16: 16-word reads at random addresses;
- random mix x8: 8-word reads and writes, half each, at random addresses.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# name -> (requests, words per request, write probability)
PATTERNS = {
    "sequential read": (2, 65536, 0.0),
    "sequential write": (2, 65536, 1.0),
    "random read": (2000, 1, 0.0),
    "random write": (2000, 1, 1.0),
    "random read x16": (400, 16, 0.0),
    "random mix x8": (800, 8, 0.5),
}


async def measure(dut) -> None:
    """The cocotb side: run every pattern, write its figures to $BENCH_OUT."""
    from bitlane.hw.sdram import SdramGeometry
    from sim_tests.test_sdram import restart, start

    words_total = SdramGeometry().words
    results = []
    t = None
    for name, (requests, words, write_p) in PATTERNS.items():
        seed = len(results) + 1
        # The Python model alone checks here: the tests also run its C++ twin.
        t = await (start(dut, seed=seed, twin=False) if t is None
                   else restart(dut, seed=seed, previous=t, twin=False))
        rng = t.rng
        for i in range(requests):
            addr = i * words if name.startswith("sequential") else rng.randrange(words_total)
            t.requests.append((addr % words_total, words - 1, rng.random() < write_p))
        refreshes = t.model.counts.get("REFRESH", 0)
        wall = time.perf_counter()
        await t.run(10 * requests * words + 100_000)
        wall = time.perf_counter() - wall
        moved = sorted(t.read_cycles + t.write_cycles)
        results.append({"name": name, "words": len(moved), "cycles": moved[-1] - moved[0] + 1,
                        "refreshes": t.model.counts["REFRESH"] - refreshes, "sim_cycles": t.cycle, "wall": wall})
    Path(os.environ["BENCH_OUT"]).write_text(json.dumps(results))


if os.environ.get("COCOTB_TEST_MODULES"):  # imported by cocotb inside the simulator
    import cocotb
    measure = cocotb.test()(measure)


def main(argv: list[str] | None = None) -> int:
    from bitlane.hw.sdram import SdramController
    from sim_tests import simlib
    from sim_tests.test_sdram import CONFIGS, COUNT_BITS

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    print(f"{'clock':>7} {'pattern':<17} {'words':>7} {'cycles':>7} {'of peak':>8} {'MB/s':>6} {'refreshes':>9}")
    for hz, delay in CONFIGS:
        mhz = hz / 1e6
        controller = SdramController(hz, count_bits=COUNT_BITS, read_delay=delay)
        build = simlib.build(controller, "sdram")
        out = build / f"bench-{hz}.json"
        simlib.run("bench.sdram_bench", build, "sdram", name=f"bench-{hz}",
                   env={"BITLANE_SDRAM_HZ": hz, "BITLANE_SDRAM_READ_DELAY": delay, "BENCH_OUT": out})
        c = controller.cycles
        for r in json.loads(out.read_text()):
            share = r["words"] / r["cycles"]
            print(f"{mhz:>4.0f} MHz {r['name']:<17} {r['words']:>7} {r['cycles']:>7} {100 * share:>7.2f}% "
                  f"{share * 2 * mhz:>6.1f} {r['refreshes']:>9}")
        print(f"{'':>7} (CL {c.cl}, read_delay {delay}, tRCD/tRP/tRAS/tRC/tRFC/tWR = {c.rcd}/{c.rp}/{c.ras}/{c.rc}/{c.rfc}/{c.wr} "
              f"cycles, refresh every {controller.refresh_period} cycles, tREFI {c.refi})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
