"""Host driver over the functional-model transport: products, splitting, residency, errors,
recovery, and bit-exact agreement with the golden model."""
import time

import numpy as np
import pytest

import bitlane
from bitlane import golden, sw
from bitlane.contract import protocol as p
from bitlane.contract.config import CoreConfig, preset
from bitlane.contract.packing import PackingError, pack_weights
from bitlane.contract.protocol import Cmd, ErrorCode
from bitlane.sw import Accelerator
from bitlane.sw.model_device import ModelDevice
from bitlane.sw.transport import DeviceTimeout, FaultyTransport, ModelTransport, TransportError
from tests.devicecheck import compare_with_golden

# Small memories, so every splitting path (rows, columns/K, vector batches, streaming) is taken
# with matrices of a few hundred elements.
CRAMPED = CoreConfig("cramped", lanes=4, k_per_cycle=4, weight_depth=96, act_depth=24, out_depth=8, max_k=48,
                     max_payload=64)


def reference(t: np.ndarray, Q: np.ndarray) -> np.ndarray:
    return t.astype(np.int64) @ Q.astype(np.int64)


def random_operands(rng, rows, cols, n):
    return (rng.integers(-1, 2, (rows, cols), dtype=np.int8), rng.integers(-128, 128, (cols, n), dtype=np.int8))


@pytest.mark.parametrize("config", [preset("tiny"), preset("icebreaker"), CRAMPED], ids=lambda c: c.name)
@pytest.mark.parametrize("rows,cols,n", [(1, 1, 1), (5, 9, 1), (37, 130, 3), (70, 301, 11)])
def test_matmul_exact_with_splitting(config, rows, cols, n):
    rng = np.random.default_rng(rows * 1000 + cols)
    t, Q = random_operands(rng, rows, cols, n)
    with Accelerator(ModelTransport(config)) as acc:
        np.testing.assert_array_equal(acc.matmul(t, Q), reference(t, Q))
        np.testing.assert_array_equal(acc.matvec(t, Q[:, 0]), reference(t, Q[:, :1])[:, 0])


def test_extreme_values_and_k_beyond_max_k():
    """All -1 rows against q = -128 at K = 3 * max_k: the largest accumulators, summed over chunks."""
    cols = 3 * CRAMPED.max_k
    t = -np.ones((9, cols), dtype=np.int8)
    t[1] = 1
    q = np.full(cols, -128, dtype=np.int8)
    q2 = np.full(cols, 127, dtype=np.int8)
    with Accelerator(ModelTransport(CRAMPED)) as acc:
        y = acc.matmul(t, np.stack([q, q2], axis=1))
    assert y[0].tolist() == [128 * cols, -127 * cols] and y[1].tolist() == [-128 * cols, 127 * cols]


def test_split_counts_are_what_the_memories_force():
    rng = np.random.default_rng(3)
    t, Q = random_operands(rng, 70, 130, 5)  # 18 row tiles x 33 k-steps, 5 vectors
    with Accelerator(ModelTransport(CRAMPED)) as acc:
        acc.matmul(t, Q)
        c = acc.counters()
    # K: max_k 48 = 12 steps -> 3 chunks of 11; rows: out_depth 8 -> 3 pieces of 6 tiles;
    # vectors: out_depth 8 // 6 tiles -> batches of 1. 45 RUNs whose busy cycles cover the product once.
    assert c["busy_cycles"] == 5 * 18 * 33
    assert c["stall_cycles"] == 45 * CRAMPED.run_overhead


def test_resident_and_streamed_layers():
    rng = np.random.default_rng(5)
    layers = {f"l{i}": rng.integers(-1, 2, (16, 40), dtype=np.int8) for i in range(5)}  # 4 x 10 = 40 words
    with Accelerator(ModelTransport(CRAMPED)) as acc:
        placed = {name: acc.load_weights(name, t) for name, t in layers.items()}
        # 96 words with a quarter (24) kept free: one layer resident (40), then streaming
        assert [placed[n].resident for n in layers] == [True, False, False, False, False]
        q = rng.integers(-128, 128, (3, 40), dtype=np.int8)
        sent = {}
        for name, t in layers.items():
            before = acc.stats.wire_bytes_out
            np.testing.assert_array_equal(acc.matmul_loaded(name, q), reference(t, q.T).T)
            sent[name] = acc.stats.wire_bytes_out - before
        # a streamed layer sends its weight words again on every call, a resident one does not
        weight_bytes = len(pack_weights(layers["l0"], 4, 4))
        assert all(sent[name] >= sent["l0"] + weight_bytes for name in list(layers)[1:])


