"""Cycle costs of the command processor, measured on the Verilated top level.

    .venv/bin/python bench/cmdproc_bench.py [--config tiny|mid]

For each request: clock cycles from its first byte on rx to the last response byte on
tx, with the host never idle and never stalling tx (the best case of the gateware).
Prints a table; the cocotb part runs inside the simulator (this same file).
"""
import json
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bitlane.contract import protocol as p

RESULTS = "cmdproc_bench.json"


def _cocotb_entry():
    """The cocotb test (defined only inside the simulator, where cocotb is importable)."""
    import cocotb

    from bitlane.contract.packing import pack_activations, pack_weights, tiles
    from sim_tests.coresim import CONFIGS, random_acts, random_trits
    from sim_tests.toplink import HostLink

    @cocotb.test()
    async def measure(dut) -> None:
        cfg = CONFIGS[os.environ["BITLANE_CONFIG"]]
        link = HostLink(dut, cfg, np.random.default_rng(1), rx_gap=0.0, tx_stall=0.0)
        await link.start()
        caps = p.Capabilities.from_config(cfg)
        rows = []

        async def timed(label: str, cmd: p.Cmd, payload: bytes = b"") -> bytes:
            start, got0 = link.cycle, link.received
            sent0 = len(p.encode_frame(cmd, (link.seq + 1) & 0xFF, payload))
            response = await link.request(cmd, payload)
            rows.append({"request": label, "wire bytes in": sent0, "wire bytes out": link.received - got0,
                         "cycles": link.cycle - start})
            return response

        await timed("INFO", p.Cmd.INFO)
        await timed("COUNTERS", p.Cmd.COUNTERS)
        words = caps.max_write_words(cfg.weight_word_bytes)
        await timed(f"WRITE_WEIGHTS {words} words (max payload)", p.Cmd.WRITE_WEIGHTS,
                    p.write_weights(0, bytes(words * cfg.weight_word_bytes)))
        words = caps.max_write_words(cfg.act_word_bytes)
        await timed(f"WRITE_ACT {words} words (max payload)", p.Cmd.WRITE_ACT,
                    p.write_act(0, bytes(words * cfg.act_word_bytes)))
        rows_, cols = 4 * cfg.lanes, 16 * cfg.k_per_cycle
        rt, ks = tiles(rows_, cols, cfg.lanes, cfg.k_per_cycle)
        await link.write(p.Cmd.WRITE_WEIGHTS, 0, pack_weights(random_trits(link.rng, (rows_, cols)),
                                                              cfg.lanes, cfg.k_per_cycle))
        await link.write(p.Cmd.WRITE_ACT, 0, pack_activations(random_acts(link.rng, (1, cols)), cfg.k_per_cycle))
        cycles = p.unpack_run_response(await timed(f"RUN {rows_}x{cols} ({rt * ks} busy cycles)", p.Cmd.RUN,
                                                   p.run(0, 0, 0, rows_, cols, 1)))
        rows[-1]["RUN cycles reported"] = cycles
        await timed(f"READ_OUT {caps.max_read_count} results (max)", p.Cmd.READ_OUT,
                    p.read_out(0, caps.max_read_count))
        Path(RESULTS).write_text(json.dumps({"config": cfg.name, "rows": rows}))

    return measure


if os.environ.get("COCOTB_TEST_MODULES"):  # imported by cocotb inside the simulator
    measure = _cocotb_entry()


def main(argv: list[str] | None = None) -> int:
    import argparse

    from bitlane.hw.top import BitlaneTop
    from sim_tests import simlib
    from sim_tests.coresim import CONFIGS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny", choices=list(CONFIGS))
    args = parser.parse_args(argv)
    build = simlib.build(BitlaneTop(CONFIGS[args.config]), "bitlane_top")
    run_dir = simlib.run("bench.cmdproc_bench", build, "bitlane_top", env={"BITLANE_CONFIG": args.config},
                         name=f"cmdproc_bench-{args.config}")
    result = json.loads((run_dir / RESULTS).read_text())
    print(f"command processor cycle costs, config {result['config']} (no rx gaps, tx always ready)")
    print(f"{'request':48} {'bytes in':>9} {'bytes out':>9} {'cycles':>8} {'cycles/byte in':>15}")
    for row in result["rows"]:
        extra = f"  (RUN reports {row['RUN cycles reported']})" if "RUN cycles reported" in row else ""
        print(f"{row['request']:48} {row['wire bytes in']:9d} {row['wire bytes out']:9d} {row['cycles']:8d} "
              f"{row['cycles'] / row['wire bytes in']:15.2f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
