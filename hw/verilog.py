"""Verilog of the bitlane top level for a configuration."""
from __future__ import annotations

from amaranth.back import verilog

from bitlane.contract.config import CoreConfig

from .top import BitlaneTop

TOP_NAME = "bitlane_top"


def top_verilog(config: CoreConfig, name: str = TOP_NAME) -> str:
    """The Verilog module `name` for BitlaneTop(config) (ports: see hw/top.py)."""
    top = BitlaneTop(config)
    return verilog.convert(top, name=name, emit_src=False)
