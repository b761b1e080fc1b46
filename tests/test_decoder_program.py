"""The decoder engine's program (sw/decoder_program.py) on its model (contract/decoder.py) against the
integer reference (golden/integer.py): every token's final hidden state and the whole KV cache, integer
for integer, for the shipped h128 model and for random models of awkward shapes."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bitlane.contract.decoder import (GENERAL_BANKS, WAIT_CORE, Bank, DecoderMachine, Instruction, MachineShape, Op,
                                      ProgramError, decode_cycles, dependence_bound, effects, overlap_schedule, unit_of)
from bitlane.contract.kv_stream import KV_STORE, KV_V, kv_row_words
from bitlane.golden.integer import IntegerModel, convert
from bitlane.sw.decoder_program import DecoderFitError, compile_decoder
from tests.test_integer import random_model

H128 = "models/bitnet-kjv-h128"


def shape_for(model: IntegerModel, lanes: int = 16, k_per_cycle: int = 16, vector_lanes: int = 16,
              **changes) -> MachineShape:
    cfg = model.int_config
    fields = dict(bank_depth=(6 * cfg.hidden + 2 * cfg.intermediate + 4 * cfg.head_dim, 4096 * 8,
                              4 * cfg.intermediate + cfg.hidden),
                  lanes=lanes, k_per_cycle=k_per_cycle, out_depth=1024, act_depth=1024, layers=cfg.layers,
                  kv_heads=cfg.kv_heads, head_dim=cfg.head_dim, context=cfg.max_positions, program_depth=4096,
                  vector_lanes=vector_lanes)
    fields.update(changes)
    return MachineShape(**fields)


def machine_for(model: IntegerModel, shape: MachineShape) -> tuple[DecoderMachine, object]:
    image = compile_decoder(model, shape)
    matrices = {image.weights[i, key]: layer.trits[key].astype(np.int64)
                for i, layer in enumerate(model.layers) for key in layer.trits}

    def ternary(w_base: int, rows: int, cols: int, q: np.ndarray) -> np.ndarray:
        trits = matrices[w_base]
        assert trits.shape == (rows, cols)
        return trits @ q

    machine = DecoderMachine(shape, ternary)
    machine.load(image.program)
    machine.write(Bank.CONST, 0, image.const)
    return machine, image


def decode_and_compare(model: IntegerModel, ids: list[int], shape: MachineShape) -> DecoderMachine:
    machine, image = machine_for(model, shape)
    cache = model.new_cache()
    for pos, token in enumerate(ids):
        y_ref, e_ref = model.hidden(np.array([[token]]), cache)
        machine.write(Bank.MAIN, image.emb_addr, model.embedding[token])
        machine.run(pos)
        y = machine.read(Bank.MAIN, image.out_addr, model.int_config.hidden)
        np.testing.assert_array_equal(y, y_ref[0, 0], err_msg=f"final hidden state, position {pos}")
        assert machine.regs[image.out_exp_reg] == e_ref[0, 0, 0], f"final exponent, position {pos}"
    cfg = model.int_config
    for layer in range(cfg.layers):
        km, ek, vm, ev = cache.layers[layer]
        seen = slice(0, len(ids))
        np.testing.assert_array_equal(machine.kv[layer, :, 0, seen], km[0], err_msg=f"K cache, layer {layer}")
        np.testing.assert_array_equal(machine.kv[layer, :, 1, seen], vm[0], err_msg=f"V cache, layer {layer}")
        np.testing.assert_array_equal(machine.kv_exp[layer, :, 0, seen], ek[0])
        np.testing.assert_array_equal(machine.kv_exp[layer, :, 1, seen], ev[0])
    return machine


@pytest.fixture(scope="module")
def h128() -> IntegerModel:
    return IntegerModel.load(H128)


def test_h128_program_equals_the_reference(h128):
    rng = np.random.default_rng(1)
    ids = [int(i) for i in rng.integers(0, h128.config.vocab_size, 40)]
    machine = decode_and_compare(h128, ids, shape_for(h128))
    assert machine.executed[Op.ATTEND] == 40 * h128.int_config.layers * h128.int_config.heads


AWKWARD = [
    # head_dim 32, two heads share one KV head, intermediate not a multiple of the lanes, 8-bit K/V
    (dict(hidden_size=64, intermediate_size=100, num_hidden_layers=2, num_attention_heads=2,
          num_key_value_heads=1), 8),
    # head_dim 64 with four heads on two KV heads, intermediate 200
    (dict(hidden_size=256, intermediate_size=200, num_hidden_layers=1, num_attention_heads=4,
          num_key_value_heads=2), 16),
    # hidden not a multiple of the lanes' k
    (dict(hidden_size=96, intermediate_size=120, num_hidden_layers=1, num_attention_heads=3,
          num_key_value_heads=3), 16),
]


@pytest.mark.parametrize("fields,kv_bits", AWKWARD, ids=["d32-gqa-kv8", "d64-gqa", "h96-d32"])
@pytest.mark.parametrize("vector_lanes", [16, 4, 1])
def test_random_models_of_awkward_shapes(fields, kv_bits, vector_lanes):
    model = convert(random_model(3, vocab_size=200, max_position_embeddings=64, hidden_act="relu2", **fields),
                    kv_bits)
    rng = np.random.default_rng(2)
    lanes = max(vector_lanes, 4)
    decode_and_compare(model, [int(i) for i in rng.integers(0, 200, 24)],
                       shape_for(model, lanes=lanes, k_per_cycle=lanes, vector_lanes=vector_lanes))


def test_machine_enforces_alignment(h128):
    """Vector operands at multiples of vector_lanes; VROPE's n/2 a multiple of it; KVAPPEND's and ATTEND's
    n too; ACT at k_per_cycle."""
    shape = shape_for(h128)
    machine = DecoderMachine(shape, lambda *args: None)
    bad = [Instruction(op=int(Op.VMAXABS), a_bank=int(Bank.MAIN), a_addr=8, n=16),
           Instruction(op=int(Op.VSHIFT), a_bank=int(Bank.MAIN), d_bank=int(Bank.COPY), d_addr=3, n=16),
           Instruction(op=int(Op.VROPE), a_bank=int(Bank.OUT), b_bank=int(Bank.COPY), c_bank=int(Bank.MAIN),
                       d_bank=int(Bank.CONST), n=48),
           Instruction(op=int(Op.VQUANT), a_bank=int(Bank.MAIN), d_bank=int(Bank.ACT), d_addr=16, n=16,
                       r2=0) if shape.k_per_cycle > 16 else
           Instruction(op=int(Op.VPHASE), c_bank=int(Bank.CONST), c_addr=1, d_bank=int(Bank.MAIN), n=4),
           Instruction(op=int(Op.ATTEND), a_bank=int(Bank.MAIN), d_bank=int(Bank.COPY), d_addr=24, r2=0, r3=0,
                       n=h128.int_config.head_dim),
           # a stream op's n in whole beats of vector_lanes
           Instruction(op=int(Op.KVAPPEND), a_bank=int(Bank.MAIN), r2=0, r3=0, n=shape.vector_lanes + 1)]
    for ins in bad:
        machine.load([ins, Instruction(op=int(Op.HALT))])
        with pytest.raises(ProgramError, match="multiple of|does not divide|do not divide"):
            machine.run(0)


def test_machine_refuses_pairs_at_odd_registers(h128):
    """A pair is R[2i], R[2i + 1]: the engine reads and writes its second register at r | 1, so a pair
    operand or result at an odd register is refused, naming the instruction; the compiled program's
    pairs are all aligned (test_h128_program_equals_the_reference runs it)."""
    machine = DecoderMachine(shape_for(h128), lambda *args: None)
    bad = [Instruction(op=int(Op.FMUL), r0=4, r1=3, r2=6),   # operand pair r1
           Instruction(op=int(Op.EPS), r0=4, r1=2, r2=7),    # operand pair r2
           Instruction(op=int(Op.RSQRT), r0=5, r1=2),         # result pair
           Instruction(op=int(Op.QFACTOR), r0=9, r1=2)]       # result pair (R[r0], R[r0 | 1])
    for ins in bad:
        machine.load([ins, Instruction(op=int(Op.HALT))])
        with pytest.raises(ProgramError, match=r"instruction 0 .*register pair at an odd register"):
            machine.run(0)
    machine.load([Instruction(op=int(Op.RSQRT), r0=4, r1=2), Instruction(op=int(Op.HALT))])
    machine.run(0)  # an aligned pair: no error


def test_fit_errors_name_what_does_not_fit(h128):
    shape = shape_for(h128)
    with pytest.raises(DecoderFitError, match=r"bank CONST: the model needs \d+ words, the engine has 100"):
        compile_decoder(h128, shape_for(h128, bank_depth=(shape.bank_depth[0], 100, shape.bank_depth[2])))
    with pytest.raises(DecoderFitError, match="program: .* instructions, the engine holds 64"):
        compile_decoder(h128, shape_for(h128, program_depth=64))
    with pytest.raises(DecoderFitError, match="head_dim 64: the engine's attention unit is built for 32"):
        compile_decoder(h128, shape_for(h128, head_dim=32))


def test_machine_refuses_positions_past_its_context(h128):
    machine, _ = machine_for(h128, shape_for(h128))
    with pytest.raises(ProgramError, match="position 256 outside the context of 256"):
        machine.run(256)


# the machine's state as a list of arrays, and where a location (contract.decoder.effects) lies in it
_ARRAYS = [*GENERAL_BANKS, Bank.OUT, Bank.ACT, "R", "KV", "KV exponents"]


def _state(m: DecoderMachine) -> list[np.ndarray]:
    return [a.copy() for a in (*m.banks, m.out, m.act, m.regs, m.kv, m.kv_exp)]


def _restore(m: DecoderMachine, state: list[np.ndarray]) -> None:
    state = [a.copy() for a in state]
    m.banks, (m.out, m.act, m.regs, m.kv, m.kv_exp) = state[:3], state[3:]


def _random_state(like: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Random values of each array's width: int32 banks, int8 ACT, int48 registers, the cache's int16."""
    bits = [32, 32, 32, 32, 8, 48, 16, 8]
    state = [rng.integers(-(1 << (b - 1)), 1 << (b - 1), size=a.shape, dtype=np.int64) for a, b in zip(like, bits)]
    state[_ARRAYS.index("R")][0] = 0  # R0 is the constant 0, not a location
    return state


