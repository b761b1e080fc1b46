"""hw/blocks.py: cells attributed to blocks by the hierarchical prefix of their names, on a netlist made by hand."""
import json
import re
from collections import Counter

import pytest

from bitlane.hw.blocks import NetlistError, block_resources, in_block, markdown, tally

ROWS = [("A", "a"), ("B", "a.b"), ("C", "a.c")]


def netlist(cells: dict[str, str]) -> dict:
    """A flattened yosys JSON netlist whose top module holds `cells` (name -> type)."""
    return {"creator": "hand", "modules": {
        "top": {"attributes": {"top": "00000000000000000000000000000001"},
                "cells": {name: {"type": kind} for name, kind in cells.items()}},
        "LUT4": {"attributes": {"blackbox": "00000000000000000000000000000001"}}}}


NETLIST = netlist({
    "a.b.x_LUT4_Z": "LUT4",
    "a.b.y_TRELLIS_FF_Q": "TRELLIS_FF",
    "a.b.mem.0.ram": "TRELLIS_DPR16X4",
    "a.b_run.w_LUT4_Z": "LUT4",  # in `a`, not in `a.b`
    "a.c.z_CCU2C_S0": "CCU2C",
    "a.q": "DP16KD",
    "a.m": "MULT18X18D",
    "a.p_PFUMX_Z": "PFUMX",  # counted in no column
    "a.c": "$scopeinfo",
    "$abc$123$auto$ff.cc:266$9": "LUT4",  # no hierarchy, though dotted
    "pin_led.buf": "TRELLIS_FF",  # the top's own, in no row
})


def rows(cells: dict) -> dict[str, Counter]:
    return {row.label: row.counts for row in tally(block_resources(cells, "ecp5"), ROWS)}


def test_counts_by_block():
    got = rows(NETLIST)
    assert got["B"] == Counter({"LUT4": 1, "FF": 1, "LUT RAM": 1})
    assert got["C"] == Counter({"CCU2C": 1})
    assert got["A"] == Counter({"LUT4": 2, "CCU2C": 1, "FF": 1, "LUT RAM": 1, "EBR": 1, "DSP": 1})
    assert got["total"] == Counter({"LUT4": 3, "CCU2C": 1, "FF": 2, "LUT RAM": 1, "EBR": 1, "DSP": 1})


def test_parent_includes_children():
    got = rows(NETLIST)
    assert got["A"] == got["B"] + got["C"] + Counter({"LUT4": 1, "EBR": 1, "DSP": 1})  # a.b_run, a.q, a.m
    assert not in_block("a.b_run", "a.b") and in_block("a.b.mem.0", "a.b") and in_block("a.b", "a.b")


def test_outer_rows_and_the_rest_add_up_to_the_total():
    table = tally(block_resources(NETLIST, "ecp5"), ROWS)
    *blocks, rest, total = table
    assert rest.counts == Counter({"LUT4": 1, "FF": 1})  # $abc$..., pin_led.buf
    outer = [r for r in blocks if not any(o is not r and in_block(r.prefix, o.prefix) for o in blocks)]
    assert [r.label for r in outer] == ["A"]
    assert sum((r.counts for r in outer), rest.counts) == total.counts


def test_markdown_columns_and_rows():
    text = markdown(tally(block_resources(NETLIST, "ecp5"), ROWS), "ecp5")
    lines = text.splitlines()
    assert lines[0] == "| block | cells named | LUT4 | CCU2C | FF | LUT RAM | EBR | DSP |"
    assert "| A | `a.*` | 2 | 1 | 1 | 1 | 1 | 1 |" in lines
    assert "| total |  | 3 | 1 | 2 | 1 | 1 | 1 |" in lines
    assert "LUT RAM: TRELLIS_DPR16X4" in lines[-1]


def test_reads_a_file(tmp_path):
    path = tmp_path / "top.json"
    path.write_text(json.dumps(NETLIST))
    assert block_resources(path, "ecp5") == block_resources(NETLIST, "ecp5")


@pytest.mark.parametrize("content, why", [
    ('{"results": [1, 2]}', "not a yosys JSON netlist"),
    ("not json at all", "not readable as JSON"),
    (json.dumps({"modules": {"top": {"attributes": {"top": "1"}, "cells": {"a.sub": {"type": "inner"}}},
                             "inner": {"attributes": {}, "cells": {}}}}), "not flattened"),
    (json.dumps({"modules": {"a": {"cells": {}}}}), "0 modules carry"),
])
def test_bad_input_names_the_file(tmp_path, content, why):
    path = tmp_path / "report.json"
    path.write_text(content)
    with pytest.raises(NetlistError, match=f"{re.escape(str(path))}: .*{why}"):
        block_resources(path, "ecp5")


def test_a_netlist_of_the_other_family_is_an_error():
    with pytest.raises(NetlistError, match="no cell is an ice40 resource"):
        block_resources(NETLIST, "ice40")


def test_a_block_missing_from_the_netlist_is_an_error():
    with pytest.raises(NetlistError, match="a.d"):
        tally(block_resources(NETLIST, "ecp5"), [*ROWS, ("D", "a.d")])
