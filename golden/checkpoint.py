"""Checkpoint I/O in the Hugging Face "bitnet" folder format.

A folder holds `config.json`, the weights as `model.safetensors` (or shards listed in
`model.safetensors.index.json`) and optionally `tokenizer.json`.

Each BitLinear weight is stored either
- packed (what `save_model` writes, `linear_class` "bitlinear"): `<name>.weight` uint8
  [out/4, in] holding four 2-bit codes per byte, code = trit + 1; row `i * out/4 + r` of the
  ternary matrix sits in bits 2i..2i+1 of packed row r; plus `<name>.weight_scale` float [1]
  (ws = 1 / mean|W|, outputs are acc / (ws * s)); or
- unpacked: `<name>.weight` float [out, in] latent weights, quantized (absmean) on load.
Embeddings, norms and an untied `lm_head.weight` are float; they are loaded as float32.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .model import BitLinear, BitNetConfig, BitNetForCausalLM, quantize_weights

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
TRITS_PER_BYTE = 4
NULLABLE_TOKEN_IDS = ("bos_token_id", "eos_token_id")


class CheckpointError(Exception):
    """A checkpoint folder that cannot be read: the message names the file, the tensor and what was expected."""


# ----------------------------------------------------------------------------- packing

def pack_trits(trits: torch.Tensor) -> torch.Tensor:
    """int8 trits [out, in] (out divisible by 4) -> uint8 [out/4, in], code = trit + 1, blocked along out."""
    out_features, in_features = trits.shape
    if out_features % TRITS_PER_BYTE:
        raise ValueError(f"packed format needs out_features divisible by 4, got {out_features}")
    codes = (trits.to(torch.int16) + 1).to(torch.uint8).reshape(TRITS_PER_BYTE, -1, in_features)
    return codes[0] | (codes[1] << 2) | (codes[2] << 4) | (codes[3] << 6)


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [out/4, in] -> 2-bit codes uint8 [out, in] (0, 1, 2 valid; 3 is not a trit)."""
    return torch.cat([(packed >> (2 * i)) & 3 for i in range(TRITS_PER_BYTE)], dim=0)


# ----------------------------------------------------------------------------- config

def config_from_dict(raw: dict, source: str = CONFIG_FILE) -> BitNetConfig:
    """BitNetConfig from a Hugging Face config.json dict; unknown keys are ignored, unsupported features refused."""
    def fail(message: str) -> CheckpointError:
        return CheckpointError(f"{source}: {message}")

    if raw.get("model_type", "bitnet") != "bitnet":
        raise fail(f"model_type is {raw['model_type']!r}, expected 'bitnet'")
    if raw.get("attention_bias", False):
        raise fail("attention_bias = true is not supported (BitNet linears have no bias)")
    quant = raw.get("quantization_config") or {}
    if quant and quant.get("quant_method") != "bitnet":
        raise fail(f"quantization_config.quant_method is {quant.get('quant_method')!r}, expected 'bitnet'")
    if quant.get("linear_class", "bitlinear") != "bitlinear":
        raise fail(f"quantization_config.linear_class {quant['linear_class']!r} is not supported "
                   "(only 'bitlinear': outputs divided by weight_scale)")
    if quant.get("use_rms_norm", False):
        raise fail("quantization_config.use_rms_norm = true is not supported")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise fail(f"rope type {rope.get('rope_type', rope.get('type'))!r} is not supported (only 'default')")

    fields = {f.name for f in dataclasses.fields(BitNetConfig)}
    # null means "no such token" for bos/eos (as in transformers), not "use the 2B-4T default id"
    kwargs = {k: v for k, v in raw.items() if k in fields and (v is not None or k in NULLABLE_TOKEN_IDS)}
    if "rope_theta" in rope and "rope_theta" not in kwargs:
        kwargs["rope_theta"] = rope["rope_theta"]
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if k not in kwargs]
    if missing:
        raise fail(f"missing required keys {missing}")
    kwargs.setdefault("num_key_value_heads", kwargs["num_attention_heads"])
    try:
        return BitNetConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise fail(str(e)) from None


