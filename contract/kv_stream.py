"""The KV cache in SDRAM: how its rows lie there and what loading them costs (the decoder's KVLOAD and
KVAPPEND's store). One definition for the host (sw/decoder_program.py places the regions), the
functional model (contract/decoder.py's KVLOAD and KVAPPEND) and the gateware.

The attention unit's block-RAM cache holds `layers x kv_heads` slots of `context` positions
(DecoderShape). A model with more (layer, KV head) pairs than slots runs on an engine with `kv_sdram`
by keeping its whole KV cache in SDRAM and staging one (layer, KV head) at a time into a slot: KVLOAD
copies positions 0..POS-1 of its K or V region into the slot, KVAPPEND writes position POS into the
slot and, with its store flag, into the region too. So every token reads its positions back from
SDRAM, and the slot's context, not the number of slots, bounds the model's context.

Layout: a *row* is one position of one (layer, KV head, K|V): `kv_row_words(head_dim)` 16-bit SDRAM
words. Word 0 is the position's exponent (int8, sign-extended to 16 bits), words 1..3 are zero,
words `KV_MANT_WORD` = 4.. the int16 mantissas in element order, then zeros up to a multiple of
`KV_ALIGN` (68 words for head_dim 64, as many as without the zeros). The zeros put the mantissas on a
port word of the engine's weight port (one, two or four SDRAM words, `fetch_ratio`), so that the
gateware takes a port word's mantissas together, without realigning. A
*region* is `context` rows, row p at region + p * row_words; its address is a multiple of `KV_ALIGN`,
which leaves the low bits of an instruction's imm free for its flags (contract/decoder.py KVLOAD,
KVAPPEND) and starts every row on a word of the engine's weight port where its `fetch_ratio` divides
KV_ALIGN (the gateware checks).
"""
from __future__ import annotations

import math

import numpy as np

from .config import CoreConfig
from .weight_stream import FETCH_REQUEST_CYCLES, REFRESH_SHARE

KV_V = 1       # imm bit: V rather than K (KVAPPEND, KVLOAD)
KV_STORE = 2   # imm bit of KVAPPEND: also write the row to SDRAM
KV_ALIGN = 4   # rows and region addresses: multiples of 4 words (the imm bits above stay free)
KV_MANT_WORD = KV_ALIGN  # a row's first mantissa: after the exponent and zeros, on a port word


def kv_row_words(head_dim: int) -> int:
    """SDRAM words of one row: the exponent, zeros, head_dim mantissas, padded to a multiple of KV_ALIGN."""
    return -(-(KV_MANT_WORD + head_dim) // KV_ALIGN) * KV_ALIGN


def region_address(imm: int) -> int:
    """The region's SDRAM word address in a KVLOAD's or KVAPPEND's imm (the flags cleared)."""
    return imm & ~(KV_ALIGN - 1) & 0xFFFFFFFF


def pack_row(mantissas: np.ndarray, exponent: int, row_words: int) -> np.ndarray:
    """One row as SDRAM words (uint16): the exponent, zeros, the mantissas, zeros."""
    row = np.zeros(row_words, dtype=np.uint16)
    row[0] = np.int64(exponent) & 0xFFFF
    row[KV_MANT_WORD:KV_MANT_WORD + len(mantissas)] = np.asarray(mantissas, dtype=np.int64) & 0xFFFF
    return row


def unpack_rows(words: np.ndarray, head_dim: int, row_words: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of SDRAM words as (mantissas [rows, head_dim] int64, exponents [rows] int64), sign-extended."""
    rows = np.asarray(words, dtype=np.int64).reshape(-1, row_words)
    signed = np.where(rows >= 1 << 15, rows - (1 << 16), rows)
    return signed[:, KV_MANT_WORD:KV_MANT_WORD + head_dim], signed[:, 0]


# Like a WFETCH, a KVLOAD's duration depends on the SDRAM (refresh, open rows, the clock crossing), so a
# DECODE's cycles count its issue cycle only and this estimate is for projections. Its rows go through
# the attention unit's append path, a beat of vector_lanes mantissas a cycle (`append_cycles`), which is
# faster than the SDRAM delivers them on the ULX3S (a 68-word row in 61 cycles of the 45 MHz core at a
# 50 MHz SDRAM clock), so there the SDRAM sets the pace.
def kv_load_cycles_estimate(rows: int, head_dim: int, config: CoreConfig) -> int:
    """Core cycles a KVLOAD of `rows` positions takes, estimated: each row through the append path or as
    fast as the SDRAM streams it, whichever is slower, plus one request's latency and the refresh share."""
    from .decoder import append_cycles  # (contract/decoder.py imports this module)

    if rows == 0:
        return 0
    words = rows * kv_row_words(head_dim)
    core_per_sdram = (config.clock_hz or config.sdram_clock_hz) / config.sdram_clock_hz
    per_row = max(append_cycles(head_dim, config.decoder.vector_lanes), kv_row_words(head_dim) * core_per_sdram)
    return math.ceil(rows * per_row + (FETCH_REQUEST_CYCLES + words * REFRESH_SHARE) * core_per_sdram)


__all__ = ["KV_V", "KV_STORE", "KV_ALIGN", "KV_MANT_WORD", "kv_row_words", "region_address", "pack_row",
           "unpack_rows", "kv_load_cycles_estimate"]
