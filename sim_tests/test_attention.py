"""The attention unit (hw/attention.py) under Verilator against its model (`AttentionUnit.model`,
itself checked equal to the integer reference in tests/test_attention_model.py).

Four shapes, built once side by side in one `simlib.UnitBank`: h128's (head_dim 64, 2 kv heads,
4 layers) at kv_bits 16 with 16 multipliers and at kv_bits 8 with 8, head_dim 32 with one kv head,
kv_bits 16 and 4 multipliers, and head_dim 12 with one word per position (12 multipliers: an adder
tree with an odd level; kv_bits 12); their inputs come in beats of 4, 1, 2 and 4 mantissas (`in_lanes`; the
ULX3S engine's is 4). Each takes a command script like a decoder's (append K and V of a position, attend
at it) over several layers and kv heads: random caches and queries at every magnitude; positions 0
and context - 1; all-equal scores; one dominant score; the mantissa extremes (-2^(kv_bits-1),
-32768, 32767); exponents far apart so that scores shift to their sign and weights vanish; the
exponent extremes (-128, 127); a cache rewritten from position 0 (the running maxima restart). The
h128 shapes also run the shipped model's real cache and queries (its probes), decoding order.

Each script runs unstalled, where every command must take exactly `append_cycles` /
`attend_cycles`, then with random gaps on `cmd` and `i` and random backpressure on `o`; every
output and its exponent is compared with the model integer for integer, and an output shown and
not taken must not change.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge
from cocotb.utils import get_sim_time

from bitlane.golden import integer as gi
from bitlane.hw.attention import (
    OUTPUT_LAYOUT, AttentionOp, AttentionUnit, append_cycles, attend_cycles, command_layout,
)
from sim_tests import simlib
from tests.test_attention_model import SHIPPED, attention_steps, shipped_ids

TOPLEVEL = "attention"
CONFIGS = {
    # in_lanes: the mantissas of a beat on `i` (the ULX3S engine's 4 vector lanes on h128)
    "h128": dict(head_dim=64, kv_heads=2, layers=4, context=24, kv_bits=16, macs=16, in_lanes=4),
    "h128_kv8": dict(head_dim=64, kv_heads=2, layers=4, context=24, kv_bits=8, macs=8, in_lanes=1),
    "d32": dict(head_dim=32, kv_heads=1, layers=2, context=20, kv_bits=16, macs=4, in_lanes=2),
    "d12_wide": dict(head_dim=12, kv_heads=2, layers=1, context=12, kv_bits=12, macs=12, in_lanes=4),
}
REAL_TOKENS = 16  # decoding steps of the shipped model's real cache (h128 shapes)


def make_units() -> dict[str, AttentionUnit]:
    return {name: (lambda c=c: AttentionUnit(**c)) for name, c in CONFIGS.items()}


# ---------------------------------------------------------------- command scripts and expected outputs

class Script:
    """Commands in order, with the cache they build (host mirror) and each ATTEND's expected output."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        d, C = cfg["head_dim"], cfg["context"]
        slots = [(layer, h) for layer in range(cfg["layers"]) for h in range(cfg["kv_heads"])]
        self.mirror = {s: {"k": np.zeros((C, d), np.int64), "v": np.zeros((C, d), np.int64),
                           "ek": np.zeros(C, np.int64), "ev": np.zeros(C, np.int64), "n": 0} for s in slots}
        self.commands: list[tuple] = []  # (op, layer, kv_head, pos, exp, mantissas, expected u or None, eu)

    def append(self, slot, pos: int, k, ek: int, v, ev: int) -> None:
        c = self.mirror[slot]
        assert pos <= c["n"] and pos < self.cfg["context"]
        c["k"][pos], c["ek"][pos], c["v"][pos], c["ev"][pos], c["n"] = k, ek, v, ev, pos + 1
        self.commands.append((AttentionOp.APPEND_K, *slot, pos, ek, np.asarray(k), None, None))
        self.commands.append((AttentionOp.APPEND_V, *slot, pos, ev, np.asarray(v), None, None))

    def attend(self, slot, q, eq: int, expected=None) -> None:
        c = self.mirror[slot]
        p = c["n"] - 1
        u, eu = AttentionUnit.model(q, eq, c["k"][:p + 1], c["ek"][:p + 1], c["v"][:p + 1], c["ev"][:p + 1])
        if expected is not None:
            assert np.array_equal(u, expected[0]) and eu == expected[1]
        self.commands.append((AttentionOp.ATTEND, *slot, p, eq, np.asarray(q), u, eu))