def config_to_dict(config: BitNetConfig) -> dict:
    """config.json contents that both golden and transformers' BitNetForCausalLM read."""
    d = dataclasses.asdict(config)
    return {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        **d,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False,
        "dtype": "float32",
        "quantization_config": {"quant_method": "bitnet", "linear_class": "bitlinear",
                                "quantization_mode": "offline"},
    }


def load_config(path: str | Path) -> BitNetConfig:
    path = Path(path)
    file = path / CONFIG_FILE
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file}: not found (is {path} a model folder?)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: cannot read JSON: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return config_from_dict(raw, str(file))


# ----------------------------------------------------------------------------- loading

def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: cannot read the shard index: {e!r}") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to shard file names")
        for name in weight_map.values():  # as written: a symlinked shard (Hugging Face's cache) is fine
            if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == os.pardir:
                raise CheckpointError(f"{index}: shard {name!r} lies outside {path}; "
                                      "shards must be files inside the model folder")
        files = [path / name for name in sorted(set(weight_map.values()))]
    elif (path / WEIGHTS_FILE).exists():
        files = [path / WEIGHTS_FILE]
    else:
        raise CheckpointError(f"{path}: neither {WEIGHTS_FILE} nor {INDEX_FILE} found")
    for file in files:
        if not file.exists():
            raise CheckpointError(f"{file}: listed in {INDEX_FILE} but missing")
    return files


# safetensors header dtype -> torch dtype (what safe_open's get_tensor would return)
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
                      "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U64": torch.uint64,
                      "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool}
LAYER_TENSOR = re.compile(r"model\.layers\.(\d+)\.")