def _cells(location) -> list[tuple[int, tuple]]:
    """(array, index) of each cell of `location` in `_state`'s list (none for WEIGHTS, SDRAM and the
    attention unit's running maxima, which the model keeps outside or does not keep)."""
    if location[0] == "KV":
        return [(_ARRAYS.index(name), location[1:]) for name in ("KV", "KV exponents")]
    if location[0] in ("WEIGHTS", "SDRAM", "KV max"):
        return []
    return [(_ARRAYS.index(location[0]), (location[1],))]


def _changed(before: list[np.ndarray], after: list[np.ndarray]) -> set:
    found = set()
    for i, (b, a) in enumerate(zip(before, after)):
        name = _ARRAYS[i]
        for index in zip(*np.nonzero(b != a)):
            found.add(("KV", *map(int, index[:4])) if name in ("KV", "KV exponents") else (name, int(index[0])))
    return found


def test_effects_name_everything_an_instruction_reads_and_writes(h128):
    """contract.decoder.effects on every instruction of the h128 program (every op but the SDRAM's,
    pinned below), one at a time on the model in the middle of a decode: the instruction changes nothing
    outside its writes, and its writes come out the same when everything outside its reads holds random
    values."""
    shape = shape_for(h128, vector_lanes=4)
    machine, image = machine_for(h128, shape)
    halt = Instruction(op=int(Op.HALT))
    rng = np.random.default_rng(5)
    pos = 2
    for p, token in enumerate([5, 17]):
        machine.write(Bank.MAIN, image.emb_addr, h128.embedding[token])
        machine.run(p)
    machine.write(Bank.MAIN, image.emb_addr, h128.embedding[9])
    seen = set()
    for i, ins in enumerate(image.program):
        if ins.op == Op.HALT:
            break
        reads, writes = effects(ins, shape, pos)
        before = _state(machine)
        machine.load([ins, halt])
        machine.run(pos)
        after = _state(machine)
        assert _changed(before, after) <= writes, f"instruction {i} ({ins}) writes outside its effects"
        mixed = _random_state(before, rng)  # random values but where it reads
        for location in reads:
            for array, index in _cells(location):
                mixed[array][index] = before[array][index]
        _restore(machine, mixed)
        machine.run(pos)
        again = _state(machine)
        for location in writes:
            for array, index in _cells(location):
                np.testing.assert_array_equal(again[array][index], after[array][index],
                                              err_msg=f"instruction {i} ({ins}): {location} reads outside its effects")
        _restore(machine, after)
        seen.add(Op(ins.op))
    assert seen == set(Op) - {Op.HALT, Op.WFETCH, Op.KVLOAD}


