"""Autoregressive generation: greedy or sampled (temperature, top-k, top-p), seeded, streamed."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from .model import BitNetConfig, BitNetForCausalLM


def encode_prompt(tokenizer, config: BitNetConfig, text: str) -> list[int]:
    """Token ids of `text`, with the config's BOS in front unless the tokenizer already put it there."""
    ids = tokenizer.encode(text).ids
    bos = config.bos_token_id
    if bos is not None and 0 <= bos < config.vocab_size and ids[:1] != [bos]:
        ids = [bos, *ids]
    return ids


class TextStreamer:
    """Turns generated ids, pushed one at a time, into the text each one completes.

    Decodes the whole continuation every time (tokenizers may merge across tokens) and holds back
    text that ends in a partial UTF-8 character until the next token completes it.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return "" if text.endswith("\ufffd") else self._advance(text)

    def flush(self) -> str:
        """Whatever is still held back (a partial character stays as U+FFFD)."""
        return self._advance(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _advance(self, text: str) -> str:
        new, self.shown = text[len(self.shown):], text
        return new


def sample_next(logits: torch.Tensor, *, greedy: bool = False, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> int:
    """Pick the next token id from 1-D float logits."""
    if greedy or temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and 0 < top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p: drop a token once the mass before it does
        drop = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate_stream(model: BitNetForCausalLM, prompt_ids: Sequence[int], max_new_tokens: int = 32, *,
                    greedy: bool = False, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, seed: int | None = None,
                    eos_token_ids: set[int] | None = None, use_cache: bool = True) -> Iterator[int]:
    """Yield new token ids one by one as they are produced.

    Stops after `max_new_tokens`, after an end-of-sequence token (which is yielded; default: the
    config's eos_token_id), or when the sequence reaches max_position_embeddings.
    `use_cache=False` recomputes the whole sequence each step (the reference for the KV cache).
    Bad arguments raise ValueError here, before the first token is asked for.
    """
    if not prompt_ids:
        raise ValueError("generate needs at least one prompt token")
    vocab = model.config.vocab_size
    if any(not 0 <= t < vocab for t in prompt_ids):
        raise ValueError(f"prompt ids must lie in 0..{vocab - 1}")
    if max_new_tokens > 0 and len(prompt_ids) >= model.config.max_position_embeddings:
        raise ValueError(f"a prompt of {len(prompt_ids)} tokens leaves no room for new ones: the model's "
                         f"context (max_position_embeddings) is {model.config.max_position_embeddings}")
    for name, value, ok, expected in (("max_new_tokens", max_new_tokens, max_new_tokens >= 0, ">= 0"),
                                      ("temperature", temperature, temperature >= 0, ">= 0 (0: greedy)"),
                                      ("top_k", top_k, top_k is None or top_k >= 1, ">= 1"),
                                      ("top_p", top_p, top_p is None or 0 < top_p <= 1, "in (0, 1]")):
        if not ok:
            raise ValueError(f"{name} = {value}: expected {expected}")
    eos = model.config.eos_token_ids if eos_token_ids is None else eos_token_ids
    return _stream(model, list(prompt_ids), max_new_tokens, eos, use_cache,
                   dict(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                        generator=torch.Generator().manual_seed(seed) if seed is not None else None))


def _stream(model: BitNetForCausalLM, sequence: list[int], max_new_tokens: int, eos: set[int], use_cache: bool,
            sampling: dict) -> Iterator[int]:
    cache = model.new_cache() if use_cache else None
    pending = sequence  # tokens the model has not seen yet
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            if len(sequence) >= model.config.max_position_embeddings:
                return
            logits = model(torch.tensor([pending if use_cache else sequence]), cache=cache)[0, -1]
            token = sample_next(logits, **sampling)
            sequence.append(token)
            pending = [token]
            yield token
            if token in eos:
                return


def generate(model: BitNetForCausalLM, prompt_ids: Sequence[int], max_new_tokens: int = 32, *,
             on_token: Callable[[int], None] | None = None, **options) -> list[int]:
    """Generated ids (prompt excluded) as a list; `on_token` is called with each id as it is produced.
    Options as for `generate_stream`."""
    out = []
    for token in generate_stream(model, prompt_ids, max_new_tokens, **options):
        out.append(token)
        if on_token is not None:
            on_token(token)
    return out