def test_bad_operands_have_clear_errors():
    with Accelerator(ModelTransport(preset("tiny"))) as acc:
        with pytest.raises(PackingError, match="trits: weights must be ternary"):
            acc.matvec(np.full((2, 3), 2), np.zeros(3, dtype=np.int8))
        with pytest.raises(PackingError, match="Q: expected 3 rows"):
            acc.matmul(np.zeros((2, 3), dtype=np.int8), np.zeros((4, 1), dtype=np.int8))
        with pytest.raises(PackingError, match="q: activations must be int8"):
            acc.matvec(np.zeros((2, 3), dtype=np.int8), np.array([0, 300, 0]))


def test_device_errors_and_link_stays_in_sync():
    cfg = preset("tiny")
    with Accelerator(ModelTransport(cfg)) as acc:
        cases = [
            (Cmd.WRITE_WEIGHTS, p.write_weights(cfg.weight_depth, bytes(cfg.weight_word_bytes)), ErrorCode.BAD_ADDRESS),
            (Cmd.WRITE_ACT, p.write_act(0, bytes(3)), ErrorCode.BAD_LENGTH),
            (Cmd.RUN, p.run(0, 0, 0, 0, 4, 1), ErrorCode.BAD_ARGUMENT),
            (Cmd.RUN, p.run(0, 0, 0, 4, cfg.max_k + 1, 1), ErrorCode.BAD_ARGUMENT),
            (Cmd.RUN, p.run(cfg.weight_depth, 0, 0, 4, 4, 1), ErrorCode.BAD_ADDRESS),
            (Cmd.READ_OUT, p.read_out(0, 0), ErrorCode.BAD_ARGUMENT),
            (Cmd.READ_OUT, p.read_out(cfg.out_depth * cfg.lanes - 1, 2), ErrorCode.BAD_ADDRESS),
            (0x42, b"", ErrorCode.UNKNOWN_CMD),
            (Cmd.INFO.response, b"", ErrorCode.UNKNOWN_CMD),
        ]
        for cmd, payload, code in cases:
            with pytest.raises(sw.DeviceError) as e:
                acc.transact([(cmd, payload)])
            assert e.value.code == code and e.value.request == cmd
        counters = acc.counters()
        assert counters["frames_bad"] == len(cases)
        assert acc.info() == p.Capabilities.from_config(cfg)


def test_rejected_frames_change_no_state():
    cfg = preset("tiny")
    device = ModelTransport(cfg).device
    good = p.encode_frame(Cmd.WRITE_WEIGHTS, 1, p.write_weights(0, b"\x55" * cfg.weight_word_bytes))
    bad = bytearray(good)
    bad[-3] ^= 0x01  # corrupt a payload byte (0x55 -> 0x54: no stuffing involved)
    answer = p.FrameDecoder().feed(device.process(bytes(bad)))
    assert answer == [p.Frame(Cmd.ERROR, 1, bytes([ErrorCode.BAD_CRC, Cmd.WRITE_WEIGHTS]))]
    assert not device.weights.any()
    out_of_range = p.encode_frame(Cmd.WRITE_WEIGHTS, 2, p.write_weights(cfg.weight_depth - 1, b"\x55" * 8))
    device.process(out_of_range)
    assert not device.weights.any()
    device.process(good)
    assert device.weights[0].tolist() == [1] * 16


def test_model_counters_truncation_and_reset():
    cfg = preset("tiny")
    device = ModelTransport(cfg).device
    stream = b"junk" + p.encode_frame(Cmd.INFO, 1)[:3] + p.encode_frame(Cmd.INFO, 2)
    events = p.FrameDecoder().feed(device.process(stream))
    assert [e.cmd for e in events] == [Cmd.ERROR, Cmd.INFO.response]
    assert events[0].payload == bytes([ErrorCode.TRUNCATED, Cmd.INFO])
    c = device.counters()
    assert (c.frames_ok, c.frames_bad, c.dropped_bytes) == (1, 1, 4)
    (event,) = p.FrameDecoder().feed(device.process(p.encode_frame(Cmd.RESET, 3)))
    assert event == p.Frame(Cmd.RESET.response, 3, b"")
    c = device.counters()  # cleared; only the cycles of sending the RESET answer since
    assert (c.frames_ok, c.frames_bad, c.dropped_bytes, c.busy_cycles) == (0, 0, 0, 0) and c.cycles < 16


