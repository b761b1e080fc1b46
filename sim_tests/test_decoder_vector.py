"""The decoder engine's vector unit (hw/decoder_vector.py) against its model, contract.decoder.DecoderMachine.

One Verilator build per P (`vector_lanes`) of a small `VectorUnit` (banks of 512, 384 and 256
elements; P = 16 with a 32-lane core and 32 int8 per ACT word, so that P lanes are half an OUT word and
an ACT word gathers in two cycles; P = 4 with 4 lanes and 8 int8 per ACT word) runs one cocotb test per
op. Operands start at multiples of P (the model refuses others), lengths are any (partial last words:
masked writes, reductions that ignore the lanes past n). Each case draws an instruction (banks, addresses, length,
in place or not), operand vectors at a random magnitude with the int16 / int32 extremes mixed in and
register values (shift counts of either sign and beyond the operand's width, uint16 factors), and
runs the op on the model first; a case the model refuses (a WidthError: a value outside the widths
the hardware has) is drawn again. The operands go into the unit's banks through its host port and
into the test bench's model of the core's output memory (read the cycle after the address); the
instruction runs once, and every written word (host port read-back of D; every ACT word write,
bytes past the vector's end zero), y0 and y2 equal the model's, `done` exactly `vector_cycles`
after start. At the end the three banks are read back whole and equal the model's (nothing else
was written). VPHASE uses the real omega table (rope_omega(64, 10000)) and random words at positions
0, 65535 and random ones; VROPE reads the pairs VPHASE makes of the real table, or random words. The stream ops run
A out through `att_o` in beats of P elements and (ATTEND) values in through `att_i` to D one a cycle,
under random backpressure on both. While an op runs, the bench pulses `start` (with another op)
and host writes at random: the unit must ignore both.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import cocotb
import numpy as np
import pytest
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from bitlane.contract.decoder import Bank, DecoderMachine, Instruction, MachineShape, Op, ProgramError, vector_cycles
from bitlane.contract.intmath import WidthError, rope_omega
from bitlane.hw.decoder import VECTOR_RESULT
from bitlane.hw.decoder_vector import STREAM_OPS, VECTOR_LATENCY, VECTOR_OPS, VectorUnit, vector_latency
from sim_tests import simlib

BUILDS = {16: (32, 32), 4: (4, 8)}  # P -> the core's lanes, k_per_cycle
P = int(os.environ.get("VECTOR_LANES", "16"))
TOPLEVEL = f"decoder_vector_p{P}"
BANK_DEPTH = (512, 384, 256)
(LANES, K), OUT_DEPTH, ACT_DEPTH = BUILDS[P], 64, 64
SHAPE = MachineShape(bank_depth=BANK_DEPTH, lanes=LANES, k_per_cycle=K, out_depth=OUT_DEPTH, act_depth=ACT_DEPTH,
                     layers=1, kv_heads=1, head_dim=64, context=1 << 16, program_depth=1, vector_lanes=P)
CASES = 30          # per vector op
SOURCES = (Bank.MAIN, Bank.CONST, Bank.COPY, Bank.OUT)
GENERAL = (Bank.MAIN, Bank.CONST, Bank.COPY)
LENGTHS = (1, 1, 2, 3, 5, 8, 16, 17, 31, 64, 100, 129, 200)
SETS_R0 = VECTOR_RESULT  # the ops whose R[r0] the engine writes from y0
OMEGA = rope_omega(64, 10000.0)


def make_unit(p: int = P) -> VectorUnit:
    return VectorUnit(BANK_DEPTH, *BUILDS[p], OUT_DEPTH, ACT_DEPTH, vector_lanes=p)


def depth(bank: Bank) -> int:
    return {Bank.OUT: OUT_DEPTH * LANES, Bank.ACT: ACT_DEPTH * K}.get(bank) or BANK_DEPTH[bank]


# ---------------------------------------------------------------- cases

def vector(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """n signed values of `bits` bits, a few of them at the range's ends."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    v = rng.integers(lo, hi + 1, n)
    if n > 2 and rng.random() < 0.5:
        for _ in range(rng.integers(1, 4)):
            v[rng.integers(n)] = rng.choice([lo, hi, 0, -1])
    return v


class NoRoom(Exception):
    """The drawn ranges do not fit the banks: the case is drawn again."""


class Case:
    """One instruction with its operand data, register values and position."""

    def __init__(self, ins: Instruction, data: dict[Bank, list[tuple[int, np.ndarray]]], x: tuple[int, int, int],
                 pos: int = 0) -> None:
        self.ins, self.data, self.x, self.pos = ins, data, x, pos


