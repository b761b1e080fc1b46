"""Where BitLinear products run: backend name -> factory(model, **options) -> context manager.

A factory plugs its integer product into the model (`model.set_int_matmul`), optionally preloads
the weights (`model.bitlinear_layers()`), and returns a context manager that releases whatever it
opened (device, simulator, port) on exit. `bitlane generate --backend NAME --backend-opt KEY=VALUE`
picks one; options arrive as keyword strings. Register a new backend by adding it to BACKENDS.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from golden import BitNetForCausalLM

Backend = Callable[..., AbstractContextManager]


def golden_backend(model: BitNetForCausalLM, **options: str) -> AbstractContextManager:
    """The golden model's own exact CPU integer product."""
    if options:
        raise ValueError(f"backend 'golden' takes no options, got {sorted(options)}")
    model.set_int_matmul(None)
    return nullcontext()


BACKENDS: dict[str, Backend] = {"golden": golden_backend}
