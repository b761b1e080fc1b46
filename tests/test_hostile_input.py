"""Hostile and mistaken input (issue 16): each case ends in one line on stderr naming the value, file or
tensor, a non-zero exit, no traceback, and in bounded time."""
import pytest

from sw import cli


def _one_line_error(capsys, command: str = "generate") -> str:
    out, err = capsys.readouterr()
    assert err.startswith(f"bitlane {command}: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("prompt, bad", [("caf\udce9", "0xe9"), ("\udcff\udcfe", "0xff"), ("ok\ud800", "U+D800")])
def test_16_1_non_utf8_prompt_is_refused(make_checkpoint, capsys, prompt, bad):
    # Python hands undecodable argv bytes (--prompt $'caf\xe9') to argparse as surrogate escapes
    path = make_checkpoint(seed=3, tokenizer=True)
    assert cli.main(["generate", "--model", str(path), "--prompt", prompt]) == 1
    err = _one_line_error(capsys)
    assert "--prompt is not valid UTF-8" in err and bad in err
