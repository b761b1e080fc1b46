"""Checkpoint I/O: packing against transformers' packer, lossless round trips, and clear errors."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from bitlane import golden


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_packing_matches_transformers_packer():
    bitnet = pytest.importorskip("transformers.integrations.bitnet")
    trits = torch.randint(-1, 2, (48, 20), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    packed = golden.pack_trits(trits)
    assert packed.dtype == torch.uint8 and packed.shape == (12, 20)
    assert torch.equal(packed, bitnet.pack_weights(trits.clone()))
    assert torch.equal(golden.unpack_codes(packed).to(torch.int8) - 1, trits)


def test_save_load_round_trip_is_lossless(make_checkpoint, tmp_path):
    src = make_checkpoint(seed=4, tie_word_embeddings=False, hidden_act="silu")
    model = golden.load_model(src)
    golden.save_model(model, tmp_path / "again", tokenizer=golden.load_tokenizer(src))
    original, again = load_file(src / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert original.keys() == again.keys()
    for name in original:
        assert original[name].dtype == again[name].dtype and torch.equal(original[name], again[name]), name
    assert json.loads((src / "config.json").read_text()) == json.loads((tmp_path / "again/config.json").read_text())
    reloaded = golden.load_model(tmp_path / "again")
    for (name, a), (_, b) in zip(model.bitlinear_layers(), reloaded.bitlinear_layers()):
        assert torch.equal(a.trits, b.trits) and torch.equal(a.weight_scale, b.weight_scale), name
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        assert torch.equal(model(ids), reloaded(ids))


def test_sharded_checkpoint_loads_identically(make_checkpoint, tmp_path):
    src = make_checkpoint(seed=5)
    model = golden.load_model(src)
    golden.save_model(model, tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ids = torch.tensor([[10, 20, 30]])
    with torch.no_grad():
        assert torch.equal(golden.load_model(tmp_path)(ids), model(ids))


def test_unpacked_float_weights_are_quantized_on_load(make_checkpoint, tmp_path):
    src = make_checkpoint(seed=6)
    tensors = load_file(src / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    latent = {}
    for name in [n for n in tensors if n.endswith(".weight_scale")]:
        base = name[: -len("_scale")]
        out_f, in_f = tensors[base].shape[0] * 4, tensors[base].shape[1]
        latent[base] = torch.randn(out_f, in_f, generator=g).to(torch.bfloat16)
        del tensors[name]
    tensors.update(latent)
    dst = _copy(src, tmp_path / "float")
    save_file(tensors, dst / "model.safetensors")
    model = golden.load_model(dst)
    for name, module in model.bitlinear_layers():
        w = latent[f"{name}.weight"].float()
        scale = 1.0 / w.abs().mean()
        assert torch.equal(module.trits, (w * scale).round().clamp(-1, 1).to(torch.int8)), name
        assert torch.equal(module.weight_scale, scale.reshape(1)), name


# ----------------------------------------------------------------------------- bad checkpoints

def _edit_tensors(src, dst, edit):
    _copy(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors")
    return dst


def _edit_config(src, dst, **changes):
    _copy(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


Q = "model.layers.1.self_attn.q_proj"


def _with_code_3(t):
    t[f"{Q}.weight"][2, 5] |= 0b11 << 4  # third code of byte [2, 5] -> unpacked row 2 * 16 + 2


def _wrong_shape(t):
    t[f"{Q}.weight"] = t[f"{Q}.weight"][:, :-1].contiguous()


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.pop(f"{Q}.weight_scale"), f"{Q}.weight has no {Q}.weight_scale"),
    (lambda t: t.pop("model.layers.0.mlp.ffn_sub_norm.weight"), "tensor model.layers.0.mlp.ffn_sub_norm.weight missing"),
    (lambda t: t.pop(f"{Q}.weight"), f"tensor {Q}.weight missing"),
    (_wrong_shape, rf"{Q}.weight is torch.uint8 \(16, 63\), expected packed uint8 \(16, 64\)"),
    (_with_code_3, rf"{Q}.weight holds code 3 .* at unpacked \[34, 5\]"),
    (lambda t: t.update({f"{Q}.weight_scale": torch.tensor([-1.0])}), f"{Q}.weight_scale is -1.0, expected > 0"),
    (lambda t: t.update({"lm_head.weight": torch.zeros(300, 64)}), "lm_head.weight is not part of the model.*tie_word"),
])
def test_damaged_tensors_are_named(make_checkpoint, tmp_path, damage, message):
    path = _edit_tensors(make_checkpoint(seed=7), tmp_path / "bad", damage)
    with pytest.raises(golden.CheckpointError, match=message) as err:
        golden.load_model(path)
    assert "model.safetensors" in str(err.value) or str(path) in str(err.value)


def test_truncated_safetensors(make_checkpoint, tmp_path):
    path = _copy(make_checkpoint(seed=7), tmp_path / "bad")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(golden.CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        golden.load_model(path)


@pytest.mark.parametrize("changes, message", [
    (dict(hidden_size=128), r"layers.0.self_attn.q_proj.weight is torch.uint8 \(16, 64\), expected packed uint8 \(32, 128\)"),
    (dict(vocab_size=400), r"model.embed_tokens.weight is torch.float32 \(300, 64\), expected float \(400, 64\)"),
    (dict(num_hidden_layers=3), "tensor model.layers.2.self_attn.q_proj.weight missing"),
    (dict(num_hidden_layers=1), "model.layers.1.* is not part of the model"),
    (dict(intermediate_size=256), r"mlp.gate_proj.weight is torch.uint8 \(32, 64\), expected packed uint8 \(64, 64\)"),
    (dict(hidden_act="gelu"), r"config.json: hidden_act 'gelu' is not supported"),
    (dict(model_type="llama"), "config.json: model_type is 'llama'"),
    (dict(vocab_size=None), r"config.json: missing required keys \['vocab_size'\]"),
    (dict(hidden_size="64"), r"config.json: hidden_size must be an integer >= 1, got '64'"),
    (dict(num_hidden_layers=0), r"config.json: num_hidden_layers must be an integer >= 1, got 0"),
    (dict(num_key_value_heads=3), "config.json: num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    (dict(quantization_config={"quant_method": "bitnet", "linear_class": "autobitlinear"}), "autobitlinear"),
])
def test_config_that_disagrees(make_checkpoint, tmp_path, changes, message):
    path = _edit_config(make_checkpoint(seed=7), tmp_path / "bad", **changes)
    with pytest.raises(golden.CheckpointError, match=message):
        golden.load_model(path)


def test_null_token_ids_stay_none(make_checkpoint, tmp_path):
    path = _edit_config(make_checkpoint(seed=7), tmp_path / "nobos", bos_token_id=None, eos_token_id=[5, 6])
    config = golden.load_model(path).config
    assert config.bos_token_id is None and config.eos_token_ids == {5, 6}


def test_missing_files(make_checkpoint, tmp_path):
    with pytest.raises(golden.CheckpointError, match="config.json: not found"):
        golden.load_model(tmp_path)
    path = _copy(make_checkpoint(seed=7), tmp_path / "noweights")
    (path / "model.safetensors").unlink()
    with pytest.raises(golden.CheckpointError, match="neither model.safetensors nor model.safetensors.index.json"):
        golden.load_model(path)
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "shard-1.safetensors"}}))
    with pytest.raises(golden.CheckpointError, match="shard-1.safetensors: listed in .* but missing"):
        golden.load_model(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(golden.CheckpointError, match="config.json: cannot read JSON"):
        golden.load_model(path)
