"""golden.perplexity: windowed scoring for models and plain functions, progress, and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bitlane import golden
from bitlane.golden.integer import convert
from bitlane.golden.perplexity import perplexity, text_ids

CONFIG = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
              num_key_value_heads=1, max_position_embeddings=16)


@pytest.fixture(scope="module")
def model() -> golden.BitNetForCausalLM:
    torch.manual_seed(0)
    m = golden.BitNetForCausalLM(golden.BitNetConfig(**CONFIG))
    m.freeze()
    return m.eval()


def reference_ppl(model, ids: np.ndarray, window: int) -> float:
    nll = 0.0
    for start in range(0, ids.size - 1, window):
        chunk = torch.from_numpy(ids[start:start + window + 1])
        with torch.no_grad():
            logits = model(chunk[None, :-1])[0].double()
        nll += F.cross_entropy(logits, chunk[1:], reduction="sum").item()
    return math.exp(nll / (ids.size - 1))


@pytest.mark.parametrize("length, window, batch", [(2, None, 1), (16, None, 1), (17, None, 1), (50, None, 3),
                                                   (50, 7, 2), (33, 16, 4)])
def test_model_windows_match_manual_scoring(model, length, window, batch):
    ids = np.random.default_rng(length).integers(0, 300, length)
    ppl, n = perplexity(model, ids, window, batch_size=batch)
    assert n == length - 1
    assert ppl == pytest.approx(reference_ppl(model, ids, window or CONFIG["max_position_embeddings"]), rel=1e-9)


def test_function_backend_and_progress(model):
    ids = np.random.default_rng(1).integers(0, 300, 40)
    calls = []
    fn = lambda x: model(torch.as_tensor(x)[None])[0]  # noqa: E731
    ppl, n = perplexity(fn, ids, window=16, progress=lambda done, total: calls.append((done, total)))
    assert ppl == pytest.approx(perplexity(model, ids)[0], rel=1e-9)
    assert calls == [(16, 39), (32, 39), (39, 39)]


def test_integer_model_backend(model):
    ids = np.random.default_rng(2).integers(0, 300, 30)
    ppl_int, n = perplexity(convert(model), ids, batch_size=2)
    assert n == 29 and ppl_int == pytest.approx(perplexity(model, ids)[0], rel=0.02)


def test_tqdm_progress_goes_to_stderr(model, capsys):
    perplexity(model, np.arange(20), progress=True)
    captured = capsys.readouterr()
    assert "perplexity" in captured.err and captured.out == ""


@pytest.mark.parametrize("ids, kwargs, message", [
    ([5], {}, "at least 2 tokens, got 1"),
    ([], {}, "at least 2 tokens, got 0"),
    ([1, 2, 300], {}, r"token ids must lie in 0\.\.299"),
    ([1, 2, 3], {"window": 17}, "exceeds the model's context 16"),
    ([1, 2, 3], {"window": 0}, "window must be >= 1"),
])
def test_bad_input_is_refused(model, ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        perplexity(model, ids, **kwargs)


def test_function_needs_a_window():
    with pytest.raises(ValueError, match="needs window="):
        perplexity(lambda x: np.zeros((len(x), 3)), [1, 2, 3])


def test_text_ids_errors(tmp_path):
    tokenizer = golden.byte_level_tokenizer()
    with pytest.raises(ValueError, match="no such file"):
        text_ids(tokenizer, tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="the text is empty"):
        text_ids(tokenizer, tmp_path / "empty.txt")
    (tmp_path / "one.txt").write_text("a")
    with pytest.raises(ValueError, match="1 token"):
        text_ids(tokenizer, tmp_path / "one.txt")
    (tmp_path / "ok.txt").write_text("abc")
    assert text_ids(tokenizer, tmp_path / "ok.txt") == [97, 98, 99]


def test_command_line(tmp_path, capsys):
    from bitlane.golden.perplexity import main
    folder = golden.make_random_checkpoint(tmp_path / "m", {**CONFIG, "vocab_size": 300}, seed=1)
    (tmp_path / "t.txt").write_text("In the beginning God created the heaven and the earth.\n")
    for backend in ("golden", "int"):
        main(["--model", str(folder), "--backend", backend, str(tmp_path / "t.txt")])
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert last.startswith("perplexity ") and last.endswith(" over 54 tokens")  # 55 bytes, 54 transitions
    with pytest.raises(SystemExit, match="no such file"):
        main(["--model", str(folder), str(tmp_path / "missing.txt")])
