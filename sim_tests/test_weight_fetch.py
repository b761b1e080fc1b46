"""hw/weight_fetch.py on Amaranth's simulator (no Verilator build): WeightFetch against a Python model of
the SDRAM port's read-only `fetch` (requests served in order, port words of fetch_ratio SDRAM words with
random gaps).

Every weight word written equals contract/weight_stream.py's mapping of the SDRAM array (the functional
model's WFETCH), integer for integer; requests never exceed the controller's 65,536 SDRAM words; `done`
pulses once, after the last write; with a port that answers a request in the next cycle and then a
word every cycle, a fetch of n weight words takes n * spw / fetch_ratio + 2 cycles from `start` to `done`.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from bitlane.contract.config import CoreConfig
from bitlane.contract.weight_stream import fetch_ratio, sdram_words_per_weight_word, weight_bytes
from bitlane.hw.sdram_port import CONTROLLER_COUNT_BITS
from bitlane.hw.weight_fetch import WeightFetch

SDRAM_WORDS = 1 << 24
CONFIGS = {
    "4x4": CoreConfig("wf-4x4", lanes=4, k_per_cycle=4, weight_depth=512, act_depth=64, out_depth=64, max_k=256,
                      sdram_words=SDRAM_WORDS, sdram_clock_hz=100_000_000, clock_hz=30_000_000),
    # a core as fast as the SDRAM: port words of one SDRAM word, two a weight word
    "4x4-100MHz": CoreConfig("wf-4x4-fast", lanes=4, k_per_cycle=4, weight_depth=512, act_depth=64, out_depth=64,
                             max_k=256, sdram_words=SDRAM_WORDS, sdram_clock_hz=100_000_000, clock_hz=100_000_000),
    "16x16": CoreConfig("wf-16x16", lanes=16, k_per_cycle=16, weight_depth=4096, act_depth=64, out_depth=64,
                        max_k=1024, sdram_words=SDRAM_WORDS, sdram_clock_hz=100_000_000, clock_hz=30_000_000),
}


def run_fetches(config: CoreConfig, fetches: list[tuple[int, int, int]], sdram: np.ndarray, gaps: float,
                seed: int = 0) -> tuple[dict[int, int], list[int], list[tuple[int, int]]]:
    """Run WFETCHes (SDRAM word, weight word, words) one after the other: the weight memory's writes
    {address: word}, each fetch's cycles from start to done, and the requests (addr, words) seen."""
    dut = WeightFetch(config)
    R = fetch_ratio(config)
    rng = random.Random(seed)
    writes: dict[int, int] = {}
    cycles: list[int] = []
    requests: list[tuple[int, int]] = []
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def port(ctx):  # requests in order; read words delivered with random gaps
        pending: list[int] = []
        show = False
        ctx.set(dut.mem.req.ready, 1)
        async for clk_edge, rst, req_valid, addr, count, r_ready in ctx.tick().sample(
                dut.mem.req.valid, dut.mem.req.payload.addr, dut.mem.req.payload.count, dut.mem.r_data.ready):
            if req_valid:  # in port words of R SDRAM words, the lowest first
                requests.append((addr * R, (count + 1) * R))
                pending.extend(sum(int(sdram[(addr + i) * R + j]) << (16 * j) for j in range(R))
                               for i in range(count + 1))
            if r_ready and show:
                pending.pop(0)
            show = bool(pending) and rng.random() >= gaps
            ctx.set(dut.mem.r_data.valid, show)
            ctx.set(dut.mem.r_data.payload, pending[0] if pending else 0)

    async def memory(ctx):
        async for clk_edge, rst, en, addr, data in ctx.tick().sample(dut.w_wr_en, dut.w_wr_addr, dut.w_wr_data):
            if en:
                writes[addr] = data

    async def engine(ctx):
        for sdram_addr, w_addr, words in fetches:
            ctx.set(dut.fetch.sdram_addr, sdram_addr)
            ctx.set(dut.fetch.w_addr, w_addr)
            ctx.set(dut.fetch.words, words)
            ctx.set(dut.fetch.start, 1)
            await ctx.tick()
            ctx.set(dut.fetch.start, 0)
            n = 1
            while not ctx.get(dut.fetch.done):
                await ctx.tick()
                n += 1
            cycles.append(n)
            await ctx.tick()
            assert not ctx.get(dut.fetch.done) and not ctx.get(dut.fetch.busy), "done is one pulse"

    sim.add_process(port)
    sim.add_process(memory)
    sim.add_testbench(engine)
    sim.run()
    return writes, cycles, requests


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("gaps", [0.0, 0.4])
def test_fetched_words_are_the_models(name: str, gaps: float) -> None:
    config = CONFIGS[name]
    spw = sdram_words_per_weight_word(config)
    rng = np.random.default_rng(1)
    sdram = np.zeros(SDRAM_WORDS, dtype="<u2")
    fetches = [(0, 0, 1), (spw * 1000, 5, 7), (SDRAM_WORDS - 3 * spw, config.weight_depth - 3, 3), (spw * 77, 100, 40)]
    for addr, _, words in fetches:
        sdram[addr:addr + words * spw] = rng.integers(0, 1 << 16, words * spw)
    writes, cycles, _ = run_fetches(config, fetches, sdram, gaps)
    want = {}
    for addr, w_addr, words in fetches:  # later fetches overwrite earlier ones, as in the model
        data = weight_bytes(sdram, addr, words, config)
        size = config.weight_word_bytes
        for i in range(words):
            want[w_addr + i] = int.from_bytes(data[i * size:(i + 1) * size], "little")
    assert writes == want
    if gaps == 0:
        assert cycles == [words * spw // fetch_ratio(config) + 2 for _, _, words in fetches]


def test_long_fetches_are_split_into_controller_requests() -> None:
    config = CONFIGS["16x16"]
    sdram = np.arange(SDRAM_WORDS, dtype=np.uint32).astype("<u2")
    words = 4096  # 131,072 SDRAM words: two requests of the controller's 65,536
    writes, cycles, requests = run_fetches(config, [(1 << 20, 0, words)], sdram, 0.0)
    assert requests == [(1 << 20, 1 << CONTROLLER_COUNT_BITS), ((1 << 20) + (1 << 16), 1 << CONTROLLER_COUNT_BITS)]
    assert len(writes) == words and cycles == [words * 32 // 4 + 2]
    assert writes[4095] == int.from_bytes(weight_bytes(sdram, (1 << 20) + 4095 * 32, 1, config), "little")


def test_zero_words_is_done_at_once() -> None:
    writes, cycles, requests = run_fetches(CONFIGS["4x4"], [(0, 0, 0)], np.zeros(16, dtype="<u2"), 0.0)
    assert not writes and not requests and cycles == [1]