def random_script(cfg: dict, seed: int) -> Script:
    rng = np.random.default_rng(seed)
    s = Script(cfg)
    d, C, kvb = cfg["head_dim"], cfg["context"], cfg["kv_bits"]
    lo, hi = -(1 << (kvb - 1)), (1 << (kvb - 1)) - 1
    slots = list(s.mirror)
    mant = lambda bits, n=d: rng.integers(-(1 << bits), 1 << bits, n)  # noqa: E731
    row = lambda: mant(int(rng.integers(0, kvb)))                        # noqa: E731 a kv row, any magnitude
    query = lambda: mant(int(rng.integers(0, 16)))                       # noqa: E731
    # interleaved slots, each a stream of (append, maybe attend) steps of its own kind
    plans = []

    def random_fill(slot, n, spread):
        for pos in range(n):
            yield ("append", slot, pos, row(), int(rng.integers(-spread, spread + 1)) - 3,
                   row(), int(rng.integers(-spread, spread + 1)) - 3)
            if pos in (0, 1, n - 1) or rng.random() < 0.2:
                yield ("attend", slot, query(), int(rng.integers(-20, 5)))

    def extremes(slot):
        n = min(C, 6)
        full_k, full_v = np.full(d, lo), np.full(d, hi)
        for pos in range(n):  # mantissa extremes, all-equal scores, exponents far apart
            yield ("append", slot, pos, full_k if pos % 2 == 0 else np.full(d, hi), (-128, 127, 0, 100, -60, 127)[pos],
                   full_v if pos % 3 else np.full(d, lo), (127, -128, 111, 127, 0, -20)[pos])
            yield ("attend", slot, np.full(d, -32768), (-128, 127, -5, -128, 127, 0)[pos])
            yield ("attend", slot, np.full(d, 32767), -10)
            yield ("attend", slot, np.zeros(d, np.int64), 3)  # all scores 0: equal weights
        for pos in range(n):  # rewritten from 0 (the maxima restart): equal rows, then one dominant
            k = np.full(d, 77) if pos != 3 else np.full(d, hi)
            yield ("append", slot, pos, k, -40, mant(kvb - 1), -40 + pos)
            yield ("attend", slot, np.full(d, 1000), -6)

    for k, slot in enumerate(slots):
        if k == 0:
            plans.append(random_fill(slot, C, 2))          # positions 0 .. context - 1
        elif k == 1:
            plans.append(extremes(slot))
        else:
            plans.append(random_fill(slot, int(rng.integers(2, min(C, 10) + 1)), 40))
    if len(slots) == 1:
        plans.append(extremes(slots[0]))  # after the fill, rewritten from 0
    live = [iter(p) for p in plans]
    while live:
        k = int(rng.integers(len(live))) if len(slots) > 1 else 0
        step = next(live[k], None)
        if step is None:
            del live[k]
            continue
        if step[0] == "append":
            s.append(*step[1:])
        else:
            s.attend(*step[1:])
    return s


