"""UartStreamBridge under Verilator, driven by cocotb.

The cocotb side is a bit-level model of the host's UART: it drives `rx_pin` with
8N1 frames timed in clock periods and decodes `tx_pin` by sampling mid-bit. One
Verilator build serves every divisor, since the divisor is an input port.
"""
from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge, Timer

from bitlane.hw.uart import UartStreamBridge

CLOCK_NS = 10
FIFO_DEPTH = 8
DIVISORS = (4, 7, 16, 104)


def make_dut() -> UartStreamBridge:
    return UartStreamBridge(fifo_depth=FIFO_DEPTH)


# ---------------------------------------------------------------- host-side model

async def send_frame(dut, divisor: int, byte: int, *, stop_bit: int = 1, rate: float = 1.0) -> None:
    """Drive one 8N1 frame (LSB first) onto rx_pin; `rate` > 1 is a faster host."""
    bit_ns = CLOCK_NS * divisor / rate
    for bit in [0, *((byte >> i) & 1 for i in range(8)), stop_bit]:
        dut.rx_pin.value = bit
        await Timer(bit_ns, unit="ns", round_mode="round")
    dut.rx_pin.value = 1


async def receive_frames(dut, divisor: int, count: int, start_times: list[int]) -> list[int]:
    """Decode `count` frames from tx_pin, checking start and stop bits."""
    received = []
    for _ in range(count):
        if dut.tx_pin.value != 0:
            await FallingEdge(dut.tx_pin)
        start_times.append(cocotb.utils.get_sim_time("ns"))
        await Timer(CLOCK_NS * divisor / 2, unit="ns")
        assert dut.tx_pin.value == 0, "start bit not low at its middle"
        byte = 0
        for i in range(8):
            await Timer(CLOCK_NS * divisor, unit="ns")
            byte |= int(dut.tx_pin.value) << i
        await Timer(CLOCK_NS * divisor, unit="ns")
        assert dut.tx_pin.value == 1, f"stop bit of frame {len(received)} ({byte:#04x}) is low"
        received.append(byte)
    return received


async def collect_rx(dut, count: int, received: list[int], ready_probability: float = 1.0) -> None:
    """Sink for the rx stream, optionally withholding ready at random."""
    while len(received) < count:
        dut.rx__ready.value = int(random.random() < ready_probability)
        await RisingEdge(dut.clk)
        if dut.rx__valid.value and dut.rx__ready.value:
            received.append(int(dut.rx__payload.value))
    dut.rx__ready.value = 0


async def push_tx(dut, data: list[int]) -> None:
    """Source for the tx stream, offering a byte every cycle it is accepted."""
    for byte in data:
        dut.tx__valid.value = 1
        dut.tx__payload.value = byte
        await RisingEdge(dut.clk)
        while not dut.tx__ready.value:
            await RisingEdge(dut.clk)
    dut.tx__valid.value = 0


async def reset(dut, divisor: int) -> None:
    dut.divisor.value = divisor
    dut.rx_pin.value = 1
    dut.rx__ready.value = 0
    dut.tx__valid.value = 0
    dut.rst.value = 1
    await Timer(5 * CLOCK_NS, unit="ns")
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    await Timer(5 * CLOCK_NS, unit="ns")


def start_clock(dut) -> None:
    Clock(dut.clk, CLOCK_NS, unit="ns").start()


# ---------------------------------------------------------------- tests

@cocotb.test()
async def random_bytes_both_directions(dut):
    """Random bytes in and out at several divisors; tx frames go back to back."""
    start_clock(dut)
    rng = random.Random(1)
    for divisor in DIVISORS:
        await reset(dut, divisor)
        n = 40 if divisor < 100 else 12
        to_device = [rng.randrange(256) for _ in range(n)]
        from_device = [rng.randrange(256) for _ in range(n)]
        got_rx: list[int] = []
        starts: list[int] = []
        sink = cocotb.start_soon(collect_rx(dut, n, got_rx))
        monitor = cocotb.start_soon(receive_frames(dut, divisor, n, starts))
        cocotb.start_soon(push_tx(dut, from_device))
        for i, byte in enumerate(to_device):
            # The host's clock differs from ours: up to +-1 % off, the UART's
            # tolerance budget in hw/uart.py is larger than that.
            await send_frame(dut, divisor, byte, rate=1 + rng.uniform(-0.01, 0.01))
            if i % 5 == 4:
                await Timer(rng.randrange(1, 3 * divisor) * CLOCK_NS, unit="ns")
        await sink
        got_tx = await monitor
        assert got_rx == to_device, f"divisor {divisor}: received {got_rx} != sent {to_device}"
        assert got_tx == from_device, f"divisor {divisor}: transmitted {got_tx} != pushed {from_device}"
        gaps = {b - a for a, b in zip(starts, starts[1:])}
        assert gaps == {10 * divisor * CLOCK_NS}, f"divisor {divisor}: frame spacing {gaps} ns"
        assert dut.framing_errors.value == 0 and dut.overruns.value == 0