def test_effects_of_hand_built_instructions():
    """The exact sets for the cases the model check above cannot pin: reads that would only be too many
    (they make the bound too high), the core's ACT, OUT and weight words (whole words, as the core reads
    and writes them), and the SDRAM's ops."""
    shape = MachineShape((64, 64, 64), 16, 16, 8, 8, 2, 2, 64, 16, 16, vector_lanes=4, kv_sdram=True)
    span = lambda space, start, n: {(space, e) for e in range(start, start + n)}  # noqa: E731
    rw = kv_row_words(64)
    cases = [
        (Instruction(op=int(Op.VMAXABS), r0=5, r1=7, r2=8, r3=9, a_bank=int(Bank.OUT), a_addr=32,
                     b_bank=int(Bank.CONST), c_bank=int(Bank.COPY), n=3),
         span(Bank.OUT, 32, 3), {("R", 5)}),
        (Instruction(op=int(Op.VROPE), r0=6, r1=7, r2=8, b_bank=int(Bank.COPY), c_bank=int(Bank.CONST), c_addr=8,
                     d_addr=16, n=4),
         span(Bank.MAIN, 0, 4) | span(Bank.COPY, 0, 4) | span(Bank.CONST, 8, 2) | {("R", 7)},
         span(Bank.MAIN, 16, 4) | {("R", 6)}),
        (Instruction(op=int(Op.EPS), r0=3, r1=4, r2=6, r3=9), {("R", r) for r in (4, 5, 6, 7, 9)}, {("R", 3)}),
        (Instruction(op=int(Op.TRUN), a_addr=2, b_addr=20, d_addr=1, n=17, imm=100),
         span(Bank.ACT, 32, 32) | span("WEIGHTS", 100, 4), span(Bank.OUT, 16, 32)),  # whole words
        (Instruction(op=int(Op.WFETCH), d_addr=7, n=3, imm=1000), span("SDRAM", 1000, 3), span("WEIGHTS", 7, 3)),
        (Instruction(op=int(Op.KVLOAD), r2=1, n=64, imm=4096 | KV_V), span("SDRAM", 4096, 2 * rw),
         {("KV", 1, 0, 1, 0), ("KV", 1, 0, 1, 1), ("KV max", 1, 0, 1)}),
        (Instruction(op=int(Op.KVAPPEND), r1=9, r2=1, r3=1, n=64, imm=4096 | KV_STORE),
         span(Bank.MAIN, 0, 64) | {("R", 9), ("KV max", 1, 1, 0)},
         {("KV", 1, 1, 0, 2), ("KV max", 1, 1, 0)} | span("SDRAM", 4096 + 2 * rw, rw)),
        (Instruction(op=int(Op.ATTEND), r0=2, r1=9, r2=1, n=64, d_addr=64),
         span(Bank.MAIN, 0, 64) | {("R", 9), ("KV max", 1, 0, 0), ("KV max", 1, 0, 1)}
         | {("KV", 1, 0, kv, p) for kv in (0, 1) for p in range(3)},
         span(Bank.MAIN, 64, 64) | {("R", 2)}),
    ]
    for ins, reads, writes in cases:
        assert effects(ins, shape, 2) == (reads, writes), str(ins)


