"""Where a model runs: backend name -> factory(model, **options) -> context manager.

The context manager's value is what to run, called like the golden model (logits from ids, a KV
cache): the golden model itself with its BitLinear products on the CPU (`golden`) or routed to a
device (`model`, `sim`, `serial` in matmul mode: the factory plugs its product in with
`model.set_int_matmul` and preloads the weights), the integer-only reference converted from it
(`int`), or the whole decoder step on a device (decoder mode: the device's DECODE between the
host's embedding lookup and LM head, logits equal to `int`'s). A device backend takes decoder mode
when the device reports a decoder engine and the model fits it, matmul mode otherwise (saying why
on stderr); `mode=matmul|decoder` forces one. On exit it releases whatever it opened (device,
simulator, port). `bitlane generate|perplexity --backend NAME
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

MODES = ("auto", "matmul", "decoder")
OPTIONS_HELP = ("model, sim: preset=NAME (sim), trace=FILE.fst (sim only), url=URL, timeout=SECONDS (10), "
                f"mode={'|'.join(MODES)} (auto); "
                f"serial: port=DEVICE (/dev/ttyUSB1), baud=N ({DEFAULT_BAUD}), window=N (1), url=URL, "
                "timeout=SECONDS, mode=...")


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
        mode = options.pop("mode", "auto")
        if mode not in MODES:
            raise ValueError(f"backend {scheme!r}: mode={mode!r}, expected one of {', '.join(MODES)}")
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
        if scheme in ("sim", "serial"):  # a simulator process may do the device's work: leave it a core
            import torch
            from threadpoolctl import threadpool_limits
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
            # OpenBLAS's idle threads spin after every product (the LM head's), and took the simulator's
            # core: 57 ms of CPU per h128 token, against 1 ms with one thread (bench/driver_bench.py)
            threadpool_limits(1, user_api="blas")
        if options:
            raise ValueError(f"backend {scheme!r}: unknown options {sorted(options)} ({OPTIONS_HELP})")
        device = connect(url, timeout=timeout, log=lambda line: print(line, file=sys.stderr))
        progress = sys.stderr.isatty()  # no bar in logs
        try:
            decoder = None if mode == "matmul" else _decoder_session(model, device, mode == "decoder", progress)
        except BaseException:
            device.close()
            raise
        if decoder is not None:
            return _running(decoder, decoder.runner)
        session = DeviceSession(model, device, progress=progress, report=sys.stderr,
                                project=scheme in ("sim", "model"))
        return _running(session, model)

    factory.__doc__ = {"model": "the pure-Python functional model of the accelerator",
                       "sim": "the Verilated gateware (C++ harness over TCP), built on first use",
                       "serial": "a board on a serial port"}[scheme]
    return factory


def _decoder_session(model: BitNetForCausalLM, device, forced: bool, progress: bool):
    """A DecoderSession of `model` on `device`, or None where the device or the model says matmul mode
    (with a one-line notice where the device has a decoder the model does not fit). `forced`
    (mode=decoder): a ValueError instead of matmul mode."""
    from bitlane.golden.integer import ConversionError, convert
    from bitlane.sw.decoder_program import DecoderFitError
    from bitlane.sw.decoder_session import DecoderSession, context_shortfall, plan_decoder

    where = device.transport.description
    if not device.caps.decoder:
        if forced:
            raise ValueError(f"mode=decoder: {where} has no decoder engine (its INFO record lacks the decoder "
                             "feature bit); use mode=matmul")
        return None
    try:
        int_model = convert(model)
        image = plan_decoder(int_model, device.caps)
        short = context_shortfall(int_model, device.caps)
        if short is not None and not forced:
            raise DecoderFitError(short)
    except (DecoderFitError, ConversionError) as e:
        if forced:
            raise ValueError(f"mode=decoder: the model does not fit {where}'s decoder engine: {e}") from None
        print(f"[{where}: matmul mode: the model does not fit the decoder engine: {e}]", file=sys.stderr)
        return None
    if short is not None:
        print(f"[{where}: decoder mode: {short}; sequences stop at position {device.caps.dec_context}]",
              file=sys.stderr)
    return DecoderSession(int_model, image, device, progress=progress, report=sys.stderr)


@contextmanager
def _running(session: AbstractContextManager, runner) -> Iterator[object]:
    """`runner` (the model, or decoder mode's runner) while the session is open."""
    with session:
        yield runner


BACKENDS: dict[str, Backend] = {
    "golden": golden_backend,
    "int": int_backend,
    "model": _device_backend("model"),
    "sim": _device_backend("sim"),
    "serial": _device_backend("serial"),
}