def real_script(cfg: dict, tokens: int, every: int) -> Script:
    """The shipped model's decoding: per token and layer, append K and V of each kv head, then attend
    each head (every `every`-th token, and the first and last), with the reference's own outputs."""
    im = gi.IntegerModel.load(str(SHIPPED), cfg["kv_bits"])
    H, KV = im.int_config.heads, im.int_config.kv_heads
    layers = attention_steps(im, shipped_ids(tokens))
    s = Script(cfg)
    for p in range(tokens):
        for layer, st in enumerate(layers):
            for kv in range(KV):
                s.append((layer, kv), p, st["k"][p, kv], int(st["ek"][p, kv]), st["v"][p, kv], int(st["ev"][p, kv]))
            if p % every == 0 or p == tokens - 1:
                for h in range(H):
                    s.attend((layer, h // (H // KV)), st["q"][p, h], int(st["eq"][p, h]),
                             (st["u"][p, h], int(st["eu"][p, h])))
    return s


def pack(layout, **fields) -> int:
    word = 0
    for name, field in layout:
        value = fields[name]
        value = value.value if isinstance(value, AttentionOp) else int(value)
        word |= (value & ((1 << field.width) - 1)) << field.offset
    return word


def flatten(script: Script) -> tuple[list[int], list[int], list[int], list[tuple]]:
    """cmd payloads, i payloads (beats of in_lanes mantissas), expected o payloads, and per command (kind, p)."""
    cfg = script.cfg
    layout = command_layout(cfg["layers"], cfg["kv_heads"])
    cmds, elems, outs, kinds = [], [], [], []
    d, w = cfg["head_dim"], cfg["in_lanes"]
    for op, layer, kv, pos, e, mantissas, u, eu in script.commands:
        cmds.append(pack(layout, op=op, layer=layer, kv_head=kv, pos=pos, exp=e))
        elems += [sum((int(x) & 0xFFFF) << (16 * k) for k, x in enumerate(mantissas[b:b + w]))
                  for b in range(0, d, w)]
        kinds.append((op, pos))
        if u is not None:
            outs += [pack(OUTPUT_LAYOUT, value=x, exponent=eu, last=n == d - 1) for n, x in enumerate(u)]
    return cmds, elems, outs, kinds


# ---------------------------------------------------------------- cocotb side

async def run_script(dut, name: str, script: Script, p_valid: float, p_ready: float) -> None:
    """Offer the commands and their elements (each with probability p_valid per cycle, held until
    taken), take outputs with probability p_ready; compare. While an ATTEND computes (its query
    taken, no output yet) the driver sleeps until `o.valid` rises."""
    cfg = script.cfg
    cmds, elems, want, kinds = flatten(script)
    d, w = cfg["head_dim"], cfg["in_lanes"]
    port = lambda s: getattr(dut, f"{name}__{s}")  # noqa: E731
    cmd_valid, cmd_payload, cmd_ready = port("cmd__valid"), port("cmd__payload"), port("cmd__ready")
    i_valid, i_payload, i_ready = port("i__valid"), port("i__payload"), port("i__ready")
    o_valid, o_payload, o_ready = port("o__valid"), port("o__payload"), port("o__ready")
    # beat count at which each ATTEND's query is complete -> outputs expected before it
    query_done, n_elems, n_outs = {}, 0, 0
    for op, _ in kinds:
        n_elems += d // w
        if op == AttentionOp.ATTEND:
            query_done[n_elems] = n_outs
            n_outs += d
    nc = ni = 0
    got, taken = [], []
    offer_c = offer_i = False
    held = None
    shown = {"cmd": 0, "i": 0, "ready": 0}  # what the driver shows: write a port only when it changes

    def show(key: str, handle, value: int) -> None:
        if shown[key] != value:
            shown[key] = value
            handle.value = value

    cycle = lambda: get_sim_time("ns") // 10  # noqa: E731
    limit = cycle() + 50 * len(elems) + sum(attend_cycles(p, d, cfg["macs"], w) for op, p in kinds) * 3 + 1000
    stalls = p_valid < 1 or p_ready < 1
    while len(got) < len(want) or nc < len(cmds):
        await FallingEdge(dut.clk)
        assert cycle() < limit, f"{name}: stuck at command {nc} of {len(cmds)}, output {len(got)} of {len(want)}"
        if not offer_c:
            offer_c = nc < len(cmds) and (not stalls or random.random() < p_valid)
            if offer_c:
                cmd_payload.value = cmds[nc]
            show("cmd", cmd_valid, int(offer_c))
        if offer_c and cmd_ready.value:  # taken at the coming edge
            taken.append(cycle())
            nc += 1
            offer_c = False
        if not offer_i:
            offer_i = ni < len(elems) and (not stalls or random.random() < p_valid)
            if offer_i:
                i_payload.value = elems[ni]
            show("i", i_valid, int(offer_i))
        if offer_i and i_ready.value:
            ni += 1
            offer_i = False
        ready = not stalls or random.random() < p_ready
        show("ready", o_ready, int(ready))
        if o_valid.value:
            payload = o_payload.value.to_unsigned()
            if held is not None:
                assert payload == held, f"{name}: output {len(got)} changed while held"
            if ready:
                got.append(payload)
                held = None
            else:
                held = payload
        else:
            assert held is None, f"{name}: output {len(got)} withdrawn"
            if not offer_i and query_done.get(ni) == len(got):  # an ATTEND computes: nothing to do
                await RisingEdge(o_valid)
    bad = [k for k, (a, b) in enumerate(zip(got, want)) if a != b]
    assert len(got) == len(want) and not bad, \
        f"{name}: {len(bad)} of {len(want)} outputs wrong, first #{bad[0]}: {got[bad[0]]:#x}, expected {want[bad[0]]:#x}"
    if p_valid >= 1 and p_ready >= 1:  # the cycle contract, command by command
        for k, (op, p) in enumerate(kinds[:-1]):
            cycles = attend_cycles(p, d, cfg["macs"], w) if op == AttentionOp.ATTEND else append_cycles(d, w)
            assert taken[k + 1] - taken[k] == cycles, f"{name}: command {k} ({op}, p {p}) took {taken[k + 1] - taken[k]}"
    await FallingEdge(dut.clk)
    cmd_valid.value = 0
    i_valid.value = 0
    o_ready.value = 0
    for _ in range(5):
        await FallingEdge(dut.clk)
        assert not o_valid.value, f"{name}: an output after the last"


async def check_unit(dut, name: str) -> None:
    cfg = CONFIGS[name]
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for unit in CONFIGS:
        for s in ("cmd__valid", "i__valid", "o__ready"):
            getattr(dut, f"{unit}__{s}").value = 0
    await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    random.seed(int(os.environ.get("COCOTB_RANDOM_SEED", "1")))
    t0 = time.perf_counter()
    script = random_script(cfg, seed=len(name))
    runs = [(script, 1.0, 1.0), (script, 0.6, 0.6)]
    if name.startswith("h128"):
        runs.append((real_script(cfg, REAL_TOKENS, 3 if cfg["kv_bits"] == 16 else 5), 1.0, 1.0))
    dut._log.info(f"{name}: scripts in {time.perf_counter() - t0:.1f} s")
    for script, p_valid, p_ready in runs:
        t0, start = time.perf_counter(), get_sim_time("ns")
        await run_script(dut, name, script, p_valid, p_ready)
        dut._log.info(f"{name}: {len(script.commands)} commands, p_valid {p_valid}, p_ready {p_ready}: "
                      f"{(get_sim_time('ns') - start) // 10} cycles in {time.perf_counter() - t0:.1f} s")


simlib.cocotb_cases(globals(), CONFIGS, "attention", check_unit)


# ---------------------------------------------------------------- pytest side

def test_attention_units() -> None:
    # cocotb rewrites the assertions of every module the simulator imports unless told otherwise:
    # torch's 800 took 70 s; only the test modules need it
    simlib.run("sim_tests.test_attention", simlib.build(simlib.UnitBank(make_units()), TOPLEVEL), TOPLEVEL,
               env={"COCOTB_REWRITE_ASSERTION_FILES": "test_*.py"})


def test_lint_clean(tmp_path: Path) -> None:
    """verilator -Wall with the project's waivers."""
    result = simlib.lint(simlib.UnitBank(make_units()), TOPLEVEL, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
