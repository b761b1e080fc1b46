"""The `sim` transport: the Verilated BitlaneTop behind the C++ TCP harness, driven by the host
runtime. Checked against numpy, the functional model (byte for byte) and the golden model."""
import os
import signal
import time

import numpy as np
import pytest

import bitlane
from bitlane import golden, sw
from bitlane.contract import protocol as p
from bitlane.contract.config import preset
from bitlane.contract.protocol import Cmd
from bitlane.devices import sim_transport
from bitlane.sw import Accelerator
from bitlane.sw.model_device import ModelDevice
from bitlane.sw.transport import DeviceTimeout, FaultyTransport, TransportError
from tests.devicecheck import compare_with_golden

TINY = preset("tiny")
GOLDEN_SHAPES = {  # random checkpoints of a few shapes (vocab >= 258 for the byte tokenizer)
    "small": dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=True),
    "odd": dict(vocab_size=270, hidden_size=72, intermediate_size=200, num_hidden_layers=1,
                num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=128,
                tie_word_embeddings=False),
}
PROMPT = [256, 84, 104, 101, 32]


@pytest.fixture(scope="module")
def tiny():
    acc = bitlane.connect("sim://tiny", timeout=30)
    yield acc
    acc.close()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    paths = {}
    for name, config in GOLDEN_SHAPES.items():
        paths[name] = tmp_path_factory.mktemp(name)
        golden.make_random_checkpoint(paths[name], config, seed=len(name))
    return paths


def test_info_matches_preset(tiny):
    assert tiny.info() == p.Capabilities.from_config(TINY)


@pytest.mark.parametrize("rows,cols,n", [(1, 1, 1), (13, 77, 3), (300, 1000, 2)])
def test_matmul_exact(tiny, rows, cols, n):
    rng = np.random.default_rng(rows + cols)
    t = rng.integers(-1, 2, (rows, cols), dtype=np.int8)
    Q = rng.integers(-128, 128, (cols, n), dtype=np.int8)
    Q[0] = -128
    np.testing.assert_array_equal(tiny.matmul(t, Q), t.astype(np.int64) @ Q.astype(np.int64))


def test_extreme_accumulators_at_max_k(tiny):
    cols = TINY.max_k
    t = np.stack([-np.ones(cols, dtype=np.int8), np.ones(cols, dtype=np.int8)])
    q = np.full(cols, -128, dtype=np.int8)
    assert tiny.matvec(t, q).tolist() == [128 * cols, -128 * cols]


def test_same_bytes_as_the_functional_model(tiny):
    """Every answer byte of the gateware equals the functional model's, error paths included."""
    cfg = TINY
    rng = np.random.default_rng(1)
    w = rng.integers(0, 256, 8 * cfg.weight_word_bytes, dtype=np.uint8).tobytes()
    a = rng.integers(0, 256, 12 * cfg.act_word_bytes, dtype=np.uint8).tobytes()
    good = [
        p.encode_frame(Cmd.INFO, 1),
        p.encode_frame(Cmd.WRITE_WEIGHTS, 2, p.write_weights(100, w)),
        p.encode_frame(Cmd.WRITE_ACT, 3, p.write_act(7, a)),
        p.encode_frame(Cmd.RUN, 4, p.run(100, 7, 3, 8, 16, 3)),  # 2 row tiles x 4 k-steps x 3 vectors
        p.encode_frame(Cmd.READ_OUT, 5, p.read_out(3 * cfg.lanes, 6 * cfg.lanes)),
    ]
    bad_crc = bytearray(p.encode_frame(Cmd.RUN, 6, p.run(100, 7, 3, 8, 16, 3)))
    bad_crc[6] ^= 0x02
    stream = b"".join([
        b"\x00\x13garbage",
        *good,
        bytes(bad_crc),
        p.encode_frame(Cmd.WRITE_WEIGHTS, 7, p.write_weights(cfg.weight_depth - 1, w)),  # BAD_ADDRESS
        p.encode_frame(Cmd.WRITE_ACT, 8, p.write_act(0, b"\x01\x02\x03")),  # BAD_LENGTH (part word)
        p.encode_frame(Cmd.RUN, 9, p.run(0, 0, 0, 4, 0, 1)),  # BAD_ARGUMENT
        p.encode_frame(Cmd.RUN, 10, p.run(0, 0, 0, 4, cfg.max_k + 4, 1)),  # BAD_ARGUMENT
        p.encode_frame(Cmd.READ_OUT, 11, p.read_out(cfg.out_depth * cfg.lanes, 1)),  # BAD_ADDRESS
        p.encode_frame(0x33, 12),  # UNKNOWN_CMD
        p.encode_frame(Cmd.INFO, 13, b"x"),  # BAD_LENGTH for the command
        p.encode_frame(Cmd.WRITE_WEIGHTS, 14, bytes(cfg.max_payload + 4))[:9],  # BAD_LENGTH at the header
        p.encode_frame(Cmd.RUN, 15, bytes(18))[:12],  # TRUNCATED by the next SYNC
        p.encode_frame(Cmd.READ_OUT, 16, p.read_out(3 * cfg.lanes, 6 * cfg.lanes)),
    ])
    model = ModelDevice(cfg)
    expected = model.process(stream)
    n_answers = len(p.FrameDecoder().feed(expected))
    tiny.reset()
    tiny.transport.write(stream)
    got, decoder, answers, deadline = b"", p.FrameDecoder(), 0, time.monotonic() + 20
    while answers < n_answers and time.monotonic() < deadline:
        chunk = tiny.transport.read(0.5)
        got += chunk
        answers += len(decoder.feed(chunk))
    assert p.FrameDecoder().feed(got) == p.FrameDecoder().feed(expected)
    assert got == expected
    sim_counters, model_counters = tiny.counters(), model.counters()
    for name in ("busy_cycles", "stall_cycles", "frames_ok", "frames_bad", "dropped_bytes"):
        # the model has seen one frame fewer (no COUNTERS request) and the RESET was before
        expected_value = getattr(model_counters, name) + (1 if name == "frames_ok" else 0)
        assert sim_counters[name] == expected_value, name


