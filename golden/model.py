"""BitNet b1.58 reference model in PyTorch (LLaMA-shaped, Hugging Face "bitnet" arithmetic).

Everything lives in this one file: the config dataclass, the two quantizers, BitLinear
with its integer seam, and the transformer (RMSNorm, RoPE, grouped-query attention with
SubLN, relu2 / SwiGLU MLP, KV cache).

Arithmetic contract (docs/architecture.md; matches transformers' BitNet bit for bit):

    weights      t = clamp(round(W * ws), -1, 1),  ws = 1 / mean|W|   (one scale per tensor)
    activations  s = 127 / max(|x|, 1e-5) per token,  q = clamp(round(x * s), -128, 127)
    product      acc[n, o] = sum_k q[n, k] * t[o, k]                    (exact int32)
    output       y = acc / (ws * s)                                       (float32 on the host)

Every float operation that feeds a quantizer is written in the same order as in
transformers, because a one-ulp difference before `round` can flip an int8 code.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("relu2", "silu")

# The integer seam: fn(name, trits [out, in] int8, q [N, in] int8) -> acc [N, out] int32.
IntMatmul = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class BitNetConfig:
    """Model shape; field names and defaults follow Hugging Face's config.json for model_type "bitnet"."""

    vocab_size: int = 128256
    hidden_size: int = 2560
    intermediate_size: int = 6912
    num_hidden_layers: int = 30
    num_attention_heads: int = 20
    num_key_value_heads: int = 5
    hidden_act: str = "relu2"
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 128000
    eos_token_id: int | list[int] | None = 128001
    initializer_range: float = 0.02  # std of the normal init used when training from scratch

    def __post_init__(self) -> None:
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (expected one of {ACTIVATIONS})")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)  # a hand-edited config.json may hold "256" or 256.0
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def eos_token_ids(self) -> set[int]:
        if self.eos_token_id is None:
            return set()
        return {self.eos_token_id} if isinstance(self.eos_token_id, int) else set(self.eos_token_id)


# ----------------------------------------------------------------------------- quantizers