def test_corrupted_response_raises_and_reset_then_retry_works():
    rng = np.random.default_rng(9)
    t, Q = random_operands(rng, 20, 50, 2)
    link = FaultyTransport(ModelTransport(CRAMPED))
    acc = Accelerator(link)
    link.corrupt_next = True
    with pytest.raises(sw.ProtocolError, match="corrupted|call reset"):
        acc.matmul(t, Q)
    with pytest.raises(sw.ProtocolError, match="out of sync"):
        acc.info()
    acc.reset()
    np.testing.assert_array_equal(acc.matmul(t, Q), reference(t, Q))


def test_silent_device_times_out_in_bounded_time():
    link = FaultyTransport(ModelTransport(preset("tiny")))
    acc = Accelerator(link, timeout=0.3)
    link.mute = True
    start = time.monotonic()
    with pytest.raises(DeviceTimeout, match="no answer to INFO"):
        acc.info()
    assert time.monotonic() - start < 2.0
    link.mute = False
    acc.reset()
    assert acc.info().lanes == 4


def test_connect_urls_and_missing_serial_port():
    with bitlane.connect("model://tiny") as acc:
        assert acc.caps == p.Capabilities.from_config(preset("tiny"))
    start = time.monotonic()
    with pytest.raises(TransportError, match="cannot open .*ttyDOESNOTEXIST"):
        bitlane.connect("serial:///dev/ttyDOESNOTEXIST?baud=3000000")
    assert time.monotonic() - start < 5.0
    with pytest.raises(ValueError, match="unknown preset"):
        bitlane.connect("model://nosuchboard")
    with pytest.raises(ValueError, match="unknown device URL scheme"):
        bitlane.connect("ftp://tiny")
    for query, what in (("baud=fast", "baud='fast'"), ("baud=9600&window=0", "window='0'")):
        with pytest.raises(ValueError, match=f"{what}, expected a whole number >= 1"):
            bitlane.connect(f"serial:///dev/ttyDOESNOTEXIST?{query}")


@pytest.mark.parametrize("preset_name,overrides", [
    ("tiny", {}),
    ("icebreaker", dict(hidden_size=96, intermediate_size=256, num_attention_heads=6, num_key_value_heads=3)),
    ("cramped", dict(hidden_size=32, intermediate_size=80, num_attention_heads=2, num_key_value_heads=1)),
])
def test_generation_matches_golden_bit_for_bit(make_checkpoint, preset_name, overrides):
    model = golden.load_model(make_checkpoint(seed=len(overrides), **overrides))
    config = CRAMPED if preset_name == "cramped" else preset(preset_name)
    with Accelerator(ModelTransport(config)) as acc:
        acc.load_model(model)
        result = compare_with_golden(model, acc, prompt_ids=[256, 72, 105, 33, 10], max_new_tokens=32)
    assert result.mismatches == []
    assert result.device_ids == result.golden_ids and len(result.golden_ids) == 32
    # 5-token prompt as one batch, then one call per new token, for every BitLinear
    n_layers = len(list(model.bitlinear_layers()))
    assert result.calls == n_layers * 32


