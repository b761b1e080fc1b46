"""Open a bitlane device by URL: the one place that joins the host driver to the gateware's simulators.

    model://PRESET                     the functional model of a preset (contract/config.py)
    sim://PRESET[?trace=out.fst]       the Verilated gateware of a preset, built on first use
    serial://DEVICE?baud=3000000[&window=1]
                                       a board on a serial port, e.g. serial:///dev/ttyUSB1?baud=3000000;
                                       DEVICE may be any pyserial URL, e.g. serial://socket://127.0.0.1:PORT
                                       for the UART-level board simulator (hw/sim/uart_sim.py)

`window` is how many request frames may be in flight (1: the UART has no flow control).
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from bitlane.contract.config import DEFAULT_BAUD, preset
from bitlane.sw.accelerator import Accelerator
from bitlane.sw.transport import ModelTransport, SerialTransport, SimTransport, Transport


def sim_transport(config, trace: Path | str | None = None) -> SimTransport:
    """The Verilated board of `config` (built on first use), optionally dumping a waveform to `trace`
    (FST where this Verilator can write it, else VCD: the suffix says which)."""
    from bitlane.hw.sim.build import build_harness, trace_format

    exe = build_harness(config, trace=trace is not None)
    trace_path = None if trace is None else Path(trace).with_suffix(f".{trace_format()}")
    return SimTransport(exe, f"sim://{config.name}", config.max_payload, trace_path)


def connect(url: str, timeout: float = 10.0) -> Accelerator:
    """Open the device at `url` (see the module docstring)."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme in ("model", "sim"):
        config = preset(parts.netloc or parts.path.strip("/"))
        transport: Transport = (ModelTransport(config) if parts.scheme == "model"
                                else sim_transport(config, trace=query.get("trace")))
    elif parts.scheme == "serial":
        device = parts.netloc + parts.path
        if not device:
            raise ValueError(f"{url!r}: no serial device, expected e.g. serial:///dev/ttyUSB1?baud={DEFAULT_BAUD}")
        transport = SerialTransport(device, baud=_positive_int(url, query, "baud", DEFAULT_BAUD),
                                    pipeline_depth=_positive_int(url, query, "window", 1))
    else:
        raise ValueError(f"{url!r}: unknown device URL scheme {parts.scheme!r}; use model://, sim:// or serial://")
    try:
        return Accelerator(transport, timeout=timeout)
    except BaseException:
        transport.close()
        raise


def _positive_int(url: str, query: dict[str, str], key: str, default: int) -> int:
    text = query.get(key)
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{url!r}: {key}={text!r}, expected a whole number >= 1")
    return int(text)
