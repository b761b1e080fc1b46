"""Ternary weights and int8 activations to and from the accelerator's memory words.

Layout (docs/protocol.md, "Memories and data layout"):

* weight word = `lanes * k_per_cycle` trits, 2 bits each (00 = 0, 01 = +1,
  11 = -1, 10 reads as 0); trit (lane l, column j) is trit i = l * k_per_cycle + j,
  in byte i // 4 at bits 2*(i % 4) + 1 .. 2*(i % 4).
* a matrix of R x C is tile-major: word (row tile rt, k step ks) is number
  rt * k_steps + ks; lane l holds row rt * lanes + l, columns ks * k_per_cycle + j.
* activation word = `k_per_cycle` int8; vector n, step ks is word n * k_steps + ks.

Everything is whole-array numpy (reshape/transpose/bit ops), no Python loop
over elements: bench/driver_bench.py prints the packing rate.
"""
from __future__ import annotations

import numpy as np

# code -> trit, for the four 2-bit codes (0b10 is reserved and reads as 0)
CODE_TO_TRIT = np.array([0, 1, 0, -1], dtype=np.int8)


class PackingError(ValueError):
    """An array that cannot be packed: wrong shape, dtype or values."""


def tiles(rows: int, cols: int, lanes: int, k_per_cycle: int) -> tuple[int, int]:
    """(row_tiles, k_steps) of an R x C matrix."""
    return -(-rows // lanes), -(-cols // k_per_cycle)


def _as_int_array(x, name: str, ndim: int) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != ndim:
        raise PackingError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise PackingError(f"{name}: expected an integer array, got dtype {a.dtype}")
    return a


def check_trits(trits, name: str = "weights") -> np.ndarray:
    """Validate an R x C matrix of {-1, 0, +1} and return it as int8."""
    a = _as_int_array(trits, name, 2)
    if a.size and (a.min() < -1 or a.max() > 1):
        bad = np.argwhere((a < -1) | (a > 1))[0]
        raise PackingError(f"{name}: weights must be ternary (-1, 0, +1); "
                           f"element {tuple(int(i) for i in bad)} is {a[tuple(bad)]}")
    return a.astype(np.int8, copy=False)


def check_int8(values, name: str = "activations", ndim: int = 2) -> np.ndarray:
    """Validate int8-range integers and return them as int8."""
    a = _as_int_array(values, name, ndim)
    if a.dtype != np.int8 and a.size and (a.min() < -128 or a.max() > 127):
        bad = np.argwhere((a < -128) | (a > 127))[0]
        raise PackingError(f"{name}: activations must be int8 (-128..127); "
                           f"element {tuple(int(i) for i in bad)} is {a[tuple(bad)]}")
    return a.astype(np.int8, copy=False)


def pack_weights(trits, lanes: int, k_per_cycle: int, name: str = "weights") -> bytes:
    """R x C ternary matrix -> row_tiles * k_steps tile-major weight words."""
    t = check_trits(trits, name)
    rows, cols = t.shape
    if rows == 0 or cols == 0:
        raise PackingError(f"{name}: empty matrix of shape {t.shape}")
    rt, ks = tiles(rows, cols, lanes, k_per_cycle)
    codes = np.zeros((rt * lanes, ks * k_per_cycle), dtype=np.uint8)
    codes[:rows, :cols] = t.view(np.uint8) & 3  # two's complement: -1 -> 0b11, +1 -> 0b01
    # [rt, lane, ks, j] -> [rt, ks, lane, j]: one word per (rt, ks), trit index lane * kpc + j
    words = codes.reshape(rt, lanes, ks, k_per_cycle).transpose(0, 2, 1, 3).reshape(-1, 4)
    packed = words[:, 0] | (words[:, 1] << 2) | (words[:, 2] << 4) | (words[:, 3] << 6)
    return packed.tobytes()


def unpack_weights(data: bytes, rows: int, cols: int, lanes: int, k_per_cycle: int) -> np.ndarray:
    """Tile-major weight words -> R x C int8 trits (inverse of pack_weights)."""
    rt, ks = tiles(rows, cols, lanes, k_per_cycle)
    expected = rt * ks * lanes * k_per_cycle // 4
    if len(data) != expected:
        raise PackingError(f"weight words for {rows} x {cols}: expected {expected} bytes, got {len(data)}")
    trits = words_to_trits(data, lanes * k_per_cycle)
    full = trits.reshape(rt, ks, lanes, k_per_cycle).transpose(0, 2, 1, 3).reshape(rt * lanes, ks * k_per_cycle)
    return np.ascontiguousarray(full[:rows, :cols])


def words_to_trits(data: bytes, trits_per_word: int) -> np.ndarray:
    """Weight words -> [n_words, trits_per_word] int8, trit i of a word at column i."""
    b = np.frombuffer(data, dtype=np.uint8)
    codes = np.stack([(b >> s) & 3 for s in (0, 2, 4, 6)], axis=-1)
    return CODE_TO_TRIT[codes].reshape(-1, trits_per_word)


def pack_activations(q, k_per_cycle: int, name: str = "activations") -> bytes:
    """N x C int8 vectors -> N * k_steps activation words (each vector zero-padded)."""
    a = check_int8(q, name)
    n, cols = a.shape
    if n == 0 or cols == 0:
        raise PackingError(f"{name}: empty activations of shape {a.shape}")
    ks = -(-cols // k_per_cycle)
    padded = np.zeros((n, ks * k_per_cycle), dtype=np.int8)
    padded[:, :cols] = a
    return padded.tobytes()


def unpack_activations(data: bytes, n: int, cols: int, k_per_cycle: int) -> np.ndarray:
    ks = -(-cols // k_per_cycle)
    if len(data) != n * ks * k_per_cycle:
        raise PackingError(f"activation words for {n} x {cols}: expected {n * ks * k_per_cycle} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=np.int8).reshape(n, ks * k_per_cycle)[:, :cols].copy()
