"""The board's SDRAM as a memory port of the core's clock domain.

    core domain (`sync`)                       |  SDRAM domain (`sdram`, 50 MHz on the ULX3S)
    mem.req    --> AsyncFIFO ------------------+-> SdramController.req     (addresses scaled)
    mem.w_data --> AsyncFIFO ------------------+-> serializer --> .w_data  (ratio words each)
    mem.r_data <-- AsyncFIFO <-----------------+-- deserializer <-- .r_data
                                               |   SdramController.pins --> pins

`SdramPort` runs `hw/sdram.py`'s controller in its own clock domain and crosses every stream
to and from the core's domain through `amaranth.lib.fifo.AsyncFIFO`s (Gray-coded pointers
through two-flop synchronizers), so the two clocks may be anything. The core sees a plain
request/response port (`mem_port_signature`):

- `req`: `addr` (in port words), `count` (port words - 1), `write`. Requests are served one
  after the other, in order: a read after a write to the same words returns what was written.
- `w_data`: the words of write requests, in order.
- `r_data`: the words of read requests, in order; the consumer may stall at will.

A port word is `ratio` SDRAM words (16 bits each, the lowest first), so a core clocked slower
than the SDRAM can still take its whole bandwidth: 16 bits at 50 MHz is 17.8 bits at the ULX3S's 45 MHz.

With `fetch_ratio`, a second, read-only port `fetch` of `fetch_ratio` SDRAM words a port word
(`read_port_signature`) sits beside `mem`: the decoder engine's weight stream (hw/weight_fetch.py)
at the SDRAM's rate, while `mem` keeps the command processor's single words. Both share the
request FIFO (a request carries which port's it is) and the controller; the read words go to the
port of the last request the controller took. So the two must not overlap: a port makes a read
request only once every read word the other asked for has been taken (the command processor and
the engine never run at once, hw/weight_fetch.py).

Board clocking (docs/sdram.md): the controller's clock and the SDRAM chip's clock come from
one EHXPLLL, the chip's `board_capture(sdram_hz).phase_deg` behind the controller's and forwarded
through an ODDRX1F; every other SDRAM pin goes through an IO register. The capture delay that phase
needs (`board_capture(sdram_hz).read_delay`) plus the two IO registers on the read path is the
controller's `board_read_delay(sdram_hz)`; the simulators delay the model's read words by the same
amount.
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, DomainRenamer, Module, Mux, Signal
from amaranth.lib import data, fifo, io, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from .sdram import SdramController, SdramError, SdramGeometry, SdramTiming, sdram_pins_signature

__all__ = ["CaptureBudget", "BoardCapture", "board_capture", "board_read_delay", "IO_REGISTER_DELAY", "SdramSetup",
           "sdram_setup", "share_port",
           "mem_request_layout", "mem_port_signature", "read_port_signature", "SdramPort", "sdram_io"]

IO_REGISTER_DELAY = 2  # an output and an input IO register on the read path
PHASE_STEP_DEG = 22.5  # the phases chosen: whole EHXPLLL steps (1/8 VCO period) at every divider of a 600 MHz VCO


@dataclass(frozen=True)
class CaptureBudget:
    """The ULX3S's SDRAM clock budget in ns (docs/sdram.md "The SDRAM clock on the ULX3S"): the part's
    input setup/hold and access/hold-out times at CL 2 (IS42S16160 / MT48LC16M16 datasheets) and assumed
    ECP5 figures (IO-register clock-to-pad, input register setup/hold, board flight)."""
    t_is: float = 1.5
    t_ih: float = 0.8
    t_ac: float = 6.0
    t_oh: float = 2.5
    t_co: float = 5.0
    t_su: float = 0.5
    t_h: float = 1.0
    t_fl: float = 0.3

    def window(self, period_ns: float, read_delay: int) -> tuple[float, float]:
        """The SDRAM clock's delay p behind the controller's that both rules allow: commands and write
        data sampled at p (tIS <= p <= T - tIH), and the read word of CL captured `read_delay` cycles
        later (setup p <= (1 + d)T - t_co - tAC - t_fl - t_su, hold p >= dT + t_h - t_co - tOH - t_fl)."""
        d, t = read_delay, period_ns
        low = max(self.t_is, d * t + self.t_h - self.t_co - self.t_oh - self.t_fl)
        high = min(t - self.t_ih, (1 + d) * t - self.t_co - self.t_ac - self.t_fl - self.t_su)
        return low, high


@dataclass(frozen=True)
class BoardCapture:
    phase_deg: float  # the SDRAM chip's clock behind the controller's
    read_delay: int  # cycles after CL at which the read word is captured (IO registers not counted)


def board_capture(sdram_hz: int, budget: CaptureBudget = CaptureBudget()) -> BoardCapture:
    """The read delay whose window is widest at `sdram_hz`, and the whole PHASE_STEP_DEG nearest the
    window's middle: 90 deg and 0 at 50 MHz, 202.5 deg and 1 at 100 MHz."""
    period = 1e9 / sdram_hz
    windows = {d: budget.window(period, d) for d in range(3)}
    read_delay = max(windows, key=lambda d: windows[d][1] - windows[d][0])
    low, high = windows[read_delay]
    if low > high:
        raise SdramError(f"SDRAM at {sdram_hz / 1e6:g} MHz: no clock phase meets both the command and the read "
                         f"data windows (docs/sdram.md)")
    phase = round((low + high) / 2 / period * 360 / PHASE_STEP_DEG) * PHASE_STEP_DEG
    return BoardCapture(phase, read_delay)


