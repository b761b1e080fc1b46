"""Cycles per token of the decoder engine (hw/decoder.py) for the shipped h128 model on the ULX3S core.

    python bench/decoder_bench.py [--positions 1 64 128 255]                 the contract's cycle model
    python bench/decoder_bench.py --gateware [--tokens 256] [--positions ...]   the Verilated gateware
    python bench/decoder_bench.py --vector-lanes 8 --attention-macs 32           another engine size (model)

By default the table comes from contract/decoder.py `decode_cycles`, the engine's cycle model, for the
program that sw/decoder_program.py compiles for h128 on the `ulx3s` preset's engine (with the KV cache
at h128's full context of 256): instant, and exact, since sim_tests/test_decoder.py checks every
token's counters against it. `--gateware` runs the Verilated DecoderCore through that test's harness
(22 minutes for 256 tokens): every token is decoded on the gateware and compared with golden.integer,
integer for integer, its counters with the model, and the table is the engine's counters. Columns:
the ternary core's BitLinear products, attention (KV appends, scores, softmax, weighted V sums), the
vector unit, the scalar unit (ALU ops included), and the engine's issue cycles; then the compute-only
tokens/s at the ULX3S clock. The last two columns are what overlapping the units could give, from
contract/decoder.py: an engine that issued an instruction a cycle to any free unit, in the order of a
greedy schedule of the same program (`overlap_schedule`), and the fewest cycles any engine built from
these units could take, however it ordered and overlapped them (`dependence_bound`).
`--vector-lanes` and `--attention-macs` give the model's table for another engine size (whether it fits
and routes on the ECP5-85F is README "ULX3S timing").
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bitlane.contract.config import CoreConfig
from bitlane.contract.decoder import CYCLE_CLASSES, MachineShape, decode_cycles, dependence_bound, overlap_schedule

COLUMNS = ("total", *CYCLE_CLASSES)


def h128_program(config: CoreConfig) -> tuple[MachineShape, list]:
    """The engine of `config` and the program sw/decoder_program.py compiles for h128 on it."""
    from bitlane.golden.integer import IntegerModel
    from bitlane.sw.decoder_program import compile_decoder
    from sim_tests.test_decoder import H128

    shape = MachineShape.from_config(config)
    return shape, compile_decoder(IntegerModel.load(H128), shape).program


def model_rows(config: CoreConfig, shape: MachineShape, program: list,
               positions: list[int]) -> dict[int, dict[str, int]]:
    """Each position's cycles by the contract's model for h128's `program` on `config`'s engine `shape`."""
    rows = {}
    for p in positions:
        cycles = decode_cycles(program, p, shape, config.run_overhead)
        rows[p] = {name: getattr(cycles, name) for name in COLUMNS}
    return rows


def gateware_rows(tokens: int) -> tuple[dict[int, dict[str, int]], float]:
    """Each decoded token's counters on the Verilated gateware, and the seconds it took."""
    from sim_tests.test_decoder import run_build

    out = Path(tempfile.mkdtemp(prefix="bitlane-decoder-bench-")) / "cycles.json"
    t0 = time.time()
    run_build("h128", tokens, out)
    rows = {}
    for row in json.loads(out.read_text()):
        row["issue"] = row["total"] - sum(row[c] for c in CYCLE_CLASSES if c != "issue")
        rows[row["pos"]] = row
    return rows, time.time() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateware", action="store_true", help="run the Verilated gateware (minutes)")
    parser.add_argument("--tokens", type=int, default=256,
                        help="--gateware: tokens to decode from position 0 (default 256)")
    parser.add_argument("--positions", type=int, nargs="+", default=[1, 64, 128, 255],
                        help="positions to print (default 1 64 128 255)")
    parser.add_argument("--vector-lanes", type=int, metavar="P",
                        help="the model's table with P vector lanes (default: the ulx3s preset's)")
    parser.add_argument("--attention-macs", type=int, metavar="M",
                        help="the model's table with M attention multipliers (default: the ulx3s preset's)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from sim_tests.test_decoder import BUILDS

    config, _ = BUILDS["h128"]()
    context = config.decoder.context
    sizes = {k: v for k, v in (("vector_lanes", args.vector_lanes), ("attention_macs", args.attention_macs))
             if v is not None}
    if sizes:
        if min(sizes.values()) < 1:
            parser.error(f"engine sizes must be at least 1, got {sizes}")
        if args.gateware:
            parser.error("--vector-lanes and --attention-macs size the model's table, not the gateware's build")
        try:
            config = config.with_(decoder=replace(config.decoder, **sizes))
        except ValueError as exc:
            parser.error(str(exc))
    shape, program = h128_program(config)
    if args.gateware:
        if not 1 <= args.tokens <= context:
            parser.error(f"--tokens must be 1 to {context} (h128's context)")
        shown = [p for p in args.positions if p < args.tokens]
        if not shown:
            parser.error(f"no position of {args.positions} is below --tokens {args.tokens}")
        rows, seconds = gateware_rows(args.tokens)
        source = f"{args.tokens} tokens decoded bit-exact on the gateware in {seconds:.0f} s of simulation"
    else:
        shown = [p for p in args.positions if 0 <= p < context]
        rows = model_rows(config, shape, program, shown)
        source = "contract/decoder.py's cycle model (equal to the gateware's counters: sim_tests/test_decoder.py)"
    clock = config.clock_hz
    d = config.decoder
    kv_wait = kv_rows_wait()
    resized = " (resized: not the shipped engine)" if sizes else ""
    print(f"h128 on the ulx3s core ({config.lanes} lanes x {config.k_per_cycle}, decoder engine: "
          f"{d.vector_lanes} vector lanes, {d.attention_macs} attention multipliers{resized}), {source}; the last two "
          "columns: the shipped ulx3s's wait for the KV rows from SDRAM (an estimate, not in the engine's "
          "cycles) and the tokens/s with it; then, for an engine that overlapped its units, a greedy schedule "
          "and the fewest cycles any could take (contract/decoder.py overlap_schedule, dependence_bound)")
    print("| position | " + " | ".join(COLUMNS) + f" | tokens/s at {clock / 1e6:.0f} MHz (compute only) | "
          "KV rows from SDRAM | tokens/s with them | overlapped (schedule) | lower bound |")
    print("| ---: |" + " ---: |" * (len(COLUMNS) + 5))
    for p in shown:
        row = rows[p]
        print(f"| {p} | " + " | ".join(f"{row[c]:,}" for c in COLUMNS) + f" | {clock / row['total']:,.0f} | "
              f"{kv_wait(p):,} | {clock / (row['total'] + kv_wait(p)):,.0f} | "
              f"{overlap_schedule(program, p, shape, config.run_overhead)[0]:,} | "
              f"{dependence_bound(program, p, shape, config.run_overhead):,} |")
    return 0


def kv_rows_wait():
    """Position -> the shipped ulx3s's estimated wait for h128's KV rows (its KVLOADs, kv_stream's estimate)."""
    from bitlane.contract.config import preset
    from bitlane.contract.decoder import Op
    from bitlane.contract.kv_stream import kv_load_cycles_estimate
    from bitlane.golden.integer import IntegerModel
    from bitlane.sw.decoder_program import compile_decoder
    from sim_tests.test_decoder import H128

    ulx3s = preset("ulx3s")
    shape = MachineShape.from_config(ulx3s)
    program = compile_decoder(IntegerModel.load(H128), shape, ulx3s.weight_depth, ulx3s.sdram_words).program
    loads = sum(ins.op == Op.KVLOAD for ins in program)
    return lambda pos: loads * kv_load_cycles_estimate(pos, shape.head_dim, ulx3s)


if __name__ == "__main__":
    sys.exit(main())