@cocotb.test()
async def framing_errors_are_counted_and_dropped(dut):
    """Frames with a low stop bit (and a long break) are dropped and counted."""
    start_clock(dut)
    rng = random.Random(2)
    for divisor in (5, 16):
        await reset(dut, divisor)
        good: list[int] = []
        bad = 0
        got: list[int] = []
        sink = cocotb.start_soon(collect_rx(dut, 10**9, got))
        for _ in range(30):
            byte = rng.randrange(256)
            if rng.random() < 0.3:
                await send_frame(dut, divisor, byte, stop_bit=0)
                bad += 1
                # Keep the line low past the stop bit sometimes: a break.
                if rng.random() < 0.5:
                    dut.rx_pin.value = 0
                    await Timer(rng.randrange(1, 30) * divisor * CLOCK_NS, unit="ns")
                    dut.rx_pin.value = 1
                await Timer(divisor * CLOCK_NS, unit="ns")
            else:
                await send_frame(dut, divisor, byte)
                good.append(byte)
        await Timer(20 * divisor * CLOCK_NS, unit="ns")
        sink.cancel()
        assert got == good
        assert int(dut.framing_errors.value) == bad, f"{int(dut.framing_errors.value)} framing errors, {bad} injected"
        assert dut.overruns.value == 0


@cocotb.test()
async def fifo_backpressure(dut):
    """A stalled consumer loses exactly the bytes past the FIFO's depth; a slow one none."""
    start_clock(dut)
    rng = random.Random(3)
    divisor = 8

    # Stalled consumer: FIFO_DEPTH bytes are kept, the rest counted as overruns.
    await reset(dut, divisor)
    burst = [rng.randrange(256) for _ in range(FIFO_DEPTH + 5)]
    for byte in burst:
        await send_frame(dut, divisor, byte)
    got: list[int] = []
    await collect_rx(dut, FIFO_DEPTH, got)
    await Timer(20 * CLOCK_NS, unit="ns")
    assert dut.rx__valid.value == 0
    assert got == burst[:FIFO_DEPTH]
    assert int(dut.overruns.value) == 5

    # A consumer ready only one cycle in eight still keeps up with the line.
    await reset(dut, divisor)
    data = [rng.randrange(256) for _ in range(50)]
    got = []
    sink = cocotb.start_soon(collect_rx(dut, len(data), got, ready_probability=1 / 8))
    for byte in data:
        await send_frame(dut, divisor, byte)
    await sink
    assert got == data and dut.overruns.value == 0

    # tx: a producer far faster than the line is held off by ready and nothing is lost.
    await reset(dut, divisor)
    data = [rng.randrange(256) for _ in range(3 * FIFO_DEPTH)]
    starts: list[int] = []
    monitor = cocotb.start_soon(receive_frames(dut, divisor, len(data), starts))
    producer = cocotb.start_soon(push_tx(dut, data))
    await Timer(3 * CLOCK_NS, unit="ns")
    assert dut.tx__ready.value == 1
    await Timer(4 * FIFO_DEPTH * CLOCK_NS, unit="ns")
    assert dut.tx__ready.value == 0, "tx FIFO still accepting after more than its depth"
    await producer
    assert await monitor == data


# ---------------------------------------------------------------- pytest entry

def test_uart() -> None:
    from sim_tests import simlib

    simlib.run("sim_tests.test_uart", simlib.build(make_dut(), "uart_bridge"), "uart_bridge")
