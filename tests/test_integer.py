"""The integer-only decoder (golden/integer.py): primitives over their whole domains, widths at
bitnet-b1.58-2B-4T scale and on adversarial inputs, refusal of out-of-contract constants,
determinism (prefill + decode == token-by-token), and agreement with the golden model."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bitlane import golden
from bitlane.golden import integer as gi
from bitlane.golden.integer import ConversionError, WidthError, convert

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "bitnet-kjv-h128"
GENESIS = ("In the beginning God created the heaven and the earth.\nAnd the earth was without form, and void; "
           "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.\n"
           "And God said, Let there be light: and there was light.\nAnd God saw the light, that it was good: "
           "and God divided the light from the darkness.\n")


def random_model(seed: int = 0, **fields) -> golden.BitNetForCausalLM:
    """A frozen random model in memory (norm weights perturbed around 1 so the folding is exercised)."""
    torch.manual_seed(seed)
    model = golden.BitNetForCausalLM(golden.BitNetConfig(**fields))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn(p.shape))
    model.freeze()
    return model.eval()


SMALL = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0)
# bitnet-b1.58-2B-4T's layer shapes, one layer
B2B = dict(vocab_size=300, hidden_size=2560, intermediate_size=6912, num_hidden_layers=1, num_attention_heads=20,
           num_key_value_heads=5, hidden_act="relu2", tie_word_embeddings=True, max_position_embeddings=4096,
           rope_theta=500000.0)


@pytest.fixture(scope="module")
def model_2b() -> golden.BitNetForCausalLM:
    return random_model(**B2B)


# ----------------------------------------------------------------------------- primitives, whole domains

def test_bit_length_and_normalize():
    values = np.array([0, 1, 2, 3, 255, 256, 2**31 - 1, 2**31, 2**47 + 5, 2**62], dtype=np.int64)
    assert gi.bit_length(values).tolist() == [int(v).bit_length() for v in values]
    x = np.array([[-(2**31), 5, 2**31 - 1], [-(2**15), 1, 2**15 - 1], [0, 0, 0]], dtype=np.int64)
    m, e = gi.normalize(x)
    assert m.min() >= -(2**15) and m.max() < 2**15
    assert e[:, 0].tolist() == [17, 1, 0]
    assert (m << e <= x).all() and (x - (m << e) < (1 << e)).all()  # truncation: error < 1 LSB


def test_recip16_exact_over_its_domain():
    m = np.arange(2**15, 2**16)
    r = gi.recip16(m)
    assert (r == (2**31 - 1) // m).all() and r.min() >= 2**15 and r.max() < 2**16


def test_rsqrt16_over_its_domain():
    m = np.arange(2**14, 2**16)
    y = gi.rsqrt16(m)
    reference = 2.0**22 / np.sqrt(m)
    assert (np.abs(y - reference) / reference).max() < 2**-13
    assert y.min() >= 2**14 - 1 and y.max() < 2**15
    assert gi.RSQRT_SEED.size == 768 and gi.RSQRT_SEED.max() < 2**16


def test_rsqrt_factor_on_wide_inputs():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.arange(1, 5000), rng.integers(1, 2**47, 100_000), [2**47 - 1, 2**47]]).astype(np.int64)
    m, e = gi.rsqrt_factor(x)
    assert m.min() >= 2**15 and m.max() < 2**16
    value = m * np.exp2(e.astype(np.float64))
    assert (np.abs(value * np.sqrt(x.astype(np.float64)) - 1)).max() < 2**-12


def test_factor_mul_and_factor():
    rng = np.random.default_rng(1)
    a, b = (gi.factor(rng.integers(1, 2**40, 10_000)) for _ in range(2))
    m, e = gi.factor_mul(a, b)
    real = lambda f: f[0] * np.exp2(f[1].astype(np.float64))  # noqa: E731
    assert m.min() >= 2**15 and m.max() < 2**16
    assert (np.abs(real((m, e)) / (real(a) * real(b)) - 1)).max() < 2**-13
    assert gi.factor(np.int64(0))[0] == 0


def test_exp2_over_its_domain():
    x = np.arange(0, gi.EXP_SAT + 1000)
    p = gi.exp2_neg(x)
    reference = np.where(x >= gi.EXP_SAT, 0, 2.0**15 * np.exp2(-x / 1024))
    assert np.abs(p - reference).max() < 1.5
    assert p[0] == 2**15 and gi.EXP2_TABLE.size == 1024 and gi.EXP2_TABLE.max() <= 2**16 - 1


def test_sine_and_cosine_over_every_table_index():
    index_starts = np.arange(4096, dtype=np.int64) << 20  # every phase index: its first and last phase
    phases = np.concatenate([index_starts, index_starts + (1 << 20) - 1,
                             np.random.default_rng(2).integers(0, 2**32, 2**16)])
    angle = 2 * np.pi * phases / 2.0**32
    assert np.abs(gi.sin_q14(phases) / 2**14 - np.sin(angle)).max() < 8e-4
    assert np.abs(gi.cos_q14(phases) / 2**14 - np.cos(angle)).max() < 8e-4
    assert gi.SINE_TABLE.size == 1024 and gi.SINE_TABLE.max() <= 2**14


def test_rope_phase_every_position_and_frequency_of_2b():
    d, theta, positions = 128, 500000.0, np.arange(4096)  # 4096 x 64 = 2^18 (position, frequency) pairs
    omega = gi.rope_omega(d, theta)
    phase = gi.rope_phase(positions, omega)
    exact = (positions[:, None].astype(object) * omega.astype(object)) % 2**32  # Python integers
    assert (phase.astype(object) == exact).all()
    angle = positions[:, None] * theta ** (-np.arange(0, d, 2) / d)
    error = np.angle(np.exp(1j * (2 * np.pi * phase / 2.0**32 - angle)))
    assert np.abs(error).max() < 1e-5


def test_sigmoid_over_its_domain():
    x = np.arange(-(2**15), 2**15)  # with exponent -10: |x| < 32, through both saturations
    s = gi.sigmoid_q15(x, np.full(x.shape, -10))
    reference = 2.0**15 / (1 + np.exp(-x / 1024.0))
    assert np.abs(s - reference).max() / 2**15 <= 2**-10 + 2**-16
    big = np.array([2**31 - 1, -(2**31)])  # huge values with large exponents saturate without overflow
    assert gi.sigmoid_q15(big, np.array([40, 40])).tolist() == [2**15, 0]


def test_quantize_int8_against_float_rounding():
    rng = np.random.default_rng(3)
    z = np.concatenate([rng.integers(-(2**31) + 1, 2**31, (200, 512)),
                        rng.integers(-300, 300, (200, 512)),
                        (rng.standard_normal((200, 512)) * 1e6).astype(np.int64)])
    q = gi.quantize_int8(z, "test")
    reference = np.round(127 * z / np.abs(z).max(-1, keepdims=True))
    assert np.abs(q - reference).max() <= 1 and (q == reference).mean() > 0.99
    edges = np.array([[2**31 - 1, -(2**31) + 1, 0], [0, 0, 0], [-5, -5, -5], [1, 0, 0]], dtype=np.int64)
    assert gi.quantize_int8(edges, "test").tolist() == [[127, -127, 0], [0, 0, 0], [-127, -127, -127], [127, 0, 0]]


def test_shifts_round_saturate_and_never_wrap():
    x = np.array([5, -5, 6, 7], dtype=np.int64)
    assert gi.shift_right(x, 1).tolist() == [2, -3, 3, 3]                  # floor
    assert gi.shift_right(x, 1, rounding=True).tolist() == [3, -2, 3, 4]   # half up
    assert gi.shift_right(x, -3).tolist() == [40, -40, 48, 56]            # exact left shift
    with pytest.raises(WidthError, match=r"here: value 5 << 61 leaves int64"):
        gi.shift_right(x, -61, stage="here")
    # long right shifts: numpy would take the count modulo 64 (2^30 >> 64 rounded gave -1)
    wide = np.array([2**30, -2**30, 2**62 - 1, -2**62 + 1, 1, -1, 0], dtype=np.int64)
    for s in (63, 64, 65, 100, 200):
        assert gi.shift_right(wide, s).tolist() == [0, -1, 0, -1, 0, -1, 0], s
        assert gi.shift_right(wide, s, rounding=True).tolist() == [0] * 7, s
    assert gi.shift_right(wide, 62, rounding=True).tolist() == [0, 0, 1, -1, 0, 0, 0]  # ±(2^62 - 1) / 2^62 rounds to ±1
    big = np.array([0, 1, 2**40, 2**62], dtype=np.int64)
    assert gi.scale_saturating(big, np.int64(100), gi.EXP_SAT).tolist() == [0, gi.EXP_SAT, gi.EXP_SAT, gi.EXP_SAT]
    assert gi.scale_saturating(big, np.int64(-40), gi.EXP_SAT).tolist() == [0, 0, 1, gi.EXP_SAT]
    assert gi.scale_saturating(np.int64(3), np.int64(2), 100) == 12


def test_fits_raises_with_stage_and_value():
    with pytest.raises(WidthError, match=r"somewhere: value 32768 outside int16"):
        gi.fits("somewhere", np.array([1, 32768]), 16)


# ----------------------------------------------------------------------------- widths at scale, adversarial

def test_2b_shaped_layer_runs_and_matches_golden(model_2b):
    im = convert(model_2b)
    ids = torch.arange(0, 8)[None]
    logits = im(ids)
    with torch.no_grad():
        reference = model_2b(ids)
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 7 / 8
    assert np.corrcoef(logits.numpy().ravel(), reference.numpy().ravel())[0, 1] > 0.99


def test_2b_shaped_adversarial_embeddings(model_2b):
    """Max-magnitude link inputs: all +32767, all -32768, alternating, one-hot, tiny."""
    im = convert(model_2b)
    n = B2B["hidden_size"]
    rows = [np.full(n, 2**15 - 1), np.full(n, -(2**15)), np.where(np.arange(n) % 2, 2**15 - 1, -(2**15)),
            np.eye(1, n, 7)[0] * (2**15 - 1), np.eye(1, n, 0)[0]]
    im.embedding = im.embedding.copy()
    im.embedding[:len(rows)] = np.array(rows, dtype=np.int64)
    y, e = im.hidden(np.arange(len(rows))[None].repeat(2, 0))
    assert np.abs(y).max() < 2**15 and np.isfinite(im(torch.arange(len(rows))[None]).numpy()).all()


def test_2b_shaped_extreme_products(model_2b, monkeypatch):
    """Every activation code -128 (beyond the quantizer's own range) against all -1 rows and all
    +1 rows: the largest accumulators (128 K) flow through every later stage without a width error."""
    im = convert(model_2b)
    for layer in im.layers:
        for key, t in layer.trits.items():
            layer.trits[key] = np.where(np.arange(t.shape[0])[:, None] % 2, -1, 1).astype(np.int8).repeat(t.shape[1], 1)
    monkeypatch.setattr(gi, "quantize_int8", lambda z, stage: np.full(z.shape, -128, dtype=np.int64))
    y, e = im.hidden(np.arange(6)[None])
    assert np.abs(y).max() < 2**15


def test_largest_accepted_norm_weight_runs():
    model = random_model(**SMALL)
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[3] = gi.MAX_NORM_GAIN
        model.model.layers[1].mlp.ffn_sub_norm.weight[:] = -gi.MAX_NORM_GAIN
        model.model.norm.weight[5] = gi.MAX_NORM_GAIN
    im = convert(model)
    assert im.layers[0].norms["input"].shift == 0 and im.layers[0].norms["input"].gain.max() == gi.MAX_NORM_GAIN
    im(torch.arange(20)[None])


@pytest.mark.parametrize("tensor, mutate, message", [
    ("model.layers.0.input_layernorm.weight", lambda m: m.model.layers[0].input_layernorm.weight.fill_(40000.0),
     "exceeds the contract's 32767"),
    ("model.layers.1.mlp.ffn_sub_norm.weight",
     lambda m: m.model.layers[1].mlp.ffn_sub_norm.weight.__setitem__(2, float("nan")), "finite"),
    ("model.norm.weight", lambda m: m.model.norm.weight.zero_(), "not all zero"),
    ("model.embed_tokens.weight", lambda m: m.model.embed_tokens.weight.__setitem__((0, 0), float("inf")), "finite"),
    ("model.layers.0.self_attn.k_proj.weight_scale",
     lambda m: m.model.layers[0].self_attn.k_proj._weight_scale.fill_(0.0), "finite and > 0"),
    ("model.layers.1.mlp.down_proj.weight_scale", lambda m: m.model.layers[1].mlp.down_proj._weight_scale.fill_(1e38),
     "outside int8"),
])
def test_conversion_refuses_out_of_contract_constants(tensor, mutate, message):
    model = random_model(**SMALL)
    with torch.no_grad():
        mutate(model)
    with pytest.raises(ConversionError, match=message) as info:
        convert(model)
    assert tensor in str(info.value)


def test_softmax_keeps_its_maximum_when_scores_are_huge():
    """q scaled by 2^60 (scores far beyond the exp2 range, a large left-shift exponent): every row
    still has its maximum weight 2^15, and the row sums stay >= 2^15."""
    im = convert(random_model(**SMALL))
    for layer in im.layers:
        m, e = layer.factors["q"]
        layer.factors["q"] = (m, e + 60)
    seen = []
    im.hidden(np.arange(12)[None], probe=lambda stage, i, m, e: seen.append((m, e)) if stage == "attn.probs" else None)
    for p, total in seen:
        assert (p.max(axis=-1) == 2**15).all() and (total >= 2**15).all()


def test_width_violation_names_the_stage():
    im = convert(random_model(**SMALL))
    im.layers[0].factors["o"] = (np.int64(2**16 - 1), np.int64(100))  # a factor no conversion would produce
    with pytest.raises(WidthError, match="o_proj"):
        im(torch.arange(5)[None])


# ----------------------------------------------------------------------------- determinism, generation, SiLU

@pytest.mark.parametrize("act, kv_bits", [("relu2", 16), ("silu", 16), ("relu2", 8)])
def test_prefill_then_decode_equals_token_by_token(act, kv_bits):
    """The device's output (int16 final hidden state and exponent) is bit-identical whichever way the
    positions are batched. (The host's float LM head may differ in the last ulp between shapes.)"""
    im = convert(random_model(**{**SMALL, "hidden_act": act}), kv_bits)
    ids = np.random.default_rng(4).integers(0, 300, (2, 20))
    N = 13
    cache = im.new_cache()
    steps = [im.hidden(ids[:, :N], cache=cache)]
    steps += [im.hidden(ids[:, t:t + 1], cache=cache) for t in range(N, ids.shape[1])]
    prefilled = [np.concatenate(parts, axis=1) for parts in zip(*steps)]
    single = im.new_cache()
    one_by_one = [np.concatenate(parts, axis=1) for parts in zip(*(im.hidden(ids[:, t:t + 1], cache=single)
                                                                   for t in range(ids.shape[1])))]
    whole = im.hidden(ids)
    for a, b, c in zip(prefilled, one_by_one, whole):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert len(cache) == len(single) == ids.shape[1]


def test_greedy_generation_is_deterministic_and_cache_free_equal():
    im = convert(random_model(**SMALL))
    prompt = [5, 17, 42, 99]
    first = golden.generate(im, prompt, 8, greedy=True)
    assert first == golden.generate(im, prompt, 8, greedy=True)
    assert first == golden.generate(im, prompt, 8, greedy=True, use_cache=False)


def test_silu_model_tracks_golden():
    model = random_model(**{**SMALL, "hidden_act": "silu"})
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        reference = model(ids)
    logits = convert(model)(ids)
    assert np.corrcoef(logits.numpy().ravel(), reference.numpy().ravel())[0, 1] > 0.999


# ----------------------------------------------------------------------------- the shipped model

@pytest.mark.parametrize("kv_bits", [16, 8])
def test_shipped_model_agrees_with_golden(kv_bits):
    torch.set_float32_matmul_precision("highest")
    model = golden.load_model(SHIPPED).eval()
    ids = torch.tensor([golden.load_tokenizer(SHIPPED).encode(GENESIS).ids])
    with torch.no_grad():
        reference = model(ids)
    im = convert(model, kv_bits)
    logits = im(ids)
    cache = im.new_cache()
    im(ids, cache=cache)
    keys = cache.layers[0][0]
    assert -(2 ** (kv_bits - 1)) <= keys.min() and keys.max() < 2 ** (kv_bits - 1)
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.95
    nll = lambda lg: torch.nn.functional.cross_entropy(lg[0, :-1], ids[0, 1:]).item()  # noqa: E731
    assert abs(math.exp(nll(logits) - nll(reference)) - 1) < 0.02
