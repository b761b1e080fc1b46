"""`make demo`: generate text with the bundled model, or with a small random model when none is bundled.

The bundled model is models/bitnet-kjv-h128, the smallest shipped model, which the simulator runs
at several tokens per second (the larger English model takes ten times as long). Without it, a random
byte-level model is made once into the user's cache folder (or a temporary folder), so the demo
works on a fresh clone with no download. The model runs on the simulated accelerator (the
Verilated gateware of the `sim` preset, built on first use) unless `--backend` says otherwise:
in decoder mode (every layer on the device) where the model fits the preset's decoder engine,
as the bundled model does, else every BitLinear product there.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from bitlane import golden
from bitlane.backends import BACKENDS
from bitlane.cli import print_stream

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = "bitnet-kjv-h128"
PROMPT = "In the beginning"
RANDOM_CONFIG = golden.BitNetConfig(vocab_size=258, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                    tie_word_embeddings=False)


def bundled_model() -> Path | None:
    path = REPO / "models" / DEMO_MODEL
    return path if (path / "config.json").is_file() else None


def random_model() -> Path:
    """A random demo checkpoint, made once per cache folder (the same seed gives the same model)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bitlane" / "demo-random-v2"
    try:
        golden.load_model(cache)
        return cache
    except golden.CheckpointError:
        pass
    try:
        return golden.make_random_checkpoint(cache, RANDOM_CONFIG, seed=0)
    except OSError:  # read-only home: a temporary folder does as well
        return golden.make_random_checkpoint(tempfile.mkdtemp(prefix="bitlane-demo-"), RANDOM_CONFIG, seed=0)


def printable(text: str) -> str:
    """Random models emit arbitrary bytes; show control characters as '·' so the terminal survives."""
    return "".join(c if c.isprintable() or c == "\n" else "·" for c in text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitlane.demo", description=__doc__)
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="sim",
                        help="where the model runs (default: sim, the Verilated accelerator)")
    parser.add_argument("--preset", default="sim", help="accelerator preset for the model/sim backends (default: sim)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small matrices: extra threads cost more in synchronization than they gain
    path = bundled_model()
    model, eos = None, None
    if path is not None:
        try:
            model = golden.load_model(path)
        except golden.CheckpointError as e:
            print(f"bundled model unusable ({e}); using a random model", file=sys.stderr)
    if model is None:
        path = random_model()
        model = golden.load_model(path)
        eos = set()  # a random model's end-of-text token means nothing: always show all 64 tokens
        print(f"no model under models/: random-weight model at {path} (its text is noise)", file=sys.stderr)
    tokenizer = golden.load_tokenizer(path)
    config = model.config
    print(f"model {path.name}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"vocab {config.vocab_size}; backend {args.backend}", file=sys.stderr)
    options = {"preset": args.preset} if args.backend in ("sim", "model") else {}
    with BACKENDS[args.backend](model, **options) as runner:
        generate(runner, tokenizer, eos)
    return 0


def generate(model: golden.BitNetForCausalLM, tokenizer, eos: set[int] | None) -> None:
    """Sample 64 tokens after PROMPT (seeded), streaming the text as it comes."""
    prompt_ids = golden.encode_prompt(tokenizer, model.config, PROMPT) if tokenizer else [0]
    start = time.perf_counter()
    tokens = golden.generate_stream(model, prompt_ids, 64, temperature=0.8, top_k=40, seed=0, eos_token_ids=eos)
    count = sum(1 for _ in print_stream(tokens, tokenizer, prompt_ids, show=printable))
    seconds = time.perf_counter() - start
    print(f"\n[{count} tokens in {seconds:.2f} s, {count / seconds:.1f} tokens/s]", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
