"""golden vs the outside oracle: transformers' BitNetForCausalLM loaded from the same packed folder."""
import pytest
import torch

from bitlane import golden

transformers = pytest.importorskip("transformers")

SHAPES = {  # GQA on and off (and MQA), relu2 and silu, tied and untied
    "gqa-relu2-tied": dict(),
    "mha-silu-untied": dict(hidden_act="silu", num_key_value_heads=4, tie_word_embeddings=False),
    "mqa-relu2-untied": dict(hidden_size=96, intermediate_size=160, num_attention_heads=2,
                             num_key_value_heads=1, tie_word_embeddings=False),
    "gqa-silu-3layers": dict(hidden_act="silu", num_hidden_layers=3, num_attention_heads=8,
                             num_key_value_heads=2, intermediate_size=96, rope_theta=10000.0),
}
TOL = 1e-4


@pytest.fixture(scope="module", params=list(SHAPES))
def pair(request, make_checkpoint):
    path = make_checkpoint(seed=list(SHAPES).index(request.param), **SHAPES[request.param])
    hf = transformers.BitNetForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    return golden.load_model(path), hf


def _ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 300, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_hf_really_uses_packed_bitlinear(pair):
    _, hf = pair
    q_proj = hf.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "BitLinear" and q_proj.weight.dtype == torch.uint8


@pytest.mark.parametrize("length", [1, 2, 17, 64])
def test_logits_match_without_cache(pair, length):
    model, hf = pair
    ids = _ids(2, length, seed=length)
    with torch.no_grad():
        expected = hf(ids).logits
        got = model(ids)
    assert got.shape == expected.shape == (2, length, model.config.vocab_size)
    assert (got - expected).abs().max().item() <= TOL


def test_logits_match_with_kv_cache(pair):
    """Prefill 5 tokens, decode one at a time, then a 4-token chunk: every step against HF's DynamicCache."""
    model, hf = pair
    ids = _ids(1, 40, seed=99)
    cache = model.new_cache()
    steps = [(0, 5), *[(t, t + 1) for t in range(5, 36)], (36, 40)]
    past = None
    with torch.no_grad():
        for start, end in steps:
            out = hf(ids[:, start:end], past_key_values=past, use_cache=True)
            past = out.past_key_values
            got = model(ids[:, start:end], cache=cache)
            assert (got - out.logits).abs().max().item() <= TOL, (start, end)
    assert len(cache) == 40


def test_greedy_generation_matches(pair):
    model, hf = pair
    prompt = _ids(1, 6, seed=7)
    expected = hf.generate(prompt, max_new_tokens=24, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[0, 6:].tolist()
    got = golden.generate(model, prompt[0].tolist(), 24, greedy=True, eos_token_ids=set())
    assert got == expected


def test_int8_activations_and_scales_match_hf_bitlinear(pair):
    """Stricter than the logit tolerance: every BitLinear sees the same int8 codes and the same
    activation scale bit for bit (a one-ulp change of s moves logits by only ~1e-5)."""
    model, hf = pair
    ids = _ids(2, 24, seed=5)
    seen = {}

    def record(module, args):
        q, s = module.activation_quant(args[0])
        seen.setdefault(module.hf_name, []).append((q.reshape(-1, q.shape[-1]), s.reshape(-1, 1)))

    hooks = []
    for name, module in hf.named_modules():
        if type(module).__name__ == "BitLinear":
            module.hf_name = name
            hooks.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad(), golden.trace(model) as records:
            hf(ids)
            model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(records) == 7 * model.config.num_hidden_layers == sum(len(v) for v in seen.values())
    for rec in records:
        q, s = seen[rec.name].pop(0)
        assert torch.equal(rec.q, q), rec.name
        assert torch.equal(rec.act_scale, s), rec.name


def test_hf_default_sdpa_attention_within_tolerance(make_checkpoint):
    """With transformers' default attention (SDPA) the float path differs in the last bits only."""
    path = make_checkpoint(seed=0, **SHAPES["gqa-relu2-tied"])
    hf = transformers.BitNetForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = _ids(2, 64, seed=3)
    with torch.no_grad():
        assert (golden.load_model(path)(ids) - hf(ids).logits).abs().max().item() <= TOL


def test_bf16_checkpoint_with_legacy_config_like_microsoft(make_checkpoint, tmp_path):
    """bitnet-b1.58-2B-4T stores floats and weight_scale in bf16 and rope_theta at the top level."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    src = make_checkpoint(seed=21, **SHAPES["mha-silu-untied"], rope_theta=10000.0)
    shutil.copytree(src, tmp_path / "m")
    path = tmp_path / "m"
    tensors = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v)
               for k, v in load_file(path / "model.safetensors").items()}
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    del config["rope_parameters"], config["dtype"]
    config.update(torch_dtype="bfloat16", use_cache=True, initializer_range=0.02, attention_dropout=0.0)
    (path / "config.json").write_text(json.dumps(config))
    model = golden.load_model(path)
    assert model.config.rope_theta == 10000.0
    hf = transformers.BitNetForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    ids = _ids(1, 32, seed=8)
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= TOL
