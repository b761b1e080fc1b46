"""ULX3S SDRAM self-test bitstream: the controller on the real pins, clocked as docs/sdram.md
proposes, writing the whole SDRAM with a pseudo-random pattern and reading it back, pass
after pass. It is the board-level timing check of the controller and, on a board, the
bring-up tool for the SDRAM clock phase.

    python -m bitlane.hw.sdram_selftest [--phase-deg 202.5] [--build-dir build/sdram_selftest]

LEDs: 0 blinks with every pass, 1 stays lit after any mismatch, 2-7 count passes.

Clocking: the EHXPLLL makes the controller's clock on CLKOP and the SDRAM clock on CLKOS,
same frequency, CLKOS `phase_deg` behind; the SDRAM clock leaves through an ODDRX1F and
every other SDRAM pin through IO registers (amaranth's ECP5 FFBuffer), so all of them see
the same clock-to-pad delay. The IO registers add a cycle each way, hence the controller's
`read_delay` is the phase's capture delay (docs/sdram.md) plus 2.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Const, Elaboratable, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import Out

from .boards import board, ecp5_pll_clocks, ecp5_pll_instance
from .build import BuildError, parse_nextpnr_report, yowasp_environment
from .sdram import SdramController, SdramGeometry, sdram_pins_signature
from .sdram_port import IO_REGISTER_DELAY, board_capture, sdram_io

__all__ = ["SdramSelfTest", "Ulx3sSdramSelfTest", "IO_REGISTER_DELAY", "PHASE_DEG", "PHASE_READ_DELAY"]

CLOCK_HZ = 100_000_000  # the part's fastest CL-2 clock: the bring-up's stress point
_CAPTURE = board_capture(CLOCK_HZ)
PHASE_DEG, PHASE_READ_DELAY = _CAPTURE.phase_deg, _CAPTURE.read_delay
OSC_HZ = board("ulx3s").osc_hz
LFSR_TAPS = 0xB400  # x^16 + x^14 + x^13 + x^11 + 1, maximal length


def lfsr_next(value):
    """One step of the 16-bit Galois LFSR (works on Amaranth values and on ints)."""
    return (value >> 1) ^ ((value & 1) * LFSR_TAPS)


class SdramSelfTest(wiring.Component):
    """Write `region_words` words from address 0 with an LFSR sequence seeded by the pass
    number, read them back and compare; repeat.

    Members
    -------
    pins: Out(sdram_pins_signature)
        The controller's SDRAM pins.
    passes: Out(8)
        Completed write+read passes (wraps).
    error: Out(1)
        A word read back differed from the one written, in any pass so far.
    """

    def __init__(self, clock_hz: int, *, read_delay: int, region_words: int | None = None) -> None:
        self._controller = SdramController(clock_hz, read_delay=read_delay)
        geometry: SdramGeometry = self._controller.geometry
        self.region_words = region_words or geometry.words
        self.chunk_words = 1 << len(self._controller.req.payload.count)
        if self.region_words > self.chunk_words and self.region_words % self.chunk_words:
            raise ValueError(f"region of {self.region_words} words is not whole {self.chunk_words}-word requests")
        super().__init__({
            "pins": Out(sdram_pins_signature(geometry)),
            "passes": Out(8),
            "error": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.controller = ctrl = self._controller
        wiring.connect(m, ctrl.pins, wiring.flipped(self.pins))

        request_words = min(self.region_words, self.chunk_words)
        requests = self.region_words // request_words
        writing = Signal(init=1)
        requests_left = Signal(range(requests + 1), init=requests)
        next_addr = Signal.like(ctrl.req.payload.addr)
        words_left = Signal(range(self.region_words + 1), init=self.region_words)
        # Each half-pass restarts the LFSR from a seed: the pass number with the top bit set
        # (never zero), so a pass never reads back what an earlier pass left.
        def seed(passes):
            return Cat(passes[:8], Const(0x80, 8))

        pattern = Signal(16, init=0x8000)  # the next word to write, or expected to read

        m.d.comb += [
            ctrl.req.valid.eq(requests_left != 0),
            ctrl.req.payload.addr.eq(next_addr),
            ctrl.req.payload.count.eq(request_words - 1),
            ctrl.req.payload.write.eq(writing),
            ctrl.w_data.valid.eq(writing),
            ctrl.w_data.payload.eq(pattern),
            ctrl.r_data.ready.eq(~writing),
        ]
        with m.If(ctrl.req.valid & ctrl.req.ready):
            m.d.sync += [requests_left.eq(requests_left - 1), next_addr.eq(next_addr + request_words)]
        moved = (ctrl.w_data.valid & ctrl.w_data.ready) | (ctrl.r_data.valid & ctrl.r_data.ready)
        with m.If(ctrl.r_data.valid & ctrl.r_data.ready & (ctrl.r_data.payload != pattern)):
            m.d.sync += self.error.eq(1)
        with m.If(moved):
            m.d.sync += [pattern.eq(lfsr_next(pattern)), words_left.eq(words_left - 1)]
            with m.If(words_left == 1):
                # Next half-pass over the same region: the read of this pass, or the write of
                # the next one.
                m.d.sync += [
                    writing.eq(~writing), requests_left.eq(requests), next_addr.eq(0),
                    words_left.eq(self.region_words),
                    pattern.eq(Mux(writing, seed(self.passes), seed(self.passes + 1))),
                ]
                with m.If(~writing):
                    m.d.sync += self.passes.eq(self.passes + 1)
        return m


class Ulx3sSdramSelfTest(Elaboratable):
    """`SdramSelfTest` on the ULX3S: PLL, SDRAM clock forwarding, IO registers, LEDs."""

    def __init__(self, phase_deg: float = PHASE_DEG, *, clock_hz: int = CLOCK_HZ,
                 read_delay: int = PHASE_READ_DELAY) -> None:
        self.phase_deg = phase_deg
        self.clock_hz = clock_hz
        self.read_delay = read_delay

    def elaborate(self, platform) -> Module:
        m = Module()
        # CLKOP: the controller's clock; CLKOS: the SDRAM chip's, phase_deg behind it.
        clocks = ecp5_pll_clocks(OSC_HZ, [(self.clock_hz, 0), (self.clock_hz, self.phase_deg)])
        sync_clk, sdram_clk, locked = Signal(), Signal(), Signal()
        osc = platform.request(platform.default_clk)
        m.submodules.pll = ecp5_pll_instance(clocks, osc.i, [sync_clk, sdram_clk], locked)
        m.domains.sync = ClockDomain("sync")
        m.domains.sdram_clk = ClockDomain("sdram_clk", reset_less=True)
        m.d.comb += [ClockSignal("sync").eq(sync_clk), ClockSignal("sdram_clk").eq(sdram_clk)]
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")

        m.submodules.test = test = SdramSelfTest(self.clock_hz, read_delay=self.read_delay + IO_REGISTER_DELAY)
        sdram_io(m, platform, test.pins, domain="sync", clock_domain="sdram_clk")

        leds = [platform.request("led", i).o for i in range(8)]
        m.d.comb += [leds[0].eq(test.passes[0]), leds[1].eq(test.error)]
        m.d.comb += [led.eq(bit) for led, bit in zip(leds[2:], test.passes[1:])]
        return m


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitlane.hw.sdram_selftest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase-deg", type=float, default=PHASE_DEG, help="SDRAM clock phase behind the controller's")
    parser.add_argument("--read-delay", type=int, default=PHASE_READ_DELAY,
                        help="capture delay of that phase, IO registers not counted")
    parser.add_argument("--build-dir", type=Path, default=Path("build") / "sdram_selftest")
    parser.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    args = parser.parse_args(argv)
    try:
        os.environ.update(yowasp_environment())
        platform = board("ulx3s").make_platform()
        platform.build(Ulx3sSdramSelfTest(args.phase_deg, read_delay=args.read_delay), name="sdram_selftest",
                       build_dir=str(args.build_dir), ecppack_opts="--compress",
                       nextpnr_opts=["--report", "report.json", "--timing-allow-fail", "--seed", str(args.seed)])
        utilization, fmax = parse_nextpnr_report(args.build_dir / "report.json", "ecp5")
    except (BuildError, subprocess.CalledProcessError) as exc:
        print(f"sdram self-test build failed: {exc}", file=sys.stderr)
        return 1
    for name, (used, available) in utilization.items():
        print(f"{name:<32} {used:>6} / {available}")
    met = all(got >= want for got, want in fmax.values())
    for net, (got, want) in fmax.items():
        print(f"clock {net}: {got:.1f} MHz (constraint {want:.1f})")
    print(f"timing {'met' if met else 'NOT met'}; bitstream {args.build_dir / 'sdram_selftest.bit'}")
    return 0 if met else 2


if __name__ == "__main__":
    sys.exit(main())
