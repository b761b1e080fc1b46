"""Projected tokens/s of a model on each real board, from a UART-level simulation of that board.

For each board the bench runs greedy generation on the board's simulated logic, reached
through its serial pins at the board's divisor (hw/sim/uart_sim.py): in decoder mode (protocol
v2; boards whose gateware has the decoder engine, the ULX3S) every layer of a token runs on
the device, in matmul mode (the iCEBreaker, or `--mode matmul`) the BitLinear products do. It
measures per generated token:

* compute: the device cycles (from the DECODE or RUN responses, the gateware's own count), plus in
  decoder mode the waits for SDRAM (weights streamed by WFETCH, KV rows loaded by KVLOAD), which a
  DECODE's count leaves out, from their estimates (contract/weight_stream.py, contract/kv_stream.py);
* link: bytes on the wire in both directions, each 10 bit times at the board's baud (8N1);
* round trips: request frames, each of which waits for its response (the serial transport
  keeps one frame in flight); the USB-UART bridge adds its round trip to each
  (BoardFacts.usb_round_trip_s: one USB frame plus the FTDI latency timer, at 1 ms as
  sw/transport.py sets it, and at the factory default of 16 ms).

    time/token = compute_cycles / f_clk + wire_bytes * 10 / baud + frames * usb_round_trip

f_clk is the board's clock (and, for comparison, the fmax of its last `bitlane hw build`
if a report is given); the bottleneck is whichever term is largest. Host time (embedding,
LM head and sampling; in matmul mode also attention and norms) is not included: it is the
same for every board. Decoder mode on the ULX3S keeps its KV cache in SDRAM (its full context of 256
positions), so the KV rows' waits grow with the position.

    python bench/board_bench.py [--model models/bitnet-kjv-h128] [--tokens 4]
        [--board icebreaker --board ulx3s] [--mode auto|decoder|matmul] [--report-dir build]
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

PROMPT = [10]


def measure_decoder(board_name: str, model_dir: Path, tokens: int) -> dict:
    """Per-token DECODE cycles, wire bytes and frames of greedy decoding in decoder mode on the board's sim,
    with the ids checked against golden.integer (the device's oracle)."""
    from bitlane.golden.integer import convert
    from bitlane.sw.decoder_session import DecoderSession, plan_decoder

    int_model = convert(golden.load_model(model_dir))
    want = golden.generate(int_model, PROMPT, tokens, greedy=True, eos_token_ids=set())
    with UartSimBoard(board_name) as sim:
        acc = connect(sim.url, timeout=3600)
        session = DecoderSession(int_model, plan_decoder(int_model, acc.caps), acc, progress=False)
        with session:
            load = acc.stats.snapshot()
            started = time.perf_counter()
            ids = golden.generate(session.runner, PROMPT, tokens, greedy=True, eos_token_ids=set())
            sim_seconds = time.perf_counter() - started
            s = session.summary()
        if ids != want:
            raise SystemExit(f"{board_name}: decoder-mode ids {ids} differ from golden.integer's {want}")
        return {
            "mode": "decoder", "tokens": s["decode_tokens"],
            "compute_cycles": s["cycles_per_token"] + s["projected"][board_name]["fetch_cycles_per_token"],
            "engine_cycles": s["cycles_per_token"], "model_cycles": s["projected"][board_name]["cycles_per_token"],
            "sdram_wait_cycles": s["projected"][board_name]["fetch_cycles_per_token"],
            "wire_bytes": s["link_bytes_per_token"],
            "frames": (acc.stats.frames - load.frames - 1) / s["decode_tokens"],  # less the prompt's DECODE
            "load_wire_bytes": load.wire_bytes, "resident_layers": "all",
            "simulation_s_per_token": sim_seconds / len(ids),
        }


def measure_matmul(board_name: str, model_dir: Path, tokens: int) -> dict:
    """Per-token compute cycles, wire bytes and frames of greedy decoding in matmul mode on the board's sim."""
    model = golden.load_model(model_dir)
    with UartSimBoard(board_name) as sim:
        acc = connect(sim.url, timeout=3600)
        try:
            acc.load_model(model)
            load = acc.stats.snapshot()
            model.set_int_matmul(acc.int_matmul)
            started = time.perf_counter()
            ids = golden.generate(model, PROMPT, tokens, greedy=True, eos_token_ids=set())
            sim_seconds = time.perf_counter() - started
            model.set_int_matmul(None)
            after = acc.stats
            resident = sum(layer.resident for layer in acc.layers.values())
            return {
                "mode": "matmul", "tokens": len(ids),
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


def project(board_name: str, m: dict, fmax_hz: float | None) -> dict:
    spec = board(board_name)
    t = spec.token_time(m["compute_cycles"], m["wire_bytes"], m["frames"])
    terms = {"compute": t["compute_s"], "link": t["link_s"], "USB round trips": t["usb_s"]}
    out = {"board": board_name, "clock_mhz": spec.core.clock_hz / 1e6, "baud": spec.baud, "usb": spec.usb_uart,
           **m, "compute_ms": 1e3 * t["compute_s"], "link_ms": 1e3 * t["link_s"], "round_trip_ms": 1e3 * t["usb_s"],
           "tokens_per_s": t["tokens_per_s"], "tokens_per_s_link_only": t["tokens_per_s_link_only"],
           "tokens_per_s_default_latency": t["tokens_per_s_default_latency"],
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
    parser.add_argument("--mode", choices=("auto", "decoder", "matmul"), default="auto",
                        help="decoder mode where the board's gateware has the decoder engine (auto, the default), "
                             "or the one given")
    args = parser.parse_args()
    rows = []
    for name in args.board or sorted(BOARDS):
        decoder = args.mode == "decoder" or (args.mode == "auto" and board(name).core.decoder is not None)
        print(f"{name}: generating {args.tokens} tokens in {'decoder' if decoder else 'matmul'} mode through the "
              "UART-level simulation ...", file=sys.stderr)
        m = (measure_decoder if decoder else measure_matmul)(name, args.model, args.tokens)
        rows.append(project(name, m, fmax_from_report(args.report_dir, name)))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"\nmodel {args.model}, per generated token (host compute excluded); USB round trip: one USB frame + "
          "the FTDI latency timer at 1 ms (at the 16 ms default in the last column)\n")
    print("| board | mode | clock | UART | device cycles | wire bytes | frames | compute ms | link ms | "
          "USB ms | tokens/s | link-only bound | at 16 ms | bottleneck |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['board']} ({r['usb']}) | {r['mode']} | {r['clock_mhz']:g} MHz | {r['baud'] / 1e6:g} Mbaud | "
              f"{r['compute_cycles']:,.0f} | {r['wire_bytes']:,.0f} | {r['frames']:.0f} | {r['compute_ms']:.3f} | "
              f"{r['link_ms']:.2f} | {r['round_trip_ms']:.2f} | {r['tokens_per_s']:,.1f} | "
              f"{r['tokens_per_s_link_only']:,.0f} | {r['tokens_per_s_default_latency']:,.1f} | {r['bottleneck']} |")


if __name__ == "__main__":
    main()
