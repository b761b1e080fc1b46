"""Integer-only BitNet b1.58 decoder: the executable definition of docs/arithmetic.md.

Two parts:
- `convert(model)`: the one-off float -> integer conversion of a checkpoint into what the device is
  loaded with (ternary matrices, int16 norm gains with a per-tensor shift, one 16-bit factor per
  BitLinear, RoPE frequencies and the small tables). It refuses constants outside the contract,
  naming the tensor. Float is used here and nowhere after.
- `IntegerModel`: a numpy reference of every decoder step in integers (prefill vectorised over
  tokens, decode through an integer KV cache). Every intermediate is checked against its declared
  width; leaving it raises `WidthError` naming the stage and the value; nothing ever wraps.
  Only the host's side of the link is float: the LM head applied to the int16 final hidden state.

    im = IntegerModel.load("models/bitnet-kjv-h256")
    logits = im(ids)                       # torch [B, T] -> torch float32 [B, T, vocab], like golden
    cache = im.new_cache(); im(ids, cache=cache)
    golden.generate(im, prompt_ids, 32, greedy=True)

Representation: vectors that feed multipliers are int16 *mantissas* sharing one exponent per vector
(block floating point: value = m * 2^e); per-vector factors are unsigned 16-bit mantissas in
[2^15, 2^16) with an exponent ("UF" values). Every multiply is 16 x 16 bits (one iCE40 MAC16, one
ECP5 MULT18X18D) except the RoPE phase (two) and the ternary product (none).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .model import BitNetConfig, BitNetForCausalLM
from bitlane.contract.intmath import (  # the primitives, defined once for the gateware's models too
    MANT_BITS, EXP_BITS, RES_BITS, ACC_BITS, WIDE_BITS, Q_MAX, Q_SHIFT, RECIP_SHIFT, RECIP_NUM,
    RSQRT_SEED_BITS, RSQRT_FRAC, EXP_FRAC, PROB_BITS, EXP_SAT, PHASE_BITS, SINE_INDEX_BITS, TRIG_FRAC,
    SIG_FRAC, SIG_RANGE_BITS, MAX_POSITIONS, FACTOR_ONE, EPS_LIMIT, MAX_NORM_GAIN, WidthError, fits,
    bit_length, shift_right, normalize, factor, factor_mul, recip16, rsqrt_seed_table, RSQRT_SEED, rsqrt16,
    rsqrt_factor, exp2_table, EXP2_TABLE, exp2_neg, sine_table, SINE_TABLE, sin_q14, cos_q14, rope_phase,
    rope_omega, sigmoid_table, SIGMOID_TABLE, scale_saturating, sigmoid_q15,
)


class ConversionError(ValueError):
    """A checkpoint constant falls outside the contract: the message names the tensor."""


def quantize_int8(z: np.ndarray, stage: str) -> np.ndarray:
    """Per-vector absmax int8: q = round(127 z / max|z|) in integers. M = max|z| -> UF (Mu, eM);
    c = 127 * recip16(Mu) >> 7 (16 bits; 127 x is a shift and a subtract); zq = z >> (eM + 1) (int16);
    q = clamp((zq * c + 2^22) >> 23, -128, 127): one 16 x 16 multiply per element. All-zero -> 0."""
    M = np.abs(z).max(axis=-1, keepdims=True)
    Mu, eM = factor(M)
    # c ~ 127 2^(Q_SHIFT + 1) / Mu: the extra bit pays for zq's extra halving (z >> (eM + 1))
    c = (Q_MAX * recip16(np.maximum(Mu, FACTOR_ONE))) >> (RECIP_SHIFT - Q_SHIFT - 1)
    c = fits(f"{stage} quant factor", c, MANT_BITS, signed=False)
    zq = fits(f"{stage} quant input", shift_right(z, eM + 1), MANT_BITS)
    q = (fits(f"{stage} quant product", zq * c, 2 * MANT_BITS) + (1 << (Q_SHIFT - 1))) >> Q_SHIFT
    return np.where(M == 0, 0, np.clip(q, -Q_MAX - 1, Q_MAX))


def sum_squares(x: np.ndarray, scale: tuple[np.ndarray, np.ndarray], eps: tuple[np.ndarray, np.ndarray],
                stage: str) -> tuple[np.ndarray, np.ndarray]:
    """RMSNorm's statistics of an integer vector x whose real value is x * scale (UF, per vector):
    x16 = normalize(x) and ss = sum(x16^2) + n eps / (scale 2^s)^2, the last term (eps = UF n eps)
    by one reciprocal and two factor products per vector, saturating at EPS_LIMIT."""
    x16, s = normalize(x)
    inverse = (recip16(np.maximum(scale[0], FACTOR_ONE)), -RECIP_SHIFT - scale[1])
    term = factor_mul(factor_mul(eps, inverse), inverse)
    ss = (x16 * x16).sum(axis=-1, keepdims=True) + scale_saturating(term[0], term[1] - 2 * s, EPS_LIMIT)
    return x16, fits(f"{stage} sum of squares", ss, WIDE_BITS)


def norm_quant(x: np.ndarray, gain: np.ndarray, scale: tuple[np.ndarray, np.ndarray],
               eps: tuple[np.ndarray, np.ndarray], stage: str) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """RMSNorm (gain folded) followed by absmax int8 quantization. Both are scale invariant, so x's scale
    only enters through eps. Returns q int8 and the UF factor max|z| / sqrt(ss) with z = x16 * gain;
    the real max|RMSNorm(x)| is this times sqrt(n) 2^-shift."""
    x16, ss = sum_squares(x, scale, eps, stage)
    z = fits(f"{stage} gain product", x16 * gain, 2 * MANT_BITS)
    q = quantize_int8(z, stage)
    ratio = factor_mul(factor(np.abs(z).max(axis=-1, keepdims=True)), rsqrt_factor(np.maximum(ss, 1)))
    return q, ratio


def int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer a @ b. BLAS in float32 / float64 is exact while every partial sum is an integer of
    magnitude below 2^24 / 2^53 (checked from the operands' bounds here); else int64. The device does
    this in integer adders; the float here is a CPU speed-up with an identical result, not arithmetic."""
    k = a.shape[-1]
    bound = max(-int(a.min(initial=0)), int(a.max(initial=0))) * max(-int(b.min(initial=0)), int(b.max(initial=0))) * k
    if bound < 1 << 24:
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.int64)
    if bound < 1 << 53:
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return np.matmul(a.astype(np.int64), b.astype(np.int64))


