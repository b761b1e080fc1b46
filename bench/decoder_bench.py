"""Cycles per token of the decoder engine (hw/decoder.py) for the shipped h128 model on the ULX3S core.

    python bench/decoder_bench.py [--tokens 256] [--positions 1 64 128 255]

Runs the Verilated DecoderCore (the `ulx3s` preset's ternary core and decoder engine, with the KV cache
at h128's full context of 256) through sim_tests/test_decoder.py's harness: every token is decoded
on the gateware and compared with golden.integer, integer for integer, and the engine's counters
give each token's cycles by unit. Prints a markdown table for the chosen positions: the ternary
core's BitLinear products, attention (KV appends, scores, softmax, weighted V sums), the vector unit,
the scalar unit, and the engine's issue cycles; then the compute-only tokens/s at the ULX3S clock.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bitlane.contract.config import PRESETS

COLUMNS = ("total", "core", "attention", "vector", "scalar", "issue")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256, help="tokens to decode from position 0 (default 256)")
    parser.add_argument("--positions", type=int, nargs="+", default=[1, 64, 128, 255],
                        help="positions to print (default 1 64 128 255)")
    args = parser.parse_args(argv)
    if not 1 <= args.tokens <= 256:
        parser.error("--tokens must be 1 to 256 (h128's context)")
    shown = [p for p in args.positions if p < args.tokens]
    if not shown:
        parser.error(f"no position of {args.positions} is below --tokens {args.tokens}")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from sim_tests.test_decoder import run_build

    out = Path(tempfile.mkdtemp(prefix="bitlane-decoder-bench-")) / "cycles.json"
    t0 = time.time()
    run_build("h128", args.tokens, out)
    seconds = time.time() - t0
    log = {row["pos"]: row for row in json.loads(out.read_text())}
    clock = PRESETS["ulx3s"].clock_hz
    print(f"h128 on the ulx3s core (16 lanes x 16, decoder engine), {args.tokens} tokens decoded bit-exact "
          f"in {seconds:.0f} s of simulation")
    print("| position | " + " | ".join(COLUMNS) + f" | tokens/s at {clock / 1e6:.0f} MHz (compute only) |")
    print("| ---: |" + " ---: |" * (len(COLUMNS) + 1))
    for p in shown:
        row = log[p]
        issue = row["total"] - sum(row[c] for c in COLUMNS[1:-1])
        values = [row[c] for c in COLUMNS[:-1]] + [issue]
        print(f"| {p} | " + " | ".join(f"{v:,}" for v in values) + f" | {clock / row['total']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
