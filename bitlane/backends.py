"""Where a model runs: backend name -> factory(model, **options) -> context manager.

The context manager's value is what to run, called like the golden model (logits from ids, a KV
cache): the golden model itself with its BitLinear products on the CPU (`golden`) or routed to a
device (`model`, `sim`, `serial`: the factory plugs its product in with `model.set_int_matmul`
and preloads the weights), or the integer-only reference converted from it (`int`). On exit it
releases whatever it opened (device, simulator, port). `bitlane generate|perplexity --backend NAME
--backend-opt KEY=VALUE` picks one; options arrive as keyword strings. Register a new backend by
adding it to BACKENDS.
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from bitlane.contract.config import DEFAULT_BAUD
from bitlane.golden import BitNetForCausalLM

Backend = Callable[..., AbstractContextManager]

OPTIONS_HELP = ("model, sim: preset=NAME (sim), trace=FILE.fst (sim only), url=URL, timeout=SECONDS (10); "
                f"serial: port=DEVICE (/dev/ttyUSB1), baud=N ({DEFAULT_BAUD}), window=N (1), url=URL, "
                "timeout=SECONDS")


def golden_backend(model: BitNetForCausalLM, **options: str) -> AbstractContextManager:
    """The golden model's own exact CPU integer product."""
    if options:
        raise ValueError(f"backend 'golden' takes no options, got {sorted(options)}")
    model.set_int_matmul(None)
    return nullcontext(model)


def int_backend(model: BitNetForCausalLM, **options: str) -> AbstractContextManager:
    """The integer-only decoder reference (docs/arithmetic.md) on the CPU: the device's oracle."""
    from bitlane.golden.integer import convert

    if options:
        raise ValueError(f"backend 'int' takes no options, got {sorted(options)}")
    model.set_int_matmul(None)
    return nullcontext(convert(model))


def _device_backend(scheme: str) -> Backend:
    """A backend on a bitlane device: the functional model, the simulated board, or a real board."""

    def factory(model: BitNetForCausalLM, **options: str) -> AbstractContextManager:
        from bitlane.devices import connect
        from bitlane.sw.session import DeviceSession

        options = dict(options)
        timeout_text = options.pop("timeout", "10")
        try:
            timeout = float(timeout_text)
        except ValueError:
            timeout = math.nan
        if not (math.isfinite(timeout) and timeout > 0):  # nan would wait forever, 0 or less never
            raise ValueError(f"backend {scheme!r}: timeout={timeout_text!r}, expected seconds, "
                             "e.g. timeout=30") from None
        url = options.pop("url", None)
        given = (url or "").partition("://")[0]
        if given in BACKENDS and given != scheme:  # it would run there, reported as this backend
            raise ValueError(f"backend {scheme!r}: url={url!r} is a {given}:// device; use --backend {given} "
                             f"(or a {scheme}:// URL)")
        if url is not None and scheme == "serial" and not url.startswith("serial://"):
            url = f"serial://{url}"  # url=socket://HOST:PORT, as for port=
        if url is None and scheme == "serial":
            port = options.pop("port", "/dev/ttyUSB1")
            port = port.removeprefix("serial://")  # port= also takes the URL python -m bitlane.hw.sim.uart_sim prints
            url = f"serial://{port}?baud={options.pop('baud', DEFAULT_BAUD)}&window={options.pop('window', 1)}"
        elif url is None:
            url = f"{scheme}://{options.pop('preset', 'sim')}"
            if scheme == "sim" and "trace" in options:
                url += f"?trace={options.pop('trace')}"
        if scheme == "sim":  # the simulator process needs a core of its own; torch takes the rest
            import torch
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
        if options:
            raise ValueError(f"backend {scheme!r}: unknown options {sorted(options)} ({OPTIONS_HELP})")
        device = connect(url, timeout=timeout, log=lambda line: print(line, file=sys.stderr))
        session = DeviceSession(model, device, progress=sys.stderr.isatty(),  # no bar in logs
                                report=sys.stderr, project=scheme in ("sim", "model"))
        return _running(session, model)

    factory.__doc__ = {"model": "the pure-Python functional model of the accelerator",
                       "sim": "the Verilated gateware (C++ harness over TCP), built on first use",
                       "serial": "a board on a serial port"}[scheme]
    return factory


@contextmanager
def _running(session: AbstractContextManager, model: BitNetForCausalLM) -> Iterator[BitNetForCausalLM]:
    """`model`, its products on the device while the session is open."""
    with session:
        yield model


BACKENDS: dict[str, Backend] = {
    "golden": golden_backend,
    "int": int_backend,
    "model": _device_backend("model"),
    "sim": _device_backend("sim"),
    "serial": _device_backend("serial"),
}
