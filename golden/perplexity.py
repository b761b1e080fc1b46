"""Windowed perplexity (anchor: llama.cpp's llama-perplexity), for any backend that gives logits.

    ids = text_ids(tokenizer, "data/kjv/val.txt")
    ppl, n = perplexity(model, ids)                    # golden model, IntegerModel, device-backed model
    ppl, n = perplexity(fn, ids, window=256)           # fn(ids [T]) -> logits [T, vocab]

The ids are cut into consecutive windows of `window` tokens (default: the model's context,
max_position_embeddings); each window starts with an empty context and scores the next token at
every position, so all len(ids) - 1 transitions are scored once (the last window may be shorter).
The result is exp(mean negative log-likelihood), with log-softmax in float64.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

ScoreFn = Callable[[np.ndarray], "np.ndarray | torch.Tensor"]  # ids [T] -> logits [T, vocab]
Progress = Callable[[int, int], None]  # (tokens scored so far, tokens to score)


def text_ids(tokenizer, path: str | Path) -> list[int]:
    """Token ids of a UTF-8 text file; ValueError (one line) for a missing file, empty text or < 2 tokens."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{path}: the text is empty")
    ids = tokenizer.encode(text).ids
    if len(ids) < 2:
        raise ValueError(f"{path}: {len(ids)} token(s); perplexity needs at least 2")
    return ids


def _window_logits(model) -> tuple[Callable[[np.ndarray], torch.Tensor], int | None, int | None]:
    """(batched scorer ids [B, T] -> logits [B, T, V], default window, vocabulary size) for a model or fn."""
    config = getattr(model, "config", None)
    if config is not None:  # golden.BitNetForCausalLM, golden.integer.IntegerModel, device-backed models
        return (lambda ids: model(torch.from_numpy(ids))), config.max_position_embeddings, config.vocab_size
    return (lambda ids: torch.as_tensor(np.asarray(model(ids[0])))[None]), None, None


def perplexity(model, ids: Sequence[int] | np.ndarray, window: int | None = None, *,
               batch_size: int = 1, progress: Progress | bool = False) -> tuple[float, int]:
    """(perplexity, number of scored tokens) of `ids` under `model` (a model with `.config`, called as
    model(ids [B, T]) -> logits [B, T, V]; or a function ids [T] -> logits [T, V], which needs `window`).
    `batch_size` windows of equal length go through one call (models only). `progress`: a callback
    (done, total) or True for a tqdm bar on stderr."""
    score, default_window, vocab = _window_logits(model)
    window = default_window if window is None else window
    if window is None:
        raise ValueError("perplexity of a plain function needs window=")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if default_window is not None and window > default_window:
        raise ValueError(f"window {window} exceeds the model's context {default_window}")
    if default_window is None and batch_size != 1:
        raise ValueError("batch_size > 1 needs a model, not a function")
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, got {ids.size}")
    if vocab is not None and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"token ids must lie in 0..{vocab - 1}")
    total = ids.size - 1
    starts = list(range(0, total, window))
    bar = None
    if progress is True:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="tok", file=sys.stderr, desc="perplexity")
        progress = lambda done, _total: bar.update(done - bar.n)  # noqa: E731
    nll, done = 0.0, 0
    with torch.inference_mode():
        i = 0
        while i < len(starts):
            length = min(window, total - starts[i])
            group = [s for s in starts[i:i + batch_size] if min(window, total - s) == length]
            inputs = np.stack([ids[s:s + length] for s in group])
            targets = torch.from_numpy(np.stack([ids[s + 1:s + length + 1] for s in group]))
            logits = score(inputs).double()
            if logits.shape[:2] != inputs.shape:
                raise ValueError(f"backend returned logits of shape {tuple(logits.shape)} for {inputs.shape} ids")
            logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])
            nll -= float(logp.sum())
            done += targets.numel()
            i += len(group)
            if progress:
                progress(done, total)
    if bar is not None:
        bar.close()
    return math.exp(nll / total), total


def main(argv: list[str] | None = None) -> None:
    """python -m bitlane.golden.perplexity --model DIR [--backend golden|int] FILE: the CPU backends; the
    device backends come through `bitlane perplexity`, which wraps the golden model the same way."""
    import argparse

    from .checkpoint import load_model, load_tokenizer
    from .integer import convert

    parser = argparse.ArgumentParser(description="perplexity of a text file under a model")
    parser.add_argument("--model", required=True, help="model folder (HF bitnet format with tokenizer.json)")
    parser.add_argument("--backend", choices=("golden", "int"), default="golden")
    parser.add_argument("--window", type=int, default=None, help="tokens per window (default: the model's context)")
    parser.add_argument("file", help="UTF-8 text to score")
    args = parser.parse_args(argv)
    try:
        torch.set_float32_matmul_precision("highest")  # golden's float matmul of integer products must be exact
        model = load_model(args.model).eval()
        ids = text_ids(load_tokenizer(args.model), args.file)
        ppl, n = perplexity(convert(model) if args.backend == "int" else model, ids, args.window,
                            batch_size=8, progress=True)
    except ValueError as e:
        raise SystemExit(f"perplexity: {e}") from None
    print(f"perplexity {ppl:.4f} over {n} tokens")


if __name__ == "__main__":
    main()
