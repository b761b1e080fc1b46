"""Issue 16 on the simulators: the UART-level simulator as the README runs it, the sim backend's first use."""
from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys

import pytest

from bitlane import golden
from bitlane import cli

SMALL = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return golden.make_random_checkpoint(tmp_path_factory.mktemp("small"), SMALL, seed=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_16_7_16_8_uart_sim_serves_clients_until_ctrl_c(small_model, capsys):
    """`python -m bitlane.hw.sim.uart_sim` serves one client after another on the URL it prints, which
    `--backend-opt url=` takes as printed (and `port=`, as the README had it); Ctrl-C ends it quietly."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "bitlane.hw.sim.uart_sim", "--board", "icebreaker", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert select.select([server.stdout], [], [], 600)[0], "no URL printed"
        url = server.stdout.readline().strip()
        assert url == f"serial://socket://127.0.0.1:{port}"
        expected = golden.generate(golden.load_model(small_model), [1, 2, 3], 2, greedy=True)
        for option in (f"url={url}", f"port=socket://127.0.0.1:{port}"):  # two clients in a row
            assert cli.main(["generate", "--model", str(small_model), "--prompt-ids", "1,2,3", "--max-new-tokens", "2",
                             "--greedy", "--json", "--backend", "serial", "--backend-opt", option,
                             "--backend-opt", "timeout=120"]) == 0, capsys.readouterr().err
            assert json.loads(capsys.readouterr().out)["generated_ids"] == expected
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
        err = server.stderr.read()
        assert f"use it with: bitlane generate ... --backend serial --backend-opt url={url}" in err
        assert err.count("bitlane-uart-sim: ") == 2 and "Traceback" not in err  # one line per client served
    finally:
        server.kill()
        server.wait()


def test_16_9_first_sim_use_says_it_builds_and_keeps_the_build_out_of_the_timing(small_model, tmp_path,
                                                                                 monkeypatch, capsys):
    import re

    import bitlane.hw.sim.build as simbuild

    monkeypatch.setattr(simbuild, "DEFAULT_CACHE", tmp_path / "cache")  # a fresh clone: nothing built yet
    command = ["generate", "--model", str(small_model), "--prompt-ids", "1,2,3", "--max-new-tokens", "3",
               "--greedy", "--json", "--backend", "sim", "--backend-opt", "preset=tiny"]
    assert cli.main(command) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines[0] == "[building the simulator for sim://tiny (first use, ~20 s)]"
    built_s = float(re.fullmatch(r"\[built the simulator for sim://tiny in (\d+) s\]", lines[1]).group(1))
    timing = json.loads(out)["timing"]
    assert timing["device_setup_s"] >= built_s - 1 and timing["total_s"] < built_s
    assert cli.main(command) == 0  # built: not a word about it
    assert "building" not in capsys.readouterr().err
