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

from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from bitlane.contract.config import DEFAULT_BAUD, CoreConfig, preset
from bitlane.sw.accelerator import Accelerator
from bitlane.sw.transport import ModelTransport, SerialTransport, SimTransport, Transport, TransportError


Log = Callable[[str], None]


def sim_transport(config: CoreConfig, trace: Path | str | None = None, log: Log | None = None) -> SimTransport:
    """The Verilated board of `config` (built on first use), optionally dumping a waveform to `trace`.
    `log`, if given, receives one-line notices for the user (the trace file and its format, a first
    build of the simulator)."""
    from bitlane.hw.sim.build import build_harness

    description = f"sim://{config.name}"
    trace_path = None if trace is None else _trace_file(description, trace, log)  # checked before building
    exe = build_harness(config, trace=trace is not None, log=log)
    return SimTransport(exe, description, config.max_payload, trace_path)


def _trace_file(description: str, trace: Path | str, log: Log | None) -> Path:
    """The file the trace goes to: FST where Verilator can write it, else VCD (the suffix says which).
    It must be writable now, not found missing after the run."""
    from bitlane.hw.sim.verilator import trace_format

    fmt = trace_format()
    path = Path(trace).with_suffix(f".{fmt}")
    try:
        open(path, "ab").close()  # the harness truncates it when it starts
    except OSError as e:
        raise TransportError(f"{description}: trace={trace}: cannot write {path} ({e.strerror})") from None
    if log is not None:
        instead = "" if Path(trace).suffix.lower() in ("", f".{fmt}") else \
            (f", not the {Path(trace).suffix.lstrip('.').upper()} asked for: Verilator writes FST only where the "
             "lz4 and zlib headers are installed (apt-get install liblz4-dev zlib1g-dev)")
        log(f"[tracing every cycle to {path} ({fmt.upper()}{instead}); traces are large: a VCD reached "
            "1.2 GB for 3 tokens of the demo model]")
    return path


def connect(url: str, timeout: float = 10.0, log: Log | None = None) -> Accelerator:
    """Open the device at `url` (see the module docstring). `log(line)`, if given, receives notices
    for the user (sim: the trace file and its format, a first build)."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme in ("model", "sim"):
        if parts.netloc and parts.path not in ("", "/"):  # model://tiny/../../etc is not model://tiny
            raise ValueError(f"{url!r}: unexpected {parts.path!r} after the preset name; "
                             f"expected {parts.scheme}://PRESET")
        config = preset(parts.netloc or parts.path.strip("/"))
        transport: Transport = (ModelTransport(config) if parts.scheme == "model"
                                else sim_transport(config, trace=query.get("trace"), log=log))
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
