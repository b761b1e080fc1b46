"""The KV cache in SDRAM on the Verilated gateware (hw/kv_fetch.py): BitlaneTop of a small decoder engine whose
block-RAM cache has one slot, with the SDRAM port and the C++ timing-checking SDRAM model, against the
functional model of the same configuration, byte for byte.

The small model (2 layers, 1 KV head of 32) runs with its KV cache in SDRAM: every token's program loads
each layer's K and V rows 0..POS-1 (KVLOAD, through the 2-word weight port), appends POS and stores it
(KVAPPEND's store, through the command processor's port while the engine runs). Every DECODE answer is
equal to model://'s, cycles included (the engine counts neither wait); the hidden states equal
golden.integer's; afterwards MEM_READ of the whole KV region equals the model's SDRAM, so the rows the
gateware wrote are the contract's, and the KVLOAD and store waits are in the COUNTERS record's cycles.

The first run builds the simulator (a few minutes).
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from bitlane.contract import protocol as p
from bitlane.contract.decoder import Op
from bitlane.contract.protocol import Cmd
from bitlane.devices import sim_transport
from bitlane.sw import Accelerator
from bitlane.sw.decoder_session import load_decoder, plan_decoder
from bitlane.sw.transport import ModelTransport
from sim_tests.test_decoder_sdram_sim import IDS, check_against_reference, decode_requests
from tests.test_decoder_sdram import STREAMED, small  # noqa: F401  (the model fixture)

BASE = STREAMED[700]
CONFIG = BASE.with_(name="decoder-small-kv-sdram", decoder=replace(BASE.decoder, layers=1, kv_heads=1,
                                                                    kv_sdram=True))


@pytest.fixture(scope="module")
def sim():
    acc = Accelerator(sim_transport(CONFIG), timeout=120)
    yield acc
    acc.close()


def test_kv_cache_in_sdram_equals_the_model_and_the_reference(sim, small):  # noqa: F811
    model_acc = Accelerator(ModelTransport(CONFIG))
    image = plan_decoder(small, sim.caps)
    assert image.kv_sdram[1] and sum(ins.op == Op.KVLOAD for ins in image.program) == 2 * 2
    for acc in (model_acc, sim):
        load_decoder(small, image, acc)
    requests = [(Cmd.COUNTERS, b""), *decode_requests(small, IDS), (Cmd.COUNTERS, b"")]
    got, want = sim.transact(requests), model_acc.transact(requests)
    assert got[1:-1] == want[1:-1]
    engine = check_against_reference(small, got[1:-1], IDS, image.hidden)
    # the KV rows the gateware wrote are the model's, every word of every region
    base, words = image.kv_sdram
    assert sim.mem_crc(base, words) == model_acc.mem_crc(base, words)
    assert sim.mem_read(base, 512) == model_acc.mem_read(base, 512)
    # the loads and stores waited beyond the engine's cycles
    rest = p.Counters.unpack(got[-1]).cycles - p.Counters.unpack(got[0]).cycles - engine
    rows = sum(range(len(IDS))) * 2 * 2
    assert rest > rows * (image.hidden // 2), (rest, rows)
    # a prefill from position 0 again: the same answers (the rows are rewritten as they are)
    prefill = p.DecodeArgs(0, 3).pack() + small.embedding[IDS[:3]].astype("<i2").tobytes()
    assert sim.transact([(Cmd.DECODE, prefill)]) == model_acc.transact([(Cmd.DECODE, prefill)])
    assert sim.counters()["frames_bad"] == 0
