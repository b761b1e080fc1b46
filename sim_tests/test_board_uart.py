"""The iCEBreaker board logic at its serial pins (UART-level simulation), driven by the host driver.

`UartSimBoard` Verilates `BoardLogic` (UART, command processor, core; PLL bypassed)
and bridges its pins bit by bit, at the board's real divisor, to a TCP port; the
driver opens it as `serial://socket://...`, exactly the code path of a real board.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bitlane import connect, golden
from bitlane.hw.boards import board
from bitlane.hw.sim.uart_sim import UartSimBoard
from tests.devicecheck import compare_with_golden

BOARD = "icebreaker"
MODEL = Path(__file__).resolve().parents[1] / "models" / "bitnet-kjv-h128"


@pytest.fixture(scope="module")
def sim():
    with UartSimBoard(BOARD) as running:
        yield running


@pytest.fixture(scope="module")
def device(sim):
    acc = connect(sim.url, timeout=600)
    yield acc
    acc.close()


def test_info_is_the_boards(device) -> None:
    caps, core = device.info(), board(BOARD).core
    assert (caps.lanes, caps.k_per_cycle, caps.weight_depth, caps.max_k, caps.clock_hz) == (
        core.lanes, core.k_per_cycle, core.weight_depth, core.max_k, core.clock_hz)


def test_products_are_exact(device) -> None:
    rng = np.random.default_rng(11)
    for rows, cols, n in [(1, 1, 1), (5, 9, 2), (13, 200, 3)]:
        trits = rng.integers(-1, 2, size=(rows, cols)).astype(np.int8)
        q = rng.integers(-128, 128, size=(cols, n)).astype(np.int8)
        trits[0], q[:, 0] = -1, -128  # the extreme accumulator
        got = device.matmul(trits, q)
        assert np.array_equal(got, trits.astype(np.int64) @ q.astype(np.int64)), f"{rows}x{cols} n={n}"
    counters = device.counters()
    assert counters["frames_bad"] == 0 and counters["dropped_bytes"] == 0


@pytest.mark.skipif(not (MODEL / "config.json").exists(), reason=f"{MODEL} not bundled")
def test_generation_matches_golden(device) -> None:
    model = golden.load_model(MODEL)
    result = compare_with_golden(model, device, prompt_ids=[10, 20, 30], max_new_tokens=3)
    assert not result.mismatches, result.mismatches[:3]
    assert result.device_ids == result.golden_ids and len(result.golden_ids) == 3