def ternary_product(q: np.ndarray, trits: np.ndarray, stage: str) -> np.ndarray:
    """acc = q @ trits.T, exact (int8 x {-1, 0, 1}, |acc| <= 128 K), checked against ACC_BITS."""
    return fits(f"{stage} accumulator", int_matmul(q, trits.T), ACC_BITS)


# ----------------------------------------------------------------------------- conversion (float, once)

@dataclass(frozen=True)
class IntConfig:
    """Shape and per-model formats of an integer model: what the device is configured with."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    act: str              # "relu2" or "silu"
    max_positions: int
    emb_frac: int         # embedding rows cross the link as int16 with emb_frac fraction bits
    res_frac: int         # residual stream fraction bits, from the worst-case bound (see convert)
    kv_bits: int = MANT_BITS  # K/V cache mantissa width (8 halves the cache; docs/arithmetic.md measures it)


@dataclass
class Norm:
    """A folded RMSNorm gain: int16 gain with `shift` fraction bits (real gain = gain * 2^-shift)."""

    gain: np.ndarray
    shift: int


@dataclass
class IntLayer:
    """One decoder layer's constants."""

    trits: dict[str, np.ndarray]                   # "q", "k", "v", "o", "gate", "up", "down": int8 [out, in]
    norms: dict[str, Norm]                         # "input", "attn_sub", "post_attn", "ffn_sub"
    factors: dict[str, tuple[np.ndarray, np.ndarray]]  # UF constant per product whose scale matters


def _factor_constant(value: float, tensor: str) -> tuple[np.ndarray, np.ndarray]:
    """A positive real constant as a UF factor (16-bit mantissa, exponent within EXP_BITS)."""
    if not math.isfinite(value) or value <= 0:
        raise ConversionError(f"{tensor}: constant {value!r} must be finite and > 0")
    e = math.floor(math.log2(value)) - (MANT_BITS - 1)
    m = round(value / 2.0 ** e)
    if m == 1 << MANT_BITS:
        m, e = m >> 1, e + 1
    if not -(1 << (EXP_BITS - 1)) <= e < 1 << (EXP_BITS - 1):
        raise ConversionError(f"{tensor}: constant {value:g} needs exponent {e}, outside int{EXP_BITS}")
    return np.int64(m), np.int64(e)


