"""`bitlane perplexity`: the same scorer on every backend, its output line, and bad input."""
from __future__ import annotations

import re

import pytest

from bitlane import cli

TEXT = "In the beginning God created the heaven and the earth. And the earth was without form, and void.\n" * 3


def _perplexity(capsys, path, text_file, *backend: str) -> tuple[float, int]:
    assert cli.main(["perplexity", "--model", str(path), *backend, str(text_file)]) == 0
    out, err = capsys.readouterr()
    match = re.fullmatch(r"perplexity (\d+\.\d{4}) over (\d+) tokens\n", out)
    assert match, out
    assert "perplexity" in err  # the progress bar went to stderr
    return float(match.group(1)), int(match.group(2))


def test_every_backend_scores_the_same_tokens(make_checkpoint, tmp_path, capsys):
    path = make_checkpoint(seed=5, tokenizer=True)
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    golden_ppl, n = _perplexity(capsys, path, text)
    assert n == len(TEXT.encode()) - 1  # byte-level tokenizer: a token per byte; every transition scored once
    # the functional model's products are exact, so its logits, and the perplexity, equal golden's
    assert _perplexity(capsys, path, text, "--backend", "model", "--backend-opt", "preset=tiny") == (golden_ppl, n)
    int_ppl, int_n = _perplexity(capsys, path, text, "--backend", "int")
    assert int_n == n and abs(int_ppl / golden_ppl - 1) < 0.05


@pytest.mark.parametrize("content, message", [(None, "no such file"), ("", "the text is empty"),
                                              ("   \n", "the text is empty")])
def test_bad_text_is_one_line(make_checkpoint, tmp_path, capsys, content, message):
    text = tmp_path / "text.txt"
    if content is not None:
        text.write_text(content)
    assert cli.main(["perplexity", "--model", str(make_checkpoint(seed=5, tokenizer=True)), str(text)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"bitlane perplexity: error: {text}: {message}\n"


def test_a_model_without_tokenizer_is_refused(make_checkpoint, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    path = make_checkpoint(seed=5, tokenizer=False)
    assert cli.main(["perplexity", "--model", str(path), str(text)]) == 1
    assert capsys.readouterr().err == (f"bitlane perplexity: error: {path} has no tokenizer.json: "
                                       f"perplexity needs one to read {text}\n")
