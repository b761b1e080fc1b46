"""Shared fixtures: tiny random BitNet checkpoints made on the fly (no downloads)."""
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # transformers' BitNet code is decorated with torch.compile

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from bitlane import golden  # noqa: E402

# `pytest -n 2` on 2 cores: one intra-op thread per worker; more only oversubscribe the cores
# (with a busy machine, 2 spinning OpenMP threads per worker made tiny forward passes 100x slower).
torch.set_num_threads(1)

# Small enough that a forward pass takes milliseconds; vocab >= 258 so the byte tokenizer fits.
TINY_CONFIG = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, hidden_act="relu2",
                   max_position_embeddings=256, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory) -> Callable[..., Path]:
    """Factory: make_checkpoint(seed=0, tokenizer=None, **config_overrides) -> folder with a random
    packed checkpoint of TINY_CONFIG updated by the overrides. Identical arguments reuse one folder."""
    made: dict[tuple, Path] = {}

    def make(seed: int = 0, tokenizer: bool | None = None, **overrides) -> Path:
        key = (seed, tokenizer, tuple(sorted(overrides.items())))
        if key not in made:
            path = tmp_path_factory.mktemp("ckpt")
            golden.make_random_checkpoint(path, {**TINY_CONFIG, **overrides}, seed=seed, tokenizer=tokenizer)
            made[key] = path
        return made[key]

    return make