def _read_tensors(files: list[Path], progress: bool,
                  headers_only: bool = False) -> dict[str, tuple[Path, torch.Tensor]]:
    """name -> (file, tensor) of every tensor in `files`. With `headers_only`, the tensors are meta
    tensors of the right dtype and shape read from the safetensors headers: no tensor data is read."""
    tensors: dict[str, tuple[Path, torch.Tensor]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in tqdm(list(f.keys()), desc=f"loading {file.name}", unit="tensor",
                                 disable=not progress or headers_only, leave=False):
                    if name in tensors:
                        raise CheckpointError(f"{file}: tensor {name} also in {tensors[name][0]}")
                    if headers_only:
                        header = f.get_slice(name)
                        dtype = SAFETENSORS_DTYPES.get(header.get_dtype())
                        if dtype is None:
                            raise CheckpointError(f"{file}: tensor {name} has dtype {header.get_dtype()}, "
                                                  "which no BitNet tensor has")
                        tensors[name] = (file, torch.empty(header.get_shape(), dtype=dtype, device="meta"))
                    else:
                        tensors[name] = (file, f.get_tensor(name))
        except CheckpointError:
            raise
        except Exception as e:  # safetensors reports truncation and bad headers with its own types
            raise CheckpointError(f"{file}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    return tensors


def _take_bitlinear(path: Path, module: BitLinear, name: str, tensors: dict) -> tuple:
    """Pop the weight (and scale) of BitLinear `name` from `tensors`, checking dtypes and shapes against the
    module: (file, weight, (scale file, scale)) when packed, (file, float weight, None) when unpacked."""
    if f"{name}.weight" not in tensors:
        raise CheckpointError(f"{path}: tensor {name}.weight missing")
    file, w = tensors.pop(f"{name}.weight")
    out_f, in_f = module.out_features, module.in_features
    scale_entry = tensors.pop(f"{name}.weight_scale", None)
    if w.dtype == torch.uint8 and tuple(w.shape) == (out_f // TRITS_PER_BYTE, in_f) and out_f % TRITS_PER_BYTE == 0:
        if scale_entry is None:
            raise CheckpointError(f"{file}: packed tensor {name}.weight has no {name}.weight_scale")
        scale_file, scale = scale_entry
        if not scale.is_floating_point() or scale.numel() != 1:
            raise CheckpointError(f"{scale_file}: tensor {name}.weight_scale is {scale.dtype} "
                                  f"{tuple(scale.shape)}, expected one float (shape (1,))")
        return file, w, scale_entry
    if w.is_floating_point() and tuple(w.shape) == (out_f, in_f):
        if scale_entry is not None:
            raise CheckpointError(f"{scale_entry[0]}: tensor {name}.weight_scale next to unpacked float "
                                  f"{name}.weight; expected either packed uint8 + scale or float weights alone")
        return file, w, None
    raise CheckpointError(
        f"{file}: tensor {name}.weight is {w.dtype} {tuple(w.shape)}, expected packed uint8 "
        f"{(out_f // TRITS_PER_BYTE, in_f)} or float {(out_f, in_f)} (from {CONFIG_FILE})")


def _load_bitlinear(path: Path, module: BitLinear, name: str, tensors: dict) -> None:
    file, w, scale_entry = _take_bitlinear(path, module, name, tensors)
    if scale_entry is not None:
        scale_file, scale = scale_entry
        scale = scale.float().reshape(1)
        if not (math.isfinite(scale.item()) and scale.item() > 0):
            raise CheckpointError(f"{scale_file}: tensor {name}.weight_scale is {scale.item()}, expected > 0")
        codes = unpack_codes(w)
        bad = (codes == 3).nonzero()
        if len(bad):
            row, col = bad[0].tolist()
            raise CheckpointError(f"{file}: tensor {name}.weight holds code 3 (not a trit; codes are trit + 1 "
                                  f"in 0..2) at unpacked [{row}, {col}] and {len(bad) - 1} more places")
        module.load_ternary(codes.to(torch.int8) - 1, scale)
    else:
        _check_finite(file, f"{name}.weight", w)
        module.load_ternary(*quantize_weights(w))


def _check_finite(file: Path, name: str, t: torch.Tensor) -> None:
    """A float tensor holding NaN or inf would make every logit NaN: refused."""
    bad = (~torch.isfinite(t)).nonzero()
    if len(bad):
        raise CheckpointError(f"{file}: tensor {name} holds {len(bad)} non-finite value(s) (NaN or inf), "
                              f"the first at {bad[0].tolist()}")


def _take_float(path: Path, model: BitNetForCausalLM, name: str, tensors: dict) -> tuple[Path, torch.Tensor]:
    """Pop float parameter `name` from `tensors`, checking its dtype and shape against the model's."""
    if name not in tensors:
        raise CheckpointError(f"{path}: tensor {name} missing")
    file, t = tensors.pop(name)
    expected = tuple(model.get_parameter(name).shape)
    if not t.is_floating_point() or tuple(t.shape) != expected:
        raise CheckpointError(f"{file}: tensor {name} is {t.dtype} {tuple(t.shape)}, "
                              f"expected float {expected} (from {CONFIG_FILE})")
    return file, t


def _check_all_used(tensors: dict) -> None:
    if tensors:
        name, (file, _) = next(iter(tensors.items()))
        hint = " (config.json says tie_word_embeddings = true)" if name == "lm_head.weight" else ""
        raise CheckpointError(f"{file}: tensor {name} is not part of the model described by "
                              f"{CONFIG_FILE}{hint}; {len(tensors)} unexpected tensor(s)")


def _checked_skeleton(path: Path, config: BitNetConfig, headers: dict) -> BitNetForCausalLM:
    """A meta-device model of `config` (no memory), after checking that `headers` (name -> (file, meta
    tensor)) hold exactly its tensors with the right dtypes and shapes. A config claiming more layers
    than the checkpoint holds is refused before any module is built."""
    headers = {name: entry for name, entry in headers.items() if not name.endswith("rotary_emb.inv_freq")}
    layers = {int(m.group(1)) for m in map(LAYER_TENSOR.match, headers) if m}
    absent = next((i for i in range(config.num_hidden_layers) if i not in layers), None)  # stops by len(layers) + 1
    if absent is not None:
        with torch.device("meta"):
            one_layer = BitNetForCausalLM(dataclasses.replace(config, num_hidden_layers=1))
        first = next(name for name, _ in one_layer.bitlinear_layers()).replace(".layers.0.", f".layers.{absent}.")
        raise CheckpointError(f"{path}: tensor {first}.weight missing ({CONFIG_FILE} says num_hidden_layers = "
                              f"{config.num_hidden_layers}; the checkpoint's tensors hold {len(layers)} layers)")
    with torch.device("meta"):  # no memory for latent weights that are replaced anyway
        model = BitNetForCausalLM(config)
    for name, module in model.bitlinear_layers():
        _take_bitlinear(path, module, name, headers)
    for name, _ in model.float_parameters():
        _take_float(path, model, name, headers)
    _check_all_used(headers)
    return model


def check_checkpoint(path: str | Path) -> BitNetConfig:
    """The folder's config, after checking it against the tensor names, dtypes and shapes in the
    safetensors headers (cheap: no tensor data is read). Raises CheckpointError like load_model."""
    path = Path(path)
    config = load_config(path)
    _checked_skeleton(path, config, _read_tensors(_weight_files(path), False, headers_only=True))
    return config


def load_model(path: str | Path, progress: bool = False) -> BitNetForCausalLM:
    """Load a Hugging Face BitNet checkpoint folder into a frozen, eval-mode golden model (float32).

    Raises CheckpointError naming the file and tensor for anything missing, malformed or
    inconsistent with config.json. The config is checked against the safetensors headers before
    any tensor data is read or any model memory allocated.
    """
    path = Path(path)
    config = load_config(path)
    files = _weight_files(path)
    model = _checked_skeleton(path, config, _read_tensors(files, False, headers_only=True))
    tensors = _read_tensors(files, progress)
    for name in [n for n in tensors if n.endswith("rotary_emb.inv_freq")]:  # derived from config, not a weight
        del tensors[name]

    for name, module in model.bitlinear_layers():
        _load_bitlinear(path, module, name, tensors)
    for name in [name for name, _ in model.float_parameters()]:  # a tied lm_head: once, as the embedding
        file, t = _take_float(path, model, name, tensors)
        _check_finite(file, name, t)
        owner, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(owner), attr, torch.nn.Parameter(t.float(), requires_grad=False))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    _check_all_used(tensors)
    return model.eval()


def load_tokenizer(path: str | Path):
    """The folder's tokenizers.Tokenizer, or None when it has no tokenizer.json."""
    from tokenizers import Tokenizer

    file = Path(path) / TOKENIZER_FILE
    if not file.exists():
        return None
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:
        raise CheckpointError(f"{file}: cannot read tokenizer ({e})") from None


# ----------------------------------------------------------------------------- saving

def _state_tensors(model: BitNetForCausalLM) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name, module in model.bitlinear_layers():
        tensors[f"{name}.weight"] = pack_trits(module.trits)
        tensors[f"{name}.weight_scale"] = module.weight_scale.detach().float().reshape(1).clone()
    for name, p in model.float_parameters():
        tensors[name] = p.detach().float().contiguous().clone()
    return tensors


def _save_file(tensors: dict[str, torch.Tensor], file: Path, metadata: dict[str, str]) -> None:
    """safetensors' save_file, with the permissions any other new file gets (it writes 0600)."""
    save_file(tensors, str(file), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    file.chmod(0o666 & ~umask)


def save_model(model: BitNetForCausalLM, path: str | Path, tokenizer=None,
               max_shard_bytes: int | None = None) -> Path:
    """Write `model` as a packed Hugging Face BitNet folder (config.json, safetensors, tokenizer.json).

    Latent (training) weights are quantized with absmean on the way. With `max_shard_bytes`, the
    weights are split into shards listed in model.safetensors.index.json.
    """
    if not model.quantized:
        raise ValueError("a float (quantized=False) model has no packed BitNet format")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(config_to_dict(model.config), indent=2) + "\n")
    tensors = _state_tensors(model)
    metadata = {"format": "pt"}
    if max_shard_bytes is None:
        _save_file(tensors, path / WEIGHTS_FILE, metadata)
    else:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for name, t in tensors.items():
            nbytes = t.numel() * t.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][name] = t
            size += nbytes
        weight_map = {}
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _save_file(shard, path / file, metadata)
            weight_map.update({name: file for name in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (path / INDEX_FILE).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(str(path / TOKENIZER_FILE))
    return path
