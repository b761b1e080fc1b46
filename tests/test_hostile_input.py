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


def _copy_with_config(src, dst, **changes):
    import json
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("layers", [20_000, 1_000_000, 10**12])
def test_16_2_absurd_layer_count_is_refused_quickly_and_small(make_checkpoint, tmp_path, capsys, layers):
    import time
    import tracemalloc

    import golden

    golden.check_checkpoint(make_checkpoint(seed=7))  # torch's one-time imports are not what is measured
    path = _copy_with_config(make_checkpoint(seed=7), tmp_path / "huge", num_hidden_layers=layers)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        assert cli.main(["generate", "--model", str(path), "--prompt-ids", "1"]) == 1
        seconds, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    err = _one_line_error(capsys)
    assert "tensor model.layers.2.self_attn.q_proj.weight missing" in err
    assert f"num_hidden_layers = {layers}; the checkpoint's tensors hold 2 layers" in err
    assert seconds < 5 and peak < 20 * 2**20, (seconds, peak)