def test_run_cycles_match_the_model(tiny):
    rng = np.random.default_rng(2)
    t = rng.integers(-1, 2, (40, 90), dtype=np.int8)
    Q = rng.integers(-128, 128, (90, 3), dtype=np.int8)
    with Accelerator(sw.transport.ModelTransport(TINY)) as model:
        for acc in (tiny, model):
            acc.reset()
            acc.matmul(t, Q)
        assert tiny.counters()["busy_cycles"] == model.counters()["busy_cycles"] == 3 * 10 * 23
        assert tiny.counters()["stall_cycles"] == model.counters()["stall_cycles"]


@pytest.mark.parametrize("shape", list(GOLDEN_SHAPES))
def test_generation_matches_golden_on_tiny(tiny, checkpoints, shape):
    model = golden.load_model(checkpoints[shape])
    tiny.unload()  # a fresh placement per model
    tiny.load_model(model)
    result = compare_with_golden(model, tiny, PROMPT, max_new_tokens=32)
    assert result.mismatches == []
    assert result.device_ids == result.golden_ids and len(result.golden_ids) == 32


def test_generation_matches_golden_on_sim_preset(checkpoints):
    model = golden.load_model(checkpoints["small"])
    with bitlane.connect("sim://sim", timeout=60) as acc:
        acc.load_model(model)
        assert all(layer.resident for layer in acc.layers.values())
        result = compare_with_golden(model, acc, PROMPT, max_new_tokens=32)
        one_word = p.unpack_run_response(acc.request(Cmd.RUN, p.run(0, 0, 0, 1, 1, 1)))
    assert result.mismatches == [] and result.device_ids == result.golden_ids
    assert one_word == 1 + preset("sim").run_overhead  # the model's cycle count on the wide preset too


def test_corrupted_answer_then_reset_and_retry():
    rng = np.random.default_rng(4)
    t = rng.integers(-1, 2, (30, 50), dtype=np.int8)
    q = rng.integers(-128, 128, 50, dtype=np.int8)
    link = FaultyTransport(sim_transport(TINY))
    with Accelerator(link, timeout=10) as acc:
        link.corrupt_next = True
        with pytest.raises(sw.ProtocolError):
            acc.matvec(t, q)
        acc.reset()
        np.testing.assert_array_equal(acc.matvec(t, q), t.astype(np.int64) @ q)


def test_stalled_simulator_times_out_and_recovers():
    with bitlane.connect("sim://tiny", timeout=0.5) as acc:
        pid = acc.transport.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(DeviceTimeout, match="no answer to INFO"):
                acc.info()
            assert time.monotonic() - start < 3
        finally:
            os.kill(pid, signal.SIGCONT)
        acc.reset()
        assert acc.info().lanes == TINY.lanes


def test_killed_simulator_is_reported():
    acc = bitlane.connect("sim://tiny", timeout=5)
    acc.transport.process.kill()  # no wait(): the socket may close before the process can be reaped
    start = time.monotonic()
    with pytest.raises(TransportError, match=r"sim://tiny: simulator process \d+ exited"):
        acc.info()
    assert time.monotonic() - start < 3
    acc.close()


def test_waveform_trace(tmp_path):
    with bitlane.connect(f"sim://tiny?trace={tmp_path / 'run.fst'}") as acc:
        assert acc.matvec(np.ones((4, 4), dtype=np.int8), np.arange(4, dtype=np.int8)).tolist() == [6] * 4
        path = acc.transport.trace_path
    assert path.suffix in (".fst", ".vcd") and path.stat().st_size > 1000
    if path.suffix == ".vcd":
        assert " rx_data [7:0] $end" in path.read_text(errors="replace")
