"""Board top levels: iCEBreaker (iCE40 UP5K) and ULX3S (ECP5-85F).

Each board is the same three parts:

    oscillator pin -> PLL -> `sync` clock, reset held until lock (+ a power-on delay)
    UART pins      -> UartStreamBridge -> BitlaneTop (command processor + core)
    LEDs           <- heartbeat (clock running, out of reset) and UART error indicator

A board with SDRAM (the ULX3S) adds a fourth part: the PLL also makes the `sdram` domain's
clock and the SDRAM chip's phase-shifted clock, BitlaneTop's SDRAM port (hw/sdram_port.py)
runs the controller in `sdram`, and its pins leave through IO registers (docs/sdram.md).

`BoardLogic` is everything inside the clock domains, with the serial pins, LEDs and
SDRAM pins as plain ports: the UART-level board simulation (hw/sim/uart_harness.cpp)
and the gate-level check Verilate exactly this, with the PLL bypassed.
`BoardTop` wraps it with the board's pins, PLL and reset for amaranth-boards.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Callable

from amaranth.build import Platform
from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out

from bitlane.contract.config import BOARD_FACTS, BoardFacts, CoreConfig

from .sdram_port import board_capture, sdram_io
from .top import BitlaneTop
from .uart import UartStreamBridge, baud_divisor

__all__ = ["BoardError", "Board", "BOARDS", "board", "BoardLogic", "BoardTop", "CORE_CLOCK_NET", "ice40_pll",
           "ecp5_pll", "ecp5_pll_clocks", "ecp5_pll_instance"]


class BoardError(ValueError):
    """An unknown board, or a clock the board's PLL cannot make."""


# ---------------------------------------------------------------- PLL settings

@dataclass(frozen=True)
class Ice40Pll:
    """SB_PLL40 in SIMPLE feedback: f_out = f_in * (DIVF + 1) / ((DIVR + 1) * 2**DIVQ)."""
    divr: int
    divf: int
    divq: int
    filter_range: int
    out_hz: float


def ice40_pll(in_hz: int, out_hz: int) -> Ice40Pll:
    """Exact SB_PLL40 settings for `out_hz` (iCE40 sysCLOCK PLL limits), or BoardError."""
    for divr in range(16):
        pfd = in_hz / (divr + 1)
        if not 10e6 <= pfd <= 133e6:
            continue
        for divq in range(1, 7):
            for divf in range(128):
                vco = pfd * (divf + 1)
                if 533e6 <= vco <= 1066e6 and vco / 2 ** divq == out_hz:
                    # Loop filter by PFD frequency, as in the iCE40 PLL usage guide (and icepll).
                    filter_range = next(i for i, top in enumerate((17e6, 26e6, 44e6, 66e6, 101e6), 1)
                                        if pfd < top) if pfd < 101e6 else 6
                    return Ice40Pll(divr, divf, divq, filter_range, out_hz)
    raise BoardError(f"iCE40 PLL cannot make exactly {out_hz / 1e6:g} MHz from {in_hz / 1e6:g} MHz")


@dataclass(frozen=True)
class Ecp5Pll:
    """EHXPLLL, CLKOP fed back: f_out = f_in * CLKFB_DIV / CLKI_DIV, VCO = f_out * CLKOP_DIV."""
    clki_div: int
    clkfb_div: int
    clkop_div: int
    out_hz: float


def ecp5_pll(in_hz: int, out_hz: int) -> Ecp5Pll:
    """Exact EHXPLLL settings for `out_hz` (ECP5 sysCLOCK limits), VCO nearest 600 MHz."""
    candidates = []
    for clki_div in range(1, 129):
        if not 3.125e6 <= in_hz / clki_div <= 400e6:
            continue
        for clkfb_div in range(1, 81):
            if in_hz * clkfb_div / clki_div != out_hz:
                continue
            for clkop_div in range(1, 129):
                vco = out_hz * clkop_div
                if 400e6 <= vco <= 800e6:
                    candidates.append((abs(vco - 600e6), Ecp5Pll(clki_div, clkfb_div, clkop_div, out_hz)))
    if not candidates:
        raise BoardError(f"ECP5 PLL cannot make exactly {out_hz / 1e6:g} MHz from {in_hz / 1e6:g} MHz")
    return min(candidates, key=lambda c: c[0])[1]


ECP5_PLL_OUTPUTS = ("CLKOP", "CLKOS", "CLKOS2", "CLKOS3")


@dataclass(frozen=True)
class Ecp5Output:
    """One EHXPLLL output: f = VCO / div, phase (CPHASE, FPHASE) in VCO periods and eighths."""
    hz: int
    div: int
    cphase: int
    fphase: int


