"""The SDRAM controller (hw/sdram.py) against the checking SDRAM model (sim_tests/sdram_model.py).

Two kinds of test live here:

- plain pytest tests of the model alone: legal command sequences work, and every planted
  violation (a bad command sequence driven straight into the model) raises SdramViolation;
- cocotb tests of the Verilated controller with the model on its pins: random request
  mixes over all banks and row boundaries, with random write-data gaps and consumer
  stalls, colliding with refresh; every word read must equal a reference dict, and every
  word the model stores must equal it too. Any timing or protocol violation fails the test.
"""
from __future__ import annotations

import collections
import gc
import os
import random
import warnings
from collections import deque
from collections.abc import Callable

import cocotb
import pytest
from amaranth.back import verilog
from amaranth.hdl import UnusedElaboratable
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge, Timer

from bitlane.hw.sdram import Command, SdramController, SdramError, SdramGeometry, SdramTiming
from sim_tests import simlib
from sim_tests.sdram_model import CppSdramModel, SdramModel, SdramViolation, attach

GEOMETRY = SdramGeometry()
COUNT_BITS = 16
# (clock, read_delay): the two ULX3S operating points of docs/sdram.md.
CONFIGS = ((50_000_000, 0), (100_000_000, 1))


def clock_hz() -> int:
    return int(os.environ["BITLANE_SDRAM_HZ"])


def read_delay() -> int:
    return int(os.environ["BITLANE_SDRAM_READ_DELAY"])


def split(addr: int) -> tuple[int, int, int]:
    """Word address -> (bank, row, column): row | bank | column, as the controller maps it."""
    g = GEOMETRY
    return ((addr >> g.col_bits) & (g.banks - 1), addr >> (g.col_bits + g.bank_bits),
            addr & ((1 << g.col_bits) - 1))


# ================================================================ timing conversion

def test_cycles_derived_from_ns() -> None:
    """Minimum delays round up, tREFI rounds down, the CAS latency follows the clock, and a
    clock the part cannot run at, or a FIFO too shallow to stream, is refused."""
    t = SdramTiming()
    c = t.cycles(133_000_000)  # 7.52 ns: CL 3; 21 ns -> 2.79 -> 3 cycles
    assert (c.cl, c.rcd, c.rp, c.ras, c.rc, c.rfc, c.wr, c.refi) == (3, 3, 3, 6, 9, 9, 2, 1039)
    assert t.cycles(100_000_000).cl == 2 and t.cycles(50_000_000).rcd == 2  # 21 ns at 20 ns: 2
    with pytest.raises(SdramError, match="faster than the SDRAM"):
        t.cycles(150_000_000)
    # A constructor that refuses its arguments still leaves a half-made Elaboratable behind, which
    # Amaranth reports as unused whenever it is collected: collect it here, where that is expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(SdramError, match="cannot stream a word per cycle"):
            SdramController(100_000_000, read_delay=3, fifo_depth=8)
        gc.collect()


# ================================================================ the model alone

MODELS = {"py": SdramModel, "cpp": CppSdramModel}


class Feeder:
    """Drives commands straight into a model (Python or C++), one edge each, NOPs in between."""

    def __init__(self, clock: int = 100_000_000, timing: SdramTiming = SdramTiming(), kind: str = "py") -> None:
        self.model = MODELS[kind](clock, timing)
        self.c = timing.cycles(clock)
        self.out: list[int | None] = []

    def cmd(self, command: Command = Command.NOP, ba: int = 0, a: int = 0, *,
            dq_oe: int = 0, dq: int = 0, cke: int = 1) -> int | None:
        v = command.value
        word = self.model.edge(cke=cke, cs_n=0, ras_n=v >> 2, cas_n=(v >> 1) & 1, we_n=v & 1,
                               ba=ba, a=a, dqm=0, dq_oe=dq_oe, dq=dq)
        self.out.append(word)
        return word

    def nops(self, n: int) -> None:
        for _ in range(n):
            self.cmd()

    def after(self, n: int, command: Command, ba: int = 0, a: int = 0, **kw) -> int | None:
        """`command` n cycles after the previous one."""
        self.nops(n - 1)
        return self.cmd(command, ba, a, **kw)

    def init(self, mode: int | None = None) -> "Feeder":
        c = self.c
        self.nops(c.init)
        self.cmd(Command.PRECHARGE, a=1 << 10)
        gap = c.rp
        for _ in range(self.model.timing.init_refreshes):
            self.after(gap, Command.REFRESH)
            gap = c.rfc
        self.after(c.rfc, Command.MODE, a=c.cl << 4 if mode is None else mode)
        self.nops(c.mrd - 1)
        return self


