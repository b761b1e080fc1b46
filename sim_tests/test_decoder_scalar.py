"""The decoder engine's scalar unit (hw/decoder_scalar.py) against contract.decoder.DecoderMachine.

Every scalar op with random operands over the ranges the programs use and their extremes (zero,
one, the largest 48-bit sum, mantissas at 2^15 and 2^16 - 1, exponents far from zero, eps terms that
saturate and that round to zero); the results and the cycle count of each op are compared with the
model and `scalar_cycles`, integer for integer.
"""
import os
import random
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge, ReadOnly

from bitlane.contract.decoder import DecoderMachine, Instruction, MachineShape, Op
from bitlane.hw.decoder_scalar import PAIR_RESULT, ScalarUnit, scalar_cycles
from sim_tests import simlib

TOPLEVEL = "decoder_scalar"
SCALAR_OPS = (Op.MOVI, Op.ADD, Op.SUB, Op.MAX, Op.NSHIFT, Op.FACTOR, Op.FMUL, Op.RSQRT, Op.QFACTOR, Op.EPS)
SHAPE = MachineShape(bank_depth=(1, 1, 1), lanes=1, k_per_cycle=1, out_depth=1, act_depth=1, layers=1, kv_heads=1,
                     head_dim=2, context=1, program_depth=1)
R1, R2, R3 = 2, 4, 6  # operand registers (pairs at even indices)


def uf(rng: random.Random, spread: int = 40) -> tuple[int, int]:
    return rng.choice([1 << 15, (1 << 16) - 1, rng.randrange(1 << 15, 1 << 16)]), rng.randrange(-spread, spread)


def wide(rng: random.Random, bits: int = 47) -> int:
    return rng.choice([0, 1, (1 << bits) - 1, rng.randrange(1 << rng.randrange(1, bits + 1))])


def operands(op: Op, rng: random.Random) -> tuple[dict, int]:
    """Register values {index: value} and imm for one random case of `op`."""
    if op == Op.MOVI:
        return {}, rng.randrange(-(1 << 31), 1 << 31)
    if op in (Op.ADD, Op.SUB, Op.MAX):
        return {R1: rng.randrange(-(1 << 44), 1 << 44), R2: rng.randrange(-(1 << 44), 1 << 44)}, \
            rng.randrange(-(1 << 31), 1 << 31) if op != Op.MAX else 0
    if op == Op.NSHIFT:
        return {R1: wide(rng)}, rng.choice([8, 12, 16])
    if op == Op.FACTOR:
        return {R1: wide(rng), R2: rng.randrange(-60, 60)}, 0
    if op == Op.FMUL:
        a, b = uf(rng), uf(rng) if rng.random() > 0.1 else (0, 0)
        return {R1: a[0], R1 + 1: a[1], R2: b[0], R2 + 1: b[1]}, 0
    if op == Op.RSQRT:
        return {R1: wide(rng)}, 0
    if op == Op.QFACTOR:
        return {R1: wide(rng, 31) if rng.random() > 0.05 else 1 << 31}, 0
    scale, eps = uf(rng, 100), uf(rng, 60) if rng.random() > 0.1 else (0, 0)
    return {R1: scale[0], R1 + 1: scale[1], R2: eps[0], R2 + 1: eps[1], R3: rng.randrange(0, 32)}, 0


def expected(op: Op, regs: dict, imm: int) -> tuple[int, int]:
    machine = DecoderMachine(SHAPE, lambda *args: None)
    for r, value in regs.items():
        machine.regs[r] = value
    getattr(machine, f"_op_{op.name.lower()}")(Instruction(op=int(op), r0=8, r1=R1, r2=R2, r3=R3, imm=imm & 0xFFFFFFFF))
    return int(machine.regs[8]), int(machine.regs[9])


@cocotb.test()
async def scalar_ops(dut) -> None:
    rng = random.Random(int(os.environ.get("SEED", "1")))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.start.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    for op in SCALAR_OPS:
        for case in range(60):
            regs, imm = operands(op, rng)
            w0, w1 = expected(op, regs, imm)
            dut.op.value, dut.imm.value = int(op), imm
            for port, r in (("x1", R1), ("x1b", R1 + 1), ("x2", R2), ("x2b", R2 + 1), ("x3", R3)):
                getattr(dut, port).value = regs.get(r, 0)
            dut.start.value = 1
            await RisingEdge(dut.clk)
            dut.start.value = 0
            cycles = 1
            while True:
                await ReadOnly()
                if dut.done.value:
                    break
                await RisingEdge(dut.clk)
                cycles += 1
                assert cycles < 100, f"{op.name}: no done"
            got = dut.w0.value.to_signed(), dut.w1.value.to_signed()
            assert got[0] == w0, f"{op.name} {regs} imm={imm}: w0 {got[0]}, model {w0}"
            if op in PAIR_RESULT:
                assert got[1] == w1, f"{op.name} {regs}: w1 {got[1]}, model {w1}"
            assert cycles == scalar_cycles(op), f"{op.name}: {cycles} cycles, scalar_cycles says {scalar_cycles(op)}"
            await RisingEdge(dut.clk)


def test_scalar_unit() -> None:
    simlib.run("sim_tests.test_decoder_scalar", simlib.build(ScalarUnit(), TOPLEVEL), TOPLEVEL)


def test_lint_clean(tmp_path: Path) -> None:
    result = simlib.lint(ScalarUnit(), TOPLEVEL, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
