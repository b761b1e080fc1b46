"""hw/timing.py: a routed design's endpoints grouped by register, from a hand-made nextpnr report."""
import json

import pytest

from bitlane.hw import timing

CORE, SDRAM = "posedge $glbnet$logic.clk", "posedge $glbnet$sdram_clk"


def net(driver_event: str, *endpoints: tuple[str, str, str, float]) -> dict:
    return {"driver": "d", "port": "Q", "net": "n", "event": driver_event, "sources": [],
            "endpoints": [{"cell": cell, "port": port, "event": event, "delay": [0.5, arrival]}
                          for cell, port, event, arrival in endpoints]}


REPORT = {
    "fmax": {"$glbnet$logic.clk": {"achieved": 47.5, "constraint": 30.0},
             "$glbnet$sdram_clk": {"achieved": 61.1, "constraint": 50.0}},
    "detailed_net_timings": [
        # an endpoint listed twice (nextpnr writes an entry per launch and capture): its latest arrival counts, once
        net(CORE, ("top.scalar.x2b_TRELLIS_FF_Q_25", "DI", CORE, 21.05),
            ("top.scalar.x2b_TRELLIS_FF_Q_3", "DI", CORE, 20.4),
            ("top.scalar.x2b_TRELLIS_FF_Q_3", "DI", CORE, 20.9),
            ("top.program.0.1", "DIA3", CORE, 12.0)),
        net(CORE, ("top.scalar.base_TRELLIS_FF_Q_24", "M", CORE, 20.14),
            ("top.cmd.word_TRELLIS_FF_Q_7", "CE", CORE, 19.5)),
        # another clock's endpoints, a crossing into the core's and an asynchronous reset: none is the core's
        net(SDRAM, ("top.fifo.gray_TRELLIS_FF_Q", "DI", SDRAM, 16.4), ("top.fifo.bin_TRELLIS_FF_Q", "DI", CORE, 25.0)),
        net("<async>", ("top.scalar.base_TRELLIS_FF_Q_24", "LSR", CORE, 26.0)),
    ],
    "critical_paths": [{"from": CORE, "to": CORE, "path": [
        {"type": "clk-to-q", "delay": 5.83, "from": {"cell": "top.program.0.1", "port": "DOB6"},
         "to": {"cell": "top.program.0.1", "port": "DOB6"}},
        {"type": "routing", "delay": 15.22, "from": {"cell": "top.program.0.1", "port": "DOB6"},
         "to": {"cell": "top.scalar.x2b_TRELLIS_FF_Q_25", "port": "DI"}}]}],
}


def test_endpoints_are_grouped_by_register_with_their_latest_arrival() -> None:
    groups, histogram = timing.endpoint_groups(REPORT, "logic.clk", 20.0)
    assert groups == [timing.EndpointGroup("top.scalar.x2b", 2, 21.05),
                      timing.EndpointGroup("top.scalar.base", 1, 20.14)]
    # five endpoints of the core's clock (x2b's bit 3 once, at 20.9): 12, 19.5, 20.14, 20.9, 21.05
    assert histogram == {12: 1, 19: 1, 20: 2, 21: 1}
    assert timing.endpoint_groups(REPORT, "sdram_clk", 16.0)[0] == [timing.EndpointGroup("top.fifo.gray", 1, 16.4)]
    assert timing.endpoint_groups(REPORT, "logic.clk", 30.0)[0] == []


@pytest.mark.parametrize("cell, register", [
    ("logic.top.core.engine.scalar.x2b_TRELLIS_FF_Q_25", "logic.top.core.engine.scalar.x2b"),
    ("logic.top.core.engine.program.0.1", "logic.top.core.engine.program"),
    ("logic.top.core.engine.vector.bank_copy.0.0_DOA9_TRELLIS_FF_Q", "logic.top.core.engine.vector.bank_copy"),
    ("top.core.acc_SB_DFFE_Q", "top.core.acc"),
    ("logic.top.core.engine.registers.4.9$DPRAM_COMB0", "logic.top.core.engine.registers"),
    ("logic.top.core.engine.program.0.1_DOB6_LUT4_C_1_Z_CCU2C_S1$CCU2_COMB0", "logic.top.core.engine.program"),
    # Amaranth's own `$N` names other signals: they stay apart
    ("logic.top.cmdproc.i__payload$12_TRELLIS_FF_Q_3", "logic.top.cmdproc.i__payload$12"),
    ("logic.top.cmdproc.$signal$41_TRELLIS_FF_Q", "logic.top.cmdproc.$signal$41"),
])
def test_register_names_drop_the_mapping_suffixes(cell: str, register: str) -> None:
    assert timing.register_of(cell) == register


def test_markdown_lists_the_slow_registers_and_the_critical_path() -> None:
    text = timing.markdown(REPORT, "logic.clk", 20.0)
    assert text.startswith("3 of 5 endpoints of logic.clk arrive after 20.00 ns:")
    assert "| `top.scalar.x2b` | 2 | 21.05 |" in text and "| `top.scalar.base` | 1 | 20.14 |" in text
    assert "word" not in text  # 19.5 ns: under the threshold
    assert "21.05 ns  +15.22 routing  top.scalar.x2b_TRELLIS_FF_Q_25.DI" in text
    assert timing.markdown(REPORT, "logic.clk", 1.0, limit=1).count("| `top.") == 1
    assert timing.markdown(REPORT, "logic.clk", 30.0).startswith("0 of 5 endpoints of logic.clk arrive after 30.00 ns.")


def test_cli_reports_each_clock_and_refuses_bad_input(tmp_path, capsys) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(REPORT))
    assert timing.main([str(path)]) == 0
    out = capsys.readouterr().out
    # thresholds default to 95% of each clock's critical path: 20.00 ns at 47.5 MHz, 15.55 at 61.1
    assert "## logic.clk" in out and "3 of 5 endpoints of logic.clk arrive after 20.00 ns:" in out
    assert "## sdram_clk" in out and "1 of 1 endpoints of sdram_clk arrive after 15.55 ns:" in out
    assert timing.default_threshold_ns(REPORT, "logic.clk") == pytest.approx(0.95e3 / 47.5)
    assert timing.main([str(path), "--clock", "logic.clk", "--over", "21"]) == 0
    assert "1 of 5 endpoints of logic.clk arrive after 21.00 ns:" in capsys.readouterr().out
    assert timing.main([str(path), "--clock", "sync"]) == 1
    assert "no clock 'sync'; its clocks: logic.clk, sdram_clk" in capsys.readouterr().err
    brief = tmp_path / "brief.json"
    brief.write_text(json.dumps({"fmax": REPORT["fmax"]}))
    with pytest.raises(timing.TimingReportError, match="brief.json: no detailed net timings; run nextpnr with"):
        timing.load_report(brief)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(timing.TimingReportError, match="bad.json: not readable as JSON"):
        timing.load_report(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("[1]")
    with pytest.raises(timing.TimingReportError, match="not a nextpnr --report JSON"):
        timing.load_report(tmp_path / "other.json")
    (tmp_path / "torn.json").write_text(json.dumps({**REPORT, "detailed_net_timings": [{"event": CORE}]}))
    with pytest.raises(timing.TimingReportError, match="torn.json: a detailed net timing is not a net with"):
        timing.load_report(tmp_path / "torn.json")
    with pytest.raises(SystemExit):
        timing.main([str(path), "--limit", "0"])