def place(rng: np.random.Generator, bank: Bank, n: int, taken: list[tuple[Bank, int, int]], step: int = P) -> int:
    """An address for n elements in `bank`, a multiple of `step`, clear of the ranges in `taken`."""
    for _ in range(1000):
        addr = int(rng.integers(0, (depth(bank) - n) // step + 1)) * step
        if all(b != bank or addr + n <= a or a + m <= addr for b, a, m in taken):
            taken.append((bank, addr, n))
            return addr
    raise NoRoom


def draw(rng: np.random.Generator, op: Op) -> Case:
    """A random instruction of `op` and its inputs (the model may still refuse it)."""
    n = int(rng.choice(LENGTHS))
    if op == Op.VROPE:
        n = int(rng.choice([n for n in (2, 4, 8, 16, 32, 64, 64, 128) if (n // 2) % P == 0]))
    if rng.random() < 0.04 and op in (Op.VMAXABS, Op.VNORM, Op.VSCALE):
        n = 0
    taken: list[tuple[Bank, int, int]] = []
    names = {Op.VNORM: "ab", Op.VROPE: "abc", Op.VRESID: "ab", Op.VMUL: "ab", Op.VPHASE: "c"}.get(op, "a")
    banks = list(rng.permutation(SOURCES))
    fields = {}
    data: dict[Bank, list[tuple[int, np.ndarray]]] = {}
    bits = int(rng.integers(1, 33))
    for name, bank in zip(names, banks):
        bank = Bank(bank)
        addr = place(rng, bank, n, taken)
        fields[f"{name}_bank"], fields[f"{name}_addr"] = int(bank), addr
        if name == "c":
            m = n if op == Op.VPHASE else n // 2
            values = np.resize(np.where(OMEGA >= 1 << 31, OMEGA - (1 << 32), OMEGA), m)  # CONST's words
            if op == Op.VROPE:  # VPHASE's pairs of the table at a random position
                phases = DecoderMachine(SHAPE, None)
                phases.banks[Bank.CONST][:m] = values
                phases.pos = int(rng.integers(0, 1 << 16))
                phases._op_vphase(Instruction(op=int(Op.VPHASE), c_bank=int(Bank.CONST), d_bank=int(Bank.MAIN), n=m))
                values = phases.banks[Bank.MAIN][:m].copy()
            if rng.random() < 0.3:
                values = rng.integers(-(1 << 31), 1 << 31, m)
            data.setdefault(bank, []).append((addr, values))
            continue
        width = 16 if (op == Op.VNORM and name == "b") else (32 if name == "b" and op == Op.VRESID else bits)
        data.setdefault(bank, []).append((addr, vector(rng, n, width)))
    # the destination: another bank, or in place
    if op == Op.VQUANT and rng.random() < 0.8 or op in (Op.VSHIFT, Op.VRELU2) and rng.random() < 0.1:
        fields["d_bank"], fields["d_addr"] = int(Bank.ACT), place(rng, Bank.ACT, n, [], step=K)
    elif op in (Op.VSHIFT, Op.VRESID, Op.VMUL) and rng.random() < 0.4 and \
            Bank(fields["b_bank" if op == Op.VRESID else "a_bank"]) != Bank.OUT:
        src = "b" if op == Op.VRESID else "a"
        fields["d_bank"], fields["d_addr"] = fields[f"{src}_bank"], fields[f"{src}_addr"]
    else:
        d = Bank(rng.choice(GENERAL))
        fields["d_bank"], fields["d_addr"] = int(d), place(rng, d, n, taken)
    # register values: shift counts near what makes int16 operands, sometimes far off
    need = max(bits - 16, 0)
    s1 = need + int(rng.integers(0, 3))
    r = rng.random()
    if r < 0.1:
        s1 = int(rng.choice([-1, -5, -63, -100, 40, 63, 64, 200, -(1 << 47)]))
    elif r < 0.25 and op in (Op.VSHIFT, Op.VQUANT):
        s1 = int(rng.integers(-(32 - bits) - 1, 1)) if op == Op.VSHIFT else int(rng.integers(min(need, 16) - 16, 1))
    elif op == Op.VSHIFT:
        s1 = int(rng.integers(-(32 - bits), 40))
    x2 = int(rng.integers(0, 1 << 16))
    if op == Op.VMUL:
        x2 = int(rng.choice([0, 1, 2, 17, 70, -3])) if rng.random() < 0.2 else s1 + int(rng.integers(-1, 3))
    x3 = int(rng.integers(-8, 40)) if op == Op.VRESID else int(rng.integers(-1 << 20, 1 << 20))
    if op == Op.VRESID and rng.random() < 0.2:
        x3 = int(rng.choice([0, 1, 2, 31, 32, 33, 34, 47, 63, 64, 100, -1, -16, -31]))
    if rng.random() < 0.2 and op != Op.VPHASE:  # A all zero, or every element at an end of int16 after the shift
        base = int(rng.choice([0, -(1 << 15), (1 << 15) - 1]))
        shifted = base << max(s1, 0) if 0 <= s1 < 17 else 0
        addr, _ = data[Bank(fields["a_bank"])][0]
        data[Bank(fields["a_bank"])][0] = (addr, np.full(n, shifted, dtype=np.int64))
    imm = int(rng.integers(0, 1 << 32))
    ins = Instruction(op=int(op), r0=4, r1=1, r2=2, r3=3, n=n, imm=imm, **fields)
    pos = int(rng.choice([0, 65535, 1, int(rng.integers(0, 1 << 16))]))
    return Case(ins, data, (s1, x2, x3), pos)


def stream_case(rng: np.random.Generator, op: Op) -> Case:
    n = int(rng.choice([0, P, 2 * P, 3 * P, 16, 64, 64, 128]))  # whole beats of P elements
    taken: list[tuple[Bank, int, int]] = []
    a = Bank(rng.choice(SOURCES))
    fields = {"a_bank": int(a), "a_addr": place(rng, a, n, taken)}
    data = {a: [(fields["a_addr"], vector(rng, n, 16))]}
    if op == Op.ATTEND:
        d = Bank(rng.choice(GENERAL))
        fields["d_bank"], fields["d_addr"] = int(d), place(rng, d, n, taken)
    return Case(Instruction(op=int(op), r0=4, r1=1, r2=0, r3=0, n=n, imm=int(rng.integers(0, 2)), **fields),
                data, (int(rng.integers(-128, 128)), 0, 0), int(rng.integers(0, 1 << 16)))


def machine() -> DecoderMachine:
    return DecoderMachine(SHAPE, lambda *args: np.zeros(0, dtype=np.int64))


def model_run(base: DecoderMachine, case: Case) -> DecoderMachine | None:
    """The model after the case on a copy of `base`, or None where it refuses the case."""
    m = machine()
    m.banks = [b.copy() for b in base.banks]
    m.out, m.act = base.out.copy(), np.zeros_like(base.act)
    for bank, pieces in case.data.items():
        for addr, values in pieces:
            (m.out if bank == Bank.OUT else m.banks[bank])[addr:addr + len(values)] = values
    m.regs[1:4] = case.x
    m.regs[4] = 0x5A5A
    m.pos = case.pos
    if Op(case.ins.op) in STREAM_OPS:  # the attention unit's side is not the vector unit's
        return m
    try:
        getattr(m, f"_op_{Op(case.ins.op).name.lower()}")(case.ins)
    except (WidthError, ProgramError):
        return None
    return m


# ---------------------------------------------------------------- the bench

def pack(values, bits: int) -> int:
    mask = (1 << bits) - 1
    return sum((int(v) & mask) << (bits * j) for j, v in enumerate(values))


class Bench:
    """Clock-edge driver: the core's OUT (data the cycle after the address) and ACT (writes recorded)
    memories, the host port, the attention streams."""

    def __init__(self, dut) -> None:
        self.dut = dut
        self.out = np.zeros(OUT_DEPTH * LANES, dtype=np.int64)
        self.act_writes: list[tuple[int, int]] = []
        self.out_addr = 0
        self.cycle = 0
        # attention streams
        self.p_ready, self.p_valid = 1.0, 1.0
        self.taken_o: list[int] = []
        self.feed: list[int] = []
        self.offering = False

    async def tick(self) -> None:
        dut = self.dut
        await FallingEdge(dut.clk)
        self.cycle += 1
        word = self.out[self.out_addr * LANES:(self.out_addr + 1) * LANES]
        dut.out_rd_data.value = pack(word, 32)
        self.out_addr = int(dut.out_rd_addr.value)
        if dut.act_wr_en.value:
            self.act_writes.append((int(dut.act_wr_addr.value), int(dut.act_wr_data.value)))
        ready = random.random() < self.p_ready
        dut.att_o__ready.value = int(ready)
        if ready and dut.att_o__valid.value:  # a beat of P int16
            beat = dut.att_o__payload.value.to_unsigned()
            self.taken_o += [((beat >> (16 * j) & 0xFFFF) ^ 0x8000) - 0x8000 for j in range(P)]
        if not self.offering and self.feed and random.random() < self.p_valid:
            self.offering = True
            dut.att_i__payload.value = self.feed[0] & 0xFFFF
        dut.att_i__valid.value = int(self.offering)
        if self.offering and dut.att_i__ready.value:  # taken at the coming edge
            self.feed.pop(0)
            self.offering = False

    async def reset(self) -> None:
        dut = self.dut
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
        for name in ("start", "host_wr_en", "att_i__valid", "att_o__ready", "out_rd_data"):
            getattr(dut, name).value = 0
        dut.rst.value = 1
        await self.tick()
        await self.tick()
        dut.rst.value = 0
        await self.tick()

    async def host_write(self, bank: Bank, addr: int, values) -> None:
        dut = self.dut
        for j, v in enumerate(values):
            dut.host_bank.value, dut.host_addr.value = int(bank), addr + j
            dut.host_wr_data.value, dut.host_wr_en.value = int(v) & 0xFFFFFFFF, 1
            await self.tick()
        dut.host_wr_en.value = 0

    async def host_read(self, bank: Bank, addr: int, n: int) -> np.ndarray:
        dut = self.dut
        out = []
        for j in range(n):
            dut.host_bank.value, dut.host_addr.value = int(bank), addr + j
            await self.tick()
            out.append(dut.host_rd_data.value.to_signed())
        return np.array(out, dtype=np.int64)

    async def execute(self, case: Case) -> tuple[int, int, int]:
        """Load the case's operands, run its instruction: (cycles from start to done, y0, y2)."""
        dut, ins = self.dut, case.ins
        for bank, pieces in case.data.items():
            for addr, values in pieces:
                if bank == Bank.OUT:
                    self.out[addr:addr + len(values)] = values
                else:
                    await self.host_write(bank, addr, values)
        for name in ("op", "n", "imm", "a_bank", "b_bank", "c_bank", "d_bank", "a_addr", "b_addr", "c_addr",
                     "d_addr"):
            getattr(dut, name).value = getattr(ins, name)
        dut.x1.value, dut.x2.value, dut.x3.value = (v & ((1 << 48) - 1) for v in case.x)
        dut.pos.value = case.pos
        dut.start.value = 1
        self.act_writes = []
        start = self.cycle
        await self.tick()
        dut.start.value = 0
        limit = start + 100 * (ins.n + 20)
        while True:
            # while busy, a start (of another op) and host writes must change nothing
            intrude = random.random() < 0.1
            dut.start.value = dut.host_wr_en.value = int(intrude)
            if intrude:
                dut.op.value = random.choice(list(VECTOR_OPS))
                dut.host_bank.value, dut.host_addr.value = random.randrange(3), random.randrange(256)
                dut.host_wr_data.value = random.getrandbits(32)
            await self.tick()
            assert self.cycle < limit, "no done"
            assert dut.busy.value, "busy fell before done"
            if dut.done.value:
                break
        dut.start.value = dut.host_wr_en.value = 0
        y0, y2 = dut.y0.value.to_signed(), dut.y2.value.to_signed()
        await self.tick()
        assert not dut.busy.value, "busy after done"
        return self.cycle - 1 - start, y0, y2


async def check_op(dut, name: str) -> None:
    random.seed(int(os.environ.get("COCOTB_RANDOM_SEED", "1")))
    op = Op[name.upper()]
    rng = np.random.default_rng(list(Op).index(op))
    bench = Bench(dut)
    await bench.reset()
    mirror = machine()
    for bank in GENERAL:
        mirror.banks[bank][:] = await bench.host_read(bank, 0, BANK_DEPTH[bank])
    cases = CASES if op in VECTOR_OPS else 12
    drawn, kinds = 0, {"in place": 0, "ACT": 0, "OUT": 0, "n": []}
    for j in range(cases):
        for _ in range(200):
            drawn += 1
            try:
                case = draw(rng, op) if op in VECTOR_OPS else stream_case(rng, op)
            except NoRoom:
                continue
            after = model_run(mirror, case)
            if after is not None:
                break
        else:
            raise AssertionError(f"{name}: no case the model accepts")
        ins, what = case.ins, f"{name} case {j}: {case.ins} x={case.x} pos={case.pos}"
        if op in STREAM_OPS:
            bench.p_ready, bench.p_valid = (1.0, 1.0) if j < 2 else (random.choice([0.2, 0.5, 0.9]),
                                                                    random.choice([0.2, 0.5, 0.9]))
            bench.taken_o = []
            bench.feed = [int(v) for v in rng.integers(-(1 << 15), 1 << 15, ins.n)] if op == Op.ATTEND else []
            fed = list(bench.feed)
            if op == Op.ATTEND:
                after.banks[ins.d_bank][ins.d_addr:ins.d_addr + ins.n] = fed
        kinds["n"].append(ins.n)
        kinds["ACT"] += ins.d_bank == Bank.ACT
        kinds["OUT"] += Bank.OUT in case.data
        kinds["in place"] += op in VECTOR_OPS and (ins.d_bank, ins.d_addr) in [(b, a) for b, pieces in case.data.items()
                                                                             for a, _ in pieces]
        cycles, y0, y2 = await bench.execute(case)
        if op in VECTOR_OPS or bench.p_ready == bench.p_valid == 1.0:
            assert cycles == vector_cycles(op, ins.n, P) - 1, f"{what}: done after {cycles} cycles"
        if op in STREAM_OPS:
            (bank, addr), = [(b, a) for b, pieces in case.data.items() for a, _ in pieces]
            source = after.out if bank == Bank.OUT else after.banks[bank]
            assert bench.taken_o == list(source[addr:addr + ins.n]), f"{what}: att_o {bench.taken_o}"
            assert not bench.feed, f"{what}: att_i values left"
        if op in SETS_R0:
            assert y0 == after.regs[4], f"{what}: y0 {y0}, model {after.regs[4]}"
        if op == Op.VNORM:
            assert y2 == after.regs[2], f"{what}: y2 {y2}, model {after.regs[2]}"
        if ins.d_bank == Bank.ACT and op in VECTOR_OPS:
            first, end = ins.d_addr // K, -(-(ins.d_addr + ins.n) // K)
            want = [(w, pack([after.act[e] if e < ins.d_addr + ins.n else 0 for e in range(w * K, (w + 1) * K)], 8))
                    for w in range(first, end)]
            assert bench.act_writes == want, f"{what}: ACT writes {bench.act_writes}, model {want}"
        else:
            assert not bench.act_writes, f"{what}: ACT written"
            if ins.d_bank in GENERAL and op != Op.VMAXABS:
                got = await bench.host_read(Bank(ins.d_bank), ins.d_addr, ins.n)
                want = after.banks[ins.d_bank][ins.d_addr:ins.d_addr + ins.n]
                bad = np.flatnonzero(got != want)
                assert not bad.size, f"{what}: D[{bad[0]}] = {got[bad[0]]}, model {want[bad[0]]} ({bad.size} wrong)"
        mirror.banks, mirror.out = after.banks, after.out
    dut._log.info(f"{name}: {cases} cases of {drawn} drawn; {kinds}")
    for bank in GENERAL:
        got = await bench.host_read(bank, 0, BANK_DEPTH[bank])
        bad = np.flatnonzero(got != mirror.banks[bank])
        assert not bad.size, f"{name}: bank {bank.name} word {bad[0]} = {got[bad[0]]}, model {mirror.banks[bank][bad[0]]}"


simlib.cocotb_cases(globals(), [op.name.lower() for op in (*VECTOR_OPS, *STREAM_OPS)], "op", check_op)


# ---------------------------------------------------------------- pytest side

def test_cycle_counts() -> None:
    assert vector_cycles(Op.VNORM, 100) == 100 + VECTOR_LATENCY + 1
    assert vector_latency(16) == VECTOR_LATENCY + 2 and vector_latency(4) == VECTOR_LATENCY + 1
    assert vector_cycles(Op.VNORM, 100, 16) == 7 + VECTOR_LATENCY + 2 + 1
    assert vector_cycles(Op.VPHASE, 32, 16) == 32 + VECTOR_LATENCY + 2 + 1


@pytest.mark.parametrize("p", list(BUILDS))
def test_decoder_vector_ops(p: int) -> None:
    """One Verilator build per P; one cocotb test per op."""
    toplevel = f"decoder_vector_p{p}"
    simlib.run("sim_tests.test_decoder_vector", simlib.build(make_unit(p), toplevel), toplevel,
               env={"VECTOR_LANES": p}, name=toplevel)


def test_lint_clean(tmp_path: Path) -> None:
    """verilator -Wall with the project's waivers."""
    result = simlib.lint(make_unit(16), "decoder_vector_p16", tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
