"""Compute-core figures per preset: MACs per cycle, lane utilization, Verilator speed.

    .venv/bin/python bench/core_bench.py [--presets tiny icebreaker ulx3s sim]

For each preset the Verilated `TernaryCore` (this preset's real sizes) runs the
matrix-vector products of a BitNet-2B layer, 2560 x 2560 and 6912 x 2560. Where a matrix
does not fit the preset's weight memory it runs as the host runs it: consecutive RUNs over
blocks of row tiles that fit (and fit the output memory); each distinct block shape is
simulated once and counted as often as it occurs. Lane utilization is busy_cycles /
(busy_cycles + stall_cycles) from the core's own counters over those RUNs, i.e. inside
RUNs, excluding host transfers. Memory contents do not affect timing and are not loaded.
"Sim speed" is clock cycles simulated per wall-clock second while a RUN executes (the
cocotb side only waits for `done`). The first run builds each preset (minutes for `sim`).
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

SHAPES = [(2560, 2560), (6912, 2560)]


def blocks(rows: int, cols: int, cfg) -> list[tuple[int, int]]:
    """[(block rows, how many RUNs of it)] covering a rows x cols matrix-vector product."""
    lanes, k_steps = cfg.lanes, -(-cols // cfg.k_per_cycle)
    row_tiles = -(-rows // lanes)
    per_run = min(row_tiles, cfg.weight_depth // k_steps, cfg.out_depth)
    full, rest = divmod(row_tiles, per_run)
    out = [(per_run * lanes, full)]
    if rest:
        out.append((rows - full * per_run * lanes, 1))
    return out


async def measure(dut) -> None:
    """The cocotb side: RUN every block of SHAPES, write the counter deltas to $BENCH_OUT."""
    from cocotb.clock import Clock
    from cocotb.triggers import FallingEdge, RisingEdge

    from bitlane.contract.config import preset

    cfg = preset(os.environ["BITLANE_PRESET"])
    Clock(dut.clk, 10, unit="ns").start()
    for port in ("w_wr_en", "a_wr_en", "start", "clear_counters"):
        getattr(dut, port).value = 0
    dut.rst.value = 1
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    results = []
    for rows, cols in SHAPES:
        busy = stall = runs = 0
        wall = 0.0
        for block_rows, count in blocks(rows, cols, cfg):
            busy0, stall0 = int(dut.busy_cycles.value), int(dut.stall_cycles.value)
            dut.w_base.value, dut.a_base.value, dut.o_base.value = 0, 0, 0
            dut.rows.value, dut.cols.value, dut.n_vectors.value = block_rows, cols, 1
            dut.start.value = 1
            await FallingEdge(dut.clk)
            dut.start.value = 0
            t0 = time.perf_counter()
            await RisingEdge(dut.done)
            wall_block = time.perf_counter() - t0
            for _ in range(3):  # done, then the counters one cycle late
                await FallingEdge(dut.clk)
            b, s = int(dut.busy_cycles.value) - busy0, int(dut.stall_cycles.value) - stall0
            busy, stall, wall, runs = busy + b * count, stall + s * count, wall + wall_block * count, runs + count
        results.append({"rows": rows, "cols": cols, "runs": runs, "busy": busy, "stall": stall, "wall": wall})
    Path(os.environ["BENCH_OUT"]).write_text(json.dumps(results))


if os.environ.get("COCOTB_TEST_MODULES"):  # imported by cocotb inside the simulator
    import cocotb
    measure = cocotb.test()(measure)


def main(argv: list[str] | None = None) -> int:
    from bitlane.contract.config import PRESETS
    from bitlane.hw.core import TernaryCore
    from sim_tests import simlib

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    args = parser.parse_args(argv)

    print(f"{'preset':<11} {'MACs/cyc':>8} {'product':>12} {'RUNs':>5} {'cycles':>10} "
          f"{'lane util':>9} {'sim speed':>14}  at board clock")
    for name in args.presets:
        cfg = PRESETS[name]
        t0 = time.time()
        build = simlib.build(TernaryCore(cfg), "core")
        build_s = time.time() - t0
        out = build / f"bench-{name}.json"
        simlib.run("bench.core_bench", build, "core", env={"BITLANE_PRESET": name, "BENCH_OUT": out},
                   name=f"bench-{name}")
        for r in json.loads(out.read_text()):
            cycles = r["busy"] + r["stall"]
            util = r["busy"] / cycles
            board = (f"{cfg.clock_hz / 1e6:.0f} MHz: {cycles / cfg.clock_hz * 1e3:.2f} ms, "
                     f"{cfg.macs_per_cycle * cfg.clock_hz * util / 1e9:.2f} GMAC/s") if cfg.clock_hz else "-"
            print(f"{name:<11} {cfg.macs_per_cycle:>8} {r['rows']:>5}x{r['cols']:<6} {r['runs']:>5} {cycles:>10} "
                  f"{100 * util:>8.2f}% {cycles / r['wall']:>10.3g} c/s  {board}")
        print(f"{'':<11} (build/elaborate {build_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
