"""Tokens/s of the golden model on CPU: a random ~100M-parameter BitNet, prefill then KV-cached decode.

    .venv/bin/python bench/golden_bench.py [--threads 1 2] [--prompt 32] [--tokens 64]

Also reports how much of the decode time goes into the integer products (the seam where the
accelerator plugs in), measured by wrapping golden.default_int_matmul.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from bitlane import golden

# ~100M parameters: 75.5M ternary (12 layers x 6.3M) + 24.6M float (tied 32000 x 768 embedding)
CONFIG = golden.BitNetConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                             num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=1024,
                             tie_word_embeddings=True)


def run(model: golden.BitNetForCausalLM, prompt_len: int, new_tokens: int) -> dict[str, float]:
    matmul_s = 0.0

    def timed_matmul(name: str, trits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        nonlocal matmul_s
        t = time.perf_counter()
        acc = golden.default_int_matmul(name, trits, q)
        matmul_s += time.perf_counter() - t
        return acc

    model.set_int_matmul(timed_matmul)
    prompt = torch.randint(0, CONFIG.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache()
    with torch.inference_mode():
        t0 = time.perf_counter()
        logits = model(prompt, cache=cache)
        prefill_s = time.perf_counter() - t0
        matmul_s = 0.0
        token = logits[:, -1:].argmax(-1)
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            token = model(token, cache=cache)[:, -1:].argmax(-1)
        decode_s = time.perf_counter() - t1
    model.set_int_matmul(None)
    return {"prefill_tok_s": prompt_len / prefill_s, "decode_tok_s": new_tokens / decode_s,
            "decode_matmul_share": matmul_s / decode_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op threads to try")
    parser.add_argument("--prompt", type=int, default=32, help="prompt length (32)")
    parser.add_argument("--tokens", type=int, default=64, help="decoded tokens (64)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        golden.make_random_checkpoint(tmp, CONFIG, seed=0, tokenizer=False)
        model = golden.load_model(tmp)
        setup_s = time.perf_counter() - t
    counts = model.num_parameters()
    print(f"random BitNet: {counts['ternary'] / 1e6:.1f}M ternary + {counts['float'] / 1e6:.1f}M float parameters, "
          f"{CONFIG.num_hidden_layers} layers, hidden {CONFIG.hidden_size}, made and loaded in {setup_s:.1f} s")
    print(f"prompt {args.prompt} tokens, then {args.tokens} greedy tokens with the KV cache; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads available")
    for threads in args.threads:
        torch.set_num_threads(threads)
        run(model, 4, 2)  # warm-up
        r = run(model, args.prompt, args.tokens)
        print(f"threads {threads}: prefill {r['prefill_tok_s']:7.1f} tok/s | decode {r['decode_tok_s']:6.2f} tok/s "
              f"({100 * r['decode_matmul_share']:.0f}% of decode time in integer products)")


if __name__ == "__main__":
    main()
