"""The KV cache in SDRAM on the functional model (contract/kv_stream.py): KVLOAD and KVAPPEND's store.

An engine whose block-RAM cache has fewer (layer, KV head) slots than a model needs still runs it when
it has `kv_sdram`: the compiler keeps the whole cache in SDRAM and stages one KV head at a time through
slot (0, 0). The proofs: such a model decodes on model:// equal to golden.integer token for token, over
h128's full context of 256 on the ULX3S's core with one slot, and for a grouped-query random model; the
SDRAM rows the device wrote are the reference's KV cache, integer for integer; a DECODE's cycles are
contract.decoder.decode_cycles (a KVLOAD's wait is not counted); and what cannot run says why.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bitlane import golden
from bitlane.contract.config import CoreConfig, preset
from bitlane.contract.decoder import Bank, DecoderMachine, Instruction, MachineShape, Op, ProgramError, decode_cycles
from bitlane.contract.kv_stream import KV_STORE, KV_V, kv_row_words, pack_row, unpack_rows
from bitlane.golden.integer import IntegerModel, convert
from bitlane.sw import Accelerator
from bitlane.sw.decoder_program import DecoderFitError, compile_decoder
from bitlane.sw.decoder_session import DecoderRunner, load_decoder, plan_decoder
from bitlane.sw.transport import ModelTransport
from tests.test_integer import random_model

H128 = "models/bitnet-kjv-h128"
ULX3S = preset("ulx3s")


def runner_for(model: IntegerModel, config: CoreConfig) -> DecoderRunner:
    acc = Accelerator(ModelTransport(config))
    image = plan_decoder(model, acc.caps)
    load_decoder(model, image, acc)
    return DecoderRunner(model, image, acc)


def sdram_cache(runner: DecoderRunner, model: IntegerModel, positions: int) -> list[tuple[np.ndarray, ...]]:
    """The device's KV regions as golden.integer's cache entries: per layer (K, ek, V, ev) of
    [kv_heads, positions, head_dim] and [kv_heads, positions]."""
    cfg, image = model.int_config, runner.image
    sdram = runner.acc.transport.device.sdram
    row = kv_row_words(cfg.head_dim)
    region = ULX3S.decoder.context * row
    base = image.kv_sdram[0]
    layers = []
    for layer in range(cfg.layers):
        parts = {}
        for kind in (0, KV_V):
            ms, es = [], []
            for g in range(cfg.kv_heads):
                at = base + ((layer * cfg.kv_heads + g) * 2 + kind) * region
                m, e = unpack_rows(sdram[at:at + positions * row], cfg.head_dim, row)
                ms.append(m)
                es.append(e)
            parts[kind] = (np.stack(ms), np.stack(es))
        layers.append((*parts[0], *parts[KV_V]))
    return layers


def test_h128_full_context_from_sdram_equals_the_reference():
    """h128 on the ULX3S (model://ulx3s): 4 layers x 2 KV heads staged from SDRAM through its one cache slot,
    over all 256 positions; ids equal to golden.integer's, and the
    SDRAM holds the reference's KV cache."""
    model = IntegerModel.load(H128)
    assert (ULX3S.decoder.layers, ULX3S.decoder.kv_heads, ULX3S.decoder.context) == (1, 1, 256)  # one slot
    runner = runner_for(model, ULX3S)
    program = runner.image.program
    assert sum(ins.op == Op.KVLOAD for ins in program) == 4 * 2 * 2
    assert all(ins.imm & KV_STORE for ins in program if ins.op == Op.KVAPPEND)
    prompt = [5, 300, 1000, 7]
    tokens = ULX3S.decoder.context - len(prompt)
    generated = golden.generate(model, prompt, tokens, greedy=True)
    assert golden.generate(runner, prompt, tokens, greedy=True) == generated
    # the reference's cache for the same 255 positions (the last token is never fed back)
    ids = np.array([prompt + generated[:-1]])
    ref = model.new_cache()
    model.hidden(ids, ref)
    positions = ids.shape[1]
    for layer, (got, want) in enumerate(zip(sdram_cache(runner, model, positions), ref.layers)):
        for name, g, w in zip(("K", "ek", "V", "ev"), got, want):
            assert np.array_equal(g, w[0]), f"layer {layer} {name}"


def test_grouped_query_model_from_sdram_equals_the_reference():
    """A random model with 4 query heads on 2 KV heads and 3 layers, on an engine with 2 slots: staged
    (6 pairs), token by token and in a prefill, against golden.integer."""
    model = convert(random_model(3, vocab_size=300, hidden_size=128, intermediate_size=200, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2, hidden_act="relu2",
                                 max_position_embeddings=64))
    config = ULX3S.with_(name="kv-sdram-gqa", decoder=replace(ULX3S.decoder, head_dim=32, attention_macs=16,
                                                             layers=1, kv_heads=2, context=64, kv_sdram=True))
    runner = runner_for(model, config)
    assert runner.image.kv_sdram[1] == 3 * 2 * 2 * 64 * kv_row_words(32)
    prompt = [1, 2, 3, 4, 5, 6, 7]
    assert golden.generate(runner, prompt, 20, greedy=True) == golden.generate(model, prompt, 20, greedy=True)


def test_decode_cycles_count_a_kvload_as_its_issue_cycle():
    model = IntegerModel.load(H128)
    acc = Accelerator(ModelTransport(ULX3S))
    image = plan_decoder(model, acc.caps)
    load_decoder(model, image, acc)
    shape = MachineShape.from_config(ULX3S)
    runner = DecoderRunner(model, image, acc)
    for pos, token in enumerate([5, 300, 1000]):
        before = runner.decode_cycles
        runner.hidden(np.array([token]), pos)
        assert runner.decode_cycles - before == decode_cycles(image.program, pos, shape, ULX3S.run_overhead).total


def test_what_cannot_stage_says_why():
    model = IntegerModel.load(H128)
    no_kv_sdram = replace(MachineShape.from_config(ULX3S), kv_sdram=False)
    with pytest.raises(DecoderFitError, match="layers 4: the engine's attention unit is built for 1 and cannot "
                                              "stage its KV cache from SDRAM"):
        compile_decoder(model, no_kv_sdram, ULX3S.weight_depth, ULX3S.sdram_words, 8)
    with pytest.raises(DecoderFitError, match=r"KV cache in SDRAM: 278,528 words .* exceed the SDRAM's 8,192 words"):
        compile_decoder(model, MachineShape.from_config(ULX3S), ULX3S.weight_depth, 1 << 13, 8)


def test_kv_ops_outside_the_sdram_or_the_engine_are_faults():
    shape = replace(MachineShape.from_config(ULX3S), context=4)
    sdram = np.zeros(128, dtype=np.uint16)
    machine = DecoderMachine(shape, lambda *a: None, sdram=lambda: sdram)
    row = kv_row_words(64)
    sdram[:row] = pack_row(np.arange(64) - 32, -3, row)
    halt = Instruction(Op.HALT)
    machine.load([Instruction(Op.KVLOAD, n=64, imm=0), halt])
    machine.run(1)  # row 0 of the region at word 0
    assert np.array_equal(machine.kv[0, 0, 0, 0], np.arange(64) - 32) and machine.kv_exp[0, 0, 0, 0] == -3
    for imm, pos, match in ((0, 2, "outside the SDRAM's 128"), (KV_STORE, 1, "region address and the K/V bit")):
        machine.load([Instruction(Op.KVLOAD, n=64, imm=imm), halt])
        with pytest.raises(ProgramError, match=match):
            machine.run(pos)
    machine.write(Bank.MAIN, 0, np.arange(64))
    machine.load([Instruction(Op.KVAPPEND, n=64, imm=KV_STORE | 64), halt])
    with pytest.raises(ProgramError, match="KVAPPEND's store: SDRAM words 64..131 outside"):
        machine.run(0)
    plain = DecoderMachine(replace(shape, kv_sdram=False), lambda *a: None, sdram=lambda: sdram)
    plain.load([Instruction(Op.KVLOAD, n=64, imm=0), halt])
    with pytest.raises(ProgramError, match="without the KV cache in SDRAM"):
        plain.run(1)
