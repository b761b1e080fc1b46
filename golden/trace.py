"""`with golden.trace(model) as records:` collects one BitLinearRecord per BitLinear call."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .model import BitLinearRecord, BitNetForCausalLM


@contextmanager
def trace(model: BitNetForCausalLM) -> Iterator[list[BitLinearRecord]]:
    """Record name, q (int8 [N, in]), trits (int8 [out, in]), acc (int32 [N, out]), act_scale and
    weight_scale of every BitLinear call inside the block, in call order."""
    records: list[BitLinearRecord] = []
    layers = [m for _, m in model.bitlinear_layers()]
    for m in layers:
        m.records = records
    try:
        yield records
    finally:
        for m in layers:
            m.records = None
