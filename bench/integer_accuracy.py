"""Accuracy of the integer-only decoder (golden/integer.py) against the golden model.

    python bench/integer_accuracy.py [--model DIR ...] [--text data/kjv/val.txt] [--windows N] [--stage-windows 2]

For each model: perplexity of the text under the golden model and under the integer reference
(windows of the model's context, golden.perplexity's windowing), their ratio, and greedy top-1
agreement (teacher forced: argmax of both models' logits at every scored position); then the
per-stage error table of docs/arithmetic.md: each stage's integer output (converted to real
numbers only here, for the comparison) against the float model's, on the first --stage-windows
windows, all layers pooled, and for layer 0 alone. Errors compound: the integer model runs end to
end on its own, so later layers see earlier layers' errors (layer 0 sees only its own).
The text is data/kjv/val.txt (the validation split written by `python -m bitlane.golden.data`).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from bitlane import golden
from bitlane.golden.integer import IntegerModel, convert
from bitlane.golden.model import apply_rope, quantize_activations, rope_cos_sin
from bitlane.golden.perplexity import perplexity, text_ids

STAGES = {  # stage -> what it is (docs/arithmetic.md's table uses these names)
    "attn.q8": "int8 codes into q/k/v_proj",
    "attn.q": "q after RoPE (x log2(e)/sqrt(d))",
    "attn.k": "k after RoPE (cache)",
    "attn.v": "v (cache)",
    "attn.probs": "softmax probabilities",
    "attn.out": "attention output per head",
    "o.q8": "int8 codes into o_proj",
    "resid.attn": "residual after attention",
    "mlp.q8": "int8 codes into gate/up_proj",
    "mlp.act": "relu2(gate) * up, / its rms",
    "down.q8": "int8 codes into down_proj",
    "resid.mlp": "residual after MLP",
    "final": "final norm output (link out)",
    "logits": "logits (host LM head)",
}


def float_stages(model: golden.BitNetForCausalLM, ids: torch.Tensor) -> dict[str, list[np.ndarray]]:
    """The golden model's forward pass, step by step, recording the stages of STAGES (float64)."""
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    keep = lambda name, t: out[name].append(t.detach().double().numpy())  # noqa: E731
    c = model.config
    B, T = ids.shape
    cos, sin = rope_cos_sin(torch.arange(T), c.head_dim, c.rope_theta)
    x = model.model.embed_tokens(ids)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        xn = layer.input_layernorm(x)
        keep("attn.q8", quantize_activations(xn)[0])
        q, k, v = (proj(xn).view(B, T, -1, c.head_dim).transpose(1, 2)
                   for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keep("attn.q", q * math.log2(math.e) / math.sqrt(c.head_dim))
        keep("attn.k", k)
        keep("attn.v", v)
        groups = c.num_attention_heads // c.num_key_value_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = (q @ k.transpose(2, 3) * c.head_dim ** -0.5).masked_fill(~causal, float("-inf"))
        probs = F.softmax(scores, dim=-1, dtype=torch.float32)
        keep("attn.probs", probs)
        o = probs @ v
        keep("attn.out", o)
        sub = attn.attn_sub_norm(o.transpose(1, 2).reshape(B, T, -1))
        keep("o.q8", quantize_activations(sub)[0])
        x = x + attn.o_proj(sub)
        keep("resid.attn", x)
        xn = layer.post_attention_layernorm(x)
        keep("mlp.q8", quantize_activations(xn)[0])
        act = F.relu(mlp.gate_proj(xn)).square() if c.hidden_act == "relu2" else F.silu(mlp.gate_proj(xn))
        act = act * mlp.up_proj(xn)
        keep("mlp.act", act / act.pow(2).mean(-1, keepdim=True).sqrt())
        sub = mlp.ffn_sub_norm(act)
        keep("down.q8", quantize_activations(sub)[0])
        x = x + mlp.down_proj(sub)
        keep("resid.mlp", x)
    y = model.model.norm(x)
    keep("final", y)
    keep("logits", model.lm_head(y))
    return out


def integer_stages(im: IntegerModel, ids: torch.Tensor) -> dict[str, list[np.ndarray]]:
    """The integer model's stage outputs, converted to real values (float64) for comparison only."""
    out: dict[str, list[np.ndarray]] = defaultdict(list)

    def probe(stage: str, layer: int, m: np.ndarray, e) -> None:
        if stage == "attn.probs":
            value = m / e
        elif stage == "mlp.act":
            value = m / np.sqrt((m.astype(np.float64) ** 2).mean(-1, keepdims=True))
        elif e is None:
            value = m
        else:
            value = m * np.exp2(np.asarray(e, dtype=np.float64))
        out[stage].append(np.asarray(value, dtype=np.float64))

    im(ids, probe=probe)
    return out


def stage_table(model, im, windows: np.ndarray) -> list[str]:
    ids = torch.from_numpy(windows[:, :-1])
    ref, got = float_stages(model, ids), integer_stages(im, ids)
    rows = ["| stage | output | max abs error | RMS error | RMS of float value | RMS error / RMS | layer 0 alone |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for stage, what in STAGES.items():
        r = np.concatenate([a.ravel() for a in ref[stage]])
        g = np.concatenate([a.ravel() for a in got[stage]])
        err, err0 = g - r, (got[stage][0] - ref[stage][0]).ravel()
        if stage.endswith("q8"):
            rows.append(f"| {stage} | {what} | {np.abs(err).max():.0f} code | "
                        f"{np.sqrt((err ** 2).mean()):.3f} code | {np.sqrt((r ** 2).mean()):.1f} | "
                        f"{(err != 0).mean():.2%} of codes differ | {(err0 != 0).mean():.2%} differ |")
            continue
        rms_err, rms = np.sqrt((err ** 2).mean()), np.sqrt((r ** 2).mean())
        rel0 = np.sqrt((err0 ** 2).mean()) / np.sqrt((ref[stage][0] ** 2).mean())
        rows.append(f"| {stage} | {what} | {np.abs(err).max():.3g} | {rms_err:.3g} | {rms:.3g} | "
                    f"{rms_err / rms:.2e} | {rel0:.2e} |")
    return rows


def evaluate(path: str, text: str, max_windows: int | None, stage_windows: int, batch: int, kv_bits: int) -> None:
    torch.set_float32_matmul_precision("highest")  # the golden integer path's float matmul must be exact
    model = golden.load_model(path).eval()
    im = convert(model, kv_bits)
    ids = np.asarray(text_ids(golden.load_tokenizer(path), text), dtype=np.int64)
    window = model.config.max_position_embeddings
    if max_windows is not None:
        ids = ids[:max_windows * window + 1]
    agree = []

    class Both:  # scores with the integer model, and records golden's top-1 agreement on the same windows
        config = model.config

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            logits, reference = im(x), model(x)
            golden_logits.extend(reference.unbind(0))
            agree.append((logits.argmax(-1) == reference.argmax(-1)).numpy().ravel())
            return logits

    golden_logits: list[torch.Tensor] = []
    t0 = time.time()
    ppl_int, n = perplexity(Both(), ids, batch_size=batch, progress=True)
    seconds = time.time() - t0
    replay = iter(golden_logits)
    ppl_golden, _ = perplexity(lambda _ids: next(replay), ids, window=window)  # same windows, in order
    top1 = np.concatenate(agree).mean()
    print(f"{path}: {n} tokens, window {window}, K/V mantissas {kv_bits} bits")
    print(f"  perplexity golden {ppl_golden:.4f}  integer {ppl_int:.4f}  ratio {ppl_int / ppl_golden:.5f}")
    print(f"  greedy top-1 agreement (teacher forced) {top1:.2%}  ({seconds:.0f} s for both models)")
    starts = range(0, stage_windows * window, window)
    windows = np.stack([ids[s:s + window + 1] for s in starts if s + window < ids.size])
    print(f"  per-stage error, {len(windows)} window(s) of {window} tokens, all layers pooled:")
    print("\n".join(stage_table(model, im, windows)))
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="model folder (repeatable; default: both shipped models)")
    parser.add_argument("--text", default="data/kjv/val.txt", help="text to score (default: the KJV validation split)")
    parser.add_argument("--windows", type=int, default=None, help="score only the first N windows")
    parser.add_argument("--stage-windows", type=int, default=2, help="windows for the per-stage table (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="windows per call (default 8)")
    parser.add_argument("--kv-bits", type=int, default=16, help="K/V cache mantissa bits, 8..16 (default 16)")
    args = parser.parse_args(argv)
    for path in args.model or ["models/bitnet-kjv-h128", "models/bitnet-kjv-h256"]:
        evaluate(path, args.text, args.windows, args.stage_windows, args.batch, args.kv_bits)


if __name__ == "__main__":
    main()
