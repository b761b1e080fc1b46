"""Random-weight checkpoints of any shape, so tests and demos never need a download."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .checkpoint import save_model
from .model import BitNetConfig, BitNetForCausalLM

BYTE_VOCAB = 256  # ids 0..255 are the bytes themselves
BOS, EOS = "<s>", "</s>"  # ids 256 and 257


def _byte_to_char() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the alphabet of tokenizers' ByteLevel pre-tokenizer."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_level_tokenizer():
    """A tokenizers.Tokenizer whose token id is the byte value (0..255), plus <s> = 256 and </s> = 257."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: b for b, char in _byte_to_char().items()}
    vocab.update({BOS: BYTE_VOCAB, EOS: BYTE_VOCAB + 1})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(BOS, special=True), AddedToken(EOS, special=True)])
    return tok


def make_random_checkpoint(path: str | Path, config: BitNetConfig | dict, seed: int = 0,
                           tokenizer: bool | None = None, max_shard_bytes: int | None = None) -> Path:
    """Write a random-weight BitNet checkpoint (packed HF format) of the given shape to `path`.

    `config` is a BitNetConfig or a dict of its fields. `tokenizer` (default: when vocab_size >= 258)
    also writes a byte-level tokenizer.json and sets bos/eos to its <s> / </s> ids. The same seed
    and config always give the same tensors.
    """
    if isinstance(config, dict):
        config = BitNetConfig(**config)
    if tokenizer is None:
        tokenizer = config.vocab_size >= BYTE_VOCAB + 2
    if tokenizer:
        if config.vocab_size < BYTE_VOCAB + 2:
            raise ValueError(f"a byte-level tokenizer needs vocab_size >= 258, got {config.vocab_size}")
        config = dataclasses.replace(config, bos_token_id=BYTE_VOCAB, eos_token_id=BYTE_VOCAB + 1)
    gen = torch.Generator().manual_seed(seed)
    model = BitNetForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # near 1, so norms are exercised but keep the scale
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name == "model.embed_tokens.weight":
                p.normal_(0, 1, generator=gen)
            else:  # 1/sqrt(fan_in) keeps the residual stream and logits of order one
                p.normal_(0, p.shape[1] ** -0.5, generator=gen)
    model.freeze()
    return save_model(model, path, tokenizer=byte_level_tokenizer() if tokenizer else None,
                      max_shard_bytes=max_shard_bytes)