def board_read_delay(sdram_hz: int) -> int:
    """The controller's read delay on the ULX3S: the capture's and the two IO registers'."""
    return board_capture(sdram_hz).read_delay + IO_REGISTER_DELAY


CONTROLLER_COUNT_BITS = 16  # a controller request moves up to 65,536 SDRAM words


@dataclass(frozen=True)
class SdramSetup:
    """What a design's SDRAM port is built with: BitlaneTop builds its port from this, and the
    simulators set their SDRAM model up from it (hw/sim/build.py), so both see one definition."""
    sdram_hz: int
    read_delay: int
    timing: SdramTiming = SdramTiming()
    geometry: SdramGeometry = SdramGeometry()

    def port(self, **kw) -> "SdramPort":
        return SdramPort(self.sdram_hz, read_delay=self.read_delay, timing=self.timing, geometry=self.geometry, **kw)


def sdram_setup(config) -> SdramSetup | None:
    """The SDRAM of a CoreConfig (None without): the ULX3S's part, clocked at `sdram_clock_hz`,
    with the ULX3S's read delay. The part must have `sdram_words` words."""
    if not config.sdram_words:
        return None
    setup = SdramSetup(config.sdram_clock_hz, board_read_delay(config.sdram_clock_hz))
    if setup.geometry.words != config.sdram_words:
        raise SdramError(f"config {config.name!r}: sdram_words {config.sdram_words} is not the SDRAM's "
                         f"{setup.geometry.words} words")
    return setup


def mem_request_layout(addr_bits: int, count_bits: int) -> data.StructLayout:
    return data.StructLayout({
        "addr": addr_bits,  # first port word
        "count": count_bits,  # port words to move, minus one
        "write": 1,
    })


def mem_port_signature(*, addr_bits: int, data_width: int, count_bits: int) -> wiring.Signature:
    """A memory port as its user sees it: requests and write words out, read words in."""
    return wiring.Signature({
        "req": Out(stream.Signature(mem_request_layout(addr_bits, count_bits))),
        "w_data": Out(stream.Signature(data_width)),
        "r_data": In(stream.Signature(data_width)),
    })


def read_port_signature(*, addr_bits: int, data_width: int, count_bits: int) -> wiring.Signature:
    """A read-only memory port as its user sees it: requests out (`write` always 0), read words in."""
    return wiring.Signature({
        "req": Out(stream.Signature(mem_request_layout(addr_bits, count_bits))),
        "r_data": In(stream.Signature(data_width)),
    })