@dataclass(frozen=True)
class Ecp5Clocks:
    """EHXPLLL with CLKOP fed back and up to three more outputs of the same VCO (CLKOS, CLKOS2,
    CLKOS3, in that order): VCO = f_in * CLKFB_DIV / CLKI_DIV * CLKOP's div."""
    in_hz: int
    clki_div: int
    clkfb_div: int
    outputs: tuple[Ecp5Output, ...]


def ecp5_pll_clocks(in_hz: int, outputs: Sequence[tuple[int, float]]) -> Ecp5Clocks:
    """Exact EHXPLLL settings for (frequency, degrees behind CLKOP) per output, CLKOP first, VCO
    nearest 600 MHz. Phases are in 1/8 VCO period steps from CLKOP's zero phase, as ecppll sets them."""
    if not 1 <= len(outputs) <= len(ECP5_PLL_OUTPUTS):
        raise BoardError(f"an EHXPLLL has 1 to {len(ECP5_PLL_OUTPUTS)} outputs, not {len(outputs)}")
    op_hz = outputs[0][0]
    base = ecp5_pll(in_hz, op_hz)  # CLKI_DIV and CLKFB_DIV for CLKOP
    candidates = []
    for op_div in range(1, 129):
        vco = op_hz * op_div
        if not 400e6 <= vco <= 800e6 or any(vco % hz or vco // hz > 128 for hz, _ in outputs):
            continue
        zero = op_div // 2 - 1
        outs = []
        for hz, degrees in outputs:
            div = int(vco // hz)
            eighths = round(degrees / 360 * div * 8)
            outs.append(Ecp5Output(hz, div, zero + eighths // 8, eighths % 8))
        candidates.append((abs(vco - 600e6), Ecp5Clocks(in_hz, base.clki_div, base.clkfb_div, tuple(outs))))
    if not candidates:
        raise BoardError("ECP5 PLL cannot make exactly " + ", ".join(f"{hz / 1e6:g}" for hz, _ in outputs)
                         + f" MHz from one VCO and {in_hz / 1e6:g} MHz")
    return min(candidates, key=lambda c: c[0])[1]


def ecp5_pll_instance(clocks: Ecp5Clocks, clki, outputs: Sequence[Signal], locked: Signal) -> Instance:
    """The EHXPLLL of `clocks`: `outputs` are its CLKOP, CLKOS, ... signals, CLKOP fed back."""
    params = dict(
        a_FREQUENCY_PIN_CLKI=str(clocks.in_hz / 1e6),
        a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
        p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED", p_CLKI_DIV=clocks.clki_div, p_CLKFB_DIV=clocks.clkfb_div,
        p_FEEDBK_PATH="CLKOP",
        i_CLKI=clki, i_CLKFB=outputs[0], i_RST=0, i_STDBY=0,
        i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0,
        o_LOCK=locked)
    n = len(clocks.outputs)
    for name, mux, out, signal in zip(ECP5_PLL_OUTPUTS[:n], "ABCD"[:n], clocks.outputs, outputs, strict=True):
        params.update({f"a_FREQUENCY_PIN_{name}": str(out.hz / 1e6), f"p_OUTDIVIDER_MUX{mux}": f"DIV{mux}",
                       f"p_{name}_ENABLE": "ENABLED", f"p_{name}_DIV": out.div,
                       f"p_{name}_CPHASE": out.cphase, f"p_{name}_FPHASE": out.fphase,
                       f"i_EN{name}": 0, f"o_{name}": signal})
    return Instance("EHXPLLL", **params)


# ---------------------------------------------------------------- boards

CORE_CLOCK_NET = "logic.clk"  # the `sync` clock's net in the flattened netlist (BoardTop's submodule `logic`)


def core_frequency_preference(mhz: float) -> str:
    """The LPF line (ECP5) that places and routes the core clock for `mhz`, overriding the constraint
    nextpnr derives from the PLL."""
    return f'FREQUENCY NET "{CORE_CLOCK_NET}" {mhz:g} MHZ;'


@dataclass(frozen=True, kw_only=True)
class Board(BoardFacts):
    """A board's facts (contract/config.py) and what building gateware for it needs."""

    make_platform: Callable[[], Platform]
    reset_button: str  # resource name; pressed = 1 (amaranth-boards inverts active-low pins)
    synth_opts: str  # options of yosys synth_<family>, for the bitstream and the gate-level netlist
    pnr_opts: tuple[str, ...] = ()  # options of nextpnr-<family> besides the report, seed and timing ones
    # nextpnr's placement seed: one from which this board's top routes (the ULX3S top routes from some
    # placements only: README "ULX3S timing")
    seed: int = 1
    # ECP5: the core clock is placed and routed for this many MHz (`core_frequency_preference`), more than
    # the PLL makes, and the build checks the routed fmax against it: the build's margin
    core_target_mhz: float | None = None
    programmer: str  # command that loads a bitstream over USB
    install_hint: str

    @property
    def top_name(self) -> str:
        """The build's name: its files are <top_name>.il, .json, .bit (or .bin), ..."""
        return f"bitlane_{self.name}"

    @property
    def bitstream_name(self) -> str:
        """The bitstream's file name: icepack writes .bin, ecppack .bit."""
        return f"{self.top_name}.{'bin' if self.family == 'ice40' else 'bit'}"

    @property
    def divisor(self) -> int:
        return baud_divisor(self.core.clock_hz, self.baud)

    def with_baud(self, baud: int) -> "Board":
        if baud > self.max_baud:
            raise BoardError(f"{self.name}: baud {baud} is above what its USB-UART bridge "
                             f"allows ({self.max_baud})")
        changed = replace(self, baud=baud)
        changed.divisor  # noqa: B018 - raises UartConfigError for a rate the clock cannot make
        return changed


def _icebreaker() -> Platform:
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    return ICEBreakerPlatform()


def _ulx3s() -> Platform:
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    class ULX3SBuildOnly(ULX3S_85F_Platform):
        # amaranth-boards lists the programmer as required even to build; we program separately.
        @property
        def required_tools(self) -> list[str]:
            return [tool for tool in super().required_tools if tool != "openFPGALoader"]

    return ULX3SBuildOnly()


BOARDS: dict[str, Board] = {
    "icebreaker": Board(
        **BOARD_FACTS["icebreaker"].facts(), make_platform=_icebreaker, reset_button="button",
        # Map the single-port weight memory to the four SPRAMs and the command
        # processor's range-check multipliers to MAC16 DSPs (in LUTs they overflow the UP5K).
        synth_opts="-spram -dsp", programmer="iceprog",
        install_hint="iceprog comes with icestorm (Debian/Ubuntu: apt install fpga-icestorm); "
                     "openFPGALoader -b ice40_generic also works"),
    "ulx3s": Board(
        **BOARD_FACTS["ulx3s"].facts(), make_platform=_ulx3s, reset_button="button_pwr",
        # router2 routes the decoder in minutes; router1 still had ~91,000 arcs queued when router2 was
        # done. With nextpnr's default placer (HeAP) no seed of the 45 MHz top routed; its static
        # (electrostatic) placer's did. The core runs at 45 MHz and is placed and routed for 50, which
        # seed 8 meets (README "ULX3S timing")
        synth_opts="", pnr_opts=("--router", "router2", "--placer", "static"), seed=8, core_target_mhz=50,
        programmer="openFPGALoader",
        install_hint="openFPGALoader: apt install openfpgaloader, or build it from "
                     "https://github.com/trabucayre/openFPGALoader"),
}


def board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise BoardError(f"unknown board {name!r}; choose one of {', '.join(BOARDS)}") from None


# ---------------------------------------------------------------- gateware

class BoardLogic(wiring.Component):
    """UART + bitlane top + status LEDs: everything a board runs in its `sync` domain, and in
    its `sdram` domain where the configuration has SDRAM.

    Members
    -------
    uart_rx, uart_tx: the serial pins (idle high)
    led_heartbeat: blinks about twice a second while clocked and out of reset
    led_error: lit once a framing error or an rx overrun was seen, until reset
    sdram: Out(sdram_pins_signature), only with SDRAM: the controller's pins (`sdram` domain)
    """

    def __init__(self, core: CoreConfig, divisor: int) -> None:
        self.core = core
        self.divisor = divisor
        self._top = BitlaneTop(core)
        members = {"uart_rx": In(1, init=1), "uart_tx": Out(1, init=1), "led_heartbeat": Out(1),
                   "led_error": Out(1)}
        if core.sdram_words:
            members["sdram"] = Out(self._top.sdram.signature)
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.uart = uart = UartStreamBridge()
        m.submodules.top = top = self._top
        if self.core.sdram_words:
            wiring.connect(m, top.sdram, wiring.flipped(self.sdram))
        m.d.comb += [
            uart.divisor.eq(self.divisor),
            uart.rx_pin.eq(self.uart_rx),
            self.uart_tx.eq(uart.tx_pin),
            self.led_error.eq((uart.framing_errors != 0) | (uart.overruns != 0)),
        ]
        wiring.connect(m, uart.rx, top.rx)
        wiring.connect(m, top.tx, uart.tx)

        half_period = max(self.core.clock_hz // 4, 2)
        blink = Signal(range(half_period))
        with m.If(blink == half_period - 1):
            m.d.sync += [blink.eq(0), self.led_heartbeat.eq(~self.led_heartbeat)]
        with m.Else():
            m.d.sync += blink.eq(blink + 1)
        return m


# iCE40 block RAMs read as zeroes for ~3 us after configuration (amaranth's own
# iCE40 reset logic waits for the same reason); hold reset this long after lock.
POWER_ON_RESET_S = 10e-6


class BoardTop(Elaboratable):
    """The board's pins around `BoardLogic`: oscillator, PLL, reset button, UART, two LEDs."""

    def __init__(self, spec: Board) -> None:
        self.spec = spec

    def elaborate(self, platform) -> Module:
        spec = self.spec
        m = Module()
        pll_clk = Signal()
        locked = Signal()
        if spec.family == "ice40":
            pll = ice40_pll(spec.osc_hz, spec.core.clock_hz)
            # The oscillator pin feeds the PLL pad directly (no input buffer in between).
            osc = platform.request(platform.default_clk, dir="-")
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE",
                p_DIVR=pll.divr, p_DIVF=pll.divf, p_DIVQ=pll.divq, p_FILTER_RANGE=pll.filter_range,
                i_PACKAGEPIN=osc.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=pll_clk, o_LOCK=locked)
        elif spec.family == "ecp5":
            osc = platform.request(platform.default_clk)
            if spec.core.sdram_words:
                # CLKOP: the controller's `sdram` domain (fed back), CLKOS: the SDRAM chip's clock,
                # board_capture's phase behind it (docs/sdram.md), CLKOS2: the core's `sync` domain.
                sdram_hz = spec.core.sdram_clock_hz
                clocks = ecp5_pll_clocks(spec.osc_hz, [(sdram_hz, 0), (sdram_hz, board_capture(sdram_hz).phase_deg),
                                                          (spec.core.clock_hz, 0)])
                sdram_clk, sdram_chip_clk = Signal(), Signal()
                m.submodules.pll = ecp5_pll_instance(clocks, osc.i, [sdram_clk, sdram_chip_clk, pll_clk], locked)
            else:
                clocks = ecp5_pll_clocks(spec.osc_hz, [(spec.core.clock_hz, 0)])
                m.submodules.pll = ecp5_pll_instance(clocks, osc.i, [pll_clk], locked)
        else:
            raise BoardError(f"{spec.name}: no PLL for family {spec.family!r}")
        # No clock constraint on pll_clk: nextpnr derives the PLL output's from the oscillator's.

        # Reset: until the PLL locks, a power-on delay after that, or while the button is held.
        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        m.domains.sync = ClockDomain("sync")
        m.d.comb += [ClockSignal("por").eq(pll_clk), ClockSignal("sync").eq(pll_clk)]
        por_cycles = int(POWER_ON_RESET_S * spec.core.clock_hz)
        por_timer = Signal(range(por_cycles + 1))
        with m.If(~locked):
            m.d.por += por_timer.eq(0)
        with m.Elif(por_timer != por_cycles):
            m.d.por += por_timer.eq(por_timer + 1)
        button = platform.request(spec.reset_button, 0)
        m.submodules.reset_sync = ResetSynchronizer(
            (por_timer != por_cycles) | button.i, domain="sync")

        m.submodules.logic = logic = BoardLogic(spec.core, spec.divisor)
        if spec.core.sdram_words:
            m.domains.sdram = ClockDomain("sdram")
            m.domains.sdram_clk = ClockDomain("sdram_clk", reset_less=True, local=True)
            m.d.comb += [ClockSignal("sdram").eq(sdram_clk), ClockSignal("sdram_clk").eq(sdram_chip_clk)]
            m.submodules.sdram_reset_sync = ResetSynchronizer(
                (por_timer != por_cycles) | button.i, domain="sdram")
            sdram_io(m, platform, logic.sdram, domain="sdram", clock_domain="sdram_clk")
        uart = platform.request("uart", 0)
        m.d.comb += [
            logic.uart_rx.eq(uart.rx.i),
            uart.tx.o.eq(logic.uart_tx),
            platform.request("led", 0).o.eq(logic.led_heartbeat),
            platform.request("led", 1).o.eq(logic.led_error),
        ]
        return m