def _to_int16(w: np.ndarray, tensor: str) -> tuple[np.ndarray, int]:
    """round(w 2^shift) as int16 with the shift that puts max|.| in [2^14, 2^15); w finite, not all 0."""
    big = float(np.abs(w).max(initial=0.0))
    if not np.isfinite(w).all() or big == 0:
        raise ConversionError(f"{tensor}: must be finite and not all zero")
    shift = MANT_BITS - 2 - math.floor(math.log2(big))
    values = np.round(w * 2.0 ** shift).astype(np.int64)
    if np.abs(values).max() >= 1 << (MANT_BITS - 1):  # a maximum just below a power of two rounds up to it
        shift -= 1
        values = np.round(w * 2.0 ** shift).astype(np.int64)
    return fits(tensor, values, MANT_BITS), shift


def _fold_norm(weight: torch.Tensor, tensor: str) -> Norm:
    """RMSNorm weight -> int16 gain and its shift; refuses max|w| above MAX_NORM_GAIN (shift < 0)."""
    w = weight.detach().double().numpy()
    if np.isfinite(w).all() and np.abs(w).max(initial=0.0) > MAX_NORM_GAIN:
        raise ConversionError(f"{tensor}: max |weight| = {np.abs(w).max():g} exceeds the contract's {MAX_NORM_GAIN}")
    return Norm(*_to_int16(w, tensor))


def _weight_scale(module, tensor: str) -> float:
    ws = float(module.weight_scale.reshape(-1)[0])
    if not math.isfinite(ws) or ws <= 0:
        raise ConversionError(f"{tensor}.weight_scale: {ws!r} must be finite and > 0")
    return ws


def _output_bound(norm_max: float, n: int, ws: float) -> float:
    """Largest |real output| of a BitLinear fed by an RMSNorm of n values, for any input: |acc| <= 128 n,
    and max|y| <= max|gain| sqrt(n) (one element cannot exceed sqrt(n) times the rms)."""
    return 128 * n * norm_max * math.sqrt(n) / (Q_MAX * ws)