def share_port(m: Module, port, sel, first, second, *, first_reads: bool = True) -> None:
    """Two users of one memory port (`mem_port_signature` / `read_port_signature`, as the users see it):
    `first` while `sel`, else `second`. Their requests and write words go to `port` from the selected
    user, whose streams alone see `port`'s ready; read words go to the selected user, or all of them to
    `second` when `first` only writes (`first_reads=False`)."""
    for name in ("req", "w_data"):
        if hasattr(port, name):
            a, b, p = getattr(first, name), getattr(second, name), getattr(port, name)
            m.d.comb += [p.valid.eq(Mux(sel, a.valid, b.valid)), p.payload.eq(Mux(sel, a.payload, b.payload)),
                         a.ready.eq(sel & p.ready), b.ready.eq(~sel & p.ready)]
    readers = [(user.r_data, when) for user, when in ((first, sel), (second, ~sel))
               if hasattr(user, "r_data") and (user is second or first_reads)]
    only = len(readers) == 1
    for r_data, when in readers:
        m.d.comb += [r_data.payload.eq(port.r_data.payload),
                     r_data.valid.eq(port.r_data.valid if only else when & port.r_data.valid)]
    m.d.comb += port.r_data.ready.eq(readers[0][0].ready if only else Mux(sel, first.r_data.ready, second.r_data.ready))


