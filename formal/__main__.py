"""`python -m formal`: check every property (`make formal`), or some, or plant their mutations.

    python -m formal                  # every property, one line each, then "N properties proven"
    python -m formal --quick          # only those that also run in `make test`
    python -m formal lane-pair-k2 crc-step
    python -m formal --mutate         # each property's one-line bug: planted, must fail, reverted
    python -m formal --list
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from .properties import PROPERTIES, BY_NAME, Property
from .sby import BUILD, ROOT


def line(prop: Property, status: str, seconds: float) -> str:
    return f"{status:<7} {prop.name:<30} P{prop.issue_item}  {prop.method_text:<20} {seconds:7.1f} s"


def check(props: list[Property], verbose: bool, workdir=None) -> int:
    failed = []
    for prop in props:
        result = prop.run(workdir)
        print(line(prop, result.status, result.seconds), flush=True)
        if not result.ok:
            failed.append(prop.name)
            if verbose:
                print("\n".join(result.log.splitlines()[-40:]))
    if failed:
        print(f"{len(failed)} of {len(props)} properties FAILED: {', '.join(failed)}")
        return 1
    print(f"{len(props)} properties proven")
    return 0


def mutate(props: list[Property]) -> int:
    """Plant each property's bug, check that the property no longer passes, restore the file."""
    caught = 0
    for prop in props:
        mut = prop.mutation
        path = ROOT / mut.path
        original = path.read_text()
        if original.count(mut.old) != 1:
            print(f"STALE   {prop.name:<30} {mut.path}: the mutated line is not found exactly once")
            continue
        start = time.monotonic()
        try:
            path.write_text(original.replace(mut.old, mut.new))
            proc = subprocess.run([sys.executable, "-m", "formal", "--no-summary", "--workdir",
                                   str(BUILD.parent / "formal-mutations"), prop.name], cwd=ROOT,
                                  capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        finally:
            path.write_text(original)
        seconds = time.monotonic() - start
        status = proc.stdout.split()[0] if proc.stdout.strip() else "ERROR"
        ok = proc.returncode != 0 and status in ("FAIL", "UNPROVEN")
        caught += ok
        old, new = mut.old.splitlines()[0].strip(), mut.new.splitlines()[0].strip()
        print(f"{'CAUGHT' if ok else 'MISSED':<7} {prop.name:<30} {status:<8} {seconds:6.1f} s  "
              f"{mut.path}: {old!r} -> {new!r}", flush=True)
        if not ok:
            print(proc.stdout[-2000:] + proc.stderr[-2000:])
    print(f"{caught} of {len(props)} mutations caught")
    return 0 if caught == len(props) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m formal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="properties to check (default: all)")
    parser.add_argument("--quick", action="store_true", help="only the quick properties (those in make test)")
    parser.add_argument("--mutate", action="store_true", help="plant each property's bug and expect a failure")
    parser.add_argument("--list", action="store_true", help="list the properties")
    parser.add_argument("--verbose", "-v", action="store_true", help="print the tail of a failing log")
    parser.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None, help="where the solver runs (default build/formal)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown properties {unknown}; see --list")
    props = [BY_NAME[n] for n in args.names] if args.names else PROPERTIES
    if args.quick:
        props = [p for p in props if p.quick]
    if args.list:
        for p in props:
            print(f"{p.name:<30} P{p.issue_item}  {p.method_text:<20} {'quick' if p.quick else ''}\n    {p.claim}")
        return 0
    if args.mutate:
        return mutate(props)
    if args.no_summary:
        result = props[0].run(args.workdir)
        print(line(props[0], result.status, result.seconds))
        return 0 if result.ok else 1
    return check(props, args.verbose, args.workdir)


if __name__ == "__main__":
    sys.exit(main())
