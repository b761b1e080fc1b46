"""Projected tokens/s of a model on each real board, from a UART-level simulation of that board.

For each board the bench runs greedy generation with the model's BitLinear products on
the board's simulated logic, reached through its serial pins at the board's divisor
(hw/sim/uart_sim.py), and measures per generated token:

* compute: the cycles the RUNs took (from the RUN responses, the gateware's own count);
* link: bytes on the wire in both directions, each 10 bit times at the board's baud (8N1);
* round trips: request frames, each of which waits for its response (the serial transport
  keeps one frame in flight); a USB-UART bridge adds its latency to each.

    time/token = compute_cycles / f_clk + wire_bytes * 10 / baud + frames * usb_latency

f_clk is the board's clock (and, for comparison, the fmax of its last `bitlane hw build`
if a report is given); the bottleneck is whichever term is largest. Host time (attention,
norms, LM head in PyTorch) is not included: it is the same for every board.

    python bench/board_bench.py [--model models/bitnet-kjv-h128] [--tokens 4]
        [--board icebreaker --board ulx3s] [--report-dir build] [--usb-latency-ms 0.125]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bitlane import connect, golden  # noqa: E402
from bitlane.hw.boards import BOARDS, board  # noqa: E402
from bitlane.hw.sim.uart_sim import UartSimBoard  # noqa: E402


def measure(board_name: str, model_dir: Path, tokens: int) -> dict:
    """Per-token compute cycles, wire bytes and frames of greedy decoding on the board's sim."""
    model = golden.load_model(model_dir)
    with UartSimBoard(board_name) as sim:
        acc = connect(sim.url, timeout=3600)
        try:
            acc.load_model(model)
            load = acc.stats.snapshot()
            model.set_int_matmul(acc.int_matmul)
            started = time.perf_counter()
            ids = golden.generate(model, [10], tokens, greedy=True, eos_token_ids=set())
            sim_seconds = time.perf_counter() - started
            model.set_int_matmul(None)
            after = acc.stats
            resident = sum(layer.resident for layer in acc.layers.values())
            return {
                "tokens": len(ids),
                "compute_cycles": (after.run_cycles - load.run_cycles) / len(ids),
                "wire_bytes": (after.wire_bytes - load.wire_bytes) / len(ids),
                "frames": (after.frames - load.frames) / len(ids),
                "macs": (after.useful_macs - load.useful_macs) / len(ids),
                "load_wire_bytes": load.wire_bytes,
                "resident_layers": f"{resident}/{len(acc.layers)}",
                "simulation_s_per_token": sim_seconds / len(ids),
            }
        finally:
            acc.close()


def project(board_name: str, m: dict, usb_latency_s: float, fmax_hz: float | None) -> dict:
    spec = board(board_name)
    compute_s = m["compute_cycles"] / spec.core.clock_hz
    link_s = m["wire_bytes"] * 10 / spec.baud
    latency_s = m["frames"] * usb_latency_s
    terms = {"compute": compute_s, "link": link_s, "USB round trips": latency_s}
    total = sum(terms.values())
    out = {"board": board_name, "clock_mhz": spec.core.clock_hz / 1e6, "baud": spec.baud, **m,
           "compute_ms": 1e3 * compute_s, "link_ms": 1e3 * link_s, "round_trip_ms": 1e3 * latency_s,
           "tokens_per_s": 1 / total, "tokens_per_s_link_only": 1 / link_s,
           "bottleneck": max(terms, key=terms.get)}
    if fmax_hz:
        out["compute_ms_at_fmax"] = 1e3 * m["compute_cycles"] / fmax_hz
    return out


def fmax_from_report(report_dir: Path, board_name: str) -> float | None:
    summary = report_dir / board_name / "summary.json"
    if not summary.exists():
        return None
    fmax = json.loads(summary.read_text())["fmax_mhz"]
    return min(v["achieved"] for v in fmax.values()) * 1e6 if fmax else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/bitnet-kjv-h128"))
    parser.add_argument("--tokens", type=int, default=4, help="tokens to generate per board (4)")
    parser.add_argument("--board", action="append", choices=sorted(BOARDS), help="default: every board")
    parser.add_argument("--report-dir", type=Path, default=Path("build"),
                        help="where `bitlane hw build` left <board>/summary.json (for fmax)")
    parser.add_argument("--usb-latency-ms", type=float, default=0.125,
                        help="per-round-trip USB-UART latency (0.125: one high-speed microframe; "
                             "FTDI full-speed parts and default latency timers are slower)")
    args = parser.parse_args()
    rows = []
    for name in args.board or sorted(BOARDS):
        print(f"{name}: generating {args.tokens} tokens through the UART-level simulation ...", file=sys.stderr)
        m = measure(name, args.model, args.tokens)
        rows.append(project(name, m, args.usb_latency_ms / 1e3, fmax_from_report(args.report_dir, name)))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"\nmodel {args.model}, per generated token (host compute excluded), "
          f"USB latency {args.usb_latency_ms} ms per round trip\n")
    print("| board | clock | UART | resident layers | RUN cycles | MACs/cycle | wire bytes | frames | "
          "compute ms | link ms | round trips ms | tokens/s | bottleneck |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['board']} | {r['clock_mhz']:g} MHz | {r['baud'] / 1e6:g} Mbaud | {r['resident_layers']} | "
              f"{r['compute_cycles']:.0f} | {r['macs'] / max(r['compute_cycles'], 1):.1f} | "
              f"{r['wire_bytes']:.0f} | {r['frames']:.0f} | {r['compute_ms']:.3f} | {r['link_ms']:.1f} | "
              f"{r['round_trip_ms']:.1f} | {r['tokens_per_s']:.1f} | {r['bottleneck']} |")


if __name__ == "__main__":
    main()