class SdramPort(wiring.Component):
    """`SdramController` in the `sdram_domain`, behind async FIFOs, as a port of `domain`.

    Parameters
    ----------
    sdram_hz:
        The `sdram_domain`'s clock; the controller's timings are converted to it.
    ratio:
        SDRAM words per port word (a power of two).
    read_delay, timing, geometry:
        Passed to the controller (`read_delay`: the board's capture delay, `board_read_delay(sdram_hz)`
        on the ULX3S).
    fifo_depth:
        Depth of the write-data and read-data FIFOs (port words); the request FIFO holds 4.
    fetch_ratio:
        0, or SDRAM words per port word of the read-only `fetch` port (a power of two).

    Members
    -------
    mem: In(mem_port_signature)
        The port, in `domain`: `addr_bits` = the SDRAM's word address bits less log2(ratio),
        `count_bits` = 16 less log2(ratio), `data_width` = 16 * ratio.
    pins: Out(sdram_pins_signature)
        The controller's SDRAM pins, in `sdram_domain`.
    init_done: Out(1)
        The controller has initialized the SDRAM (synchronized into `domain`). Requests made
        before are held in the FIFO until then.
    fetch: In(read_port_signature)
        Only with `fetch_ratio`: as `mem` without writes, `fetch_ratio` SDRAM words a port word
        (module docstring: it must not overlap `mem`'s reads).
    """

    def __init__(self, sdram_hz: int, *, ratio: int = 1, read_delay: int | None = None,
                 timing: SdramTiming = SdramTiming(), geometry: SdramGeometry = SdramGeometry(),
                 domain: str = "sync", sdram_domain: str = "sdram", fifo_depth: int = 16,
                 fetch_ratio: int = 0) -> None:
        for what, value in (("ratio", ratio), ("fetch_ratio", fetch_ratio or 1)):
            if value < 1 or value & (value - 1):
                raise SdramError(f"{what} {value} is not a power of two")
            if value.bit_length() - 1 >= min(geometry.addr_bits, CONTROLLER_COUNT_BITS):
                raise SdramError(f"{what} {value} is too large for a {geometry.words}-word SDRAM")
        self.shift = ratio.bit_length() - 1
        self.fetch_ratio, self.fetch_shift = fetch_ratio, max(fetch_ratio, 1).bit_length() - 1
        self.ratio, self.domain, self.sdram_domain, self.fifo_depth = ratio, domain, sdram_domain, fifo_depth
        read_delay = board_read_delay(sdram_hz) if read_delay is None else read_delay
        self.geometry, self.timing, self.read_delay, self.sdram_hz = geometry, timing, read_delay, sdram_hz
        self.controller = SdramController(sdram_hz, timing=timing, geometry=geometry,
                                          count_bits=CONTROLLER_COUNT_BITS, read_delay=read_delay)
        super().__init__({
            "mem": In(mem_port_signature(addr_bits=geometry.addr_bits - self.shift,
                                         data_width=geometry.data_width * ratio,
                                         count_bits=CONTROLLER_COUNT_BITS - self.shift)),
            "pins": Out(sdram_pins_signature(geometry)),
            "init_done": Out(1),
            **({"fetch": In(read_port_signature(addr_bits=geometry.addr_bits - self.fetch_shift,
                                                data_width=geometry.data_width * fetch_ratio,
                                                count_bits=CONTROLLER_COUNT_BITS - self.fetch_shift))}
               if fetch_ratio else {}),
        })

    @property
    def words(self) -> int:
        """Port words the SDRAM holds."""
        return self.geometry.words >> self.shift

    def elaborate(self, platform) -> Module:
        m = Module()
        core, sdram, g = self.domain, self.sdram_domain, self.geometry
        m.submodules.controller = ctrl = DomainRenamer({"sync": sdram})(self.controller)
        wiring.connect(m, ctrl.pins, wiring.flipped(self.pins))
        m.submodules.init_done = FFSynchronizer(ctrl.init_done, self.init_done, o_domain=core)

        # ---- requests: scaled to SDRAM words on the core side, then across with the port they are from
        size = ctrl.req.payload.shape().size
        m.submodules.req_fifo = req_fifo = fifo.AsyncFIFO(width=size + 1, depth=4, w_domain=core, r_domain=sdram)

        def scaled(port, shift: int, name: str) -> Signal:
            request = Signal(ctrl.req.payload.shape(), name=name)
            m.d.comb += [request.addr.eq(port.req.payload.addr << shift),
                         request.count.eq(Cat(Const((1 << shift) - 1, shift), port.req.payload.count)),
                         request.write.eq(port.req.payload.write)]
            return request

        mem_request = scaled(self.mem, self.shift, "mem_request")
        m.d.comb += [
            req_fifo.w_data.eq(Cat(mem_request, 0)),
            req_fifo.w_en.eq(self.mem.req.valid),
            self.mem.req.ready.eq(req_fifo.w_rdy),
            ctrl.req.payload.eq(req_fifo.r_data[:size]),
            ctrl.req.valid.eq(req_fifo.r_rdy),
            req_fifo.r_en.eq(ctrl.req.ready),
        ]
        to_fetch = Signal()  # the read words go to `fetch`: the last request the controller took was its
        if self.fetch_ratio:
            fetch_request = scaled(self.fetch, self.fetch_shift, "fetch_request")
            with m.If(self.fetch.req.valid):  # never at once with mem's (module docstring)
                m.d.comb += [req_fifo.w_data.eq(Cat(fetch_request, 1)), req_fifo.w_en.eq(1),
                             self.mem.req.ready.eq(0)]
            m.d.comb += self.fetch.req.ready.eq(req_fifo.w_rdy)
            with m.If(ctrl.req.valid & ctrl.req.ready):
                m.d[sdram] += to_fetch.eq(req_fifo.r_data[size])

        # ---- write words: across, then `ratio` SDRAM words each, lowest first
        m.submodules.w_fifo = w_fifo = fifo.AsyncFIFO(
            width=len(self.mem.w_data.payload), depth=self.fifo_depth, w_domain=core, r_domain=sdram)
        wiring.connect(m, wiring.flipped(self.mem.w_data), w_fifo.w_stream)
        if self.ratio == 1:
            wiring.connect(m, w_fifo.r_stream, ctrl.w_data)
        else:
            word = Signal(len(self.mem.w_data.payload))
            left = Signal(range(self.ratio + 1))  # SDRAM words of `word` not yet written
            sent = ctrl.w_data.valid & ctrl.w_data.ready
            take = w_fifo.r_rdy & ((left == 0) | ((left == 1) & sent))
            m.d.comb += [ctrl.w_data.valid.eq(left != 0), ctrl.w_data.payload.eq(word[:g.data_width]),
                         w_fifo.r_en.eq(take)]
            with m.If(take):
                m.d[sdram] += [word.eq(w_fifo.r_data), left.eq(self.ratio)]
            with m.Elif(sent):
                m.d[sdram] += [word.eq(word >> g.data_width), left.eq(left - 1)]

        # ---- read words: `ratio` SDRAM words into one, then across (to `fetch`: `fetch_ratio` words)
        def reader(port, ratio: int, valid, name: str):
            """The read path into `port` for the controller's words while `valid`; returns its `ready`.
            With ratio > 1, the words gather in `word`; a whole one moves to the register `out` and is
            pushed into the FIFO from there. `ready` is a function of this reader's own registers only:
            the FIFO's `w_rdy` never reaches the controller combinationally (the FIFO's RAM sits by its
            reader in the core's domain, often far across the die, and the SDRAM's clock is fast). It
            stalls the controller only when `out` is still full as the next word would complete it, so
            a full rate stream never stalls while the FIFO has room (`out` empties in one cycle and
            fills once every `ratio` cycles)."""
            m.submodules[name] = r_fifo = fifo.AsyncFIFO(
                width=len(port.r_data.payload), depth=self.fifo_depth, w_domain=sdram, r_domain=core)
            wiring.connect(m, r_fifo.r_stream, wiring.flipped(port.r_data))
            if ratio == 1:
                m.d.comb += [r_fifo.w_data.eq(ctrl.r_data.payload), r_fifo.w_en.eq(valid)]
                return r_fifo.w_rdy
            word = Signal(len(port.r_data.payload) - g.data_width, name=f"{name}_word")  # all but the last word
            have = Signal(range(ratio), name=f"{name}_have")  # SDRAM words in `word`
            out = Signal(len(port.r_data.payload), name=f"{name}_out")
            out_valid = Signal(name=f"{name}_out_valid")
            push = out_valid & r_fifo.w_rdy
            completes = have == ratio - 1
            ready = ~(completes & out_valid)
            m.d.comb += [r_fifo.w_data.eq(out), r_fifo.w_en.eq(push)]
            with m.If(push):
                m.d[sdram] += out_valid.eq(0)
            with m.If(valid & ready):  # each word in at the top: after `ratio` of them the first is lowest
                with m.If(completes):
                    m.d[sdram] += [out.eq(Cat(word, ctrl.r_data.payload)), out_valid.eq(1), have.eq(0)]
                with m.Else():
                    m.d[sdram] += [word.eq(Cat(word[g.data_width:], ctrl.r_data.payload)), have.eq(have + 1)]
            return ready

        mem_ready = reader(self.mem, self.ratio, ctrl.r_data.valid & ~to_fetch, "r_fifo")
        if self.fetch_ratio:
            fetch_ready = reader(self.fetch, self.fetch_ratio, ctrl.r_data.valid & to_fetch, "fetch_fifo")
            m.d.comb += ctrl.r_data.ready.eq(Mux(to_fetch, fetch_ready, mem_ready))
        else:
            m.d.comb += ctrl.r_data.ready.eq(mem_ready)
        return m


