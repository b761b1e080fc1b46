"""Whole decoder steps on the gateware (hw/decoder.py: ternary core + decoder engine) against the
integer reference (golden/integer.py), integer for integer.

- h128, the shipped model with its real activations: a prompt decoded token by token on the
  `ulx3s` core; every token's final hidden state (int16 mantissas and exponent) must equal
  IntegerModel.hidden's with the same KV cache history, so every layer and the whole KV cache are
  exercised (a wrong cache entry changes every later token).
- A random model of awkward shape: head_dim 32, two query heads sharing one KV head, 8-bit K/V cache
  mantissas, intermediate size 100 (not a multiple of the 16 lanes), hidden 64.

Every token's cycles, in total and per unit (the engine's counters), must equal contract/decoder.py's
`decode_cycles`, the one cycle model that the functional model and bench/decoder_bench.py use.
"""
import json
import os
from dataclasses import replace
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from bitlane.contract.config import PRESETS, DecoderShape
from bitlane.contract.decoder import CYCLE_CLASSES, REGISTERS, Bank, MachineShape, decode_cycles
from bitlane.golden.integer import IntegerModel, convert
from bitlane.hw.decoder import DecoderCore
from sim_tests import simlib
from sim_tests.decoder_harness import DecoderHarness

H128 = str(simlib.REPO_ROOT / "models" / "bitnet-kjv-h128")
PROMPT = "In the beginning God created the heaven and the earth."


AWKWARD_FIELDS = dict(vocab_size=200, max_position_embeddings=64, hidden_act="relu2", hidden_size=64,
                      intermediate_size=100, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)


def awkward_model() -> IntegerModel:
    from tests.test_integer import random_model
    return convert(random_model(3, **AWKWARD_FIELDS), kv_bits=8)


ULX3S = PRESETS["ulx3s"]
# build -> (core configuration with its decoder, attention unit options)
BUILDS = {
    # the ULX3S core with its decoder, h128's whole KV cache in block RAM at its full context: the engine's
    # own cycles (on the ULX3S the cache is in SDRAM, whose KVLOAD waits the engine does not count)
    "h128": lambda: (ULX3S.with_(decoder=replace(ULX3S.decoder, layers=4, kv_heads=2, context=256, kv_sdram=False)),
                     dict(kv_bits=16)),
    # the tiny core (4 lanes x 4) with a head_dim-32 engine whose cache stores 8-bit mantissas
    "awkward": lambda: (PRESETS["tiny"].with_(decoder=DecoderShape(
        layers=2, kv_heads=1, head_dim=32, context=64, main_depth=1024, const_depth=1024, copy_depth=512,
        program_depth=512, vector_lanes=4, attention_macs=8)), dict(kv_bits=8)),
}


def ids_for(model: IntegerModel, which: str, count: int) -> list[int]:
    """h128: the prompt's tokens, then random ones up to `count`; otherwise random ids."""
    ids = []
    if which == "h128":
        from bitlane.golden.checkpoint import load_tokenizer
        ids = load_tokenizer(H128).encode(PROMPT).ids[:count]
    rng = np.random.default_rng(5)
    return ids + [int(i) for i in rng.integers(0, model.config.vocab_size, count - len(ids))]


@cocotb.test()
async def decode_tokens(dut) -> None:
    which, count = os.environ["DECODER_BUILD"], int(os.environ["DECODER_TOKENS"])
    config, _ = BUILDS[which]()
    model = IntegerModel.load(H128) if which == "h128" else awkward_model()
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for port in ("w_wr_en", "a_wr_en", "start", "clear_counters", "engine_prog_wr_en", "engine_host_wr_en",
                 "engine_start"):
        getattr(dut, port).value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    harness = DecoderHarness(dut, config, MachineShape.from_config(config), model)
    await harness.load()
    cache = model.new_cache()
    machine = harness.machine()
    log = []
    for pos, token in enumerate(ids_for(model, which, count)):
        y_ref, e_ref = model.hidden(np.array([[token]]), cache)
        y, ey, cycles = await harness.decode(token, pos, rewrite_first=pos % 2 == 1)
        machine.write(Bank.MAIN, harness.image.emb_addr, model.embedding[token])
        machine.run(pos)
        registers = [await harness.read_register(r) for r in range(REGISTERS)]
        differ = [r for r in range(REGISTERS) if registers[r] != machine.regs[r]]
        assert not differ, (f"{which} position {pos}: registers {differ} differ from the engine's model: "
                             f"{[(registers[r], int(machine.regs[r])) for r in differ]}")
        np.testing.assert_array_equal(y, y_ref[0, 0], err_msg=f"{which}: final hidden state at position {pos}")
        assert ey == e_ref[0, 0, 0], f"{which}: exponent {ey} at position {pos}, reference {e_ref[0, 0, 0]}"
        model_cycles = decode_cycles(harness.image.program, pos, harness.shape, config.run_overhead)
        measured = dict(vars(cycles), issue=cycles.overhead)
        modelled = {name: getattr(model_cycles, name) for name in ("total", *CYCLE_CLASSES)}
        assert measured == modelled, f"{which} position {pos}: cycles {measured}, the contract's model {modelled}"
        log.append(dict(pos=pos, **vars(cycles)))
    if os.environ.get("DECODER_CYCLES_OUT"):
        Path(os.environ["DECODER_CYCLES_OUT"]).write_text(json.dumps(log))


def run_build(which: str, tokens: int, cycles_out: Path | None = None) -> None:
    """Decode `tokens` tokens of build `which` on the gateware, each compared with the reference; with
    `cycles_out`, write each token's cycle counters there (JSON) for bench/decoder_bench.py."""
    config, options = BUILDS[which]()
    toplevel = f"decoder_{which}"
    build = simlib.build(DecoderCore(config, **options), toplevel)
    env = {"DECODER_BUILD": which, "DECODER_TOKENS": tokens, "DECODER_CYCLES_OUT": cycles_out or ""}
    simlib.run("sim_tests.test_decoder", build, toplevel, env=env, name=f"decoder_{which}")


def test_h128_decodes_bit_exact() -> None:
    run_build("h128", 12)


def test_awkward_shape_decodes_bit_exact() -> None:
    run_build("awkward", 20)


def test_lint_clean(tmp_path: Path) -> None:
    config, options = BUILDS["h128"]()
    result = simlib.lint(DecoderCore(config, **options), "decoder_h128", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
