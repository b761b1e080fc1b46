"""Where a layer's weights go in device memory: column chunks and row pieces that fit.

Products larger than the device memories are split on the host: columns into chunks of at most
`max_k` (their int32 partial results are summed exactly in int64 on the host), rows into pieces
whose weight words fit the memory region they go to. The limits are the device's (its INFO
record) and the wire records' field widths (contract/protocol.py), never restated numbers.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from bitlane.contract import protocol as p
from bitlane.contract.packing import tiles


@dataclass
class Piece:
    """Rows r0:r1 x columns c0:c1 of a layer, one RUN's worth of weights."""

    r0: int
    r1: int
    c0: int
    c1: int
    row_tiles: int
    k_steps: int
    w_base: int = 0
    words: bytes = b""  # packed weight words, kept on the host for streamed layers

    @property
    def n_words(self) -> int:
        return self.row_tiles * self.k_steps


@dataclass
class Layer:
    name: str
    rows: int
    cols: int
    resident: bool
    chunks: list[list[Piece]] = field(default_factory=list)  # per column chunk, its row pieces
    source: weakref.ref | None = None  # the array the weights came from, to notice when a caller changes it


def plan_pieces(rows: int, cols: int, caps: p.Capabilities, region_words: int) -> list[list[Piece]]:
    """Split an R x C product into column chunks and row pieces that fit `region_words` of weight memory."""
    lanes, kpc = caps.lanes, caps.k_per_cycle
    rt_total, ks_total = tiles(rows, cols, lanes, kpc)
    ks_max = min(caps.max_k // kpc, region_words, caps.act_depth)
    if ks_max < 1:
        raise p.BitlaneError(f"no room for a {rows} x {cols} product: {region_words} free weight words")
    n_chunks = -(-ks_total // ks_max)
    ks_chunk = -(-ks_total // n_chunks)  # balanced
    chunks = []
    for ci in range(n_chunks):
        k0 = ci * ks_chunk
        ks = min(ks_chunk, ks_total - k0)
        rt_max = min(region_words // ks, caps.out_depth, max_field(p.RunArgs, "rows") // lanes)
        n_pieces = -(-rt_total // rt_max)
        rt_piece = -(-rt_total // n_pieces)
        pieces = []
        for pi in range(n_pieces):
            t0 = pi * rt_piece
            rt = min(rt_piece, rt_total - t0)
            pieces.append(Piece(t0 * lanes, min(rows, (t0 + rt) * lanes), k0 * kpc, min(cols, (k0 + ks) * kpc),
                                rt, ks))
        chunks.append(pieces)
    return chunks




def max_field(record: type[p.WireRecord], name: str) -> int:
    """The largest value field `name` of a wire record can carry."""
    return (1 << dict(record.FIELDS)[name]) - 1
