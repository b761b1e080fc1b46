"""Decoder mode (protocol v2) on the Verilated gateware, `sim://sim`: the command processor drives the
decoder engine (hw/cmdproc.py, hw/decoder.py).

- `bitlane generate --backend sim` gives the token ids of `--backend int` for 64 greedy tokens of both
  shipped models, and `bitlane perplexity --backend sim` prints the perplexity of `--backend int`;
- every error of the decoder commands (NOT_READY, BAD_LENGTH, BAD_ARGUMENT, BAD_ADDRESS,
  BAD_POSITION, in their order) is answered byte for byte as the functional model answers it
  (model://sim), and changes nothing: the tokens decoded afterwards equal the model's and the
  integer reference's;
- a RESET, a corrupted frame or a cut frame in the middle of a prefill: the prefill goes on where it
  was, and after a corrupted answer the host's recovery (reset(), a new sequence) generates the
  reference's tokens; a simulator that dies inside a prefill is reported in bounded time.

Every answer is compared whole but a COUNTERS record's `cycles` (which count the gateware's waits for
the host): a DECODE's `cycles` too, since the model's count of the engine's cycles equals the
gateware's for the programs of sw/decoder_program.py. The Verilated `sim` preset is built once (about
3-5 minutes) and shared with the decoder storm of sim_tests/test_protocol_fuzz.py.
"""
from __future__ import annotations

import json
import re
import threading
import time

import numpy as np
import pytest

import bitlane
from bitlane import cli, golden
from bitlane.contract import protocol as p
from bitlane.contract.config import preset
from bitlane.contract.decoder import Bank, Instruction, Op
from bitlane.contract.protocol import Cmd, ErrorCode
from bitlane.golden.integer import IntegerModel
from bitlane.sw import Accelerator, ProtocolError, TransportError
from bitlane.sw.decoder_session import DecoderRunner, load_decoder, plan_decoder
from bitlane.sw.transport import FaultyTransport, ModelTransport
from sim_tests.test_protocol_fuzz import collect, normalized

H128, H256 = "models/bitnet-kjv-h128", "models/bitnet-kjv-h256"
SIM = preset("sim")
TEXT = "In the beginning God created the heaven and the earth."


class Pair:
    """sim://sim and model://sim fed the same bytes: `exchange` returns the answers, which must be equal."""

    def __init__(self) -> None:
        self.sim = bitlane.connect("sim://sim", timeout=60)
        self.model = Accelerator(ModelTransport(SIM))
        self.seq = 0

    def close(self) -> None:
        self.sim.close()

    def frame(self, cmd: int, payload: bytes = b"") -> bytes:
        self.seq = (self.seq + 1) & 0xFF
        return p.encode_frame(cmd, self.seq, payload)

    def exchange(self, data: bytes, timeout: float = 60) -> list:
        self.model.transport.write(data)
        want = self.model.transport.read(0)
        self.sim.transport.write(data)
        got = collect(self.sim.transport, len(p.FrameDecoder().feed(want)), timeout)
        assert normalized(got) == normalized(want), f"sent {data[:40].hex()}..."
        return p.FrameDecoder().feed(want)

    def request(self, cmd: int, payload: bytes = b"") -> p.Frame:
        """One request; both answers equal; the model's answer."""
        (answer,) = self.exchange(self.frame(cmd, payload))
        return answer

    def rejected(self, code: ErrorCode, cmd: int, payload: bytes = b"") -> None:
        answer = self.request(cmd, payload)
        assert answer.cmd == Cmd.ERROR and p.unpack_error(answer.payload) == (code, cmd), \
            f"{p.cmd_name(cmd)} {payload[:16].hex()}: {answer}"

    def load(self, model: IntegerModel, image) -> None:
        for acc in (self.model, self.sim):
            load_decoder(model, image, acc)


@pytest.fixture(scope="module")
def h128() -> IntegerModel:
    return IntegerModel.load(H128)


def decode_payload(pos: int, rows: np.ndarray, count: int | None = None) -> bytes:
    return p.DecodeArgs(pos, len(rows) if count is None else count).pack() + rows.astype("<i2").tobytes()