def test_cli_generate_on_model_backend_matches_golden(make_checkpoint, capsys):
    import json
    import re

    from bitlane.cli import main

    path = str(make_checkpoint(seed=3))
    ids = {}
    common = ["generate", "--model", path, "--prompt-ids", "256,65,66", "--max-new-tokens", "8", "--greedy", "--json"]
    for backend, options in (("golden", []), ("model", ["--backend-opt", "preset=tiny"])):
        assert main([*common, "--backend", backend, *options]) == 0
        out, err = capsys.readouterr()
        ids[backend] = json.loads(out)["generated_ids"]
    assert ids["model"] == ids["golden"] and len(ids["golden"]) == 8
    assert re.search(r"model://tiny: \d+/14 layers resident", err)
    assert "tokens/s" in err and "link bytes/token" in err and "projected icebreaker" in err
    # the projection's terms add up: RUN cycles at the clock, bytes at the baud (8N1), a USB round trip a frame
    from bitlane.contract.config import BOARD_FACTS, UART_BITS_PER_BYTE
    for name, facts in BOARD_FACTS.items():
        m = re.search(rf"projected {name}: ([\d.]+) tokens/s = ([\d,]+) RUN cycles at [\d.]+ MHz \+ ([\d,]+) bytes "
                      rf"at [\d.]+ Mbaud \+ (\d+) USB round trips", err)
        tokens_per_s, cycles, wire, trips = (float(g.replace(",", "")) for g in m.groups())
        seconds = (cycles / facts.core.clock_hz + wire * UART_BITS_PER_BYTE / facts.baud
                   + trips * facts.usb_round_trip_s())
        assert trips > 0 and tokens_per_s == pytest.approx(1 / seconds, abs=0.006)
    assert main(["generate", "--model", path, "--prompt-ids", "1", "--backend", "model",
                 "--backend-opt", "colour=blue"]) == 1
    assert "unknown options ['colour']" in capsys.readouterr().err
    assert main(["generate", "--model", path, "--prompt-ids", "1", "--backend", "model",
                 "--backend-opt", "timeout=soon"]) == 1
    assert capsys.readouterr().err == "bitlane generate: error: backend 'model': timeout='soon', expected seconds, " \
                                      "e.g. timeout=30\n"


def test_serial_transport_over_a_pseudo_terminal():
    """The serial:// path end to end through pyserial and a tty, the functional model on the far side."""
    import os
    import threading

    controller, terminal = os.openpty()
    device = ModelDevice(preset("tiny"))
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data = os.read(controller, 1 << 16)
            except OSError:
                return
            os.write(controller, device.process(data))

    threading.Thread(target=serve, daemon=True).start()
    try:
        with bitlane.connect(f"serial://{os.ttyname(terminal)}?baud=3000000", timeout=5) as acc:
            rng = np.random.default_rng(8)
            t, Q = random_operands(rng, 30, 70, 2)
            np.testing.assert_array_equal(acc.matmul(t, Q), reference(t, Q))
            assert acc.counters()["frames_ok"] > 3
    finally:
        stop.set()
        os.close(terminal)
        os.close(controller)


def test_int_matmul_notices_new_weights_under_a_known_name():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    q = torch.from_numpy(rng.integers(-128, 128, (2, 24), dtype=np.int8))
    first, second = (torch.from_numpy(rng.integers(-1, 2, (8, 24), dtype=np.int8)) for _ in range(2))
    with Accelerator(ModelTransport(CRAMPED)) as acc:
        for trits in (first, first, second):
            expected = q.long() @ trits.long().T
            assert torch.equal(acc.int_matmul("layer", trits, q), expected.to(torch.int32))
        assert len(acc.layers) == 1
        acc.unload()
        assert acc.layers == {} and acc.free_words == CRAMPED.weight_depth


def test_cli_reports_a_missing_serial_port_in_one_line(make_checkpoint, capsys):
    from bitlane.cli import main

    path = str(make_checkpoint(seed=3))
    assert main(["generate", "--model", path, "--prompt-ids", "1", "--backend", "serial",
                 "--backend-opt", "port=/dev/ttyDOESNOTEXIST"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("bitlane generate: error: cannot open serial:///dev/ttyDOESNOTEXIST") and "\n" not in err


def test_cli_device_report_starts_on_its_own_line(make_checkpoint, monkeypatch):
    """On a terminal stdout and stderr share one screen: the streamed ids end their line before the report."""
    import io

    from bitlane.cli import main

    path = make_checkpoint(seed=3, tokenizer=False)
    screen = io.StringIO()
    monkeypatch.setattr("sys.stdout", screen)
    monkeypatch.setattr("sys.stderr", screen)
    assert main(["generate", "--model", str(path), "--prompt-ids", "1,2", "--max-new-tokens", "4", "--greedy",
                 "--backend", "model", "--backend-opt", "preset=tiny"]) == 0
    lines = screen.getvalue().splitlines()
    report = next(i for i, line in enumerate(lines) if line.startswith("[model://tiny: "))
    expected = golden.generate(golden.load_model(path), [1, 2], 4, greedy=True)
    assert lines[report - 1].split() == [str(t) for t in expected]
