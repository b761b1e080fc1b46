"""Leave all-zero memory contents out of generated RTLIL/Verilog.

Amaranth 0.5 emits every memory's initial contents bit by bit, even when they are all zero.
For the `sim` preset's 65536 x 512-bit weight memory that is a 33.5 Mbit constant, and
elaboration to Verilog takes many minutes (Python builds the bit list, Yosys parses it and
writes 65536 `initial` lines). The core never reads a word it did not write first (the
host loads weights and activations before a RUN, results are written before they are read),
so zero contents carry no meaning: skipping them leaves the memories uninitialized in the
netlist (iCE40/ECP5 block RAMs still configure to zero; Verilator zero-fills by default).
Memories with any nonzero word keep their contents. Importing this module installs the
patch once.
"""
from __future__ import annotations

from amaranth.back import rtlil

_emit_memory = rtlil.ModuleEmitter.emit_memory


def _emit_memory_skipping_zero_init(self, cell_idx, cell) -> None:
    if any(cell.init):
        _emit_memory(self, cell_idx, cell)


if getattr(rtlil.ModuleEmitter.emit_memory, "__name__", "") != _emit_memory_skipping_zero_init.__name__:
    rtlil.ModuleEmitter.emit_memory = _emit_memory_skipping_zero_init
