"""Hostile and mistaken input (issue 16): each case ends in one line on stderr naming the value, file or
tensor, a non-zero exit, no traceback, and in bounded time."""
import json

import pytest

import bitlane
from bitlane import cli


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


@pytest.mark.parametrize("layers", [20_000, 1_000_000])
def test_16_2_absurd_layer_count_is_refused_quickly_and_small(make_checkpoint, tmp_path, capsys, layers):
    import time
    import tracemalloc

    from bitlane import golden

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


@pytest.mark.parametrize("name, index, value", [
    ("model.embed_tokens.weight", (5, 3), float("nan")),
    ("model.layers.1.mlp.ffn_sub_norm.weight", (7,), float("inf")),
    ("model.norm.weight", (0,), float("-inf")),
    ("model.layers.0.self_attn.k_proj.weight", (1, 2), float("nan")),  # an unpacked (float) BitLinear weight
])
@pytest.mark.parametrize("backend", ["golden", "model"])
def test_16_3_non_finite_float_tensors_are_refused_at_load(make_checkpoint, tmp_path, capsys, name, index, value,
                                                           backend):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    path = tmp_path / "nan"
    shutil.copytree(make_checkpoint(seed=7), path)
    tensors = load_file(path / "model.safetensors")
    if name.endswith("proj.weight"):  # store this BitLinear as latent float weights
        del tensors[name.replace(".weight", ".weight_scale")]
        tensors[name] = torch.randn(tensors[name].shape[0] * 4, tensors[name].shape[1])
    tensors[name][index] = value
    save_file(tensors, path / "model.safetensors")
    args = ["generate", "--model", str(path), "--prompt-ids", "1,2", "--backend", backend]
    assert cli.main(args + (["--backend-opt", "preset=tiny"] if backend == "model" else [])) == 1
    err = _one_line_error(capsys)
    assert f"model.safetensors: tensor {name} holds 1 non-finite value(s) (NaN or inf), the first at {list(index)}" \
        in err


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "0", "-1", "-0.5", "1e-400"])
@pytest.mark.parametrize("backend", ["model", "serial", "sim"])
def test_16_4_timeout_must_be_positive_and_finite(make_checkpoint, capsys, value, backend):
    path = make_checkpoint(seed=3)
    assert cli.main(["generate", "--model", str(path), "--prompt-ids", "1", "--backend", backend,
                     "--backend-opt", f"timeout={value}"]) == 1  # refused before any device is opened
    assert _one_line_error(capsys) == (f"bitlane generate: error: backend {backend!r}: timeout={value!r}, "
                                       "expected seconds, e.g. timeout=30\n")


class _NotBuilt(Exception):
    pass


@pytest.fixture
def no_sim_build(monkeypatch):
    """Building the simulator fails the test: what is checked must be checked before that."""
    import bitlane.hw.sim.build as simbuild

    def build_harness(*args, **kwargs):
        raise _NotBuilt()

    monkeypatch.setattr(simbuild, "build_harness", build_harness)


@pytest.mark.parametrize("trace", ["{tmp}/missing/run.vcd", "{tmp}/missing/run.fst", "{tmp}/folder"])
def test_16_5_unwritable_trace_path_fails_before_the_run(make_checkpoint, tmp_path, capsys, no_sim_build, trace):
    from bitlane.hw.sim.verilator import trace_format

    (tmp_path / f"folder.{trace_format()}").mkdir()
    trace = trace.format(tmp=tmp_path)
    assert cli.main(["generate", "--model", str(make_checkpoint(seed=3)), "--prompt-ids", "1", "--backend", "sim",
                     "--backend-opt", "preset=tiny", "--backend-opt", f"trace={trace}"]) == 1
    err = _one_line_error(capsys)
    assert f"sim://tiny: trace={trace}: cannot write {tmp_path}" in err
    assert ("No such file or directory" if "missing" in trace else "Is a directory") in err


@pytest.mark.parametrize("fmt", ["fst", "vcd"])
@pytest.mark.parametrize("asked", ["run.fst", "run.vcd", "run"])
def test_16_5_trace_format_and_size_are_stated_before_the_run(tmp_path, monkeypatch, no_sim_build, fmt, asked):
    import bitlane.hw.sim.verilator as verilator

    monkeypatch.setattr(verilator, "trace_format", lambda: fmt)  # with or without the FST headers
    lines = []
    with pytest.raises(_NotBuilt):
        bitlane.connect(f"sim://tiny?trace={tmp_path / asked}", log=lines.append)
    assert len(lines) == 1
    assert lines[0].startswith(f"[tracing every cycle to {tmp_path / 'run'}.{fmt} ({fmt.upper()}")
    assert "traces are large: a VCD reached 1.2 GB for 3 tokens" in lines[0]
    mismatch = asked.endswith((".fst", ".vcd")) and not asked.endswith(fmt)
    assert (f"not the {asked[-3:].upper()} asked for" in lines[0]) == mismatch
    assert ("apt-get install liblz4-dev zlib1g-dev" in lines[0]) == mismatch