@pytest.fixture(params=list(MODELS))
def kind(request) -> str:
    return request.param


def test_model_legal_sequence(kind: str) -> None:
    """Writes and reads in two banks at legal spacing: data comes back CL - 1 edges after the
    READ (driven until the next edge), nothing is driven otherwise."""
    f = Feeder(kind=kind).init()
    c = f.c
    f.after(1, Command.ACTIVATE, ba=1, a=77)
    f.after(c.rrd, Command.ACTIVATE, ba=2, a=5)
    f.after(c.rcd, Command.WRITE, ba=1, a=3, dq_oe=1, dq=0xBEEF)
    f.cmd(Command.WRITE, ba=2, a=4, dq_oe=1, dq=0x1234)
    f.cmd(Command.READ, ba=1, a=3)
    start = len(f.out) - 1
    f.cmd(Command.READ, ba=2, a=4)
    f.nops(c.cl + 1)
    assert f.out[start + c.cl - 1: start + c.cl + 1] == [0xBEEF, 0x1234]
    assert f.out[start + c.cl - 2] is None and f.out[start + c.cl + 1] is None
    f.after(max(c.ras, c.wr), Command.PRECHARGE, a=1 << 10)
    f.after(c.rp, Command.REFRESH)
    f.after(c.rfc, Command.ACTIVATE, ba=1, a=77)
    f.after(c.rcd, Command.READ, ba=1, a=3)
    f.nops(c.cl - 1)
    assert f.out[-1] == 0xBEEF
    assert (f.model.word(1, 77, 3), f.model.word(2, 5, 4)) == (0xBEEF, 0x1234)


def _open(f: Feeder, ba: int = 0, row: int = 1) -> Feeder:
    f.after(1, Command.ACTIVATE, ba=ba, a=row)
    return f


def _late_refresh(f: Feeder) -> None:
    f.nops(f.c.refi + 2)


def _truncated_read(f: Feeder) -> None:
    _open(f)
    f.after(f.c.rcd, Command.READ, a=0)
    f.after(f.c.ras, Command.PRECHARGE)  # BL 8: the burst still runs


def _contention(f: Feeder) -> None:
    _open(f)
    f.after(f.c.rcd, Command.READ)
    f.after(f.c.cl, Command.WRITE, dq_oe=1)  # one cycle too early: the read word is on dq


