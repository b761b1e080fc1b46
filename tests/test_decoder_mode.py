"""Decoder mode (protocol v2) over model://: the whole decoder step on the functional model's engine,
equal to the integer reference (--backend int) token for token and logit for logit; every decoder
command's errors answered with no state change; prefill, restart, and the mode selection."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import bitlane
from bitlane import golden
from bitlane.contract import protocol as p
from bitlane.contract.config import CoreConfig, DecoderShape, preset
from bitlane.contract.decoder import Bank, Instruction, Op
from bitlane.contract.kv_stream import kv_load_cycles_estimate
from bitlane.contract.protocol import Cmd, ErrorCode
from bitlane.golden.integer import IntegerModel, convert
from bitlane.golden.perplexity import perplexity, text_ids
from bitlane.sw import Accelerator, BitlaneError, DeviceError
from bitlane.sw.decoder_program import DecoderFitError
from bitlane.sw.decoder_session import DecoderRunner, context_shortfall, load_decoder, plan_decoder
from bitlane.sw.transport import ModelTransport
from tests.test_integer import random_model

H128, H256 = "models/bitnet-kjv-h128", "models/bitnet-kjv-h256"
CONTEXT = 8
# A small engine for a small model (needs: banks 532 / 664 / 196 words, 300 instructions, 3936 weight
# words). max_payload 518 carries 3 hidden states of 64 per DECODE, but a request of 4 rows (516 bytes):
# so a prefill takes several frames and a DECODE of 4 tokens is a BAD_ARGUMENT, not a framing error.
SMALL = CoreConfig("decoder-small", lanes=4, k_per_cycle=4, weight_depth=4096, act_depth=256, out_depth=256,
                   max_k=1024, max_payload=518,
                   decoder=DecoderShape(layers=2, kv_heads=1, head_dim=32, context=CONTEXT, main_depth=600, vector_lanes=4,
                                        const_depth=700, copy_depth=200, program_depth=320))


@pytest.fixture(scope="module")
def small() -> IntegerModel:
    return convert(random_model(4, vocab_size=200, max_position_embeddings=CONTEXT, hidden_act="relu2",
                                hidden_size=64, intermediate_size=100, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=1))


def small_runner(model: IntegerModel) -> DecoderRunner:
    acc = Accelerator(ModelTransport(SMALL))
    image = plan_decoder(model, acc.caps)
    load_decoder(model, image, acc)
    return DecoderRunner(model, image, acc)


def test_prefill_equals_token_by_token_and_the_reference(small):
    ids = [5, 17, 199, 0, 42, 42, 7, 100]
    runner = small_runner(small)
    cache, ref_cache = runner.new_cache(), small.new_cache()
    prefill = runner(torch.tensor([ids[:7]]), cache)  # 7 tokens: DECODE frames of 3, 3 and 1
    assert torch.equal(prefill, small(torch.tensor([ids[:7]]), ref_cache))
    assert torch.equal(runner(torch.tensor([ids[7:]]), cache), small(torch.tensor([ids[7:]]), ref_cache))
    # the device's answers (the LM head's float product may round differently for other batch shapes)
    y, e = runner.hidden(np.array(ids), 0)
    for t, token in enumerate(ids):
        y1, e1 = runner.hidden(np.array([token]), t)
        assert np.array_equal(y1[0], y[t]) and e1[0] == e[t]
    assert runner.decoded_tokens == 8 + 8 + 8


def test_restart_at_position_zero(small):
    runner = small_runner(small)
    first = runner(torch.tensor([[3, 1, 4, 1, 5]]), runner.new_cache())
    runner(torch.tensor([[9, 2, 6]]), runner.new_cache())  # another sequence in between
    assert torch.equal(runner(torch.tensor([[3, 1, 4, 1, 5]]), runner.new_cache()), first)
    assert torch.equal(runner(torch.tensor([[3, 1, 4, 1, 5]])), first)  # no cache: from position 0 too
    stale = runner.new_cache()
    runner(torch.tensor([[1]]), stale)
    runner(torch.tensor([[2]]), runner.new_cache())
    with pytest.raises(BitlaneError, match="does not hold this sequence's 1 positions"):
        runner(torch.tensor([[3]]), stale)
    with pytest.raises(BitlaneError, match=r"positions 0\.\.8 are past the device's decoder context of 8"):
        runner(torch.tensor([list(range(9))]))


def test_perplexity_equals_the_reference_on_a_small_model(small):
    ids = np.random.default_rng(3).integers(0, 200, 30)
    runner = small_runner(small)
    assert perplexity(runner, ids, batch_size=2) == perplexity(small, ids, batch_size=2)


def snapshot(device) -> tuple:
    engine = device.engine
    return (list(device.program), device.program_loaded, device.setup, device.next_pos,
            [bank.copy() for bank in engine.banks], engine.kv.copy(), engine.kv_exp.copy(), device.weights.copy())


def test_errors_are_answered_and_change_no_state(small):
    acc = Accelerator(ModelTransport(SMALL))
    device = acc.transport.device
    image = plan_decoder(small, acc.caps)
    hidden, depth = image.hidden, SMALL.decoder.program_depth
    rows = small.embedding[[11, 12, 13, 14]].astype("<i2")

    def decode(pos: int, count: int, values: np.ndarray | None = None) -> bytes:
        values = rows[:count] if values is None else values
        return p.DecodeArgs(pos, count).pack() + values.astype("<i2").tobytes()

    def rejected(cmd: Cmd, payload: bytes, code: ErrorCode) -> None:
        before = snapshot(device)
        with pytest.raises(DeviceError) as error:
            acc.request(cmd, payload)
        assert (error.value.code, error.value.request) == (code, cmd), payload[:16].hex()
        after = snapshot(device)
        for old, new in zip(before, after):
            assert all(np.array_equal(a, b) for a, b in zip(old, new)) if isinstance(old, list) else \
                np.array_equal(old, new) if isinstance(old, np.ndarray) else old == new

    rejected(Cmd.DECODE, decode(0, 1), ErrorCode.NOT_READY)  # nothing loaded
    acc.transact(p.HostCodec.load_program_requests(0, image.program, acc.caps))
    rejected(Cmd.DECODE, decode(0, 1), ErrorCode.NOT_READY)  # a program, no DECODE_SETUP
    load_decoder(small, image, acc)
    acc.request(Cmd.DECODE, decode(0, 2))
    assert device.next_pos == 2
    cases = [
        (Cmd.DECODE, decode(2, 1, rows[:1, :-1]), ErrorCode.BAD_LENGTH),  # a row one value short
        (Cmd.DECODE, decode(2, 1)[:-1], ErrorCode.BAD_LENGTH),
        (Cmd.DECODE, decode(2, 2)[:p.DecodeArgs.SIZE + 2 * hidden], ErrorCode.BAD_LENGTH),  # count says 2, 1 row
        (Cmd.DECODE, decode(2, 0), ErrorCode.BAD_ARGUMENT),
        (Cmd.DECODE, decode(2, 4), ErrorCode.BAD_ARGUMENT),  # 4 answers do not fit max_payload
        (Cmd.DECODE, decode(3, 1), ErrorCode.BAD_POSITION),  # skips position 2
        (Cmd.DECODE, decode(1, 1), ErrorCode.BAD_POSITION),  # rewinds into the middle
        (Cmd.DECODE, decode(CONTEXT, 1), ErrorCode.BAD_POSITION),
        (Cmd.WRITE_BANK, p.BankWriteHeader(SMALL.decoder.const_depth - 1, Bank.CONST).pack() + bytes(8),
         ErrorCode.BAD_ADDRESS),
        (Cmd.WRITE_BANK, p.BankWriteHeader(SMALL.decoder.main_depth, Bank.MAIN).pack() + bytes(4),
         ErrorCode.BAD_ADDRESS),
        (Cmd.WRITE_BANK, p.BankWriteHeader(0, Bank.COPY).pack() + bytes(4), ErrorCode.BAD_ARGUMENT),
        (Cmd.WRITE_BANK, p.BankWriteHeader(0, Bank.OUT).pack() + bytes(4), ErrorCode.BAD_ARGUMENT),
        (Cmd.WRITE_BANK, p.BankWriteHeader(0, Bank.CONST).pack() + bytes(3), ErrorCode.BAD_LENGTH),
        (Cmd.LOAD_PROGRAM, p.ProgramHeader(depth - 1).pack() + Instruction(Op.HALT).pack() * 2,
         ErrorCode.BAD_ADDRESS),  # longer than the program memory
        (Cmd.LOAD_PROGRAM, p.ProgramHeader(0).pack() + Instruction(99).pack(), ErrorCode.BAD_ARGUMENT),
        (Cmd.LOAD_PROGRAM, p.ProgramHeader(0).pack(), ErrorCode.BAD_LENGTH),
        (Cmd.DECODE_SETUP, p.decode_setup(hidden, SMALL.decoder.main_depth - hidden + 1, 0, 5),
         ErrorCode.BAD_ADDRESS),
        (Cmd.DECODE_SETUP, p.decode_setup(hidden, 0, 0, 0), ErrorCode.BAD_ARGUMENT),  # R0 reads 0
        (Cmd.DECODE_SETUP, p.decode_setup(0, 0, 0, 5), ErrorCode.BAD_ARGUMENT),
    ]
    for cmd, payload, code in cases:
        rejected(cmd, payload, code)
    # and the device goes on where it was: positions 2..3 as the reference has them
    runner = DecoderRunner(small, image, acc)
    ref_cache = small.new_cache()
    small.hidden(np.array([[11, 12]]), ref_cache)
    y, e = runner.hidden(np.array([13, 14]), 2)
    y_ref, e_ref = small.hidden(np.array([[13, 14]]), ref_cache)
    assert np.array_equal(y, y_ref[0]) and np.array_equal(e, e_ref[0, :, 0])
    # a program that stops (an operand outside its bank): FAULT, and the cache must restart at 0
    bad = Instruction(Op.VMAXABS, r0=2, a_bank=Bank.MAIN, a_addr=SMALL.decoder.main_depth - 1, n=2)
    acc.transact(p.HostCodec.load_program_requests(0, [bad, Instruction(Op.HALT)], acc.caps))
    with pytest.raises(DeviceError) as error:
        acc.request(Cmd.DECODE, decode(4, 1))
    assert error.value.code == ErrorCode.FAULT and device.next_pos == 0
    assert acc.counters()["frames_bad"] == 2 + len(cases) + 1


def test_a_device_without_decoder_does_not_know_the_commands():
    with bitlane.connect("model://icebreaker") as acc:
        assert not acc.caps.decoder and acc.caps.dec_context == 0
        for cmd in sorted(p.DECODER_REQUESTS):
            with pytest.raises(DeviceError) as error:
                acc.request(cmd, p.decode_setup(64, 0, 0, 5))
            assert error.value.code == ErrorCode.UNKNOWN_CMD


def generate_json(capsys, *args: str) -> tuple[list[int], str]:
    from bitlane.cli import main

    assert main(["generate", "--greedy", "--json", *args]) == 0
    out, err = capsys.readouterr()
    return json.loads(out)["generated_ids"], err


def test_cli_h128_decoder_mode_equals_int_backend(capsys):
    common = ["--model", H128, "--prompt", "In the beginning God", "--max-new-tokens", "64"]
    ids_int, _ = generate_json(capsys, *common, "--backend", "int")
    ids_dec, err = generate_json(capsys, *common, "--backend", "model")  # model://sim: decoder mode by itself
    assert ids_dec == ids_int and len(ids_int) == 64
    assert "model://sim: decoder mode" in err and "link bytes/token" in err and "device cycles/token" in err
    assert "[projected icebreaker: no decoder mode: the device has no decoder engine]" in err
    assert "[projected ulx3s: " in err and "tokens/s at the FTDI default 16 ms" in err
    # the ULX3S holds all 64 (its KV cache is in SDRAM): the projection waits for its rows
    assert "inside its context" not in err and "waiting for SDRAM (weights, KV cache)" in err


def test_board_projection_is_the_board_engines_cycles_link_and_usb():
    """project_decoder: the ULX3S engine's own cycles (its model device's DECODE answers), the UART time of
    the bytes, and the USB round trips, added; positions past the board's context are left out."""
    from bitlane.contract.config import BOARD_FACTS
    from bitlane.sw.decoder_session import project_decoder

    model, board = IntegerModel.load(H128), BOARD_FACTS["ulx3s"]
    acc = Accelerator(ModelTransport(board.core))
    image = plan_decoder(model, acc.caps)
    load_decoder(model, image, acc)
    runner = DecoderRunner(model, image, acc)
    runner.hidden(np.arange(3), 0)
    before = runner.decode_cycles
    runner.hidden(np.array([7]), 3)  # one token at position 3, its cycles as the engine counts them
    j = project_decoder(model, board, [3, board.core.decoder.context], wire_bytes=538, round_trips=1)
    assert j["fits"] and j["positions"] == 1 and j["cycles_per_token"] == runner.decode_cycles - before
    # its KV cache is in SDRAM: 16 KVLOADs of the 3 positions before, waits the engine does not count
    assert j["fetch_cycles_per_token"] == 16 * kv_load_cycles_estimate(3, 64, board.core)
    seconds = ((j["cycles_per_token"] + j["fetch_cycles_per_token"]) / board.core.clock_hz + 538 * 10 / board.baud
               + board.usb_round_trip_s(0.001))
    assert j["tokens_per_s"] == pytest.approx(1 / seconds, rel=1e-12)
    slow = 1 / (seconds + board.usb_round_trip_s(0.016) - board.usb_round_trip_s(0.001))
    assert j["tokens_per_s_default_latency"] == pytest.approx(slow, rel=1e-12)
    assert not project_decoder(model, BOARD_FACTS["icebreaker"], [3], 538, 1)["fits"]
    beyond = project_decoder(model, board, [board.core.decoder.context], 538, 1)
    assert not beyond["fits"] and "holds 256 positions" in beyond["reason"]


