"""`bitlane hw sweep`: place and route a board top from several nextpnr seeds at once.

Whether the ULX3S top routes, and how fast, depends on the placement as much as on the netlist (README
"ULX3S timing": one netlist routed at 40.1-46.1 MHz from four seeds and not at all from a fifth), so a
change of the gateware is judged over several seeds. The sweep synthesizes the top once, as `bitlane hw
build` does, then runs the build's own nextpnr command (amaranth's build script, its synthesis and
bitstream steps skipped) for each seed in its own folder, `--jobs` at a time, and prints a line per seed
as it ends and a table:

    bitlane hw sweep --board ulx3s --seeds 1-8 [--jobs 4] [--timeout-min 30] [--target-mhz 50] [--work-dir DIR]

router2 does not give up on a placement it cannot route (its overuse climbs for as long as it runs),
so a seed still routing after `--timeout-min` is stopped and reported with its last iteration.
`--target-mhz` (ECP5) places and routes the core clock for more than the board runs it at (a FREQUENCY
line in the LPF overrides the constraint nextpnr derives from the PLL); a seed that routes so is
checked against the board's own clock, not the target. Without it a seed is placed as the build places
it: for the board's `core_target_mhz` where it has one (the ULX3S: 50), checked against that. Each
seed's folder keeps nextpnr's log (<top>.tim) and report.json: `python -m bitlane.hw.timing
DIR/seed3/report.json` tells where its time goes. Exit status 0 when some seed meets timing, 2 when
none does.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from .boards import BOARDS, CORE_CLOCK_NET, Board, BoardError, board, core_frequency_preference
from .build import BuildError, board_plan, parse_nextpnr_report, synthesize_board, yowasp_environment
from .timing import clock_name

__all__ = ["SeedResult", "parse_seeds", "router_progress", "sweep_board", "markdown", "main"]

# router2's progress line: "Info:     iter=73 wires=781812 overused=0 overuse=0 archfail=0"
ROUTER_ITERATION = re.compile(r"iter=(\d+) wires=\d+ overused=(\d+)")


@dataclass(frozen=True)
class SeedResult:
    """One seed's place and route. `fmax_mhz`: clock net -> (achieved, required), where required is the
    clock the board runs it at (empty unless it routed)."""
    seed: int
    fmax_mhz: dict[str, tuple[float, float]]
    iterations: int | None  # router2's last iteration in the log (None before routing, or router1)
    overused: int | None    # wires still overused at that iteration
    seconds: float
    stopped: bool           # the time limit ran out
    log: Path

    @property
    def routed(self) -> bool:
        return bool(self.fmax_mhz)

    @property
    def timing_met(self) -> bool:
        return self.routed and all(got >= want for got, want in self.fmax_mhz.values())

    def verdict(self) -> str:
        if self.timing_met:
            return "met"
        if self.routed:
            return "routed, timing NOT met"
        where = (f"{self.overused:,} wires overused at iteration {self.iterations}"
                 if self.iterations is not None else "before routing")
        return f"not routed: stopped {where}" if self.stopped else f"failed {where} (see {self.log})"


def parse_seeds(text: str) -> list[int]:
    """"1-4,7" -> [1, 2, 3, 4, 7]; ValueError naming the part it cannot read."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or (match[2] is not None and int(match[2]) < int(match[1])):
            raise ValueError(f"seeds {text!r}: cannot read {part!r} (numbers and ranges: 1-4,7)")
        first = int(match[1])
        seeds += range(first, int(match[2] or first) + 1)
    return sorted(set(seeds))


def router_progress(log: str) -> tuple[int | None, int | None]:
    """router2's last (iteration, overused wires) in a nextpnr log, (None, None) before it routes."""
    found = ROUTER_ITERATION.findall(log)
    return (int(found[-1][0]), int(found[-1][1])) if found else (None, None)


def target_preferences(spec: Board, target_mhz: float | None) -> str | None:
    """The LPF line that places and routes the core clock for `target_mhz` instead of the PLL's clock."""
    if target_mhz is None:
        return None
    if spec.family != "ecp5":
        raise BuildError(f"{spec.name}: --target-mhz is for ECP5 boards (an LPF FREQUENCY line); this is "
                         f"{spec.family}")
    return core_frequency_preference(target_mhz)


def required_fmax(spec: Board, fmax: dict[str, tuple[float, float]],
                  target_mhz: float | None) -> dict[str, tuple[float, float]]:
    """(achieved, required) per clock net: nextpnr's constraint, but the board's core clock for the net
    constrained to `target_mhz`."""
    core_mhz = spec.core.clock_hz / 1e6
    return {net: (got, core_mhz if target_mhz is not None and clock_name(net) == CORE_CLOCK_NET else want)
            for net, (got, want) in fmax.items()}


def prepare_seed(spec: Board, seed: int, netlist: Path, work: Path, target_mhz: float | None) -> Path:
    """work/seed<seed> with the build's files for `seed` and the netlist; its build script's path. Not from
    several threads at once: amaranth's BuildPlan.extract changes the process's working directory."""
    folder = work / f"seed{seed}"
    plan = board_plan(spec, seed=seed, preferences=target_preferences(spec, target_mhz))
    plan.extract(str(folder))
    placed = folder / netlist.name
    placed.unlink(missing_ok=True)
    try:
        os.link(netlist, placed)  # nextpnr refuses a symbolic link out of its folder
    except OSError:
        placed.write_bytes(netlist.read_bytes())
    return folder / f"{plan.script}.sh"