def test_dependence_bound_and_overlap_schedule(h128):
    """The bound equals the one-at-a-time engine's cycles for a chain and for one unit's independent work,
    and is less where units could overlap; the overlapped schedule of the h128 program keeps every
    dependence and runs each unit one instruction at a time, one start a cycle, and lies between the
    bound and the engine."""
    shape = shape_for(h128, vector_lanes=4)
    chain = [Instruction(op=int(Op.MOVI), r0=2, imm=1), Instruction(op=int(Op.NSHIFT), r0=3, r1=2, imm=16),
             Instruction(op=int(Op.VSHIFT), r0=4, r1=3, n=64, d_addr=64),
             Instruction(op=int(Op.VQUANT), r1=4, a_addr=64, d_bank=int(Bank.ACT), n=64),
             Instruction(op=int(Op.TRUN), a_addr=0, b_addr=64, d_addr=0, n=64), Instruction(op=int(Op.HALT))]
    one_unit = [Instruction(op=int(Op.VMAXABS), r0=5, n=64), Instruction(op=int(Op.VMAXABS), r0=6, n=64), chain[-1]]
    two_units = [chain[0], one_unit[0], chain[-1]]
    for program in (chain, one_unit):
        assert dependence_bound(program, 0, shape, 10) == decode_cycles(program, 0, shape, 10).total
    assert dependence_bound(two_units, 0, shape, 10) < decode_cycles(two_units, 0, shape, 10).total

    program = [ins for ins in compile_decoder(h128, shape).program if ins.op != Op.HALT]
    pos = 128
    total, start = overlap_schedule(program, pos, shape, 10)
    cycles = [decode_cycles([ins], pos, shape, 10).total - 1 for ins in program]  # less the DECODE's first cycle
    finish = [s + c for s, c in zip(start, cycles)]
    assert len(set(start)) == len(start)  # one start a cycle
    effect = [effects(ins, shape, pos) for ins in program]
    for i, (reads, writes) in enumerate(effect):
        for j in range(i):
            r, w = effect[j]
            if w & (reads | writes) or r & writes:
                assert start[i] >= finish[j], f"instruction {i} starts before {j}, which it depends on, finishes"
    for unit in {unit_of(ins.op) for ins in program}:
        spans = sorted((start[i], finish[i]) for i, ins in enumerate(program) if unit_of(ins.op) == unit)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), f"the {unit} unit runs two at once"
    assert total == 1 + max(finish) + 1
    assert dependence_bound(program, pos, shape, 10) <= total < decode_cycles(program, pos, shape, 10).total


