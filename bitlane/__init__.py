"""bitlane: BitNet b1.58 language models on a ternary accelerator written in Amaranth HDL.

One installed namespace, four layers (docs/architecture.md):

    bitlane.contract   what hardware and host agree on: wire protocol, packing layouts, configurations
    bitlane.golden     the PyTorch reference model (and, next, the integer reference)
    bitlane.hw         the gateware, its simulators and its build flow        (imports contract)
    bitlane.sw         the host driver: link, placement, device sessions     (imports contract, golden)
    bitlane            the CLI, backends and demo, which sit above hw and sw and join them

    import bitlane
    with bitlane.connect("sim://tiny") as acc:     # model://, sim://, serial://
        acc.matvec(trits, q)
"""
from __future__ import annotations

__all__ = ["connect"]


def __getattr__(name: str):
    # Lazy: `import bitlane.contract` (used by the gateware) must not pull in torch or pyserial.
    if name == "connect":
        from .devices import connect
        return connect
    raise AttributeError(f"module 'bitlane' has no attribute {name!r}")
