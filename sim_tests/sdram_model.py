"""A timing- and protocol-checking model of an SDR SDRAM, cycle by cycle, in Python.

    model = SdramModel(clock_hz)                   # timings and geometry from bitlane.hw.sdram
    word = model.edge(cke=1, cs_n=0, ras_n=..., cas_n=..., we_n=..., ba=..., a=..., dqm=0,
                      dq_oe=..., dq=...)           # one rising edge of the SDRAM clock
    cocotb.start_soon(attach(dut, model))          # the same, on a Verilated controller's pins

The model stores the data (`mem`, keyed by (bank, row, column)) and raises `SdramViolation`
on the first broken rule, naming the edge, the command and the rule. It checks:

- power-up: only NOP/INHIBIT for tINIT, then PRECHARGE ALL, at least `init_refreshes`
  REFRESHes, MODE REGISTER SET; no ACTIVATE/READ/WRITE before that;
- the mode register: burst length 1/2/4/8, sequential, CAS latency 2/3 and allowed at
  this clock (tCK), the reserved bits zero;
- per bank: ACTIVATE only on an idle bank, READ/WRITE only on an active one and column in
  range, tRCD, tRAS (min and max), tRC, tRP, tWR; across banks tRRD; REFRESH only with all
  banks idle; nothing but NOP during tRFC after REFRESH or tMRD after MODE;
- refresh: never more than tREFI between REFRESHes once initialized;
- the data bus: WRITE data on dq with the command (and each further word of the burst),
  no driving dq while the SDRAM does (a WRITE needs the last READ's data off the bus),
  no PRECHARGE that truncates a read burst or a write burst's recovery;
- CKE stays high (power-down and self refresh are not modeled), no auto-precharge.

Timing is checked in ns (edges x clock period against the datasheet's ns), independently
of the controller's own conversion to cycles.

Read data is returned by `edge` for the clock period it is on the bus: the word of a READ
at edge e with CAS latency CL is driven from edge e + CL - 1 to edge e + CL (the SDRAM's
output is valid tAC after the first of these edges and held tOH after the second). In a
cocotb test the model runs at the controller's falling clock edges (an SDRAM clock half a
cycle behind the controller's: commands and write data sampled mid-cycle) and the
controller captures the word at the rising edge in between, CL cycles after its READ;
`attach` can delay read words by whole cycles to stand for the board's round trip, which
the controller's `read_delay` must then match (docs/sdram.md). Outside read data the
model drives random words, so a controller that samples at the wrong CAS latency or
read delay reads garbage.
"""
from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import random
import subprocess
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from bitlane.hw.sdram import Command, SdramGeometry, SdramTiming

__all__ = ["SdramViolation", "SdramModel", "attach", "CppSdramModel"]

# Mode register fields: A2:0 burst length code, A3 burst type, A6:4 CAS latency,
# A8:7 operating mode (0 = standard), A9 write burst mode (1 = single-location writes).
BURST_LENGTHS = {0: 1, 1: 2, 2: 4, 3: 8}


class SdramViolation(AssertionError):
    """The controller broke a timing rule or the command protocol."""


@dataclass
class _Bank:
    row: int | None = None  # open row, None when idle (precharged)
    activated: float = -1e18  # edge times, in ns
    precharged: float = -1e18
    last_write_data: float = -1e18
    read_burst_end: int = -1  # edge from which a PRECHARGE no longer truncates a read burst


@dataclass
class _Burst:
    write: bool
    bank: int
    row: int
    col: int
    start: int  # edge of the command
    length: int


