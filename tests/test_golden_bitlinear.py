"""BitLinear's integer path against an independent numpy int64 computation; the seam; trace; training."""
import numpy as np
import pytest
import torch

from bitlane import golden
from bitlane.golden.model import BitLinear


def _numpy_acc(q: torch.Tensor, trits: torch.Tensor) -> np.ndarray:
    return q.numpy().astype(np.int64) @ trits.numpy().astype(np.int64).T


def _operands(n: int, k: int, out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int16).to(torch.int8)
    trits = torch.randint(-1, 2, (out, k), generator=g, dtype=torch.int8)
    q[0] = -128  # the extremes: |acc| = 128 * k
    trits[0] = -1
    q[-1, : k // 2] = 127
    return q, trits


@pytest.mark.parametrize("k", [1, 3, 64, 1000, 4096, 8192])
def test_default_int_matmul_is_exact(k):
    q, trits = _operands(n=5, k=k, out=12, seed=k)
    acc = golden.default_int_matmul("x", trits, q)
    assert acc.dtype == torch.int32
    expected = _numpy_acc(q, trits)
    assert expected[0, 0] == 128 * k
    np.testing.assert_array_equal(acc.numpy().astype(np.int64), expected)


def test_int64_fallback_beyond_float32_exactness():
    k = 2**17 + 3  # k * 128 > 2**24: float32 could round, so the int64 path must be taken
    q = torch.full((1, k), -128, dtype=torch.int8)
    trits = torch.full((4, k), -1, dtype=torch.int8)
    trits[1, ::2] = 1
    acc = golden.default_int_matmul("x", trits, q)
    np.testing.assert_array_equal(acc.numpy().astype(np.int64), _numpy_acc(q, trits))
    assert acc[0, 0].item() == 128 * k


def test_bitlinear_reports_its_integers_and_scales_output():
    layer = BitLinear(8192, 16)
    with torch.no_grad():
        layer.weight.normal_(generator=torch.Generator().manual_seed(0))
        layer.weight[3] = -1.0  # an all-(-1) row
    layer.freeze()
    layer.eval()
    x = torch.randn(3, 2, 8192, generator=torch.Generator().manual_seed(1))
    x[0, 0] = -1.0  # every code -127 after quantization
    model_like = torch.nn.Module()
    model_like.bitlinear_layers = lambda: iter([("layer", layer)])
    with golden.trace(model_like) as records:
        y = layer(x)
    (rec,) = records
    assert rec.q.dtype == torch.int8 and rec.trits.dtype == torch.int8 and rec.acc.dtype == torch.int32
    assert rec.q.shape == (6, 8192) and rec.acc.shape == (6, 16)
    assert set(rec.trits.unique().tolist()) <= {-1, 0, 1} and (rec.trits[3] == -1).all()
    np.testing.assert_array_equal(rec.acc.numpy().astype(np.int64), _numpy_acc(rec.q, rec.trits))
    assert rec.acc[0, 3].item() == 127 * 8192
    # the arithmetic contract, computed independently in float64 from the reported integers
    expected = rec.acc.double() / (rec.weight_scale.double() * rec.act_scale.double())
    torch.testing.assert_close(y.reshape(6, 16).double(), expected, rtol=1e-6, atol=0)


def test_trace_covers_every_call_and_matches_numpy(make_checkpoint):
    model = golden.load_model(make_checkpoint(seed=2))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    cache = model.new_cache()
    with torch.no_grad(), golden.trace(model) as records:
        model(ids, cache=cache)  # prefill: N = 5 tokens per call
        model(ids[:, :1], cache=cache)  # decode: N = 1
    names = [name for name, _ in model.bitlinear_layers()]
    assert [r.name for r in records] == names * 2
    assert names[0] == "model.layers.0.self_attn.q_proj"
    assert [r.q.shape[0] for r in records] == [5] * len(names) + [1] * len(names)
    for rec in records:
        np.testing.assert_array_equal(rec.acc.numpy().astype(np.int64), _numpy_acc(rec.q, rec.trits))
        assert rec.act_scale.shape == (rec.q.shape[0], 1) and rec.weight_scale.shape == (1,)
    for _, module in model.bitlinear_layers():
        assert module.records is None  # trace detached


def test_int_matmul_seam_sees_every_product(make_checkpoint):
    model = golden.load_model(make_checkpoint(seed=3))
    ids = torch.tensor([[7, 8, 9]])
    with torch.no_grad():
        reference = model(ids)
    calls = []

    def numpy_matmul(name, trits, q):
        assert trits.dtype == torch.int8 and q.dtype == torch.int8
        calls.append(name)
        return torch.from_numpy(_numpy_acc(q, trits).astype(np.int32))

    model.set_int_matmul(numpy_matmul)
    with torch.no_grad():
        assert torch.equal(model(ids), reference)
    assert calls == [name for name, _ in model.bitlinear_layers()]
    model.set_int_matmul(lambda name, trits, q: torch.zeros(q.shape[0], trits.shape[0], dtype=torch.int64))
    with pytest.raises(TypeError, match="q_proj: int_matmul returned torch.int64"):
        model(ids)
    model.set_int_matmul(None)
    with torch.no_grad():
        assert torch.equal(model(ids), reference)


def test_qat_training_mode_and_float_baseline(tmp_path):
    config = golden.BitNetConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    model = golden.BitNetForCausalLM(config)
    ids = torch.randint(0, 64, (2, 9))
    model.train()
    logits = model(ids)
    torch.nn.functional.cross_entropy(logits.reshape(-1, 64), ids.reshape(-1)).backward()
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.weight.grad is not None and q_proj.weight.grad.abs().sum() > 0  # straight-through
    # the fake-quantized float path computes the same values as the integer path, up to float rounding
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), logits.detach(), rtol=1e-4, atol=1e-4)
        latent_logits = model(ids)
    # save_model packs the quantized latent weights; the reloaded frozen model is identical
    golden.save_model(model, tmp_path)
    with torch.no_grad():
        assert torch.equal(golden.load_model(tmp_path)(ids), latent_logits)

    baseline = golden.BitNetForCausalLM(config, quantized=False)
    assert not list(baseline.bitlinear_layers())
    assert type(baseline.model.layers[0].mlp.up_proj) is torch.nn.Linear
    assert {n for n, _ in baseline.named_parameters()} == {n for n, _ in model.named_parameters()}
    with pytest.raises(ValueError, match="float"):
        golden.save_model(baseline, tmp_path / "float")