def test_the_core_runs_beside_the_engine(h128):
    """A TRUN's RUN overlaps what follows it: an instruction that reads its OUT or writes its ACT, or a
    KVLOAD, without WAIT_CORE is refused, naming both; with it, or touching neither, it runs; decode_cycles counts the
    overlap. The compiled program needs its flags: without them the model refuses it."""
    shape = shape_for(h128, vector_lanes=4)
    halt = Instruction(op=int(Op.HALT))
    trun = Instruction(op=int(Op.TRUN), a_addr=0, b_addr=16, d_addr=0, n=16)
    reads_out = Instruction(op=int(Op.VMAXABS), r0=2, a_bank=int(Bank.OUT), n=16)
    writes_act = Instruction(op=int(Op.VQUANT), a_addr=0, d_bank=int(Bank.ACT), d_addr=0, n=16)
    independent = [Instruction(op=int(Op.MOVI), r0=3, imm=5), Instruction(op=int(Op.VMAXABS), r0=4, n=16)]
    machine = DecoderMachine(shape, lambda w, rows, cols, q: np.arange(rows))
    for bad in (reads_out, writes_act):
        machine.load([trun, *independent, bad, halt])
        with pytest.raises(ProgramError, match=r"instruction 3 .*while the TRUN at instruction 0 still runs"):
            machine.run(0)
        machine.load([trun, *independent, replace(bad, flags=WAIT_CORE), halt])
        machine.run(0)
    assert list(machine.out[:16]) == list(range(16)) and machine.regs[2] == 15
    machine.load([trun, Instruction(op=int(Op.KVLOAD), n=64), halt])  # its SDRAM wait is not the DECODE's
    with pytest.raises(ProgramError, match=r"instruction 1 .*while the TRUN at instruction 0 still runs.*KVLOAD"):
        machine.run(1)

    run = decode_cycles([trun, halt], 0, shape, 10).runs
    alone = decode_cycles([trun, halt], 0, shape, 10).total
    assert alone == 1 + (1 + run) + 1  # the first cycle, the TRUN's issue and RUN, the HALT
    program = [trun, independent[0], replace(reads_out, flags=WAIT_CORE), halt]
    cycles = decode_cycles(program, 0, shape, 10)
    # the MOVI's 2 cycles hide in the RUN: the VMAXABS issues in the cycle after the RUN's last
    assert cycles.total == alone + decode_cycles([reads_out, halt], 0, shape, 10).total - 2
    assert cycles.core == run - 2 and cycles.issue == 1 + 4  # its retire cycle and the wait: the RUN less the MOVI

    image = compile_decoder(h128, shape)
    flagged = [i for i, ins in enumerate(image.program) if ins.flags & WAIT_CORE]
    assert flagged
    machine, _ = machine_for(h128, shape)
    machine.load([replace(ins, flags=0) for ins in image.program])
    with pytest.raises(ProgramError, match=f"instruction {flagged[0]} .*WAIT_CORE"):
        machine.run(1)
