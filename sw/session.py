"""Device sessions: a golden model's BitLinears on a device for one generation, and its report.

`DeviceSession` routes every product through a device and measures decode tokens/s, device
cycles, lane utilization and link bytes per token; `project_step` replays one forward pass on
the functional model of a board's configuration to project that board's tokens/s.
"""
from __future__ import annotations

import time

from bitlane.contract.config import BOARD_FACTS, BoardFacts

from .accelerator import Accelerator
from .link import LinkStats
from .transport import ModelTransport


def project_step(layers: list[tuple[str, object]], calls: list[tuple[str, object]],
                 board: BoardFacts) -> dict[str, float]:
    """Replay one forward pass's BitLinear calls, (name, int8 activations [N, in] as array or tensor),
    on the functional model of `board`'s configuration.

    Returns the device cycles its RUNs take, the bytes on the link, the request frames, and the time
    this costs a board (`BoardFacts.token_time`: RUN cycles at its clock, link bits at its baud, a USB
    round trip per frame, since the serial transport keeps one frame in flight; in sequence, as the
    protocol is request/response). Host compute is not included.
    """
    config, baud = board.core, board.baud
    with Accelerator(ModelTransport(config)) as acc:
        acc.load_layers(layers)
        before = acc.stats.snapshot()
        for name, q in calls:
            acc.matmul_loaded(name, q)
        cycles = acc.stats.run_cycles - before.run_cycles
        wire = acc.stats.wire_bytes - before.wire_bytes
        round_trips = acc.stats.frames - before.frames
        resident = sum(layer.resident for layer in acc.layers.values())
    t = board.token_time(cycles, wire, round_trips)
    return {"run_cycles": cycles, "wire_bytes": wire, "round_trips": round_trips,
            "seconds": t["compute_s"] + t["link_s"] + t["usb_s"], "tokens_per_s": t["tokens_per_s"],
            "tokens_per_s_default_latency": t["tokens_per_s_default_latency"], "clock_hz": config.clock_hz,
            "baud": baud, "usb_uart": board.usb_uart, "resident_layers": resident, "layers": len(layers)}


class DeviceSession:
    """Run a golden model's BitLinear products on a device inside a `with` block, and report.

    On entry the weights are placed (with a progress bar); every product then goes through the
    device. The first BitLinear call of each forward pass marks a token: the first pass is the
    prompt (one batch of all its tokens), each later one decodes one token. `summary()` gives
    decode tokens/s, device cycles per token, lane utilization and link bytes per token, and
    with `project=True` the tokens/s each board preset would reach (see `project_step`).
    """

    def __init__(self, model, acc: Accelerator, progress: bool = True, report=None, project: bool = False) -> None:
        self.model, self.acc, self.progress, self.report, self.project = model, acc, progress, report, project
        self.first_layer = next(name for name, _ in model.bitlinear_layers())
        self.forwards = 0
        self.step_calls: list[tuple[str, object]] = []  # (layer name, int8 activations) of the latest pass
        self._decode_start: tuple[float, dict[str, int], LinkStats] | None = None
        self._last_end = 0.0

    def __enter__(self) -> "DeviceSession":
        try:
            self.acc.load_model(self.model, progress=self.progress)
        except BaseException:
            self.acc.close()
            raise
        self.model.set_int_matmul(self._int_matmul)
        return self

    def _int_matmul(self, name: str, trits, q):
        if name == self.first_layer:
            self.forwards += 1
            if self.forwards == 2:  # decoding starts: counters from here on
                self._decode_start = (time.perf_counter(), self.acc.counters(), self.acc.stats.snapshot())
            self.step_calls = []
        self.step_calls.append((name, q))  # the tensor itself: converted only if a projection replays it
        out = self.acc.int_matmul(name, trits, q)
        self._last_end = time.perf_counter()
        return out

    def summary(self) -> dict[str, object]:
        acc = self.acc
        out: dict[str, object] = {"device": acc.transport.description, "forward_passes": self.forwards,
                                  "resident_layers": sum(layer.resident for layer in acc.layers.values()),
                                  "layers": len(acc.layers)}
        tokens = self.forwards - 1
        if self._decode_start is not None and tokens > 0:
            t0, c0, s0 = self._decode_start
            c1, s1 = acc.counters(), acc.stats
            macs = s1.useful_macs - s0.useful_macs
            run_cycles = s1.run_cycles - s0.run_cycles
            out.update({
                "decode_tokens": tokens,
                "decode_tokens_per_s": tokens / max(self._last_end - t0, 1e-9),
                "cycles_per_token": (c1["cycles"] - c0["cycles"]) / tokens,
                "run_cycles_per_token": run_cycles / tokens,
                "lane_utilization": macs / max(1, run_cycles * acc.caps.lanes * acc.caps.k_per_cycle),
                "link_bytes_per_token": (s1.wire_bytes - s0.wire_bytes) / tokens,
                "link_efficiency": s1.efficiency,
            })
        if self.project and self.step_calls and self.forwards > 1:
            layers = [(name, module.trits) for name, module in self.model.bitlinear_layers()]
            out["projected"] = {name: project_step(layers, self.step_calls, cfg)
                                for name, cfg in BOARD_FACTS.items()}
        return out

    def __exit__(self, *exc) -> None:
        self.model.set_int_matmul(None)
        try:
            if exc[0] is None and self.report is not None:
                print(format_summary(self.summary()), file=self.report)
        finally:
            self.acc.close()


def format_summary(s: dict[str, object]) -> str:
    """DeviceSession.summary() as the lines `bitlane generate` prints."""
    lines = [f"[{s['device']}: {s['resident_layers']}/{s['layers']} layers resident in device memory]"]
    if "decode_tokens" in s:
        lines.append(f"[decode: {s['decode_tokens_per_s']:.2f} tokens/s, "
                     f"{s['cycles_per_token']:,.0f} device cycles/token ({s['run_cycles_per_token']:,.0f} in RUNs), "
                     f"lane utilization {s['lane_utilization']:.1%}, {s['link_bytes_per_token']:,.0f} link bytes/token, "
                     f"link efficiency {s['link_efficiency']:.1%}]")
    for board, p_ in s.get("projected", {}).items():
        lines.append(f"[projected {board}: {p_['tokens_per_s']:.2f} tokens/s = {p_['run_cycles']:,} RUN cycles at "
                     f"{p_['clock_hz'] / 1e6:g} MHz + {p_['wire_bytes']:,} bytes at {p_['baud'] / 1e6:g} Mbaud "
                     f"+ {p_['round_trips']} USB round trips ({p_['usb_uart']}, latency timer 1 ms) per token; "
                     f"{p_['tokens_per_s_default_latency']:.2f} at the FTDI default 16 ms; "
                     f"{p_['resident_layers']}/{p_['layers']} layers resident]")
    return "\n".join(lines)