@pytest.mark.parametrize("shard", ["../other/model.safetensors", "/etc/passwd", "sub/../../x.safetensors", "..",
                                   "{tmp}/m/model.safetensors"])
def test_16_6_shard_paths_stay_inside_the_model_folder(make_checkpoint, tmp_path, capsys, shard):
    import json
    import shutil

    from bitlane import golden

    path = tmp_path / "m"
    shutil.copytree(make_checkpoint(seed=7), path)
    shutil.copytree(make_checkpoint(seed=7), tmp_path / "other")
    shard = shard.format(tmp=tmp_path)  # absolute, even if it names this very folder's file
    names = golden.load_model(path).state_dict().keys()
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: shard for n in names}}))
    assert cli.main(["generate", "--model", str(path), "--prompt-ids", "1"]) == 1
    assert _one_line_error(capsys) == (f"bitlane generate: error: {path}/model.safetensors.index.json: shard "
                                       f"{shard!r} lies outside {path}; shards must be files inside the model folder\n")


def test_16_6_shards_inside_the_folder_still_load(make_checkpoint, tmp_path):
    from bitlane import golden

    model = golden.load_model(make_checkpoint(seed=7))
    golden.save_model(model, tmp_path / "sharded", max_shard_bytes=20_000)
    index = (tmp_path / "sharded" / "model.safetensors.index.json").read_text()
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(index.replace('"model-', '"./model-'))
    assert golden.load_model(tmp_path / "sharded").state_dict().keys() == model.state_dict().keys()


@pytest.fixture
def opened_urls(monkeypatch):
    """The URLs the device backends open (nothing is opened: the first connect fails the command)."""
    import bitlane.devices
    from bitlane.sw import BitlaneError

    urls = []

    def connect(url, timeout=10.0, log=None):
        urls.append(url)
        raise BitlaneError(f"not opening {url}")

    monkeypatch.setattr(bitlane.devices, "connect", connect)
    return urls


@pytest.mark.parametrize("option", ["url=serial://socket://127.0.0.1:7654", "url=socket://127.0.0.1:7654",
                                    "port=socket://127.0.0.1:7654", "port=serial://socket://127.0.0.1:7654"])
def test_16_8_serial_port_and_url_take_both_forms(make_checkpoint, capsys, opened_urls, option):
    assert cli.main(["generate", "--model", str(make_checkpoint(seed=3)), "--prompt-ids", "1", "--backend", "serial",
                     "--backend-opt", option]) == 1
    [url] = opened_urls
    assert url.startswith("serial://socket://127.0.0.1:7654")
    assert _one_line_error(capsys) == f"bitlane generate: error: not opening {url}\n"


def test_16_7_uart_sim_build_is_reused_from_one_run_to_the_next():
    """Its cache key held a function's address, so every `python -m bitlane.hw.sim.uart_sim` rebuilt for a minute."""
    import subprocess
    import sys

    script = ("import bitlane.hw.sim.uart_sim as u; u.verilate = lambda out_dir, *a, **k: print(out_dir); "
              "u.build_uart_board('icebreaker')")
    dirs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(dirs) == 1, dirs


@pytest.mark.parametrize("json_output", [False, True])
def test_16_10_max_new_tokens_beyond_the_context_is_stated(make_checkpoint, capsys, json_output):
    path = make_checkpoint(seed=4, tokenizer=False, max_position_embeddings=8)
    assert cli.main(["generate", "--model", str(path), "--prompt-ids", "1,2,3", "--max-new-tokens", "100000000",
                     *(["--json"] if json_output else [])]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[0] == ("bitlane generate: note: at most 5 new tokens fit in the model's context "
                                   "(max_position_embeddings 8, prompt 3 tokens); --max-new-tokens 100000000 "
                                   "will stop there")
    assert len(json.loads(out)["generated_ids"] if json_output else out.split()) == 5
    assert cli.main(["generate", "--model", str(path), "--prompt-ids", "1,2,3", "--max-new-tokens", "5"]) == 0
    assert "note" not in capsys.readouterr().err  # exactly what fits: nothing to say


def _truncate(path):
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])


def _wrong_shape(path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.1.mlp.down_proj.weight"] = tensors["model.layers.1.mlp.down_proj.weight"][:, :-4].clone()
    save_file(tensors, path / "model.safetensors")


def _absurd_layers(path):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 200_000}))