def convert(model: BitNetForCausalLM, kv_bits: int = MANT_BITS) -> "IntegerModel":
    """The one-off conversion of a (frozen or latent) golden model into the integer model's constants;
    `kv_bits` (8..16) is the width of the K/V cache mantissas."""
    c: BitNetConfig = model.config
    if not 8 <= kv_bits <= MANT_BITS:
        raise ConversionError(f"kv_bits {kv_bits}: the K/V cache mantissas must be 8 to {MANT_BITS} bits")
    if c.max_position_embeddings > MAX_POSITIONS:
        raise ConversionError(f"config.max_position_embeddings {c.max_position_embeddings} > {MAX_POSITIONS}")
    emb = model.model.embed_tokens.weight.detach().double().numpy()
    emb_int, emb_frac = _to_int16(emb, "model.embed_tokens.weight")
    # scores are in log2 units so that softmax needs exp2: fold log2(e) / sqrt(d) into q's factor
    q_extra = math.log2(math.e) / math.sqrt(c.head_dim)
    layers = []
    bound = float(np.abs(emb).max())
    for i, block in enumerate(model.model.layers):
        prefix = f"model.layers.{i}"
        attn, mlp = block.self_attn, block.mlp
        modules = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj, "o": attn.o_proj,
                   "gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj}
        names = {key: f"{prefix}.{'self_attn' if key in 'qkvo' else 'mlp'}.{key}_proj" for key in modules}
        norms = {"input": _fold_norm(block.input_layernorm.weight, f"{prefix}.input_layernorm.weight"),
                 "attn_sub": _fold_norm(attn.attn_sub_norm.weight, f"{prefix}.self_attn.attn_sub_norm.weight"),
                 "post_attn": _fold_norm(block.post_attention_layernorm.weight,
                                         f"{prefix}.post_attention_layernorm.weight"),
                 "ffn_sub": _fold_norm(mlp.ffn_sub_norm.weight, f"{prefix}.mlp.ffn_sub_norm.weight")}
        # real output of a BitLinear = acc * max|y| / (127 ws), max|y| = ratio * sqrt(n) * 2^-shift
        site = {"q": ("input", c.hidden_size, q_extra), "k": ("input", c.hidden_size, 1.0),
                "v": ("input", c.hidden_size, 1.0), "o": ("attn_sub", c.hidden_size, 1.0),
                "gate": ("post_attn", c.hidden_size, 1.0), "up": ("post_attn", c.hidden_size, 1.0),
                "down": ("ffn_sub", c.intermediate_size, 1.0)}
        factors = {key: _factor_constant(math.sqrt(n) * 2.0 ** -norms[norm].shift * extra
                                         / (Q_MAX * _weight_scale(modules[key], names[key])),
                                         f"{names[key]}.weight_scale")
                   for key, (norm, n, extra) in site.items()}
        trits = {key: m.trits.numpy() for key, m in modules.items()}  # int8
        for key, t in trits.items():
            if t.size and (t.min() < -1 or t.max() > 1):
                raise ConversionError(f"{names[key]}.weight: not ternary")
        layers.append(IntLayer(trits, norms, factors))
        bound += sum(_output_bound(float(weight.detach().abs().max()), n, _weight_scale(modules[key], names[key]))
                     for key, weight, n in (("o", attn.attn_sub_norm.weight, c.hidden_size),
                                            ("down", mlp.ffn_sub_norm.weight, c.intermediate_size)))
    # the residual is |embedding| + every block output: choose its format so that it can never overflow
    res_frac = RES_BITS - 2 - math.ceil(math.log2(bound))  # one bit of margin for rounding
    config = IntConfig(c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads,
                       c.head_dim, c.num_hidden_layers, c.hidden_act, c.max_position_embeddings, emb_frac, res_frac,
                       kv_bits)
    for name, value in (("embedding fraction bits", emb_frac), ("residual fraction bits", res_frac)):
        if not -(1 << (EXP_BITS - 1)) <= value < 1 << (EXP_BITS - 1):
            raise ConversionError(f"model.embed_tokens.weight: {name} {value} outside int{EXP_BITS}")
    final = _fold_norm(model.model.norm.weight, "model.norm.weight")
    final_factor = _factor_constant(math.sqrt(c.hidden_size) * 2.0 ** -final.shift, "model.norm.weight")
    eps = {n: _factor_constant(n * c.rms_norm_eps, "config.rms_norm_eps") for n in (c.hidden_size, c.intermediate_size)}
    head = model.lm_head.weight.detach().float().numpy()
    return IntegerModel(c, config, layers, final, final_factor, eps, emb_int, rope_omega(c.head_dim, c.rope_theta),
                        head)


# ----------------------------------------------------------------------------- the integer decoder

class IntKVCache:
    """Per layer: K and V mantissas int16 [B, kv_heads, S, head_dim] and their exponents [B, kv_heads, S]."""

    def __init__(self, num_layers: int) -> None:
        self.layers: list[tuple[np.ndarray, ...] | None] = [None] * num_layers

    def __len__(self) -> int:
        return 0 if self.layers[0] is None else self.layers[0][0].shape[2]

    def update(self, layer: int, *entries: np.ndarray) -> tuple[np.ndarray, ...]:
        if self.layers[layer] is not None:
            entries = tuple(np.concatenate([old, new], axis=2) for old, new in zip(self.layers[layer], entries))
        self.layers[layer] = entries
        return entries


# probe(stage, layer, mantissa, exponent): value = mantissa * 2^exponent (exponent None: int8 codes)
Probe = Callable[[str, int, np.ndarray, "np.ndarray | int | None"], None]