def run_seed(spec: Board, seed: int, script: Path, env: dict[str, str], timeout_s: float,
             target_mhz: float | None) -> SeedResult:
    """Place and route from `seed` with the build's own nextpnr command (`script`, `prepare_seed`'s)."""
    folder = script.parent
    started = time.monotonic()
    with (folder / "sweep.log").open("w") as out:
        process = subprocess.Popen(["sh", script.name], cwd=folder, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout=timeout_s)
            stopped = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the script and nextpnr under it
            process.wait()
            stopped = True
    seconds = time.monotonic() - started
    log = folder / f"{spec.top_name}.tim"
    iterations, overused = router_progress(log.read_text(errors="replace") if log.exists() else "")
    fmax: dict[str, tuple[float, float]] = {}
    if not stopped and process.returncode == 0:
        try:
            _, fmax = parse_nextpnr_report(folder / "report.json", spec.family)
        except BuildError:  # no readable report: not routed
            pass
    return SeedResult(seed, required_fmax(spec, fmax, target_mhz), iterations, overused, seconds, stopped, log)


def sweep_board(spec: Board, seeds: Sequence[int], work: Path, *, jobs: int, timeout_s: float,
                target_mhz: float | None = None,
                progress: Callable[[SeedResult], None] = lambda result: None) -> list[SeedResult]:
    """Synthesize `spec`'s top once in work/synth, then place and route it from every seed, `jobs` at a
    time; `progress` sees each result as it ends. The results in seed order."""
    target_preferences(spec, target_mhz)  # refuse a bad target before minutes of synthesis
    os.environ.update(yowasp_environment())
    work = work.resolve()
    netlist = synthesize_board(spec, work / "synth")
    scripts = {seed: prepare_seed(spec, seed, netlist, work, target_mhz) for seed in seeds}  # one thread
    # the build script's synthesis and bitstream steps do nothing: the netlist is made, no bitstream wanted
    env = {**os.environ, "YOSYS": "true", "ICEPACK": "true", "ECPPACK": "true"}
    results = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending = [pool.submit(run_seed, spec, seed, script, env, timeout_s, target_mhz)
                   for seed, script in scripts.items()]
        for done in as_completed(pending):
            results.append(done.result())
            progress(results[-1])
    return sorted(results, key=lambda result: result.seed)


def markdown(results: Sequence[SeedResult]) -> str:
    """A table: per seed, the verdict, every clock's fmax against the clock it must run at, router2's
    iterations and the minutes it took."""
    clocks = sorted({net for result in results for net in result.fmax_mhz})
    lines = ["| seed | result | " + " | ".join(f"{net} MHz (required)" for net in clocks)
             + " | router iterations | minutes |",
             "| ---: | --- | " + " | ".join("---:" for _ in clocks) + " | ---: | ---: |"]
    for result in results:
        cells = [f"{result.fmax_mhz[net][0]:.1f} ({result.fmax_mhz[net][1]:.1f})" if net in result.fmax_mhz
                 else "-" for net in clocks]
        lines.append(f"| {result.seed} | {result.verdict()} | " + " | ".join(cells)
                     + f" | {'-' if result.iterations is None else result.iterations} | {result.seconds / 60:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitlane hw sweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--board", required=True, choices=sorted(BOARDS))
    parser.add_argument("--seeds", required=True, help="nextpnr seeds: numbers and ranges, e.g. 1-8 or 1,3,5-7")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="seeds placed and routed at once (default: the CPU count; each ECP5 run takes one "
                             "core and about 1.2 GB)")
    parser.add_argument("--timeout-min", type=float, default=30.0,
                        help="stop a seed still running after this many minutes (default: 30)")
    parser.add_argument("--target-mhz", type=float,
                        help="ECP5: place and route the core clock for this frequency (default: the board's "
                             "build target, `Board.core_target_mhz`, else the clock the PLL makes); a seed that "
                             "routes is checked against the board's clock")
    parser.add_argument("--work-dir", type=Path, help="default: build/sweep-<board>")
    args = parser.parse_args(argv)

    try:
        seeds = parse_seeds(args.seeds)
        if args.jobs < 1 or args.timeout_min <= 0:
            raise ValueError("--jobs must be at least 1 and --timeout-min above 0")
        spec = board(args.board)
        work = args.work_dir or Path("build") / f"sweep-{spec.name}"
        print(f"synthesizing the {spec.name} top once, then {len(seeds)} seeds, {args.jobs} at a time "
              f"(up to {args.timeout_min:g} min each) in {work}", file=sys.stderr)

        def progress(result: SeedResult) -> None:
            print(f"  seed {result.seed}: {result.verdict()}"
                  + "".join(f", {net} {got:.1f} MHz" for net, (got, _) in result.fmax_mhz.items())
                  + f" ({result.seconds / 60:.1f} min)", file=sys.stderr)

        results = sweep_board(spec, seeds, work, jobs=args.jobs, timeout_s=60 * args.timeout_min,
                              target_mhz=args.target_mhz, progress=progress)
    except (ValueError, BuildError, BoardError) as exc:
        print(f"bitlane hw sweep: {exc}", file=sys.stderr)
        return 1
    print(markdown(results), end="")
    return 0 if any(result.timing_met for result in results) else 2


if __name__ == "__main__":
    sys.exit(main())