def test_decoder_errors_equal_the_model_and_change_nothing(h128):
    pair = Pair()
    try:
        caps, shape = pair.sim.caps, SIM.decoder
        assert caps == pair.model.caps and caps.decoder, "INFO reports the decoder engine"
        image = plan_decoder(h128, caps)
        hidden = image.hidden
        ids = golden.load_tokenizer(H128).encode(TEXT).ids
        rows = h128.embedding[ids]
        setup = p.decode_setup(hidden, image.emb_addr, image.out_addr, image.out_exp_reg)

        # nothing loaded: NOT_READY comes before the length checks
        pair.rejected(ErrorCode.NOT_READY, Cmd.DECODE, decode_payload(0, rows[:1]))
        pair.rejected(ErrorCode.NOT_READY, Cmd.DECODE, b"\x00")
        pair.exchange(b"".join(pair.frame(cmd, payload) for cmd, payload in
                               p.HostCodec.load_program_requests(0, image.program, caps)))
        pair.rejected(ErrorCode.NOT_READY, Cmd.DECODE, decode_payload(0, rows[:1]))  # a program, no setup
        # DECODE_SETUP's checks
        main = shape.main_depth
        for payload, code in [
                (setup[:-1], ErrorCode.BAD_LENGTH), (setup + b"\x00", ErrorCode.BAD_LENGTH),
                (p.decode_setup(0, 0, 0, 5), ErrorCode.BAD_ARGUMENT),
                (p.decode_setup(hidden, 0, 0, 0), ErrorCode.BAD_ARGUMENT),  # R0 reads 0
                (p.decode_setup(hidden, 0, 0, 64), ErrorCode.BAD_ARGUMENT),
                (p.decode_setup(hidden, 0, 0, 255), ErrorCode.BAD_ARGUMENT),
                (p.decode_setup(0, main + 1, 0, 0), ErrorCode.BAD_ARGUMENT),  # arguments before addresses
                (p.decode_setup(hidden, main - hidden + 1, 0, 5), ErrorCode.BAD_ADDRESS),
                (p.decode_setup(hidden, 0, main - hidden + 1, 5), ErrorCode.BAD_ADDRESS),
                (p.decode_setup(0xFFFF, 0xFFFF, 0xFFFF, 5), ErrorCode.BAD_ADDRESS)]:
            pair.rejected(code, Cmd.DECODE_SETUP, payload)
        pair.rejected(ErrorCode.NOT_READY, Cmd.DECODE, decode_payload(0, rows[:1]))
        pair.load(h128, image)
        answer = pair.request(Cmd.DECODE, decode_payload(0, rows[:2]))
        assert answer.cmd == Cmd.DECODE.response

        # DECODE's checks, in order, with hidden sizes that reach them within max_payload
        row = rows[2:3]
        for setup_for, payload, code in [
                (None, decode_payload(2, row)[:-1], ErrorCode.BAD_LENGTH),
                (None, decode_payload(2, row[:, :-1]), ErrorCode.BAD_LENGTH),  # a row one value short
                (None, decode_payload(2, rows[2:4], count=1), ErrorCode.BAD_LENGTH),  # one row too many
                (None, decode_payload(2, row, count=2), ErrorCode.BAD_LENGTH),
                (None, decode_payload(2, row)[:3], ErrorCode.BAD_LENGTH),
                (None, decode_payload(2, row[:0], count=0), ErrorCode.BAD_ARGUMENT),
                (None, decode_payload(3, row), ErrorCode.BAD_POSITION),  # skips position 2
                (None, decode_payload(1, row), ErrorCode.BAD_POSITION),  # into the middle
                (None, decode_payload(shape.context, row), ErrorCode.BAD_POSITION),
                (None, decode_payload(0xFFFF, row), ErrorCode.BAD_POSITION),
                # hidden 1: 1365 answers of 3 bytes overflow max_payload 4096, their 1365 rows do not
                (1, decode_payload(0, np.zeros((1365, 1))), ErrorCode.BAD_ARGUMENT),
                (1, decode_payload(0, np.zeros((shape.context + 1, 1))), ErrorCode.BAD_POSITION),
                (1, decode_payload(2, np.zeros((shape.context - 1, 1))), ErrorCode.BAD_POSITION),
                (1, decode_payload(5, np.zeros((1365, 1))), ErrorCode.BAD_ARGUMENT),  # arguments first
                (1, decode_payload(0, np.zeros((1364, 1)))[:-2], ErrorCode.BAD_LENGTH)]:
            if setup_for is not None:
                pair.request(Cmd.DECODE_SETUP, p.decode_setup(setup_for, image.emb_addr, image.out_addr,
                                                              image.out_exp_reg))
            pair.rejected(code, Cmd.DECODE, payload)
            if setup_for is not None:
                pair.request(Cmd.DECODE_SETUP, setup)

        # WRITE_BANK's checks
        words = np.arange(3, dtype="<i4").tobytes()
        for payload, code in [
                (p.BankWriteHeader(0, Bank.CONST).pack(), ErrorCode.BAD_LENGTH),
                (p.BankWriteHeader(0, Bank.CONST).pack() + words[:-1], ErrorCode.BAD_LENGTH),
                (p.BankWriteHeader(0, Bank.COPY).pack() + words[:-1], ErrorCode.BAD_LENGTH),  # length first
                (b"\x00\x00\x00\x00", ErrorCode.BAD_LENGTH),
                (p.BankWriteHeader(0, Bank.COPY).pack() + words, ErrorCode.BAD_ARGUMENT),
                (p.BankWriteHeader(0, Bank.OUT).pack() + words, ErrorCode.BAD_ARGUMENT),
                (p.BankWriteHeader(0, 0xFF).pack() + words, ErrorCode.BAD_ARGUMENT),
                (p.BankWriteHeader(0xFFFFFFFF, Bank.ACT).pack() + words, ErrorCode.BAD_ARGUMENT),  # arguments first
                (p.BankWriteHeader(shape.const_depth - 2, Bank.CONST).pack() + words, ErrorCode.BAD_ADDRESS),
                (p.BankWriteHeader(shape.main_depth, Bank.MAIN).pack() + words[:4], ErrorCode.BAD_ADDRESS),
                (p.BankWriteHeader(0xFFFFFFFF, Bank.MAIN).pack() + words, ErrorCode.BAD_ADDRESS)]:
            pair.rejected(code, Cmd.WRITE_BANK, payload)

        # LOAD_PROGRAM's checks (the ops of every instruction are checked before any is written)
        unused = [v for v in range(256) if v not in Op._value2member_map_]  # no op of the instruction set
        depth, halt, bad = shape.program_depth, Instruction(Op.HALT).pack(), Instruction(unused[0]).pack()
        for payload, code in [
                (p.ProgramHeader(0).pack(), ErrorCode.BAD_LENGTH),
                (b"\x00", ErrorCode.BAD_LENGTH),
                (p.ProgramHeader(0).pack() + halt + b"\x00", ErrorCode.BAD_LENGTH),
                (p.ProgramHeader(0).pack() + halt[:-1], ErrorCode.BAD_LENGTH),
                (p.ProgramHeader(depth).pack() + bad + halt[:-1], ErrorCode.BAD_LENGTH),  # length first
                (p.ProgramHeader(0).pack() + bad, ErrorCode.BAD_ARGUMENT),
                (p.ProgramHeader(0).pack() + halt * 3 + Instruction(unused[len(unused) // 2]).pack() + halt,
                 ErrorCode.BAD_ARGUMENT),
                (p.ProgramHeader(0).pack() + halt * 4 + Instruction(0xFF).pack(), ErrorCode.BAD_ARGUMENT),
                (p.ProgramHeader(depth).pack() + Instruction(unused[1]).pack(), ErrorCode.BAD_ARGUMENT),  # ops first
                (p.ProgramHeader(depth - 1).pack() + halt * 2, ErrorCode.BAD_ADDRESS),
                (p.ProgramHeader(0xFFFF).pack() + halt, ErrorCode.BAD_ADDRESS)]:
            pair.rejected(code, Cmd.LOAD_PROGRAM, payload)
        for cmd in (0x24, 0x2F, Cmd.DECODE.response, 0x10):  # 0x10-0x1F: SDRAM, not in this gateware
            pair.rejected(ErrorCode.UNKNOWN_CMD, cmd, decode_payload(2, row))

        # nothing changed: positions 2.. decode as the reference has them, across a RESET; then a restart
        reference = IntegerModel.load(H128)
        cache = reference.new_cache()
        y_ref, e_ref = reference.hidden(np.array([ids[:6]]), cache)
        got = []
        for pos, count in [(2, 2), (4, 1)]:
            answer = pair.request(Cmd.DECODE, decode_payload(pos, rows[pos:pos + count]))
            got.append(p.unpack_decode_response(answer.payload, count, hidden))
            pair.request(Cmd.RESET)
        y = np.concatenate([g[1] for g in got])
        e = np.concatenate([g[2] for g in got])
        assert np.array_equal(y, y_ref[0, 2:5]) and np.array_equal(e, e_ref[0, 2:5, 0])
        answer = pair.request(Cmd.DECODE, decode_payload(0, rows[:1]))
        _, y0, e0 = p.unpack_decode_response(answer.payload, 1, hidden)
        assert np.array_equal(y0[0], y_ref[0, 0]) and e0[0] == e_ref[0, 0, 0]
        pair.request(Cmd.COUNTERS)  # frames_ok/bad, dropped bytes, busy and stall cycles of every TRUN
    finally:
        pair.close()


@pytest.fixture(scope="module")
def loaded(h128):
    """A Pair with h128 loaded on both devices, and the compiled image."""
    pair = Pair()
    image = plan_decoder(h128, pair.sim.caps)
    pair.load(h128, image)
    yield pair, image
    pair.close()


def test_reset_and_bad_frames_in_the_middle_of_a_prefill(h128, loaded):
    pair, image = loaded
    caps = pair.sim.caps
    ids = golden.load_tokenizer(H128).encode(TEXT + " And the earth was without form").ids[:20]
    chunks = [request for _, _, request in p.HostCodec.decode_requests(0, h128.embedding[ids], caps)]
    assert len(chunks) == 2, "the prefill takes two DECODE frames"
    y_ref, e_ref = IntegerModel.load(H128).hidden(np.array([ids]), None)

    def states(answers) -> tuple[np.ndarray, np.ndarray]:
        decoded = [p.unpack_decode_response(a.payload, (len(a.payload) - 4) // (2 * image.hidden + 1), image.hidden)
                   for a in answers if a.cmd == Cmd.DECODE.response]
        return np.concatenate([d[1] for d in decoded]), np.concatenate([d[2] for d in decoded])

    # RESET between the two frames: the device keeps the KV cache and its next position
    answers = pair.exchange(pair.frame(*chunks[0]) + pair.frame(Cmd.RESET) + pair.frame(*chunks[1]))
    assert [a.cmd for a in answers] == [Cmd.DECODE.response, Cmd.RESET.response, Cmd.DECODE.response]
    y, e = states(answers)
    assert np.array_equal(y, y_ref[0]) and np.array_equal(e, e_ref[0, :, 0])

    # the second frame with a bad CRC, then cut short by the next SYNC, then whole
    second = pair.frame(*chunks[1])
    corrupt = second[:-1] + bytes([second[-1] ^ (0x01 if second[-1] not in (0x7C, 0x7F) else 0x04)])
    data = pair.frame(*chunks[0]) + corrupt + second[:len(second) // 2] + second
    answers = pair.exchange(data)
    assert [a.cmd for a in answers] == [Cmd.DECODE.response, Cmd.ERROR, Cmd.ERROR, Cmd.DECODE.response]
    assert [p.unpack_error(a.payload)[0] for a in answers[1:3]] == [ErrorCode.BAD_CRC, ErrorCode.TRUNCATED]
    y, e = states(answers)
    assert np.array_equal(y, y_ref[0]) and np.array_equal(e, e_ref[0, :, 0])

    # a corrupted answer in the middle of a prefill through the host runtime: ProtocolError, then
    # reset() and a new sequence generate the reference's tokens
    faulty = FaultyTransport(pair.sim.transport)
    acc = Accelerator(faulty, timeout=60)
    runner = DecoderRunner(h128, image, acc)
    faulty.corrupt_next = True
    with pytest.raises(ProtocolError):
        runner.hidden(np.array(ids), 0)
    acc.reset()
    reference = IntegerModel.load(H128)
    assert golden.generate(runner, ids, 8, greedy=True) == golden.generate(reference, ids, 8, greedy=True)
    pair.sim.reset()  # the pair's own link, out of step after the faulty one's frames


def test_simulator_dying_inside_a_prefill_is_reported(h128):
    with bitlane.connect("sim://sim", timeout=60) as acc:
        image = plan_decoder(h128, acc.caps)
        load_decoder(h128, image, acc)
        runner = DecoderRunner(h128, image, acc)
        threading.Timer(1.0, acc.transport.process.kill).start()  # well inside a prefill of 40 tokens
        start = time.monotonic()
        with pytest.raises(TransportError, match=r"sim://sim: simulator process \d+ exited"):
            runner.hidden(np.arange(1, 41), 0)
        assert time.monotonic() - start < 10


def run_cli(capsys, *args: str) -> tuple[str, str]:
    assert cli.main(list(args)) == 0
    return capsys.readouterr()


@pytest.mark.parametrize("model", [H128, H256])
def test_generate_on_sim_equals_int_backend(capsys, model):
    common = ["generate", "--greedy", "--json", "--model", model, "--prompt", "In the beginning God",
              "--max-new-tokens", "64"]
    out, _ = run_cli(capsys, *common, "--backend", "int")
    ids_int = json.loads(out)["generated_ids"]
    start = time.perf_counter()
    out, err = run_cli(capsys, *common, "--backend", "sim", "--backend-opt", "timeout=60")
    seconds = time.perf_counter() - start
    ids_sim = json.loads(out)["generated_ids"]
    assert ids_sim == ids_int and len(ids_int) == 64
    assert "[sim://sim: decoder mode" in err, err
    report = re.search(r"\[decode: ([\d.]+) tokens/s, ([\d,]+) device cycles/token", err)
    assert report, err
    print(f"\n{model}: 64 tokens in {seconds:.1f} s on sim://sim, decode {report.group(1)} tokens/s, "
          f"{report.group(2)} cycles/token")


def test_perplexity_on_sim_equals_int_backend(capsys, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT + " And the earth was without form, and void.\n")
    out_int, _ = run_cli(capsys, "perplexity", "--model", H128, "--backend", "int", str(text))
    out_sim, err = run_cli(capsys, "perplexity", "--model", H128, "--backend", "sim", "--backend-opt", "timeout=60",
                           str(text))
    assert out_sim == out_int and out_int.startswith("perplexity ")
    assert "[sim://sim: decoder mode" in err


def test_uart_level_ulx3s_decoder_mode_equals_int_backend(capsys):
    """The ULX3S's board logic (UART, command processor, decoder, SDRAM port) at its serial pins, through the
    serial transport: decoder mode gives --backend int's ids for 64 greedy tokens (its KV cache in SDRAM,
    staged through one block-RAM slot), and projects the board's tokens/s."""
    from bitlane.hw.sim.uart_sim import UartSimBoard

    common = ["generate", "--greedy", "--json", "--model", H128, "--prompt", "In the beginning God",
              "--max-new-tokens", "64"]
    out, _ = run_cli(capsys, *common, "--backend", "int")
    ids_int = json.loads(out)["generated_ids"]
    with UartSimBoard("ulx3s") as board:
        out, err = run_cli(capsys, *common, "--backend", "serial", "--backend-opt", f"url={board.url}",
                           "--backend-opt", "mode=decoder", "--backend-opt", "timeout=120")
    assert json.loads(out)["generated_ids"] == ids_int and len(ids_int) == 64
    assert "decoder mode" in err and "[projected ulx3s: " in err, err