class IntegerModel:
    """The integer reference. Call it like golden's model: model(ids [B, T], cache=None) -> logits.

    `probe(stage, layer, mantissa, exponent)`, if given, sees each stage's integer output
    (value = mantissa * 2^exponent; exponent None for int8 codes) for the error table of docs/arithmetic.md.
    """

    def __init__(self, config: BitNetConfig, int_config: IntConfig, layers: list[IntLayer], final: Norm,
                 final_factor: tuple[np.ndarray, np.ndarray], eps: dict[int, tuple[np.ndarray, np.ndarray]],
                 embedding: np.ndarray, omega: np.ndarray, head: np.ndarray) -> None:
        self.config, self.int_config = config, int_config
        self.layers, self.final, self.final_factor = layers, final, final_factor
        self.eps = eps              # UF n * eps for n = hidden and intermediate
        # the residual's real value is h * 2^-res_frac: as a UF scale, mantissa 2^15
        self.res_scale = (np.int64(FACTOR_ONE), np.int64(-int_config.res_frac - (MANT_BITS - 1)))
        self.embedding = embedding  # int16 [vocab, hidden], host side: rows cross the link
        self.omega = omega          # uint32 [head_dim / 2]
        self.head = head            # float32 [vocab, hidden], host side LM head

    @classmethod
    def load(cls, path: str, kv_bits: int = MANT_BITS) -> "IntegerModel":
        from .checkpoint import load_model
        return convert(load_model(path), kv_bits)

    def new_cache(self) -> IntKVCache:
        return IntKVCache(self.int_config.layers)

    def __call__(self, input_ids, cache: IntKVCache | None = None, probe: Probe | None = None) -> torch.Tensor:
        ids = np.asarray(input_ids.cpu() if isinstance(input_ids, torch.Tensor) else input_ids, dtype=np.int64)
        y, e = self.hidden(ids, cache, probe)
        logits = self.lm_head(y, e)
        if probe is not None:
            probe("logits", -1, logits, None)
        return torch.from_numpy(logits)

    def lm_head(self, y: np.ndarray, e: np.ndarray) -> np.ndarray:
        """Host side: the LM head in float on final hidden states y int16 [..., hidden] * 2^e ([..., 1])."""
        x = y.astype(np.float32) * np.exp2(e).astype(np.float32)
        # as one 2-D product: numpy's stacked [..., T, hidden] @ [hidden, vocab] leaves BLAS (100x slower)
        return (x.reshape(-1, x.shape[-1]) @ self.head.T).reshape(*x.shape[:-1], -1)

    def hidden(self, ids: np.ndarray, cache: IntKVCache | None = None,
               probe: Probe | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Device side: ids [B, T] -> final hidden state as int16 mantissas [B, T, hidden] and one exponent
        per token [B, T, 1]. With `cache`, continues after its positions and appends to it."""
        cfg = self.int_config
        B, T = ids.shape
        start = len(cache) if cache is not None else 0
        if start + T > cfg.max_positions:
            raise ValueError(f"positions {start}..{start + T - 1} exceed the model's {cfg.max_positions}")
        positions = np.arange(start, start + T, dtype=np.int64)
        phase = rope_phase(positions, self.omega)               # [T, d/2], shared by every layer and head
        cos, sin = cos_q14(phase), sin_q14(phase)
        e = fits("embedding", self.embedding[ids], MANT_BITS)  # link in: an int16 row
        h = fits("embedding residual", shift_right(e, cfg.emb_frac - cfg.res_frac, rounding=True), RES_BITS)
        for i, layer in enumerate(self.layers):
            h = self._attention(i, layer, h, cos, sin, positions, cache, probe)
            h = self._mlp(i, layer, h, probe)
        x16, ss = sum_squares(h, self.res_scale, self.eps[cfg.hidden], "final norm")
        z = fits("final gain product", x16 * self.final.gain, 2 * MANT_BITS)
        f = factor_mul(rsqrt_factor(np.maximum(ss, 1)), self.final_factor)
        y, e = self._scale(z, f, "final norm")
        fits("final exponent", e, EXP_BITS)
        if probe is not None:
            probe("final", -1, y, e)
        return y, e  # link out: int16 row and an int8 exponent

    def _scale(self, x: np.ndarray, f: tuple[np.ndarray, np.ndarray], stage: str,
               e_in: np.ndarray | int = 0, bits: int = MANT_BITS) -> tuple[np.ndarray, np.ndarray]:
        """x 2^e_in * f as a block-floating vector of `bits`-wide mantissas: normalize x, one 16 x 16
        multiply per element, normalize; returns (mantissas, exponent per vector)."""
        xm, ex = normalize(x)
        p = fits(f"{stage} scale product", xm * f[0], 2 * MANT_BITS)
        pm, ep = normalize(p, bits)
        return pm, e_in + ex + ep + f[1]

    def _residual_add(self, h: np.ndarray, acc: np.ndarray, f, stage: str) -> np.ndarray:
        """h + acc * f in the residual's fixed point (round half up)."""
        xm, ex = normalize(acc)
        p = fits(f"{stage} scale product", xm * f[0], 2 * MANT_BITS)
        delta = shift_right(p, -(ex + f[1] + self.int_config.res_frac), rounding=True, stage=f"{stage} delta")
        return fits(f"{stage} residual", h + fits(f"{stage} delta", delta, RES_BITS), RES_BITS)

    def _attention(self, i: int, layer: IntLayer, h, cos, sin, positions, cache, probe) -> np.ndarray:
        cfg = self.int_config
        B, T, _ = h.shape
        d, H, KV = cfg.head_dim, cfg.heads, cfg.kv_heads
        q8, ratio = norm_quant(h, layer.norms["input"].gain, self.res_scale, self.eps[cfg.hidden], "attn input norm")
        if probe is not None:
            probe("attn.q8", i, q8, None)
        heads = {}
        for key, n_heads in (("q", H), ("k", KV), ("v", KV)):
            acc = ternary_product(q8.reshape(B * T, -1), layer.trits[key], f"{key}_proj").reshape(B, T, n_heads, d)
            f = factor_mul((ratio[0][..., None], ratio[1][..., None]), layer.factors[key])  # per token
            e_in = 0
            if key != "v":
                acc, e_in = self._rope(acc, cos, sin, key)
            m, e = self._scale(acc, f, key, e_in, MANT_BITS if key == "q" else cfg.kv_bits)  # [B, T, heads, d]
            heads[key] = (m.transpose(0, 2, 1, 3), fits(f"{key} exponent", e[..., 0], EXP_BITS).transpose(0, 2, 1))
            if probe is not None:
                probe(f"attn.{key}", i, heads[key][0], heads[key][1][..., None])
        (qm, eq), (km, ek), (vm, ev) = heads["q"], heads["k"], heads["v"]
        if cache is not None:
            km, ek, vm, ev = cache.update(i, km, ek, vm, ev)
        S = km.shape[2]
        groups = H // KV
        km, ek, vm, ev = (np.repeat(a, groups, axis=1) for a in (km, ek, vm, ev))   # [B, H, S, ...]
        visible = np.arange(S)[None, :] <= positions[:, None]                      # [T, S] causal
        # exponents are aligned to the running max over positions 0..p, so prefill equals decode
        ek_max = np.maximum.accumulate(ek, axis=-1)[..., positions]                # [B, H, T]
        ev_max = np.maximum.accumulate(ev, axis=-1)[..., positions]
        dot = fits("score dot product", int_matmul(qm, km.transpose(0, 1, 3, 2)), WIDE_BITS)  # [B, H, T, S]
        k_shift = np.where(visible, ek_max[..., None] - ek[:, :, None, :], 0)
        t = np.where(visible, dot >> k_shift, np.iinfo(np.int64).min)
        t_max = t.max(axis=-1, keepdims=True)
        x = np.where(visible, t_max - np.where(visible, t, 0), 0)
        fits("score difference", x, WIDE_BITS)
        # x is in units of 2^(eq + ek_max) log2 units; bring it to EXP_FRAC fraction bits, saturating
        xs = scale_saturating(x, (eq + ek_max + EXP_FRAC)[..., None], EXP_SAT)
        p = np.where(visible, exp2_neg(xs), 0)                                     # uint16, max term 2^15
        total = fits("softmax sum", p.sum(axis=-1, keepdims=True), ACC_BITS, signed=False)
        if probe is not None:
            probe("attn.probs", i, p, total)
        p_aligned = p >> np.where(visible, ev_max[..., None] - ev[:, :, None, :], 0)
        acc = fits("weighted V sum", int_matmul(p_aligned, vm), WIDE_BITS)          # [B, H, T, d]
        am, ea = normalize(acc)
        sm, es = factor(total)
        u = fits("attention output", (am * recip16(sm)) >> MANT_BITS, MANT_BITS)   # acc / total, int16
        eu = ea + ev_max[..., None] - es - (RECIP_SHIFT - MANT_BITS)
        if probe is not None:
            probe("attn.out", i, u, eu)
        eu_max = eu.max(axis=1, keepdims=True)
        u_aligned = u >> (eu_max - eu)                                              # heads share one exponent
        x_sub = u_aligned.transpose(0, 2, 1, 3).reshape(B, T, H * d)
        sub_scale = (np.int64(FACTOR_ONE), eu_max[:, 0] - (MANT_BITS - 1))          # [B, T, 1]
        o8, ratio_o = norm_quant(x_sub, layer.norms["attn_sub"].gain, sub_scale, self.eps[cfg.hidden], "attn_sub_norm")
        if probe is not None:
            probe("o.q8", i, o8, None)
        acc_o = ternary_product(o8.reshape(B * T, -1), layer.trits["o"], "o_proj").reshape(B, T, -1)
        h = self._residual_add(h, acc_o, factor_mul(ratio_o, layer.factors["o"]), "o_proj")
        if probe is not None:
            probe("resid.attn", i, h, -cfg.res_frac)
        return h

    def _rope(self, acc: np.ndarray, cos: np.ndarray, sin: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Rotate a head's int16 mantissas by Q14 cos/sin ("rotate_half" layout): two 16 x 16 multiplies
        and an add per output; returns the int32 result and its exponent (normalize shift - 14)."""
        am, e = normalize(acc)
        half = am.shape[-1] // 2
        a1, a2 = am[..., :half], am[..., half:]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        out = np.concatenate([a1 * c - a2 * s, a2 * c + a1 * s], axis=-1)
        return fits(f"{key} rope", out, ACC_BITS), e - TRIG_FRAC

    def _mlp(self, i: int, layer: IntLayer, h: np.ndarray, probe) -> np.ndarray:
        cfg = self.int_config
        B, T, _ = h.shape
        q8, ratio = norm_quant(h, layer.norms["post_attn"].gain, self.res_scale, self.eps[cfg.hidden], "mlp input norm")
        if probe is not None:
            probe("mlp.q8", i, q8, None)
        acc_g = ternary_product(q8.reshape(B * T, -1), layer.trits["gate"], "gate_proj").reshape(B, T, -1)
        acc_u = ternary_product(q8.reshape(B * T, -1), layer.trits["up"], "up_proj").reshape(B, T, -1)
        # real gate and up = acc * f; their scales cancel in ffn_sub_norm except through eps, so only
        # the scale of gate x up is tracked (as a UF per token)
        f_gate, f_up = (factor_mul(ratio, layer.factors[key]) for key in ("gate", "up"))
        gm, s_gate = normalize(acc_g)
        um, s_up = normalize(acc_u)
        if cfg.act == "relu2":  # relu2(gm 2^s f) = gm^2 2^2s f^2
            g, s_sq = normalize(fits("relu2", np.maximum(gm, 0) ** 2, 2 * MANT_BITS))
            g_scale = factor_mul(f_gate, f_gate)
            g_exp = s_sq + 2 * s_gate
        else:  # silu(x) = x sigmoid(x), with x = gm 2^s f the gate's real value
            x = fits("gate scale product", gm * f_gate[0], 2 * MANT_BITS)
            sig = sigmoid_q15(x, s_gate + f_gate[1])
            x16, s_x = normalize(x)
            g, s_g = normalize(fits("silu", x16 * sig, 2 * MANT_BITS))
            g_scale = (np.int64(FACTOR_ONE), s_g + s_x + s_gate + f_gate[1] - PROB_BITS - (MANT_BITS - 1))
            g_exp = 0
        act = fits("gate x up", g * um, 2 * MANT_BITS)
        act_scale = factor_mul(g_scale, f_up)
        act_scale = (act_scale[0], act_scale[1] + g_exp + s_up)
        if probe is not None:
            probe("mlp.act", i, act, 0)
        d8, ratio_d = norm_quant(act, layer.norms["ffn_sub"].gain, act_scale, self.eps[cfg.intermediate],
                                 "ffn_sub_norm")
        if probe is not None:
            probe("down.q8", i, d8, None)
        acc_d = ternary_product(d8.reshape(B * T, -1), layer.trits["down"], "down_proj").reshape(B, T, -1)
        h = self._residual_add(h, acc_d, factor_mul(ratio_d, layer.factors["down"]), "down_proj")
        if probe is not None:
            probe("resid.mlp", i, h, -cfg.res_frac)
        return h
