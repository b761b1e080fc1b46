"""Where a routed design's time goes: every timing endpoint of a clock, grouped by register.

nextpnr prints one critical path per clock; with `--detailed-timing-report` its `--report` JSON also
holds every net's arrival time at every endpoint it drives (a flip-flop's or block RAM's input). This
module reads those arrivals, keeps each endpoint's latest, and groups the endpoints by the register
(or memory) they belong to, so that a report says "12 endpoints of `engine.scalar.x2b` arrive after
20 ns" instead of listing a thousand paths. An endpoint is a cell's input pin (data, clock enable,
set/reset), so a 48-bit register has 48 or more. It is how the ULX3S top's cuts were found (README "ULX3S timing").

    python -m bitlane.hw.timing build/ulx3s/report.json [--clock logic.clk] [--over 20]

`bitlane hw build` asks nextpnr for the detailed report and puts the slowest groups of each clock into
its report.md. The JSON records the launching clock per net (from the net's first entry), not per
endpoint; the groups of a clock are the endpoints it captures on nets it launches, as nextpnr's fmax
counts them (nets launched by another clock or asynchronously, such as resets, are left out).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NEAR_CRITICAL", "EndpointGroup", "TimingReportError", "clock_name", "clocks", "critical_path",
           "default_threshold_ns", "endpoint_groups", "load_report", "main", "markdown", "register_of"]

# What nextpnr and yosys append to a register's name in a cell's name: the cell type and pin that mapped it
# (`_TRELLIS_FF_Q_24`, `_LUT4_Z`, iCE40's `_SB_DFFE_Q`), a memory's tile (`.0.1`, `.4.9` of LUT RAM), a
# block RAM's pin (`_DOB6`) and nextpnr's own `$` parts (`$CCU2_COMB0`, `$DPRAM_COMB0`). Amaranth's `$N`
# (`i__payload$12`, `$signal$41`) names a signal of its own and stays.
_CELL_SUFFIX = re.compile(r"_TRELLIS|_LUT4|_CCU2C|_PFUMX|_L6MUX|_DP16|_MULT|_SB_|_ICESTORM|\$(?=[A-Z])"
                          r"|\.\d+\.\d+(?=[_$]|$)|_DO[AB]?\d+|_DI\b")
NEAR_CRITICAL = 0.95  # the default threshold: endpoints within 5% of the clock's critical path


class TimingReportError(ValueError):
    """The file is not a nextpnr report with detailed net timings."""


@dataclass(frozen=True)
class EndpointGroup:
    """The endpoints of one register: how many arrive after the threshold, and the latest arrival (ns)."""

    register: str
    late: int
    worst_ns: float


def load_report(path: Path) -> dict:
    """nextpnr's `--report` JSON, which must have been written with `--detailed-timing-report`."""
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TimingReportError(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(report, dict) or not isinstance(report.get("fmax"), dict):
        raise TimingReportError(f"{path}: not a nextpnr --report JSON (no \"fmax\")")
    if "detailed_net_timings" not in report:
        raise TimingReportError(f"{path}: no detailed net timings; run nextpnr with --detailed-timing-report")
    for net in report["detailed_net_timings"]:
        ends = net.get("endpoints") if isinstance(net, dict) else None
        if not isinstance(net, dict) or "event" not in net or not isinstance(ends, list) or not all(
                isinstance(e, dict) and {"cell", "port", "event", "delay"} <= e.keys() for e in ends):
            raise TimingReportError(f"{path}: a detailed net timing is not a net with endpoints (cell, port, "
                                    f"event, delay): {json.dumps(net)[:200]}")
    return report


def clock_name(net: str) -> str:
    """A clock net as the reports name it: nextpnr's `$glbnet$` prefix (the global buffer's net) dropped."""
    return net.removeprefix("$glbnet$")


def clocks(report: dict) -> list[str]:
    """The report's clock nets, as nextpnr lists them in `fmax`."""
    return [clock_name(net) for net in report["fmax"]]


def default_threshold_ns(report: dict, clock: str) -> float:
    """`NEAR_CRITICAL` of `clock`'s critical path: the endpoints where the next MHz would come from."""
    achieved = next(float(v["achieved"]) for net, v in report["fmax"].items() if clock_name(net) == clock)
    return NEAR_CRITICAL * 1e3 / achieved


def register_of(cell: str) -> str:
    """The register or memory a cell's name belongs to: the name up to nextpnr's and yosys's suffixes."""
    return _CELL_SUFFIX.split(cell)[0]


def _event_clock(event: str) -> str:
    # "posedge $glbnet$logic.clk" -> "logic.clk" (the edge is dropped: these designs use rising edges only)
    return clock_name(event.split(" ", 1)[-1])


def _arrival(delay: float | list[float]) -> float:
    # [min, max] in the reports of nextpnr 0.7 and later, one number before
    return float(delay[-1] if isinstance(delay, list) else delay)


def endpoint_groups(report: dict, clock: str, threshold_ns: float) -> tuple[list[EndpointGroup], Counter[int]]:
    """The endpoints launched and captured by `clock` whose latest arrival exceeds `threshold_ns`, grouped by
    register, slowest group first; and a histogram of every endpoint's latest arrival in whole ns."""
    latest: dict[tuple[str, str], float] = {}
    for net in report["detailed_net_timings"]:
        if _event_clock(net["event"]) != clock:
            continue
        for end in net["endpoints"]:
            if _event_clock(end["event"]) == clock:
                key = (end["cell"], end["port"])
                latest[key] = max(latest.get(key, 0.0), _arrival(end["delay"]))
    late: dict[str, list[float]] = {}
    for (cell, _), arrival in latest.items():
        if arrival > threshold_ns:
            late.setdefault(register_of(cell), []).append(arrival)
    groups = [EndpointGroup(name, len(arrivals), max(arrivals)) for name, arrivals in late.items()]
    groups.sort(key=lambda g: (-g.worst_ns, g.register))
    return groups, Counter(int(arrival) for arrival in latest.values())


def critical_path(report: dict, clock: str) -> list[tuple[str, float, str]]:
    """nextpnr's critical path from `clock` to `clock`: (kind, delay ns, cell.port reached) per step."""
    for path in report.get("critical_paths", []):
        if _event_clock(path["from"]) == clock and _event_clock(path["to"]) == clock:
            return [(step["type"], float(step["delay"]), f"{step['to']['cell']}.{step['to']['port']}")
                    for step in path["path"]]
    return []


def markdown(report: dict, clock: str, threshold_ns: float, limit: int = 12) -> str:
    """The slowest register groups of `clock` and its critical path, as a report.md section."""
    groups, histogram = endpoint_groups(report, clock, threshold_ns)
    total = sum(histogram.values())
    if not total:
        return f"No endpoint is launched and captured by {clock}.\n"
    late = sum(g.late for g in groups)
    lines = [f"{late:,} of {total:,} endpoints of {clock} arrive after {threshold_ns:.2f} ns"
             + (f" (the {limit} slowest registers):" if len(groups) > limit else ":" if groups else ".")]
    if groups:
        lines += ["", "| register | endpoints after the threshold | latest (ns) |", "| --- | ---: | ---: |"]
        lines += [f"| `{g.register}` | {g.late} | {g.worst_ns:.2f} |" for g in groups[:limit]]
    slowest = sorted(histogram)[-6:]
    lines += ["", "Endpoints by latest arrival, the six slowest whole ns: "
              + ", ".join(f"{ns}-{ns + 1} ns: {histogram[ns]:,}" for ns in slowest)]
    path = critical_path(report, clock)
    if path:
        arrival = 0.0
        lines += ["", "Critical path:", ""]
        for kind, delay, reached in path:
            arrival += delay
            lines.append(f"    {arrival:6.2f} ns  +{delay:5.2f} {kind:8s} {reached}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitlane.hw.timing", description=__doc__.split("\n\n")[0],
                                     epilog="The report must come from nextpnr --report R.json "
                                            "--detailed-timing-report (bitlane hw build passes both).")
    parser.add_argument("report", type=Path, help="nextpnr's --report JSON, e.g. build/ulx3s/report.json")
    parser.add_argument("--clock", help="clock net (default: each clock of the report)")
    parser.add_argument("--over", type=float, help=f"threshold in ns (default: {NEAR_CRITICAL:g} of the clock's "
                                                   f"critical path, as bitlane hw build's report)")
    parser.add_argument("--limit", type=int, default=12, help="registers listed per clock (12)")
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    try:
        report = load_report(args.report)
        if args.clock is not None and args.clock not in clocks(report):
            raise TimingReportError(f"{args.report}: no clock {args.clock!r}; its clocks: {', '.join(clocks(report))}")
        for clock in [args.clock] if args.clock else clocks(report):
            threshold = args.over if args.over is not None else default_threshold_ns(report, clock)
            print(f"## {clock}\n")
            print(markdown(report, clock, threshold, args.limit))
    except TimingReportError as exc:
        print(f"bitlane.hw.timing: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
