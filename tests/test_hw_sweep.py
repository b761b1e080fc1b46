"""hw/sweep.py: `bitlane hw sweep` runs the board build's own nextpnr command per seed, in parallel, stops a
seed that runs too long, and reports each seed's verdict. A stand-in nextpnr (a script that acts on its
--seed) replaces the real one, and a stand-in netlist yosys's synthesis: the real flow is the opt-in
sim_tests/test_board_build.py (`make hw-check`)."""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

from bitlane.hw import sweep
from bitlane.hw.boards import board
from bitlane.hw.build import BuildError, board_plan

# nextpnr as far as the sweep sees it: seed 1 routes and meets 18 MHz, seed 2 routes at 10 MHz, seed 3
# never finishes routing (router2 overuse lines until stopped), seed 4 fails outright.
FAKE_NEXTPNR = r"""
import json, sys, time
args = sys.argv[1:]
seed, log, report = (int(args[args.index("--seed") + 1]), args[args.index("--log") + 1],
                     args[args.index("--report") + 1])
with open(log, "w") as out:
    out.write("Info: Routing..\n")
    out.write("Info:     iter=1 wires=900 overused=120 overuse=130 archfail=NA\n")
    if seed == 3:
        out.write("Info:     iter=2 wires=901 overused=95 overuse=99 archfail=NA\n")
        out.flush()
        time.sleep(60)
    if seed == 4:
        sys.exit(1)
    out.write("Info:     iter=7 wires=905 overused=0 overuse=0 archfail=0\n")
achieved = {1: 25.3, 2: 10.0}[seed]
with open(report, "w") as out:
    json.dump({"fmax": {"$glbnet$clk": {"achieved": achieved, "constraint": 18.0}},
               "detailed_net_timings": []}, out)
"""


@pytest.fixture
def fake_flow(tmp_path, monkeypatch):
    """A stand-in nextpnr-ice40 on $NEXTPNR_ICE40, and a stand-in netlist for the synthesis."""
    script = tmp_path / "fake-nextpnr"
    script.write_text(f"#!{sys.executable}\n{FAKE_NEXTPNR}")
    script.chmod(0o755)
    monkeypatch.setenv("NEXTPNR_ICE40", str(script))

    def synthesize(spec, work):
        work.mkdir(parents=True, exist_ok=True)
        netlist = work / f"{spec.top_name}.json"
        netlist.write_text("{}")
        return netlist

    monkeypatch.setattr(sweep, "synthesize_board", synthesize)
    return tmp_path / "work"


def test_every_seed_gets_its_verdict(fake_flow):
    seen = []
    started, cwd = time.monotonic(), os.getcwd()
    results = sweep.sweep_board(board("icebreaker"), [1, 2, 3, 4], fake_flow, jobs=4, timeout_s=3,
                                progress=seen.append)
    assert time.monotonic() - started < 30  # seed 3 was stopped, not waited for
    # amaranth's BuildPlan.extract changes directory: extracting from the worker threads once left the
    # process in a seed's folder (and the tests after it without their relative paths)
    assert os.getcwd() == cwd
    assert sorted(r.seed for r in seen) == [1, 2, 3, 4] and [r.seed for r in results] == [1, 2, 3, 4]
    met, slow, stopped, failed = results
    assert met.timing_met and met.fmax_mhz == {"$glbnet$clk": (25.3, 18.0)} and met.iterations == 7
    assert slow.routed and not slow.timing_met and slow.verdict() == "routed, timing NOT met"
    assert stopped.stopped and not stopped.routed and (stopped.iterations, stopped.overused) == (2, 95)
    assert stopped.verdict() == "not routed: stopped 95 wires overused at iteration 2"
    assert not failed.stopped and not failed.routed and failed.verdict().startswith("failed 120 wires overused")
    # each seed in its own folder, with the build's own script and nextpnr's log
    assert (fake_flow / "seed3" / "bitlane_icebreaker.tim").exists()
    table = sweep.markdown(results)
    assert "| 1 | met | 25.3 (18.0) | 7 |" in table and "| 4 | failed" in table and "| 3 | not routed" in table