def sdram_io(m: Module, platform, pins: wiring.PureInterface, *, domain: str, clock_domain: str) -> None:
    """The ULX3S's SDRAM pins for the `pins` of a controller clocked by `domain`: the chip's clock
    forwarded from `clock_domain` (the PLL's phase-shifted output) through an ODDRX1F, every other
    pin through an IO register of `domain` (so that all of them see the same clock-to-pad delay,
    docs/sdram.md)."""
    board_pins = platform.request("sdram", 0, dir="-")
    m.submodules.sdram_clk_buf = clk_buf = io.DDRBuffer("o", board_pins.clk, o_domain=clock_domain)
    m.d.comb += [clk_buf.o[0].eq(1), clk_buf.o[1].eq(0)]  # rises with clock_domain's clock
    # The resource's control pins are active-low PinsN: the buffers take active-high values.
    for name, value in (("clk_en", pins.cke), ("cs", ~pins.cs_n), ("we", ~pins.we_n), ("ras", ~pins.ras_n),
                        ("cas", ~pins.cas_n), ("ba", pins.ba), ("a", pins.a), ("dqm", pins.dqm)):
        m.submodules[f"sdram_{name}_buf"] = buf = io.FFBuffer("o", getattr(board_pins, name), o_domain=domain)
        m.d.comb += buf.o.eq(value)
    m.submodules.sdram_dq_buf = dq_buf = io.FFBuffer("io", board_pins.dq, i_domain=domain, o_domain=domain)
    m.d.comb += [dq_buf.o.eq(pins.dq_o), dq_buf.oe.eq(pins.dq_oe), pins.dq_i.eq(dq_buf.i)]