@pytest.mark.parametrize("damage, message", [
    (_truncate, "model.safetensors: not a readable safetensors file"),
    (_wrong_shape, "tensor model.layers.1.mlp.down_proj.weight is torch.uint8 (16, 124), expected packed uint8 "
                   "(16, 128) or float (64, 128) (from config.json)"),
    (_absurd_layers, "tensor model.layers.2.self_attn.q_proj.weight missing (config.json says num_hidden_layers = "
                     "200000; the checkpoint's tensors hold 2 layers)"),
    (lambda path: (path / "model.safetensors").unlink(), "neither model.safetensors nor model.safetensors.index.json"),
])
@pytest.mark.parametrize("as_json", [False, True])
def test_16_11_info_checks_the_safetensors_headers(make_checkpoint, tmp_path, capsys, damage, message, as_json):
    import shutil
    import time

    path = tmp_path / "bad"
    shutil.copytree(make_checkpoint(seed=7), path)
    damage(path)
    start = time.perf_counter()
    assert cli.main(["info", "--model", str(path), *(["--json"] if as_json else [])]) == 1
    assert time.perf_counter() - start < 5
    assert message in _one_line_error(capsys, "info")


def test_16_12_a_a_dropped_link_says_read_failed_once():
    import socket
    import struct

    from bitlane.sw.transport import SerialTransport, TransportError

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        link = SerialTransport(f"socket://127.0.0.1:{listener.getsockname()[1]}")
        peer, _ = listener.accept()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # a reset, as when the simulator dies
        try:
            with pytest.raises(TransportError) as error:
                for _ in range(10):
                    link.read(0.2)
        finally:
            link.close()
    message = str(error.value)
    assert message.startswith("socket://127.0.0.1:") and message.count("read failed") == 1, message


@pytest.mark.parametrize("backend", ["model", "sim"])
@pytest.mark.parametrize("preset", ["tiny/../../etc", "tiny/x", "../tiny"])
def test_16_12_b_a_preset_is_a_name_not_a_path(make_checkpoint, capsys, no_sim_build, backend, preset):
    assert cli.main(["generate", "--model", str(make_checkpoint(seed=3)), "--prompt-ids", "1", "--backend", backend,
                     "--backend-opt", f"preset={preset}"]) == 1
    err = _one_line_error(capsys)
    assert f"'{backend}://{preset}': unexpected '/" in err
    assert f"after the preset name; expected {backend}://PRESET" in err


def test_16_12_b_preset_urls_that_were_fine_still_are():
    for url in ("model://tiny", "model://tiny/", "model:///tiny"):
        with bitlane.connect(url) as acc:
            assert acc.caps.lanes == 4, url


@pytest.mark.parametrize("backend, url", [("model", "sim://tiny"), ("sim", "model://tiny"),
                                          ("serial", "model://tiny"), ("model", "serial:///dev/ttyUSB1")])
def test_16_12_c_url_of_another_backend_is_refused(make_checkpoint, capsys, no_sim_build, backend, url):
    assert cli.main(["generate", "--model", str(make_checkpoint(seed=3)), "--prompt-ids", "1", "--backend", backend,
                     "--backend-opt", f"url={url}"]) == 1
    given = url.partition(":")[0]
    assert _one_line_error(capsys) == (f"bitlane generate: error: backend {backend!r}: url={url!r} is a {given}:// "
                                       f"device; use --backend {given} (or a {backend}:// URL)\n")


def test_16_12_c_url_of_the_same_backend_runs_and_is_reported(make_checkpoint, capsys):
    assert cli.main(["generate", "--model", str(make_checkpoint(seed=3)), "--prompt-ids", "1", "--max-new-tokens", "2",
                     "--backend", "model", "--backend-opt", "url=model://tiny"]) == 0
    err = capsys.readouterr().err
    assert "[model://tiny: " in err and "backend model]" in err


def test_16_12_d_bench_help_lists_the_benchmarks(capsys):
    from pathlib import Path

    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--help"])
    out = capsys.readouterr().out
    bench_dir = Path(cli.__file__).parents[1] / "bench"
    names = sorted(p.name.removesuffix("_bench.py") for p in bench_dir.glob("*_bench.py"))
    assert exit_.value.code == 0 and len(names) >= 5
    listed = out.split("benchmarks (bench/NAME_bench.py):\n")[1].splitlines()
    assert [line.split()[0] for line in listed] == names
    assert "  golden     Tokens/s of the golden model on CPU" in out


@pytest.mark.parametrize("shard", [None, 20_000])
def test_16_12_e_make_model_files_get_normal_permissions(tmp_path, capsys, shard):
    import os
    import stat

    from bitlane import golden

    umask = os.umask(0o022)
    try:
        if shard is None:
            assert cli.main(["make-model", str(tmp_path / "m")]) == 0
        else:
            golden.save_model(_tiny_model(), tmp_path / "m", max_shard_bytes=shard)
    finally:
        os.umask(umask)
    files = sorted((tmp_path / "m").iterdir())
    assert any(f.suffix == ".safetensors" for f in files)
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: "0o644" for f in files}


def _tiny_model():
    from bitlane import golden

    return golden.BitNetForCausalLM(golden.BitNetConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                        num_hidden_layers=1, num_attention_heads=2,
                                                        num_key_value_heads=2))
