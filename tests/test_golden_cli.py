"""The `bitlane` CLI (generate, info, make-model), run in-process."""
import dataclasses
import json

import pytest

from bitlane import cli, golden


def test_make_model_info_and_generate_json(tmp_path, capsys):
    path = tmp_path / "m"
    assert cli.main(["make-model", str(path), "--hidden-size", "64", "--layers", "2", "--heads", "4",
                     "--kv-heads", "2", "--act", "silu", "--tie", "--seed", "5"]) == 0
    config = golden.load_config(path)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.hidden_act, config.tie_word_embeddings, config.vocab_size) == (64, 2, 4, 2, "silu", True, 258)
    capsys.readouterr()

    assert cli.main(["info", "--model", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    counts = golden.load_model(path).num_parameters()
    # per layer: q, o 64x64; k, v 64x32; gate, up, down 64x172
    assert info["ternary_parameters"] == counts["ternary"] == 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 172)
    assert info["float_parameters"] == counts["float"] == 258 * 64 + 2 * (64 + 64 + 64 + 172) + 64 + 2 * 7
    assert info["ternary_bytes_2bit"] == info["ternary_parameters"] // 4
    assert cli.main(["info", "--model", str(path)]) == 0
    assert "at 2 bits/trit" in capsys.readouterr().out

    assert cli.main(["generate", "--model", str(path), "--prompt", "Hi", "--greedy", "--max-new-tokens", "6",
                     "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prompt_ids"] == [256, ord("H"), ord("i")]  # BOS prepended, bytes as ids
    model = golden.load_model(path)
    assert result["generated_ids"] == golden.generate(model, result["prompt_ids"], 6, greedy=True)
    assert result["text"] == golden.load_tokenizer(path).decode(result["generated_ids"], skip_special_tokens=True)
    assert set(result["timing"]) >= {"load_s", "first_token_s", "total_s"}


def test_generate_streams_ids_without_tokenizer(make_checkpoint, capsys):
    path = make_checkpoint(seed=12, tokenizer=False)
    args = ["generate", "--model", str(path), "--prompt-ids", "1,2,3", "--max-new-tokens", "5",
            "--temperature", "0.7", "--top-k", "10", "--top-p", "0.9", "--seed", "4"]
    assert cli.main(args) == 0
    streamed = [int(t) for t in capsys.readouterr().out.split()]
    expected = golden.generate(golden.load_model(path), [1, 2, 3], 5, temperature=0.7, top_k=10, top_p=0.9, seed=4)
    assert streamed == expected
    assert cli.main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["generated_ids"] == expected and "text" not in result
    assert cli.main(["generate", "--model", str(path), "--prompt", "x"]) == 1
    assert "no tokenizer.json: use --prompt-ids" in capsys.readouterr().err


def test_generate_streams_text(make_checkpoint, capsys):
    path = make_checkpoint(seed=13, tokenizer=True)
    assert cli.main(["generate", "--model", str(path), "--prompt", "ab", "--max-new-tokens", "8", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    model, tokenizer = golden.load_model(path), golden.load_tokenizer(path)
    ids = golden.generate(model, [256, 97, 98], 8, seed=1)
    assert out == "ab" + tokenizer.decode(ids, skip_special_tokens=True) + "\n"  # the prompt, then its continuation


def test_errors_are_one_line_messages(tmp_path, capsys):
    assert cli.main(["generate", "--model", str(tmp_path), "--prompt-ids", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bitlane generate: error:") and "config.json: not found" in err
    with pytest.raises(SystemExit):
        cli.main(["generate", "--model", str(tmp_path), "--prompt-ids", "1,x"])
    path = tmp_path / "m"
    assert cli.main(["make-model", str(path)]) == 0
    capsys.readouterr()
    assert cli.main(["generate", "--model", str(path), "--prompt", "x", "--top-k", "0"]) == 1
    assert capsys.readouterr() == ("", "bitlane generate: error: top_k = 0: expected >= 1\n")  # not a word of text
    with pytest.raises(SystemExit):
        cli.main(["generate", "--model", str(tmp_path), "--prompt-ids", "1", "--backend", "nope"])


def test_demo_runs_on_a_fresh_clone(tmp_path, monkeypatch, capsys):
    from bitlane import demo

    monkeypatch.setattr(demo, "bundled_model", lambda: None)  # as on a clone without models/
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert demo.main(["--backend", "golden"]) == 0
    assert capsys.readouterr().out.startswith(demo.PROMPT)
    made = golden.load_model(tmp_path / "bitlane" / "demo-random-v2").config
    assert made == dataclasses.replace(demo.RANDOM_CONFIG, bos_token_id=256, eos_token_id=257)  # byte tokenizer's


@pytest.mark.parametrize("command", [[], ["generate"], ["info"], ["make-model"], ["bench"]])
def test_every_help_text_renders(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, "--help"])  # argparse formats help lazily: a stray % would only fail here
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith(f"usage: bitlane {' '.join(command)}".rstrip())
    if not command:
        assert "examples:" in out and "bitlane COMMAND --help" in out


def test_interrupt_and_closed_pipe_end_quietly(make_checkpoint):
    """Ctrl-C mid-generation and `bitlane generate ... | head` give no traceback (real processes)."""
    import signal
    import subprocess
    import sys

    path = make_checkpoint(seed=21, tokenizer=False, max_position_embeddings=100_000)  # no EOS: runs until stopped
    command = [sys.executable, "-m", "bitlane.cli", "generate", "--model", str(path), "--prompt-ids", "1",
               "--max-new-tokens", "99999"]
    interrupted = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    piped = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert interrupted.stdout.read(1)  # generating
        interrupted.send_signal(signal.SIGINT)
        assert piped.stdout.read(1)
        piped.stdout.close()  # as `head -c 1` does
        assert interrupted.wait(timeout=60) == 130
        assert interrupted.stderr.read().decode() == "bitlane generate: interrupted\n"
        assert piped.wait(timeout=60) == 1
        assert piped.stderr.read() == b""
    finally:
        for process in (interrupted, piped):
            process.kill()
            process.wait()