def test_cli_prints_the_table_and_says_whether_any_seed_met(fake_flow, capsys):
    assert sweep.main(["--board", "icebreaker", "--seeds", "1-2", "--jobs", "2", "--work-dir", str(fake_flow)]) == 0
    out = capsys.readouterr()
    assert "| 2 | routed, timing NOT met | 10.0 (18.0) |" in out.out and "seed 1: met" in out.err
    assert sweep.main(["--board", "icebreaker", "--seeds", "2", "--work-dir", str(fake_flow)]) == 2


def test_a_target_above_the_clock_is_checked_against_the_clock():
    ulx3s = board("ulx3s")
    assert sweep.target_preferences(ulx3s, 50) == 'FREQUENCY NET "logic.clk" 50 MHZ;'
    fmax = {"$glbnet$logic.clk": (46.1, 50.0), "$glbnet$sdram_clk": (85.3, 50.0)}
    assert sweep.required_fmax(ulx3s, fmax, 50) == {"$glbnet$logic.clk": (46.1, 45.0),
                                                    "$glbnet$sdram_clk": (85.3, 50.0)}
    assert sweep.required_fmax(ulx3s, fmax, None) == fmax
    with pytest.raises(BuildError, match="icebreaker: --target-mhz is for ECP5 boards"):
        sweep.target_preferences(board("icebreaker"), 30)


def test_the_ulx3s_build_places_the_core_for_its_target():
    """The ULX3S's core runs at 45 MHz and is placed and routed for `core_target_mhz` (50): its build's LPF
    says so, a sweep's own target replaces it, and the iCEBreaker's LPF-less build has no target."""
    ulx3s = board("ulx3s")
    assert ulx3s.core.clock_hz == 45_000_000 and ulx3s.core_target_mhz == 50
    lpf = board_plan(ulx3s).files["bitlane_ulx3s.lpf"]
    assert lpf.count("FREQUENCY NET") == 1 and 'FREQUENCY NET "logic.clk" 50 MHZ;' in lpf
    lpf = board_plan(ulx3s, preferences=sweep.target_preferences(ulx3s, 55)).files["bitlane_ulx3s.lpf"]
    assert lpf.count("FREQUENCY NET") == 1 and 'FREQUENCY NET "logic.clk" 55 MHZ;' in lpf
    assert board("icebreaker").core_target_mhz is None


def test_seed_lists():
    assert sweep.parse_seeds("1-4,7") == [1, 2, 3, 4, 7]
    assert sweep.parse_seeds(" 3 , 1-2,2") == [1, 2, 3]
    for bad in ("4-1", "x", "1,,2", "-3"):
        with pytest.raises(ValueError, match="cannot read"):
            sweep.parse_seeds(bad)


def test_router_progress():
    assert sweep.router_progress("Info: Placing..\n") == (None, None)
    log = "Info:     iter=1 wires=10 overused=4 overuse=5 archfail=NA\nInfo:     iter=2 wires=11 overused=0 overuse=0\n"
    assert sweep.router_progress(log) == (2, 0)


def test_cli_refuses_bad_arguments(capsys):
    assert sweep.main(["--board", "icebreaker", "--seeds", "3-1"]) == 1
    assert "cannot read '3-1'" in capsys.readouterr().err
    assert sweep.main(["--board", "icebreaker", "--seeds", "1", "--jobs", "0"]) == 1
    assert sweep.main(["--board", "icebreaker", "--seeds", "1", "--target-mhz", "30"]) == 1
    assert "--target-mhz is for ECP5 boards" in capsys.readouterr().err


def test_report_json_is_what_the_sweep_reads(tmp_path):
    """The stand-in report above has the fields that the sweep's reader (hw/build.py's parse_nextpnr_report)
    and hw/timing.py's loader require of a real one."""
    from bitlane.hw.build import parse_nextpnr_report
    from bitlane.hw.timing import load_report
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"fmax": {}, "detailed_net_timings": []}))
    assert load_report(path)["fmax"] == {}
    assert parse_nextpnr_report(path, "ice40") == ({}, {})
