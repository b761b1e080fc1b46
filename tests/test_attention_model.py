"""The attention unit's numpy model (hw/attention.py, `AttentionUnit.model`) against the integer
reference's own attention outputs, no simulator.

The reference runs a prompt token by token through its KV cache; its probes give, per token and
layer, the query head mantissas and exponent ("attn.q"), the new K and V rows ("attn.k",
"attn.v") and the attention output per head ("attn.out": u and eu). For every token, layer and
head, the model fed the query and the cache rows 0..p of the head's kv head must give u and eu
integer for integer: on the shipped h128 model (kv_bits 16 and 8) and on random models of other
shapes (grouped-query, head_dim 16 and 32, SiLU), and with prefill (all positions in one call).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bitlane import golden
from bitlane.golden import integer as gi
from bitlane.hw.attention import AttentionUnit, append_cycles, attend_cycles

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "bitnet-kjv-h128"
PROMPT = ("In the beginning God created the heaven and the earth.\nAnd the earth was without form, and void; "
          "and darkness was upon the face of the deep.")
STAGES = ("attn.q", "attn.k", "attn.v", "attn.out")


def attention_steps(im: gi.IntegerModel, ids: np.ndarray, prefill: bool = False) -> list[dict[str, np.ndarray]]:
    """Per layer, the probes of a run over `ids` [T] (token by token with a cache, or in one call):
    q [T, H, d], eq [T, H], k / v [T, KV, d], ek / ev [T, KV], u [T, H, d], eu [T, H]."""
    seen: dict[tuple[str, int], list] = {}

    def probe(stage: str, layer: int, mantissas, exponent) -> None:
        if stage in STAGES:  # [1, heads, T, d] and [1, heads, T, 1]
            seen.setdefault((stage, layer), []).append((mantissas[0].transpose(1, 0, 2), exponent[0, ..., 0].T))

    cache = im.new_cache()
    for chunk in ([ids] if prefill else [ids[t:t + 1] for t in range(len(ids))]):
        im.hidden(chunk[None], cache=cache, probe=probe)
    layers = []
    for layer in range(im.int_config.layers):
        steps = {}
        for stage, (m_name, e_name) in zip(STAGES, (("q", "eq"), ("k", "ek"), ("v", "ev"), ("u", "eu"))):
            parts = seen[stage, layer]
            steps[m_name] = np.concatenate([m for m, _ in parts])
            steps[e_name] = np.concatenate([e for _, e in parts])
        layers.append(steps)
    return layers


def head_cases(im: gi.IntegerModel, layers: list[dict[str, np.ndarray]]):
    """(layer, head, p, kv_head, model arguments, reference (u, eu)) of every token, layer and head."""
    H, KV = im.int_config.heads, im.int_config.kv_heads
    for layer, s in enumerate(layers):
        for p in range(len(s["q"])):
            for h in range(H):
                kv = h // (H // KV)
                args = (s["q"][p, h], int(s["eq"][p, h]), s["k"][:p + 1, kv], s["ek"][:p + 1, kv],
                        s["v"][:p + 1, kv], s["ev"][:p + 1, kv])
                yield layer, h, p, kv, args, (s["u"][p, h], int(s["eu"][p, h]))


def check_model(im: gi.IntegerModel, ids: np.ndarray, prefill: bool = False) -> int:
    n = 0
    for layer, h, p, _, args, (u, eu) in head_cases(im, attention_steps(im, ids, prefill)):
        got_u, got_eu = AttentionUnit.model(*args)
        assert np.array_equal(got_u, u) and got_eu == eu, f"layer {layer} head {h} position {p}"
        n += 1
    return n


def shipped_ids(n: int) -> np.ndarray:
    return np.array(golden.load_tokenizer(SHIPPED).encode(PROMPT).ids[:n])


@pytest.mark.parametrize("kv_bits", [16, 8])
def test_model_equals_reference_on_shipped_model(kv_bits: int) -> None:
    im = gi.IntegerModel.load(str(SHIPPED), kv_bits)
    ids = shipped_ids(32)
    assert len(ids) == 32 and check_model(im, ids) == 32 * 4 * 2


def random_model(seed: int, **fields) -> golden.BitNetForCausalLM:
    torch.manual_seed(seed)
    model = golden.BitNetForCausalLM(golden.BitNetConfig(**fields))
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if name.endswith("norm.weight"):
                prm.add_(0.1 * torch.randn(prm.shape))
    model.freeze()
    return model.eval()


SHAPES = {
    # grouped-query (2 heads per kv head), head_dim 16
    "gqa2_d16": (dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64), 8),
    # 4 heads on one kv head, head_dim 32, SiLU
    "gqa4_d32": (dict(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64, hidden_act="silu"), 16),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("prefill", [False, True])
def test_model_equals_reference_on_random_models(shape: str, prefill: bool) -> None:
    fields, kv_bits = SHAPES[shape]
    im = gi.convert(random_model(3, **fields), kv_bits)
    ids = np.random.default_rng(5).integers(0, 300, 40)
    assert check_model(im, ids, prefill) == 40 * fields["num_hidden_layers"] * fields["num_attention_heads"]


def test_cycle_formula() -> None:
    """The closed form of the docstring equals the step-by-step count (the simulation checks the latter)."""
    from bitlane.hw.softmax import SoftmaxRow
    from bitlane.hw.attention import tree_levels
    for d in (2, 6, 32, 64, 128):
        for macs in (k for k in range(1, d + 1) if d % k == 0):
            G, T = d // macs, tree_levels(macs)
            for w in (k for k in range(1, macs + 1) if macs % k == 0):  # query beats of w
                for p in (0, 1, 7, 255, 4095):
                    assert attend_cycles(p, d, macs, w) == \
                        d + d // w + (2 * p + 1) * G + T + 18 + max(2 * G + 5, SoftmaxRow.ROW_LATENCY)
    assert attend_cycles(255, 64, 16) == 8 * 255 + 173 and append_cycles(64) == 66
    assert attend_cycles(255, 64, 16, 4) == 8 * 255 + 125 and append_cycles(64, 4) == 18  # beats of 4