VIOLATIONS: dict[str, tuple[Callable[[Feeder], object], str]] = {
    "early_precharge_all": (lambda f: (f.nops(10), f.cmd(Command.PRECHARGE, a=1 << 10)), "power-up wait"),
    "refresh_first": (lambda f: (f.nops(f.c.init), f.cmd(Command.REFRESH)), "first command after power-up"),
    "activate_before_init": (lambda f: (f.nops(f.c.init), f.cmd(Command.PRECHARGE, a=1 << 10),
                                        f.after(f.c.rp, Command.ACTIVATE)), "initialization not finished"),
    "mode_too_few_refreshes": (lambda f: (f.nops(f.c.init), f.cmd(Command.PRECHARGE, a=1 << 10),
                                          f.after(f.c.rp, Command.REFRESH),
                                          f.after(f.c.rfc, Command.MODE, a=f.c.cl << 4)), "initial REFRESHes"),
    "read_before_trcd": (lambda f: (_open(f), f.after(f.c.rcd - 1, Command.READ)), "tRCD"),
    "write_before_trcd": (lambda f: (_open(f), f.after(f.c.rcd - 1, Command.WRITE, dq_oe=1)), "tRCD"),
    "precharge_before_tras": (lambda f: (_open(f), f.after(f.c.ras - 1, Command.PRECHARGE)), "tRAS"),
    "activate_open_bank": (lambda f: (_open(f), f.after(f.c.rc, Command.ACTIVATE, a=2)), "already has row"),
    "read_idle_bank": (lambda f: f.after(1, Command.READ, ba=3), "no open row"),
    "activate_before_trp": (lambda f: (_open(f), f.after(f.c.ras, Command.PRECHARGE),
                                       f.after(f.c.rp - 1, Command.ACTIVATE)), "tRP"),
    "activate_before_trrd": (lambda f: (_open(f), f.after(f.c.rrd - 1, Command.ACTIVATE, ba=1)), "tRRD"),
    "precharge_before_twr": (lambda f: (_open(f), f.after(f.c.ras, Command.WRITE, dq_oe=1),
                                        f.after(f.c.wr - 1, Command.PRECHARGE)), "tWR"),
    "write_without_data": (lambda f: (_open(f), f.after(f.c.rcd, Command.WRITE, dq_oe=0)), "not driven on dq"),
    "write_onto_read_data": (_contention, "bus contention"),
    "refresh_with_open_bank": (lambda f: (_open(f), f.after(f.c.rc, Command.REFRESH)), "all banks idle"),
    "activate_during_trfc": (lambda f: (f.after(1, Command.REFRESH), f.after(f.c.rfc - 1, Command.ACTIVATE)),
                             "tRFC"),
    "activate_during_tmrd": (lambda f: (f.after(1, Command.MODE, a=f.c.cl << 4), f.after(f.c.mrd - 1, Command.ACTIVATE)),
                             "tMRD"),
    "missing_refresh": (_late_refresh, "no REFRESH"),
    "auto_precharge": (lambda f: (_open(f), f.after(f.c.rcd, Command.READ, a=1 << 10)), "auto-precharge"),
    "cke_low": (lambda f: f.cmd(cke=0), "CKE"),
    "mode_reserved_bits": (lambda f: f.after(1, Command.MODE, a=(f.c.cl << 4) | 1 << 11), "reserved mode register bits"),
    "mode_interleaved": (lambda f: f.after(1, Command.MODE, a=(f.c.cl << 4) | 8), "interleaved"),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_model_catches(name: str, kind: str) -> None:
    plant, message = VIOLATIONS[name]
    f = Feeder(kind=kind)
    if not name.startswith(("early_", "refresh_first", "activate_before_init", "mode_too_few")):
        # Everything after init: the last init step was MODE; the last REFRESH was tRFC before it.
        f.init()
    with pytest.raises(SdramViolation, match=message):
        plant(f)


def test_model_catches_trc(kind: str) -> None:
    """tRC is implied by tRAS + tRP for this part; a part with a longer tRC must be checked."""
    timing = SdramTiming(t_rc_ns=120.0)
    f = Feeder(timing=timing, kind=kind).init()
    _open(f)
    f.after(f.c.ras, Command.PRECHARGE)
    with pytest.raises(SdramViolation, match="tRC"):
        f.after(f.c.rp, Command.ACTIVATE)


def test_model_catches_wrong_cas_latency_and_truncation(kind: str) -> None:
    """CAS latency 2 above 100 MHz is refused; a PRECHARGE inside a BL-8 read burst is caught."""
    f = Feeder(clock=125_000_000, kind=kind)
    with pytest.raises(SdramViolation, match="CAS latency 2 needs"):
        f.init(mode=2 << 4)
    f = Feeder(kind=kind).init(mode=(2 << 4) | 3)  # BL 8
    with pytest.raises(SdramViolation, match="truncates the read burst"):
        _truncated_read(f)


def test_model_catches_tras_max(kind: str) -> None:
    timing = SdramTiming(t_ras_max_ns=2_000.0)
    f = Feeder(timing=timing, kind=kind).init()
    _open(f)
    with pytest.raises(SdramViolation, match="tRAS max"):
        f.nops(300)


def test_models_agree() -> None:
    """The C++ model against the Python one on random command streams (random bursts lengths,
    banks, rows, columns, gaps, write data, DQM): the same word on every edge, the same
    violation at the same edge with the same message."""
    timing = SdramTiming(t_init_ns=500.0, init_refreshes=2)  # short power-up: many streams
    commands = [Command.ACTIVATE] * 4 + [Command.READ] * 6 + [Command.WRITE] * 6 + [
        Command.PRECHARGE] * 3 + [Command.REFRESH, Command.BURST_STOP, Command.MODE]
    rng = random.Random(5)
    depths, rules = [], []
    for stream in range(300):
        py, cpp = Feeder(timing=timing, kind="py"), Feeder(timing=timing, kind="cpp")
        for f in (py, cpp):
            f.init(mode=(py.c.cl << 4) | (stream % 4))
        edges = write_left = 0
        burst_length = 1 << (stream % 4)
        open_banks: set[int] = set()  # steer towards legal commands, so that streams run deep
        while True:
            gap = rng.choice([1, 2, 3, 4, 6, 8, 12])
            cmd = rng.choice(commands)
            closed = sorted(set(range(GEOMETRY.banks)) - open_banks)
            if cmd in (Command.READ, Command.WRITE) and open_banks and rng.random() < 0.9:
                ba = rng.choice(sorted(open_banks))
            elif cmd == Command.ACTIVATE and closed and rng.random() < 0.9:
                ba = rng.choice(closed)
            else:
                ba = rng.randrange(GEOMETRY.banks)
            if cmd in (Command.REFRESH, Command.MODE) and open_banks and rng.random() < 0.9:
                cmd = Command.PRECHARGE
            if cmd in (Command.READ, Command.WRITE) and not open_banks and rng.random() < 0.9:
                cmd = Command.ACTIVATE
            a = {Command.ACTIVATE: rng.choice([1, 2, 8191]), Command.PRECHARGE: rng.choice([0, 1 << 10]),
                 Command.MODE: (py.c.cl << 4) | rng.randrange(4)}.get(cmd, rng.randrange(1 << GEOMETRY.col_bits))
            pins = {"dq_oe": int((cmd == Command.WRITE) != (rng.random() < 0.05)), "dq": rng.getrandbits(16)}
            outcome = []
            for f in (py, cpp):
                try:
                    for i in range(gap - 1):  # NOPs, carrying the rest of a write burst's data
                        f.cmd(dq_oe=int(i < write_left), dq=rng.getrandbits(16))
                    f.cmd(cmd, ba=0 if cmd == Command.MODE else ba, a=a, **pins)
                    outcome.append(None)
                except SdramViolation as exc:
                    outcome.append(str(exc))
            assert py.out == cpp.out, f"stream {stream}: the models drove different words"
            assert outcome[0] == outcome[1], f"stream {stream}: {outcome}"
            edges += gap
            if outcome[0] is not None:
                break
            write_left = burst_length - 1 if cmd == Command.WRITE else max(0, write_left - gap)
            if cmd == Command.ACTIVATE:
                open_banks.add(ba)
            elif cmd == Command.PRECHARGE:
                open_banks -= set(range(GEOMETRY.banks)) if a else {ba}
        depths.append(edges)
        rules.append(outcome[0].split(": ", 1)[1].split(" violated")[0])
    assert sum(depths) / len(depths) > 10, depths  # the streams got past the first few commands
    assert len(set(rules)) >= 20, collections.Counter(rules)  # and ended on many different rules


# ================================================================ controller + model (cocotb)

class Traffic:
    """Drives the controller's request, write-data and read-data streams from one coroutine
    (inputs set at falling edges, handshakes read back just before the rising edge)."""

    def __init__(self, dut, model: SdramModel, rng: random.Random, *,
                 write_valid_p: float = 1.0, read_ready_p: float = 1.0) -> None:
        self.dut, self.model, self.rng = dut, model, rng
        self.write_valid_p, self.read_ready_p = write_valid_p, read_ready_p
        self.requests: deque[tuple[int, int, bool]] = deque()
        self.to_write: deque[int] = deque()
        self.expected: deque[tuple[int, int]] = deque()  # (addr, word)
        self.ref: dict[int, int] = {}
        self.cycle = 0
        self.read_cycles: list[int] = []  # the cycle of every r_data transfer
        self.write_cycles: list[int] = []  # ... and of every w_data transfer

    def expect(self, addr: int) -> int:
        return self.ref.get(addr, self.model.word(*split(addr)))

    def pending(self) -> bool:
        return bool(self.requests or self.to_write or self.expected)

    def _accept(self, addr: int, count: int, write: bool) -> None:
        for i in range(count + 1):
            a = (addr + i) % GEOMETRY.words
            if write:
                word = self.rng.getrandbits(GEOMETRY.data_width)
                self.ref[a] = word
                self.to_write.append(word)
            else:
                self.expected.append((a, self.expect(a)))

    async def run(self, max_cycles: int) -> None:
        dut, rng = self.dut, self.rng
        while self.pending():
            await FallingEdge(dut.clk)
            self.cycle += 1
            assert self.cycle <= max_cycles, f"traffic not done after {max_cycles} cycles"
            if self.requests:
                addr, count, write = self.requests[0]
                dut.req__payload.value = addr | (count << GEOMETRY.addr_bits) | (write << (GEOMETRY.addr_bits + COUNT_BITS))
            dut.req__valid.value = int(bool(self.requests))
            offer = bool(self.to_write) and rng.random() < self.write_valid_p
            dut.w_data__valid.value = int(offer)
            if self.to_write:
                dut.w_data__payload.value = self.to_write[0]
            dut.r_data__ready.value = int(rng.random() < self.read_ready_p)
            await ReadOnly()
            if dut.req__valid.value and dut.req__ready.value:
                self._accept(*self.requests.popleft())
            if dut.w_data__valid.value and dut.w_data__ready.value:
                self.to_write.popleft()
                self.write_cycles.append(self.cycle)
            if dut.r_data__valid.value and dut.r_data__ready.value:
                got = int(dut.r_data__payload.value)
                assert self.expected, f"r_data gave {got:#06x} with no read outstanding"
                addr, want = self.expected.popleft()
                assert got == want, (f"read of {addr:#08x} {split(addr)} gave {got:#06x}, expected {want:#06x} "
                                     f"(cycle {self.cycle})")
                self.read_cycles.append(self.cycle)

    def check_memory(self) -> None:
        """Every word written is stored exactly where it should be, and nothing else is."""
        stored = {(b << GEOMETRY.col_bits) | (r << (GEOMETRY.col_bits + GEOMETRY.bank_bits)) | c: w
                  for (b, r, c), w in self.model.mem.items()}
        assert stored == self.ref, f"{len(set(stored.items()) ^ set(self.ref.items()))} words differ"


async def start(dut, **kw) -> Traffic:
    """Start the clock, then `restart`."""
    Clock(dut.clk, 1e9 / clock_hz(), unit="ns").start()
    return await restart(dut, **kw)


async def restart(dut, *, seed: int = 1, previous: Traffic | None = None, twin: bool = True,
                  **traffic) -> Traffic:
    """Reset, a fresh model on the pins from the first edge in reset (the SDRAM's power-up:
    it counts the controller's reset as part of tINIT, as on a board), with the C++ model
    as its `twin` unless told otherwise, wait for init."""
    await FallingEdge(dut.clk)
    if previous is not None:
        previous.monitor.cancel()
    dut.req__valid.value = 0
    dut.w_data__valid.value = 0
    dut.r_data__ready.value = 0
    dut.rst.value = 1
    await RisingEdge(dut.clk)  # the pins are NOP from here
    model = SdramModel(clock_hz(), seed=seed)
    monitor = cocotb.start_soon(attach(dut, model, read_delay=read_delay(),
                                      twin=CppSdramModel(clock_hz()) if twin else None))
    await Timer(3e9 / clock_hz(), unit="ns")
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    while not dut.init_done.value:
        await FallingEdge(dut.clk)
    t = Traffic(dut, model, random.Random(seed), **traffic)
    t.monitor = monitor
    return t


def refreshes_expected(t: Traffic) -> int:
    """REFRESHes the traffic's cycles must have contained (one per tREFI at least)."""
    return t.cycle // SdramTiming().cycles(clock_hz()).refi


@cocotb.test()
async def random_mix(dut) -> None:
    """Random reads and writes, 1 to 1200 words, anywhere (row, bank and top-of-memory
    crossings included), random write-data gaps and consumer stalls, through many refreshes."""
    t = await start(dut, seed=2, write_valid_p=0.8, read_ready_p=0.7)
    rng = t.rng
    hot = [rng.randrange(GEOMETRY.words) for _ in range(6)]  # revisited: rows hit, miss, reopen
    for _ in range(220):
        if rng.random() < 0.5:
            addr = rng.choice(hot) + rng.randrange(-600, 600)
        else:
            addr = rng.randrange(GEOMETRY.words)
        count = rng.choice([0, 0, 1, 3, rng.randrange(40), rng.randrange(1200)])
        t.requests.append((addr % GEOMETRY.words, count, rng.random() < 0.5))
    await t.run(400_000)
    for addr in sorted(t.ref):
        t.requests.append((addr, 0, False))
    await t.run(400_000)
    t.check_memory()
    assert t.model.counts["REFRESH"] >= refreshes_expected(t)
    dut._log.info(f"{t.cycle} cycles, {len(t.read_cycles)} words read, {len(t.ref)} written, "
                  f"commands {t.model.counts}")


@cocotb.test()
async def boundaries_all_banks(dut) -> None:
    """Writes then reads straddling every bank boundary of a row, the last row, and the top of
    memory (wrapping to address 0); then 1500 short requests at random addresses (row misses)
    back to back, so that refresh falls due in every state of the sequencer."""
    t = await start(dut, seed=3)
    g = GEOMETRY
    row_words = 1 << g.col_bits
    for row in (0, 1, (1 << g.row_bits) - 1):
        for bank in range(g.banks):
            start_addr = (((row << g.bank_bits) | bank) << g.col_bits) + row_words - 3
            t.requests.append((start_addr % g.words, 5, True))
    t.requests.append((g.words - 4, 7, True))
    for addr, count, _ in list(t.requests):
        t.requests.append((addr, count, False))
    rng = t.rng
    for _ in range(1500):
        addr = rng.randrange(g.words)
        t.requests.append((addr, rng.randrange(3), rng.random() < 0.5))
    await t.run(200_000)
    for addr in sorted(t.ref):
        t.requests.append((addr, 0, False))
    await t.run(200_000)
    t.check_memory()


@cocotb.test()
async def back_to_back_bursts(dut) -> None:
    """Long sequential reads with the consumer always ready move one word per cycle inside a
    row: the only gaps are row changes and refreshes."""
    t = await start(dut, seed=4)
    for i in range(8):
        t.requests.append((i * 512, 511, False))
    await t.run(20_000)
    cycles = t.read_cycles
    gaps = [b - a - 1 for a, b in zip(cycles, cycles[1:]) if b - a > 1]
    c = SdramTiming().cycles(clock_hz())
    refreshes = t.model.counts["REFRESH"] - SdramTiming().init_refreshes
    # Each gap is a row change (CHECK, ACTIVATE, tRCD) or a refresh (tRP, tRFC, reopen).
    assert all(gap <= c.rp + c.rfc + c.rcd + c.rc + 8 for gap in gaps), gaps
    assert len(gaps) <= 8 + refreshes, (gaps, refreshes)
    span = cycles[-1] - cycles[0] + 1
    dut._log.info(f"{len(cycles)} words in {span} cycles ({len(cycles) / span:.1%}), gaps {gaps}")


def test_sdram_lints_clean(tmp_path) -> None:
    """`verilator -Wall` with the project's waivers (which are scoped to files of this name)."""
    from sim_tests.test_lint import lint
    source = tmp_path / "bitlane_top.v"
    hz, delay = CONFIGS[-1]
    source.write_text(verilog.convert(SdramController(hz, read_delay=delay), name="bitlane_top", emit_src=False))
    result = lint(source)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.parametrize("hz, delay", CONFIGS)
def test_sdram_controller(hz: int, delay: int) -> None:
    build_dir = simlib.build(SdramController(hz, count_bits=COUNT_BITS, read_delay=delay), "sdram")
    simlib.run("sim_tests.test_sdram", build_dir, "sdram", name=f"sdram-{hz}-{delay}",
               env={"BITLANE_SDRAM_HZ": hz, "BITLANE_SDRAM_READ_DELAY": delay})