@dataclass
class SdramModel:
    clock_hz: int
    timing: SdramTiming = field(default_factory=SdramTiming)
    geometry: SdramGeometry = field(default_factory=SdramGeometry)
    seed: int = 0

    def __post_init__(self) -> None:
        self.period_ns = 1e9 / self.clock_hz
        self.mem: dict[tuple[int, int, int], int] = {}
        self.banks = [_Bank() for _ in range(self.geometry.banks)]
        self.n = -1  # index of the current edge
        self.phase = "power-up"  # -> "init" (after PRECHARGE ALL) -> "ready" (after MODE)
        self.init_refreshes = 0
        self.cl = 0
        self.burst_length = 1
        self.single_writes = False
        self.last_refresh = -1e18
        self.last_mode = -1e18
        self.last_activate = -1e18
        self.burst: _Burst | None = None
        self.drive: dict[int, int] = {}  # edge -> word the SDRAM drives from that edge on
        self.driving = False  # the SDRAM drove dq from the previous edge to this one
        self.counts: dict[str, int] = {}
        self._rng = random.Random(self.seed)

    # ------------------------------------------------ helpers
    def now(self) -> float:
        return self.n * self.period_ns

    def fail(self, command: str, rule: str) -> None:
        raise SdramViolation(f"SDRAM edge {self.n} ({self.now():.1f} ns), {command}: {rule}")

    def need(self, command: str, since: float, rule_ns: float, rule: str) -> None:
        """`command` at this edge must come at least `rule_ns` after the edge at `since` ns."""
        elapsed = self.now() - since
        if elapsed < rule_ns - 1e-6:
            self.fail(command, f"{rule} violated: {elapsed:.1f} ns < {rule_ns:g} ns")

    def need_ck(self, command: str, since: float, clocks: int, rule: str) -> None:
        self.need(command, since, clocks * self.period_ns, rule)

    def word(self, bank: int, row: int, col: int) -> int:
        """Stored word; never-written locations read as a fixed function of the address."""
        return self.mem.get((bank, row, col), (bank * 0x1357 + row * 0x2468 + col * 0x9A1) & 0xFFFF)

    # ------------------------------------------------ one clock edge
    def edge(self, *, cke: int, cs_n: int, ras_n: int, cas_n: int, we_n: int, ba: int, a: int,
             dqm: int, dq_oe: int, dq: int) -> int | None:
        """Process one rising edge of the SDRAM clock; return the word the SDRAM drives on dq
        until the next edge (None: not driving)."""
        self.n += 1
        g, t = self.geometry, self.timing
        if not cke:
            self.fail("CKE low", "power-down and self refresh are not modeled; CKE must stay high")
        # The controller's dq_oe seen at this edge drives dq from half a cycle before it to
        # half a cycle after: it must not overlap the SDRAM's output on either side.
        if dq_oe and (self.driving or self.n in self.drive):
            self.fail("dq driven", "bus contention: the controller drives dq while the SDRAM outputs read data")
        command = Command.NOP if cs_n else Command((ras_n << 2) | (cas_n << 1) | we_n)
        name = command.name
        self.counts[name] = self.counts.get(name, 0) + 1

        if self.phase == "ready":
            if self.now() - self.last_refresh > t.t_refi_ns + 1e-6:
                self.fail(name, f"no REFRESH for {self.now() - self.last_refresh:.1f} ns "
                                f"(tREFI = {t.t_refi_ns:g} ns)")
            for b, bank in enumerate(self.banks):
                if bank.row is not None and self.now() - bank.activated > t.t_ras_max_ns:
                    self.fail(name, f"bank {b} row {bank.row} open longer than tRAS max ({t.t_ras_max_ns:g} ns)")

        if command != Command.NOP:
            self.need_ck(name, self.last_mode, t.t_mrd_ck, "tMRD (MODE to next command)")
            self.need(name, self.last_refresh, t.t_rfc_ns, "tRFC (REFRESH to next command)")
            if self.phase == "power-up" and command != Command.PRECHARGE:
                self.fail(name, "the first command after power-up must be PRECHARGE ALL")
            if self.phase != "ready" and command in (Command.ACTIVATE, Command.READ, Command.WRITE,
                                                     Command.BURST_STOP):
                self.fail(name, "initialization not finished (PRECHARGE ALL, REFRESHes, MODE)")

        self._continue_write_burst(name, command, dq_oe, dq, dqm)
        bank_no = ba
        bank = self.banks[bank_no]
        if command == Command.ACTIVATE:
            row = a & ((1 << g.row_bits) - 1)
            if a >> g.row_bits:
                self.fail(name, f"row address {a:#x} beyond {g.row_bits} bits")
            if bank.row is not None:
                self.fail(name, f"bank {bank_no} already has row {bank.row} open")
            self.need(name, bank.activated, t.t_rc_ns, f"tRC (bank {bank_no} ACTIVATE to ACTIVATE)")
            self.need(name, bank.precharged, t.t_rp_ns, f"tRP (bank {bank_no} PRECHARGE to ACTIVATE)")
            self.need(name, self.last_activate, t.t_rrd_ns, "tRRD (ACTIVATE to ACTIVATE, any banks)")
            bank.row, bank.activated = row, self.now()
            self.last_activate = self.now()
        elif command in (Command.READ, Command.WRITE):
            if bank.row is None:
                self.fail(name, f"bank {bank_no} has no open row")
            self.need(name, bank.activated, t.t_rcd_ns, f"tRCD (bank {bank_no} ACTIVATE to {name})")
            if a & (1 << g.all_banks_bit):
                self.fail(name, "auto-precharge (A10) is not modeled")
            col = a & ((1 << g.col_bits) - 1)
            if a & ~((1 << g.col_bits) - 1) & ((1 << g.a_bits) - 1):
                self.fail(name, f"column address {a:#x} beyond {g.col_bits} bits")
            self._cut_burst()
            write = command == Command.WRITE
            length = 1 if write and self.single_writes else self.burst_length
            self.burst = _Burst(write, bank_no, bank.row, col, self.n, length)
            if write:
                self._write_word(name, dq_oe, dq, dqm)
            else:
                for i in range(length):
                    self.drive[self.n + i + self.cl - 1] = self.word(
                        bank_no, bank.row, self._burst_col(col, i))
                bank.read_burst_end = self.n + length
        elif command == Command.PRECHARGE:
            targets = range(g.banks) if a & (1 << g.all_banks_bit) else [bank_no]
            if self.phase == "power-up":
                if not a & (1 << g.all_banks_bit):
                    self.fail(name, "the first command after power-up must be PRECHARGE ALL")
                self.need(name, 0, t.t_init_ns, "power-up wait (tINIT of NOPs before PRECHARGE ALL)")
                self.phase = "init"
            for b in targets:
                target = self.banks[b]
                if target.row is not None:
                    self.need(name, target.activated, t.t_ras_ns, f"tRAS (bank {b} ACTIVATE to PRECHARGE)")
                    self.need(name, target.last_write_data,
                              max(t.t_wr_ns, t.t_wr_min_ck * self.period_ns), f"tWR (bank {b} write data to PRECHARGE)")
                    if self.n < target.read_burst_end:
                        self.fail(name, f"truncates the read burst of bank {b}")
                    target.row = None
                target.precharged = self.now()
            if self.burst is not None and self.burst.bank in targets:
                self._cut_burst()
        elif command == Command.REFRESH:
            for b, target in enumerate(self.banks):
                if target.row is not None:
                    self.fail(name, f"bank {b} has row {target.row} open (REFRESH needs all banks idle)")
                self.need(name, target.precharged, t.t_rp_ns, f"tRP (bank {b} PRECHARGE to REFRESH)")
                self.need(name, target.activated, t.t_rc_ns, f"tRC (bank {b} ACTIVATE to REFRESH)")
            self.last_refresh = self.now()
            if self.phase == "init":
                self.init_refreshes += 1
        elif command == Command.MODE:
            self._mode_register(name, a, ba)
        elif command == Command.BURST_STOP:
            self._cut_burst()

        out = self.drive.pop(self.n, None)
        self.driving = out is not None
        return out

    # ------------------------------------------------ pieces of `edge`
    def _mode_register(self, name: str, a: int, ba: int) -> None:
        t = self.timing
        if self.phase == "power-up":
            self.fail(name, "the first command after power-up must be PRECHARGE ALL")
        if self.phase == "init" and self.init_refreshes < t.init_refreshes:
            self.fail(name, f"only {self.init_refreshes} of {t.init_refreshes} initial REFRESHes before MODE")
        for b, bank in enumerate(self.banks):
            if bank.row is not None:
                self.fail(name, f"bank {b} has row {bank.row} open (MODE needs all banks idle)")
            self.need(name, bank.precharged, t.t_rp_ns, f"tRP (bank {b} PRECHARGE to MODE)")
        bl_code, sequential, cl = a & 7, not (a >> 3) & 1, (a >> 4) & 7
        if bl_code not in BURST_LENGTHS:
            self.fail(name, f"burst length code {bl_code} not supported (1, 2, 4, 8)")
        if not sequential:
            self.fail(name, "interleaved bursts are not modeled")
        allowed = dict(t.t_ck_min_ns)
        if cl not in allowed:
            self.fail(name, f"CAS latency {cl} not supported ({sorted(allowed)})")
        if self.period_ns < allowed[cl] - 1e-6:
            self.fail(name, f"CAS latency {cl} needs a clock period >= {allowed[cl]} ns, "
                            f"this one is {self.period_ns:g} ns")
        if (a >> 7) & 3 or a >> 10 or ba:
            self.fail(name, f"reserved mode register bits set (A = {a:#x}, BA = {ba})")
        self.burst_length, self.cl, self.single_writes = BURST_LENGTHS[bl_code], cl, bool((a >> 9) & 1)
        self.last_mode = self.now()
        self.phase = "ready"

    def _burst_col(self, col: int, i: int) -> int:
        """Column of word i of a sequential burst: it wraps within its aligned block."""
        bl = self.burst_length
        return (col & ~(bl - 1)) | ((col + i) & (bl - 1))

    def _write_word(self, name: str, dq_oe: int, dq: int, dqm: int) -> None:
        burst = self.burst
        i = self.n - burst.start
        if not dq_oe:
            self.fail(name, f"write data word {i} not driven on dq at its edge (SDR writes have no latency)")
        key = (burst.bank, burst.row, self._burst_col(burst.col, i))
        old = self.word(*key)
        mask = sum(0xFF << (8 * byte) for byte in range(self.geometry.data_width // 8) if (dqm >> byte) & 1)
        self.mem[key] = (dq & ~mask | old & mask) & ((1 << self.geometry.data_width) - 1)
        self.banks[burst.bank].last_write_data = self.now()

    def _continue_write_burst(self, name: str, command: Command, dq_oe: int, dq: int, dqm: int) -> None:
        burst = self.burst
        if burst is None or not burst.write or self.n >= burst.start + burst.length:
            return
        if command in (Command.READ, Command.WRITE, Command.BURST_STOP, Command.PRECHARGE):
            return  # the new command cuts the burst (a PRECHARGE's tWR is checked with it)
        self._write_word(name, dq_oe, dq, dqm)

    def _cut_burst(self) -> None:
        """A new column command, PRECHARGE or BURST STOP ends the current burst at this edge."""
        burst = self.burst
        if burst is not None and not burst.write:
            for i in range(self.n - burst.start, burst.length):
                self.drive.pop(burst.start + i + self.cl - 1, None)
            self.banks[burst.bank].read_burst_end = min(self.banks[burst.bank].read_burst_end, self.n)
        self.burst = None

    def random_word(self) -> int:
        return self._rng.getrandbits(self.geometry.data_width)


async def attach(dut, model: SdramModel, prefix: str = "pins__", read_delay: int = 0,
                 twin: CppSdramModel | None = None) -> None:
    """Run `model` on a Verilated controller's pins: at every falling edge of `dut.clk` (the
    SDRAM clock's rising edge), sample the command and write data and drive `dq_i`, with
    read words reaching `dq_i` `read_delay` cycles late (the board's round trip, which the
    controller's own `read_delay` must match). A `twin` (the C++ model) sees the same pins
    and must answer exactly as `model` does."""
    from cocotb.triggers import FallingEdge

    pins = {name: getattr(dut, prefix + name) for name in
            ("cke", "cs_n", "ras_n", "cas_n", "we_n", "ba", "a", "dqm", "dq_oe", "dq_o")}
    dq_i = getattr(dut, prefix + "dq_i")
    late: deque[int | None] = deque([None] * read_delay)
    while True:
        await FallingEdge(dut.clk)
        values = {name: int(signal.value) for name, signal in pins.items()}
        values["dq"] = values.pop("dq_o")
        word = model.edge(**values)
        if twin is not None:
            twin_word = twin.edge(**values)
            if twin_word != word:
                raise AssertionError(f"SDRAM edge {model.n}: the C++ model drove {twin_word}, the Python one {word}")
        late.append(word)
        word = late.popleft()
        dq_i.value = model.random_word() if word is None else word


# ---------------------------------------------------------------- the C++ twin

CPP_DIR = Path(__file__).resolve().parent.parent / "hw" / "sim"
CPP_SOURCES = (CPP_DIR / "sdram_model.h", CPP_DIR / "sdram_model_capi.cpp")


class _Timing(ctypes.Structure):
    _fields_ = [(name, ctypes.c_double) for name in ("rcd", "rp", "ras", "ras_max", "rc", "rrd", "rfc", "wr")] + [
        ("wr_min_ck", ctypes.c_int), ("mrd_ck", ctypes.c_int), ("refi", ctypes.c_double), ("init", ctypes.c_double),
        ("init_refreshes", ctypes.c_int), ("tck_min", ctypes.c_double * 8)]


class _Geometry(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in ("data_width", "bank_bits", "row_bits", "col_bits", "all_banks_bit")]


class _Pins(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in ("cke", "cs_n", "ras_n", "cas_n", "we_n", "ba", "a", "dqm", "dq_oe", "dq")]


def cpp_library() -> ctypes.CDLL:
    """hw/sim/sdram_model.h behind its C entry points, compiled once per source version."""
    key = hashlib.sha256(b"".join(p.read_bytes() for p in CPP_SOURCES)).hexdigest()[:16]
    out_dir = Path(__file__).resolve().parent.parent / "sim_build"
    out_dir.mkdir(exist_ok=True)
    library = out_dir / f"sdram_model-{key}.so"
    with open(out_dir / f"sdram_model-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not library.exists():
            tmp = library.with_suffix(".tmp")
            subprocess.run([os.environ.get("CXX", "g++"), "-std=c++17", "-O2", "-Wall", "-Werror", "-shared", "-fPIC",
                            "-o", str(tmp), str(CPP_SOURCES[1])], check=True)
            tmp.rename(library)
    lib = ctypes.CDLL(str(library))
    lib.sdram_model_new.restype = ctypes.c_void_p
    lib.sdram_model_new.argtypes = [ctypes.c_double, ctypes.POINTER(_Timing), ctypes.POINTER(_Geometry)]
    lib.sdram_model_free.argtypes = [ctypes.c_void_p]
    lib.sdram_model_edge.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Pins)]
    lib.sdram_model_error.restype = ctypes.c_char_p
    lib.sdram_model_error.argtypes = [ctypes.c_void_p]
    lib.sdram_model_stored.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return lib


class CppSdramModel:
    """The C++ model with `SdramModel`'s `edge` and `word`, for testing the two alike."""

    def __init__(self, clock_hz: int, timing: SdramTiming = SdramTiming(),
                 geometry: SdramGeometry = SdramGeometry()) -> None:
        self.timing, self.geometry = timing, geometry
        self._lib = cpp_library()
        tck = [0.0] * 8
        for cl, t_ck in timing.t_ck_min_ns:
            tck[cl] = t_ck
        t = _Timing(timing.t_rcd_ns, timing.t_rp_ns, timing.t_ras_ns, timing.t_ras_max_ns, timing.t_rc_ns,
                    timing.t_rrd_ns, timing.t_rfc_ns, timing.t_wr_ns, timing.t_wr_min_ck, timing.t_mrd_ck,
                    timing.t_refi_ns, timing.t_init_ns, timing.init_refreshes, (ctypes.c_double * 8)(*tck))
        g = _Geometry(geometry.data_width, geometry.bank_bits, geometry.row_bits, geometry.col_bits,
                      geometry.all_banks_bit)
        self._handle = self._lib.sdram_model_new(clock_hz, ctypes.byref(t), ctypes.byref(g))

    def __del__(self) -> None:
        if getattr(self, "_handle", None):
            self._lib.sdram_model_free(self._handle)

    def edge(self, **pins: int) -> int | None:
        result = self._lib.sdram_model_edge(self._handle, ctypes.byref(_Pins(**pins)))
        if result == -2:
            raise SdramViolation(self._lib.sdram_model_error(self._handle).decode())
        return None if result == -1 else result

    def word(self, bank: int, row: int, col: int) -> int:
        return self._lib.sdram_model_stored(self._handle, bank, row, col)
