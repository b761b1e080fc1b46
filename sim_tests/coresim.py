"""Test-side helpers for the compute core: test configurations, memory words, random operands.

The integer reference is the block's own model (`TernaryCore.model`, hw/core.py).

Shared by the cocotb modules (which run inside the simulator) and their pytest entries.
"""
from __future__ import annotations

import numpy as np

from bitlane.contract.config import CoreConfig, preset
from bitlane.contract.packing import pack_activations, pack_weights

# `tiny` (4 lanes x 4) and a mid-size core (8 lanes x 16, 128 MACs/cycle, 4-level tree):
# both build in well under a minute; the full `sim` preset is exercised by the system tests.
CONFIGS: dict[str, CoreConfig] = {
    "tiny": preset("tiny"),
    "mid": CoreConfig("mid", lanes=8, k_per_cycle=16, weight_depth=4096, act_depth=1024,
                      out_depth=256, max_k=8192, max_payload=1024),
}


def words(data: bytes, word_bytes: int) -> list[int]:
    """Little-endian memory words of `word_bytes` bytes each."""
    return [int.from_bytes(data[i:i + word_bytes], "little") for i in range(0, len(data), word_bytes)]


def weight_words(trits: np.ndarray, cfg: CoreConfig) -> list[int]:
    return words(pack_weights(trits, cfg.lanes, cfg.k_per_cycle), cfg.weight_word_bytes)


def act_words(q: np.ndarray, cfg: CoreConfig) -> list[int]:
    return words(pack_activations(q, cfg.k_per_cycle), cfg.act_word_bytes)


def random_acts(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """int8 values with the extremes (-128, 127, -1, 0, 1) much more likely than uniform."""
    q = rng.integers(-128, 128, size=shape)
    extremes = rng.choice(np.array([-128, -127, -1, 0, 1, 127]), size=shape)
    return np.where(rng.random(shape) < 0.3, extremes, q).astype(np.int8)


def random_trits(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-1, 2, size=shape).astype(np.int8)
