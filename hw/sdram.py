"""SDR SDRAM controller for the ULX3S's 32 MB SDRAM (IS42S16160-class: 16-bit words,
4 banks x 8192 rows x 512 columns).

    request (addr, count, write) --> SdramController --> SDRAM pins
    w_data stream (16-bit words) -->                 <-- dq
    r_data stream (16-bit words) <--

A request moves `count + 1` consecutive words starting at word address `addr`; read data
comes out of `r_data` in order, write data is taken from `w_data` in order. Word addresses
map to the chip as row | bank | column (column lowest), so a sequential stream that runs
off the end of a row continues in the next bank.

Every column command moves one word (the mode register sets burst length 1): the
controller issues a READ or WRITE on every cycle it has the data or the room, to any
column of the open row, so requests of any length, row crossings and a consumer that
stalls need no burst bookkeeping, and a stream still moves one word per cycle. Rows are
left open after a request (one open-row register per bank); a request to another row of
the same bank precharges it first. Refresh takes priority: when it is due the controller
stops issuing column commands, precharges all banks and refreshes, then resumes the
request where it stopped.

All timing rules come from `SdramTiming`, datasheet values in ns, converted to cycles of
the controller's clock by `SdramTiming.cycles`. The controller tracks tRAS, tRC, tWR and
the read-to-write bus turnaround with free-running counters that span states; the other
waits (tRP, tRCD, tRFC, tMRD, power-up) are a single wait counter. tRAS/tRC/tWR are
tracked for the last ACTIVATE/WRITE to any bank rather than per bank: at most one bank
is being accessed at a time, so this costs nothing on streams and keeps the logic small.

Cycle contract (edges of the controller's clock, which also clocks the SDRAM, see
docs/sdram.md for the phase on the ULX3S):

- The pin outputs are registers: a command decided in one cycle is on the pins from the
  next edge for exactly one cycle; NOP (cs_n low, ras_n = cas_n = we_n = 1) otherwise.
- A WRITE drives its word on dq (with `dq_oe`) in the same cycle as the command.
- The word of a READ registered at edge k is captured from `dq_i` at edge
  k + CL + `read_delay` (`read_delay` absorbs the board's clock-to-data round trip:
  docs/sdram.md works out which value goes with which clock and SDRAM clock phase).
  A WRITE follows a READ by at least CL + `read_delay` + 1 cycles, so that the read
  word has left dq before the controller drives it.
- A request is accepted (`req.valid & req.ready`) only while the controller is idle and
  no refresh is due; on a row hit its first column command is on the pins 2 edges after
  the accepting one; a closed bank adds an ACTIVATE and tRCD, another open row of the bank
  a PRECHARGE and tRP before that.
- Read words go from the capture register into a FIFO and out of `r_data` in order;
  `r_data` may be stalled at will: READs are issued only while the FIFO has room for
  every word in flight.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import data, enum, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SdramError", "SdramGeometry", "SdramTiming", "SdramCycles", "Command",
           "sdram_pins_signature", "request_layout", "SdramController"]


class SdramError(ValueError):
    """A clock the SDRAM cannot run at, or a geometry the controller does not support."""


@dataclass(frozen=True)
class SdramGeometry:
    """Organisation of the chip (defaults: IS42S16160, 256 Mbit x16)."""
    data_width: int = 16
    bank_bits: int = 2
    row_bits: int = 13
    col_bits: int = 9
    # The address bit that selects all banks on PRECHARGE (and auto-precharge on READ/WRITE).
    all_banks_bit: int = 10

    @property
    def addr_bits(self) -> int:
        """Width of a word address (row | bank | column)."""
        return self.row_bits + self.bank_bits + self.col_bits

    @property
    def banks(self) -> int:
        return 1 << self.bank_bits

    @property
    def words(self) -> int:
        return 1 << self.addr_bits

    @property
    def a_bits(self) -> int:
        """Width of the multiplexed address bus A[]."""
        return max(self.row_bits, self.col_bits, self.all_banks_bit + 1)


@dataclass(frozen=True)
class SdramCycles:
    """`SdramTiming` in whole cycles of one clock: a command this many cycles after the
    one it depends on (or later) meets the rule."""
    clock_hz: int
    cl: int  # CAS latency
    rcd: int
    rp: int
    ras: int
    rc: int
    rrd: int
    rfc: int
    wr: int
    mrd: int
    refi: int  # longest allowed gap between REFRESH commands
    init: int  # power-up wait before the first command


@dataclass(frozen=True)
class SdramTiming:
    """Datasheet timing rules in ns (defaults: the slowest of the ULX3S's IS42S16160-7 and
    its pin-compatible AS4C16M16SA-7 / MT48LC16M16A2-75 parts, so any of them works)."""
    t_rcd_ns: float = 21.0  # ACTIVATE to READ/WRITE, same bank
    t_rp_ns: float = 21.0  # PRECHARGE to ACTIVATE/REFRESH, same bank
    t_ras_ns: float = 42.0  # ACTIVATE to PRECHARGE, same bank
    t_ras_max_ns: float = 100_000.0  # a row may stay open at most this long
    t_rc_ns: float = 63.0  # ACTIVATE to ACTIVATE (or REFRESH), same bank
    t_rrd_ns: float = 14.0  # ACTIVATE to ACTIVATE, different banks
    t_rfc_ns: float = 66.0  # REFRESH to any command
    t_wr_ns: float = 14.0  # last write data to PRECHARGE
    t_wr_min_ck: int = 2  # ... and at least this many clocks (the ISSI tDPL)
    t_mrd_ck: int = 2  # MODE REGISTER SET to any command, in clocks
    t_refi_ns: float = 64e6 / 8192  # 8192 REFRESHes every 64 ms, evenly spread
    t_init_ns: float = 200_000.0  # power-up: clock running, NOPs only, before PRECHARGE ALL
    init_refreshes: int = 8  # REFRESHes between that PRECHARGE ALL and the mode register
    # Shortest clock period for each CAS latency.
    t_ck_min_ns: tuple[tuple[int, float], ...] = ((2, 10.0), (3, 7.0))

    def cas_latency(self, clock_hz: float) -> int:
        """The smallest CAS latency the part supports at `clock_hz`."""
        period = 1e9 / clock_hz
        for cl, t_ck in sorted(self.t_ck_min_ns):
            if period >= t_ck:
                return cl
        raise SdramError(f"{clock_hz / 1e6:g} MHz is faster than the SDRAM runs at any CAS latency "
                         f"(shortest period {min(t for _, t in self.t_ck_min_ns)} ns)")

    def cycles(self, clock_hz: int) -> SdramCycles:
        """Every rule in cycles at `clock_hz`: minimum delays rounded up, tREFI rounded down."""
        period = 1e9 / clock_hz

        def up(ns: float) -> int:
            # The 1e-6 keeps an exact multiple of the period from rounding up through float error.
            return max(1, math.ceil(ns / period - 1e-6))

        return SdramCycles(
            clock_hz=clock_hz, cl=self.cas_latency(clock_hz),
            rcd=up(self.t_rcd_ns), rp=up(self.t_rp_ns), ras=up(self.t_ras_ns), rc=up(self.t_rc_ns),
            rrd=up(self.t_rrd_ns), rfc=up(self.t_rfc_ns), wr=max(up(self.t_wr_ns), self.t_wr_min_ck),
            mrd=self.t_mrd_ck, refi=math.floor(self.t_refi_ns / period + 1e-6), init=up(self.t_init_ns))


class Command(enum.Enum, shape=3):
    """SDRAM command as (ras_n, cas_n, we_n), most significant first, with cs_n low."""
    MODE = 0b000
    REFRESH = 0b001
    PRECHARGE = 0b010
    ACTIVATE = 0b011
    WRITE = 0b100
    READ = 0b101
    BURST_STOP = 0b110
    NOP = 0b111


def sdram_pins_signature(geometry: SdramGeometry) -> wiring.Signature:
    """The SDRAM's pins as seen from the controller (the clock pin belongs to the board)."""
    return wiring.Signature({
        "cke": Out(1, init=1),
        "cs_n": Out(1),
        "ras_n": Out(1, init=1),
        "cas_n": Out(1, init=1),
        "we_n": Out(1, init=1),
        "ba": Out(geometry.bank_bits),
        "a": Out(geometry.a_bits),
        "dqm": Out(geometry.data_width // 8),
        "dq_o": Out(geometry.data_width),
        "dq_oe": Out(1),
        "dq_i": In(geometry.data_width),
    })


def request_layout(geometry: SdramGeometry, count_bits: int) -> data.StructLayout:
    return data.StructLayout({
        "addr": geometry.addr_bits,  # first word address (row | bank | column)
        "count": count_bits,  # words to move, minus one
        "write": 1,
    })


class SdramController(wiring.Component):
    """SDR SDRAM controller: init, refresh, open-row tracking, one word per column command.

    Parameters
    ----------
    clock_hz:
        The controller's (and the SDRAM's) clock; every timing rule is converted to it.
    timing, geometry:
        The part's datasheet timings (ns) and organisation.
    count_bits:
        Width of a request's `count`: a request moves up to 2**count_bits words.
    read_delay:
        Extra cycles from a READ's data slot to the edge that captures it (0 or more).
    fifo_depth:
        Read data FIFO; must cover the READ-to-`r_data` latency for full-rate streams.

    Members
    -------
    req: In(stream.Signature(request_layout))
        Requests: `addr` (word address), `count` (words - 1), `write`. Accepted when idle.
    w_data: In(stream.Signature(data_width))
        Words of write requests, in order; taken in the cycle their WRITE is issued.
    r_data: Out(stream.Signature(data_width))
        Words of read requests, in order.
    pins: Out(sdram_pins_signature)
        The SDRAM command/address/data pins, registered; `dq_o`/`dq_oe`/`dq_i` are the
        three sides of the bidirectional dq pins.
    init_done: Out(1)
        High once the power-up sequence has finished (requests are accepted from then).
    """

    def __init__(self, clock_hz: int, *, timing: SdramTiming = SdramTiming(),
                 geometry: SdramGeometry = SdramGeometry(), count_bits: int = 16, read_delay: int = 0,
                 fifo_depth: int = 16) -> None:
        self.timing = timing
        self.geometry = geometry
        self.cycles = timing.cycles(clock_hz)
        if geometry.data_width % 8:
            raise SdramError(f"data width {geometry.data_width} is not whole bytes")
        if read_delay < 0:
            raise SdramError(f"read_delay {read_delay} is negative")
        # A READ's credit comes back CL + read_delay + 4 cycles after it (capture, FIFO write,
        # FIFO output register, pop): a shallower FIFO could not stream a word per cycle.
        self.read_latency = self.cycles.cl + read_delay
        if fifo_depth < self.read_latency + 4:
            raise SdramError(f"a {fifo_depth}-word read FIFO cannot stream a word per cycle: "
                             f"{self.read_latency + 4} words are in flight at CAS latency {self.cycles.cl} "
                             f"+ read_delay {read_delay}")
        self.fifo_depth = fifo_depth
        super().__init__({
            "req": In(stream.Signature(request_layout(geometry, count_bits))),
            "w_data": In(stream.Signature(geometry.data_width)),
            "r_data": Out(stream.Signature(geometry.data_width)),
            "pins": Out(sdram_pins_signature(geometry)),
            "init_done": Out(1),
        })

    @property
    def refresh_period(self) -> int:
        """Cycles from one REFRESH to the refresh timer's next request for one: tREFI less the
        longest the controller can take from then to the next REFRESH, so that REFRESHes are
        never further apart than tREFI. Once refresh is due no state opens a row or issues a
        column command: the sequencer moves to REFRESH_PRECHARGE within a cycle, waits out
        tRAS and tWR of the last ACTIVATE and WRITE (both decided before it was due),
        precharges all, then waits tRP, and tRC of that ACTIVATE."""
        c = self.cycles
        return c.refi - max(max(c.ras, c.wr) + c.rp, c.rc)

    def elaborate(self, platform) -> Module:
        m = Module()
        g, c = self.geometry, self.cycles
        pins = self.pins

        # ------------------------------------------------ command outputs
        # One place decides the pins each cycle: NOP unless a state issues a command below
        # (later assignments in the same cycle take precedence).
        command = Signal(Command, init=Command.NOP)
        m.d.comb += Cat(pins.we_n, pins.cas_n, pins.ras_n).eq(command)
        m.d.sync += [command.eq(Command.NOP), pins.dq_oe.eq(0)]

        def issue(cmd: Command, bank=0, a=0) -> None:
            m.d.sync += [command.eq(cmd), pins.ba.eq(bank), pins.a.eq(a)]

        # ------------------------------------------------ timers
        def countdown(limit: int, init: int = 0) -> Signal:
            """A saturating down-counter: zero once `limit`'s worth of cycles has passed."""
            counter = Signal(range(limit + 1), init=init)
            with m.If(counter != 0):
                m.d.sync += counter.eq(counter - 1)
            return counter

        # Each counter is loaded with (rule in cycles) - 1 when its command is issued: the
        # dependent command may then be decided in the cycle it reads zero and lands on the
        # pins exactly `rule` cycles after the first.
        wait = countdown(max(c.init, c.rp, c.rcd, c.rfc, c.mrd), init=c.init - 1)
        ras_left = countdown(c.ras)  # last ACTIVATE -> PRECHARGE
        rc_left = countdown(c.rc)  # last ACTIVATE -> ACTIVATE / REFRESH (also covers tRRD)
        wr_left = countdown(c.wr)  # last WRITE -> PRECHARGE
        turn_left = countdown(self.read_latency)  # last READ -> WRITE: its word has left dq
        refresh_left = countdown(self.refresh_period)
        refresh_due = Signal()
        m.d.comb += refresh_due.eq(refresh_left == 0)

        # ------------------------------------------------ read data path
        # A READ registered at edge k has its word captured at edge k + CL + read_delay;
        # `in_flight` marks it through those cycles, then the word and its valid go to the FIFO.
        m.submodules.fifo = rfifo = fifo.SyncFIFOBuffered(width=g.data_width, depth=self.fifo_depth)
        issue_read = Signal()
        in_flight = Signal(self.read_latency)
        dq_captured = Signal(g.data_width)
        captured_valid = Signal()
        m.d.sync += [
            in_flight.eq(Cat(issue_read, in_flight[:-1])),
            dq_captured.eq(pins.dq_i),
            captured_valid.eq(in_flight[-1]),
        ]
        m.d.comb += [
            rfifo.w_en.eq(captured_valid),
            rfifo.w_data.eq(dq_captured),
        ]
        wiring.connect(m, rfifo.r_stream, wiring.flipped(self.r_data))
        # Words the FIFO can still take, counting those in flight: READs wait for room.
        credits = Signal(range(self.fifo_depth + 1), init=self.fifo_depth)
        popped = self.r_data.valid & self.r_data.ready
        m.d.sync += credits.eq(credits - issue_read + popped)

        # ------------------------------------------------ request and bank state
        addr = Signal(g.addr_bits)
        remaining = Signal.like(self.req.payload.count)
        writing = Signal()
        active = Signal()  # a request is in progress (kept across refreshes)
        col, bank, row = addr[:g.col_bits], addr[g.col_bits:][:g.bank_bits], addr[g.col_bits + g.bank_bits:]
        open_row = Array(Signal(g.row_bits, name=f"open_row{b}") for b in range(g.banks))
        bank_open = Signal(g.banks)
        all_banks = 1 << g.all_banks_bit

        # ------------------------------------------------ sequencer
        init_refreshes = Signal(range(self.timing.init_refreshes + 1))
        with m.FSM():
            with m.State("POWER_UP"):
                with m.If(wait == 0):
                    issue(Command.PRECHARGE, a=all_banks)
                    m.d.sync += [wait.eq(c.rp - 1), init_refreshes.eq(self.timing.init_refreshes)]
                    m.next = "INIT_REFRESH"
            with m.State("INIT_REFRESH"):
                with m.If(wait == 0):
                    with m.If(init_refreshes == 0):
                        # Burst length 1 (A2:0 = 0), sequential, CAS latency in A6:4, burst writes.
                        issue(Command.MODE, a=c.cl << 4)
                        m.d.sync += [wait.eq(c.mrd - 1), self.init_done.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        issue(Command.REFRESH)
                        m.d.sync += [wait.eq(c.rfc - 1), refresh_left.eq(self.refresh_period - 1),
                                     init_refreshes.eq(init_refreshes - 1)]

            with m.State("IDLE"):
                with m.If(wait == 0):
                    with m.If(refresh_due):
                        m.next = "REFRESH_PRECHARGE"
                    with m.Elif(active):
                        m.next = "CHECK"
                    with m.Else():
                        m.d.comb += self.req.ready.eq(1)
                        with m.If(self.req.valid):
                            m.d.sync += [addr.eq(self.req.payload.addr), remaining.eq(self.req.payload.count),
                                         writing.eq(self.req.payload.write), active.eq(1)]
                            m.next = "CHECK"

            # With refresh due, CHECK, PRECHARGE, ACTIVATE and ACCESS go to refresh rather
            # than open a row or move a word (see `refresh_period`).
            with m.State("CHECK"):
                with m.If(refresh_due):
                    m.next = "REFRESH_PRECHARGE"
                with m.Elif(bank_open.bit_select(bank, 1)):
                    with m.If(open_row[bank] == row):
                        m.next = "ACCESS"
                    with m.Else():
                        m.next = "PRECHARGE"
                with m.Else():
                    m.next = "ACTIVATE"

            with m.State("PRECHARGE"):
                with m.If(refresh_due):
                    m.next = "REFRESH_PRECHARGE"
                with m.Elif((ras_left == 0) & (wr_left == 0)):
                    issue(Command.PRECHARGE, bank=bank)
                    m.d.sync += [wait.eq(c.rp - 1), bank_open.bit_select(bank, 1).eq(0)]
                    m.next = "ACTIVATE"

            with m.State("ACTIVATE"):
                with m.If(refresh_due):
                    m.next = "REFRESH_PRECHARGE"
                with m.Elif((wait == 0) & (rc_left == 0)):
                    issue(Command.ACTIVATE, bank=bank, a=row)
                    m.d.sync += [wait.eq(c.rcd - 1), ras_left.eq(c.ras - 1), rc_left.eq(c.rc - 1),
                                 open_row[bank].eq(row), bank_open.bit_select(bank, 1).eq(1)]
                    m.next = "ACCESS"

            with m.State("ACCESS"):
                can_write = self.w_data.valid & (turn_left == 0)
                can_read = credits != 0
                with m.If(refresh_due):
                    m.next = "REFRESH_PRECHARGE"
                with m.Elif((wait == 0) & Mux(writing, can_write, can_read)):
                    with m.If(writing):
                        issue(Command.WRITE, bank=bank, a=col)
                        m.d.comb += self.w_data.ready.eq(1)
                        m.d.sync += [pins.dq_o.eq(self.w_data.payload), pins.dq_oe.eq(1),
                                     wr_left.eq(c.wr - 1)]
                    with m.Else():
                        issue(Command.READ, bank=bank, a=col)
                        m.d.comb += issue_read.eq(1)
                        m.d.sync += turn_left.eq(self.read_latency)
                    m.d.sync += [addr.eq(addr + 1), remaining.eq(remaining - 1)]
                    with m.If(remaining == 0):
                        m.d.sync += active.eq(0)
                        m.next = "IDLE"
                    with m.Elif(col.all()):
                        m.next = "CHECK"  # the next word is in another bank (or row)

            with m.State("REFRESH_PRECHARGE"):
                with m.If((ras_left == 0) & (wr_left == 0)):
                    issue(Command.PRECHARGE, a=all_banks)
                    m.d.sync += [wait.eq(c.rp - 1), bank_open.eq(0)]
                    m.next = "REFRESH"

            with m.State("REFRESH"):
                with m.If((wait == 0) & (rc_left == 0)):
                    issue(Command.REFRESH)
                    m.d.sync += [wait.eq(c.rfc - 1), refresh_left.eq(self.refresh_period - 1)]
                    m.next = "IDLE"
        return m