def quantize_weights(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary quantization: (trits int8 [out, in], weight_scale float32 [1] = 1 / mean|W|)."""
    w = w.detach().float()
    scale = 1.0 / w.abs().mean().clamp(min=1e-5)
    trits = (w * scale).round().clamp(-1, 1).to(torch.int8)
    return trits, scale.reshape(1)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 quantization: (q int8 [..., in], s float32 [..., 1])."""
    # `127 / tensor` is reciprocal-then-multiply in torch, exactly as transformers computes it.
    s = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
    q = (x * s).round().clamp(-128, 127).to(torch.int8)
    return q, s


def default_int_matmul(name: str, trits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Exact acc = q @ trits.T on CPU. float32 is exact while every partial sum fits in 24 bits."""
    k = q.shape[1]
    if k * 128 <= 2**24 and torch.get_float32_matmul_precision() == "highest":
        return (q.float() @ trits.float().T).to(torch.int32)
    return (q.long() @ trits.long().T).to(torch.int32)  # |acc| <= k * 128 < 2**31 for any real k


@dataclass
class BitLinearRecord:
    """One BitLinear call as seen by `golden.trace`: the integer operands and result, and both scales."""

    name: str
    q: torch.Tensor  # int8 [N, in]
    trits: torch.Tensor  # int8 [out, in]
    acc: torch.Tensor  # int32 [N, out]
    act_scale: torch.Tensor  # float32 [N, 1]
    weight_scale: torch.Tensor  # float32 [1]


class BitLinear(nn.Module):
    """Linear layer with ternary weights and int8 activations, no bias.

    Two states:
    - latent (fresh module, for training): a float `weight` Parameter; in training mode the forward
      pass fake-quantizes weights and activations with a straight-through estimator;
    - frozen (after `load_ternary` / `freeze`, as `load_model` returns it): int8 `trits` and a
      float32 `weight_scale`, no float weight.
    Outside training mode both states run the exact integer path through `int_matmul`.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight: nn.Parameter | None = nn.Parameter(torch.empty(out_features, in_features))
        self.register_buffer("_trits", None)
        self.register_buffer("_weight_scale", None)
        self.name = ""  # qualified name, set by BitNetForCausalLM
        self.int_matmul: IntMatmul = default_int_matmul
        self.records: list[BitLinearRecord] | None = None  # set by golden.trace

    @property
    def trits(self) -> torch.Tensor:
        """Ternary weights, int8 [out_features, in_features] with values in {-1, 0, 1}."""
        return self._trits if self._trits is not None else quantize_weights(self.weight)[0]

    @property
    def weight_scale(self) -> torch.Tensor:
        """float32 [1]: ws = 1 / mean|W|; outputs are acc / (ws * s)."""
        return self._weight_scale if self._weight_scale is not None else quantize_weights(self.weight)[1]

    def load_ternary(self, trits: torch.Tensor, weight_scale: torch.Tensor) -> None:
        """Freeze to the given ternary weights; drops the latent float weight."""
        assert trits.shape == (self.out_features, self.in_features) and trits.dtype == torch.int8
        self.weight = None
        self._trits = trits
        self._weight_scale = weight_scale.detach().float().reshape(1)

    def freeze(self) -> None:
        if self.weight is not None:
            self.load_ternary(*quantize_weights(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.weight is not None:
            return self._forward_ste(x)
        trits, weight_scale = (self._trits, self._weight_scale) if self._trits is not None \
            else quantize_weights(self.weight)
        q, s = quantize_activations(x)
        q_flat = q.reshape(-1, self.in_features)
        acc = self.int_matmul(self.name, trits, q_flat)
        if acc.dtype != torch.int32 or acc.shape != (q_flat.shape[0], self.out_features):
            raise TypeError(f"{self.name}: int_matmul returned {acc.dtype} {tuple(acc.shape)}, "
                            f"expected torch.int32 {(q_flat.shape[0], self.out_features)}")
        if self.records is not None:
            self.records.append(BitLinearRecord(self.name, q_flat, trits, acc,
                                                s.reshape(-1, 1), weight_scale))
        acc = acc.reshape(*x.shape[:-1], self.out_features)
        return acc.float() / (weight_scale * s)

    def _forward_ste(self, x: torch.Tensor) -> torch.Tensor:
        """Quantization-aware training: forward sees quantized values, backward is the identity."""
        w = self.weight
        ws = 1.0 / w.abs().mean().clamp(min=1e-5)
        w_q = w + ((w * ws).round().clamp(-1, 1) / ws - w).detach()
        s = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
        x_q = x + ((x * s).round().clamp(-128, 127) / s - x).detach()
        return F.linear(x_q, w_q)

    def extra_repr(self) -> str:
        state = "latent" if self.weight is not None else "frozen"
        return f"in_features={self.in_features}, out_features={self.out_features}, {state}"


# ----------------------------------------------------------------------------- transformer

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class KVCache:
    """Keys and values of every layer, [B, kv_heads, T, head_dim], grown by concatenation."""

    def __init__(self, num_layers: int) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers

    def __len__(self) -> int:
        """Number of positions already cached."""
        return 0 if self.layers[0] is None else self.layers[0][0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layers[layer] is not None:
            k = torch.cat([self.layers[layer][0], k], dim=2)
            v = torch.cat([self.layers[layer][1], v], dim=2)
        self.layers[layer] = (k, v)
        return k, v


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [T, head_dim] (frequencies repeated for both halves, LLaMA "rotate_half" layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=positions.device) / head_dim))
    freqs = positions[:, None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, config: BitNetConfig, layer: int, linear: Callable[[int, int], nn.Module]) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = \
            config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.q_proj = linear(config.hidden_size, self.n_heads * self.head_dim)
        self.k_proj = linear(config.hidden_size, self.n_kv_heads * self.head_dim)
        self.v_proj = linear(config.hidden_size, self.n_kv_heads * self.head_dim)
        self.o_proj = linear(self.n_heads * self.head_dim, config.hidden_size)
        self.attn_sub_norm = RMSNorm(self.n_heads * self.head_dim, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # [B, KV, T, D]
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        # grouped-query attention: each kv head serves n_heads / n_kv_heads query heads
        groups = self.n_heads // self.n_kv_heads
        if groups > 1:
            k = k[:, :, None].expand(B, self.n_kv_heads, groups, *k.shape[2:]).reshape(B, self.n_heads, *k.shape[2:])
            v = v[:, :, None].expand(B, self.n_kv_heads, groups, *v.shape[2:]).reshape(B, self.n_heads, *v.shape[2:])
        scores = torch.matmul(q, k.transpose(2, 3)) * self.head_dim**-0.5  # [B, H, T, S]
        S = k.shape[2]
        if T > 1:  # causal: query i sits at position S - T + i and sees keys 0..S - T + i
            visible = torch.ones(T, S, dtype=torch.bool, device=scores.device).tril(diagonal=S - T)
            scores = scores.masked_fill(~visible, float("-inf"))
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).contiguous().reshape(B, T, -1)
        return self.o_proj(self.attn_sub_norm(out))


class MLP(nn.Module):
    def __init__(self, config: BitNetConfig, linear: Callable[[int, int], nn.Module]) -> None:
        super().__init__()
        self.gate_proj = linear(config.hidden_size, config.intermediate_size)
        self.up_proj = linear(config.hidden_size, config.intermediate_size)
        self.down_proj = linear(config.intermediate_size, config.hidden_size)
        self.ffn_sub_norm = RMSNorm(config.intermediate_size, config.rms_norm_eps)
        self.hidden_act = config.hidden_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        gate = F.relu(gate).square() if self.hidden_act == "relu2" else F.silu(gate)
        return self.down_proj(self.ffn_sub_norm(gate * self.up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: BitNetConfig, layer: int, linear: Callable[[int, int], nn.Module]) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer, linear)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config, linear)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """The `model.` prefix of Hugging Face's parameter names."""

    def __init__(self, config: BitNetConfig, linear: Callable[[int, int], nn.Module]) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i, linear) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class BitNetForCausalLM(nn.Module):
    """BitNet b1.58 causal LM. Module names equal the Hugging Face checkpoint's tensor names.

    `quantized=False` builds the same network with plain nn.Linear (the float baseline for QAT).
    The LM head and embeddings are float in both cases, as in BitNet.
    """

    def __init__(self, config: BitNetConfig, quantized: bool = True) -> None:
        super().__init__()
        self.config = config
        self.quantized = quantized
        linear = BitLinear if quantized else (lambda i, o: nn.Linear(i, o, bias=False))
        self.model = Backbone(config, linear)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        for name, module in self.named_modules():
            if isinstance(module, BitLinear):
                module.name = name

    def reset_parameters(self) -> None:
        """Random init for training from scratch: N(0, initializer_range) matrices, unit norms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, BitLinear)) and module.weight is not None:
                nn.init.normal_(module.weight, std=self.config.initializer_range)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, vocab] (float32). With `cache`, continues after its positions
        and appends this call's keys and values to it."""
        B, T = input_ids.shape
        start = len(cache) if cache is not None else 0
        positions = torch.arange(start, start + T, device=input_ids.device)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, cache)
        return self.lm_head(self.model.norm(x))

    def new_cache(self) -> KVCache:
        return KVCache(self.config.num_hidden_layers)

    def bitlinear_layers(self) -> Iterator[tuple[str, BitLinear]]:
        """(qualified name, module) of every BitLinear, in execution order within each layer."""
        for name, module in self.named_modules():
            if isinstance(module, BitLinear):
                yield name, module

    def set_int_matmul(self, fn: IntMatmul | None) -> None:
        """Route every BitLinear's integer product through `fn` (None restores `default_int_matmul`)."""
        for _, module in self.bitlinear_layers():
            module.int_matmul = fn or default_int_matmul

    def freeze(self) -> None:
        """Quantize every latent BitLinear weight to trits + weight_scale for good (inference form)."""
        for _, module in self.bitlinear_layers():
            module.freeze()

    def float_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(qualified name, parameter) of the float parameters: embeddings, norms, an untied head; not
        the BitLinear weights (latent while training). A tied head appears once, as the embedding."""
        latent = {id(m.weight) for _, m in self.bitlinear_layers()}
        return ((name, p) for name, p in self.named_parameters() if id(p) not in latent)

    def num_parameters(self) -> dict[Literal["ternary", "float"], int]:
        """Ternary weights, and float parameters (embeddings, norms, untied head, one scale per BitLinear)."""
        layers = [m for _, m in self.bitlinear_layers()]
        floats = sum(p.numel() for _, p in self.float_parameters())
        return {"ternary": sum(m.in_features * m.out_features for m in layers), "float": floats + len(layers)}