@pytest.fixture(scope="module")
def h256() -> IntegerModel:
    return IntegerModel.load(H256)


def test_presets_hold_the_shipped_models(h256):
    h128 = IntegerModel.load(H128)
    sim, ulx3s = (p.Capabilities.from_config(preset(name)) for name in ("sim", "ulx3s"))
    for model in (h128, h256):
        plan_decoder(model, sim)
        assert context_shortfall(model, sim) is None
    assert plan_decoder(h128, ulx3s).weight_words == 3328
    assert context_shortfall(h128, ulx3s) is None  # its KV cache in SDRAM, one slot of 256 positions
    with pytest.raises(DecoderFitError, match="bank MAIN: the model needs 2272 words, the engine has 1536"):
        plan_decoder(h256, ulx3s)
    with pytest.raises(DecoderFitError, match="the device has no decoder engine"):
        plan_decoder(h128, p.Capabilities.from_config(preset("icebreaker")))


def test_h256_decoder_mode_equals_the_reference(h256):
    reference = h256
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    with bitlane.connect("model://sim") as acc:
        image = plan_decoder(reference, acc.caps)
        load_decoder(reference, image, acc)
        runner = DecoderRunner(reference, image, acc)
        assert golden.generate(runner, prompt, 64, greedy=True) == golden.generate(reference, prompt, 64, greedy=True)


