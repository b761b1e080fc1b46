"""Decoder mode with weights in SDRAM on the Verilated gateware: BitlaneTop of a small decoder engine
(tests/test_decoder_sdram.py's, 700 weight words) with the SDRAM port and the C++ timing-checking SDRAM
model (hw/sim/), against the functional model of the same configuration, byte for byte.

The same bytes go to both: load_decoder (the streamed weights by MEM_WRITE and verified by MEM_CRC,
the resident ones, CONST, program, DECODE_SETUP), then DECODEs token by token and a prefill. Every
answer is equal, a DECODE's `cycles` included (the engine does not count a WFETCH's wait for the
SDRAM, contract/decoder.py); the hidden states equal golden.integer's. Two placements run on the one
build: mixed (resident matrices and streamed ones) and all streamed in split row-tile runs. Afterwards
the command processor has the SDRAM port again: MEM_READ and MEM_CRC answer as the model does. The
WFETCH waits, which a DECODE's cycles leave out, match contract/weight_stream.py's estimate.

The first run builds the simulator (a few minutes).
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from bitlane.contract import protocol as p
from bitlane import golden
from bitlane.contract.decoder import MachineShape, Op
from bitlane.contract.protocol import Cmd
from bitlane.contract.weight_stream import fetch_cycles_estimate, sdram_words_per_weight_word
from bitlane.devices import sim_transport
from bitlane.sw import Accelerator
from bitlane.sw.decoder_program import compile_decoder
from bitlane.sw.decoder_session import load_decoder
from bitlane.sw.transport import ModelTransport
from tests.test_decoder_sdram import STREAMED, small  # noqa: F401  (the model fixture)

CONFIG = STREAMED[700]
IDS = [5, 17, 199, 0, 42, 42, 7, 100]


@pytest.fixture(scope="module")
def sim():
    acc = Accelerator(sim_transport(CONFIG), timeout=120)
    yield acc
    acc.close()


def decode_requests(model, ids: list[int]) -> list[tuple[Cmd, bytes]]:
    """One DECODE a token, from position 0."""
    return [(Cmd.DECODE, p.DecodeArgs(t, 1).pack() + model.embedding[[token]].astype("<i2").tobytes())
            for t, token in enumerate(ids)]


def check_against_reference(model, answers: list[bytes], ids: list[int], hidden: int) -> int:
    """Each DECODE answer's final hidden state and exponent equal golden.integer's, token by token; returns
    the engine cycles the answers count."""
    ref_cache, engine = model.new_cache(), 0
    for t, token in enumerate(ids):
        cycles, y, e = p.unpack_decode_response(answers[t], 1, hidden)
        y_ref, e_ref = model.hidden(np.array([[token]]), ref_cache)
        assert np.array_equal(y[0], y_ref[0, 0]) and e[0] == e_ref[0, 0, 0], f"token {t}"
        engine += cycles
    return engine


def image_for(model, caps, weight_depth: int):
    """The model compiled for the device, as if its weight memory had `weight_depth` words."""
    return compile_decoder(model, MachineShape.from_capabilities(caps), weight_depth, caps.sdram_words,
                           sdram_words_per_weight_word(caps))


@pytest.mark.parametrize("weight_depth", [700, 300])
def test_decode_from_sdram_equals_the_model_and_the_reference(sim, small, weight_depth):  # noqa: F811
    model_acc = Accelerator(ModelTransport(CONFIG))
    image = image_for(small, sim.caps, weight_depth)
    assert image.streamed and any(ins.op == Op.WFETCH for ins in image.program)
    if weight_depth == 700:
        assert image.weights, "some matrices resident"
    else:
        assert not image.weights and sum(ins.op == Op.WFETCH for ins in image.program) > len(image.streamed)
    for acc in (model_acc, sim):
        load_decoder(small, image, acc)
    requests = decode_requests(small, IDS)
    prefill = p.DecodeArgs(0, 3).pack() + small.embedding[IDS[:3]].astype("<i2").tobytes()
    requests.append((Cmd.DECODE, prefill))
    got, want = sim.transact(requests), model_acc.transact(requests)
    assert got == want
    check_against_reference(small, got, IDS, image.hidden)
    # the command processor has the SDRAM port back
    first = min(image.streamed.values())
    for acc in (sim, model_acc):
        assert acc.mem_crc(first, image.sdram_words) == model_acc.mem_crc(first, image.sdram_words)
    assert sim.mem_read(first + 10, 64) == model_acc.mem_read(first + 10, 64)
    assert sim.counters()["frames_bad"] == 0


def test_fetch_waits_match_the_estimate(sim, small):  # noqa: F811
    """The WFETCH waits the engine leaves out of a DECODE's cycles, seen in the COUNTERS record's `cycles`
    around it (every core cycle; the harness stops the clock only while idle): the all-streamed
    placement (300) waits longer than the mixed one (700) by what contract/weight_stream.py's
    fetch_cycles_estimate says, within 10 % (the frames and the command processor's work are the same)."""
    rest, estimate = {}, {}
    for depth in (700, 300):
        image = image_for(small, sim.caps, depth)
        load_decoder(small, image, sim)
        estimate[depth] = sum(fetch_cycles_estimate(ins.n, CONFIG) for ins in image.program if ins.op == Op.WFETCH)
        decode = p.DecodeArgs(0, 1).pack() + small.embedding[[IDS[0]]].astype("<i2").tobytes()
        before, answer, after = sim.transact([(Cmd.COUNTERS, b""), (Cmd.DECODE, decode), (Cmd.COUNTERS, b"")])
        engine = p.unpack_decode_response(answer, 1, image.hidden)[0]
        rest[depth] = p.Counters.unpack(after).cycles - p.Counters.unpack(before).cycles - engine
        assert rest[depth] > estimate[depth]
    extra, predicted = rest[300] - rest[700], estimate[300] - estimate[700]
    assert abs(extra - predicted) <= 0.1 * predicted, (extra, predicted)


def test_ulx3s_runs_h128_from_sdram():
    """sim://ulx3s, the ULX3S's own gateware (16 x 16 core, 4-word weight port, 100 MHz SDRAM beside the
    30 MHz core), with the shipped h128 staged from SDRAM: as if its weight memory held 600 words (some
    matrices resident) and 192 (every matrix streamed). DECODE answers equal model://ulx3s's byte for
    byte and the hidden states golden.integer's; the waits, where the SDRAM's rate sets the pace, differ
    between the placements as fetch_cycles_estimate says, within 10 %."""
    import bitlane
    from bitlane.contract.config import preset
    from bitlane.golden.integer import IntegerModel

    h128 = IntegerModel.load("models/bitnet-kjv-h128")
    ids = [5, 300, 1000, 7, 4000]
    rest, estimate = {}, {}
    with bitlane.connect("sim://ulx3s", timeout=180) as sim, bitlane.connect("model://ulx3s") as model:
        for depth in (600, 192):
            image = image_for(h128, sim.caps, depth)
            assert bool(image.weights) == (depth == 600) and image.streamed
            for acc in (model, sim):
                load_decoder(h128, image, acc)
            requests = [(Cmd.COUNTERS, b""), *decode_requests(h128, ids), (Cmd.COUNTERS, b"")]
            got, want = sim.transact(requests), model.transact(requests)
            assert got[1:-1] == want[1:-1]
            engine = check_against_reference(h128, got[1:-1], ids, image.hidden)
            rest[depth] = p.Counters.unpack(got[-1]).cycles - p.Counters.unpack(got[0]).cycles - engine
            estimate[depth] = len(ids) * sum(fetch_cycles_estimate(ins.n, preset("ulx3s"))
                                             for ins in image.program if ins.op == Op.WFETCH)
            assert rest[depth] > estimate[depth]
    extra, predicted = rest[192] - rest[600], estimate[192] - estimate[600]
    assert abs(extra - predicted) <= 0.1 * predicted, (extra, predicted, rest, estimate)
    print(f"\nh128 on sim://ulx3s, per token: engine {engine / len(ids):,.0f} cycles; cycles besides the engine's "
          f"(fetch waits, command processor) {rest[600] / len(ids):,.0f} with weight memory 600, "
          f"{rest[192] / len(ids):,.0f} with 192 (fetch estimate {estimate[192] / len(ids):,.0f})")


LARGE_PROMPT = [1, 2, 3, 4, 5, 6]
LARGE_TOKENS = 8


@pytest.mark.skipif(os.environ.get("BITLANE_LARGE") != "1",
                    reason="opt-in, about 5 minutes: make large-check (BITLANE_LARGE=1)")
@pytest.mark.parametrize("which", ["h512-english", "random-18m"])
def test_ulx3s_large_generates_the_reference_tokens(which):
    """The SDRAM-sized models on sim://ulx3s-large (the ULX3S's core, clocks, SDRAM port and checking SDRAM
    model, with an engine grown for them; contract/config.py): the shipped 26M h512-english and issue 13's
    random ~18M-trit model, every weight matrix streamed from SDRAM by WFETCH, generate golden.integer's
    greedy tokens. Prints the engine's cycles, the measured cycles besides them (the WFETCH waits) and the
    ULX3S projection from those measured cycles."""
    import bitlane
    from bitlane.contract.config import BOARD_FACTS
    from bitlane.golden.integer import IntegerModel
    from bitlane.sw.decoder_session import DecoderRunner, plan_decoder
    from tests.test_decoder_sdram import model_18m

    model = IntegerModel.load("models/bitnet-english-h512") if which == "h512-english" else model_18m()
    want = golden.generate(model, LARGE_PROMPT, LARGE_TOKENS, greedy=True)
    with bitlane.connect("sim://ulx3s-large", timeout=600) as acc:
        image = plan_decoder(model, acc.caps)
        assert image.streamed and sum(ins.op == Op.WFETCH for ins in image.program) >= len(image.streamed)
        load_decoder(model, image, acc)
        runner = DecoderRunner(model, image, acc)
        before = acc.counters()
        start = time.perf_counter()
        got = golden.generate(runner, LARGE_PROMPT, LARGE_TOKENS, greedy=True)
        seconds = time.perf_counter() - start
        after = acc.counters()
    assert got == want
    # the prompt's positions, then one DECODE per new token but the last; every cycle the device counted
    steps = len(LARGE_PROMPT) + LARGE_TOKENS - 1
    per_position = (after["cycles"] - before["cycles"]) / steps
    board = BOARD_FACTS["ulx3s"]
    wire = (len(p.encode_frame(Cmd.DECODE, 0, bytes(4 + 2 * image.hidden)))
            + len(p.encode_frame(Cmd.DECODE.response, 0, bytes(4 + 2 * image.hidden + 1))))
    t = board.token_time(per_position, wire, 1)
    print(f"\n{which} on sim://ulx3s-large: {LARGE_TOKENS} tokens equal to golden.integer in {seconds:.0f} s; "
          f"{per_position:,.0f} device cycles per position (engine, SDRAM waits, command processor: measured), "
          f"{image.sdram_words * 2 / 1e6:.2f} MB of weights streamed per token; projected ULX3S "
          f"{t['tokens_per_s']:.1f} tokens/s ({board.core.clock_hz / 1e6:.0f} MHz, {wire} link bytes, 1 USB round trip)")


@pytest.mark.skipif(os.environ.get("BITLANE_LARGE") != "1",
                    reason="opt-in, about 4 minutes: make large-check (BITLANE_LARGE=1)")
def test_ulx3s_h128_full_context_from_sdram():
    """h128's whole context on sim://ulx3s, the ULX3S's gateware: a 4-token prompt and 252 greedy tokens (the
    last one at position 255), its KV cache in SDRAM staged through the one block-RAM slot, equal to
    golden.integer's."""
    import bitlane
    from bitlane.golden.integer import IntegerModel
    from bitlane.sw.decoder_session import DecoderRunner, plan_decoder

    model = IntegerModel.load("models/bitnet-kjv-h128")
    prompt = [1141, 259, 2039, 387]
    tokens = model.config.max_position_embeddings - len(prompt)
    want = golden.generate(model, prompt, tokens, greedy=True, eos_token_ids=set())
    with bitlane.connect("sim://ulx3s", timeout=600) as acc:
        assert acc.caps.dec_context == 256
        image = plan_decoder(model, acc.caps)
        assert image.kv_sdram[1] and not image.streamed
        load_decoder(model, image, acc)
        got = golden.generate(DecoderRunner(model, image, acc), prompt, tokens, greedy=True, eos_token_ids=set())
    assert got == want and len(got) == 252