def test_h128_perplexity_equals_int_backend(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
                    "and darkness was upon the face of the deep.")
    model = golden.load_model(H128)
    ids = text_ids(golden.load_tokenizer(H128), path)
    reference = convert(model)
    with bitlane.connect("model://sim") as acc:
        image = plan_decoder(reference, acc.caps)
        load_decoder(reference, image, acc)
        runner = DecoderRunner(reference, image, acc)
        assert perplexity(runner, ids, window=16) == perplexity(reference, ids, window=16)


def test_cli_mode_selection(make_checkpoint, capsys):
    from bitlane.cli import main

    path = str(make_checkpoint(seed=3))  # head_dim 16: not the engine's 64
    common = ["--model", path, "--prompt-ids", "256,65,66", "--max-new-tokens", "6", "--backend", "model"]
    ids, err = generate_json(capsys, *common)
    assert ids == golden.generate(golden.load_model(path), [256, 65, 66], 6, greedy=True)
    assert ("[model://sim: matmul mode: the model does not fit the decoder engine: head_dim 16: the engine's "
            "attention unit is built for 64]") in err and "layers resident" in err
    assert main(["generate", *common, "--backend-opt", "mode=decoder"]) == 1
    assert capsys.readouterr().err == ("bitlane generate: error: mode=decoder: the model does not fit model://sim's "
                                       "decoder engine: head_dim 16: the engine's attention unit is built for 64\n")
    assert main(["generate", *common, "--backend-opt", "preset=tiny", "--backend-opt", "mode=decoder"]) == 1
    assert "model://tiny has no decoder engine" in capsys.readouterr().err
    ids, err = generate_json(capsys, *common, "--backend-opt", "mode=matmul")
    assert "matmul mode" not in err and "layers resident" in err
