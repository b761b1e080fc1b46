"""BitlaneTop through the wire protocol: products of random shapes, bit-exact vs numpy int64,
and one BitLinear layer of a golden checkpoint, bit-exact vs golden's int32 accumulators.

Everything goes through `rx` / `tx` as a host would send it (contract/protocol.py encodes and
decodes), with random gaps on rx and random backpressure on tx.
"""
from __future__ import annotations

import os
from pathlib import Path

import cocotb
import numpy as np
import pytest

from bitlane.contract import protocol as p
from bitlane.hw.core import TernaryCore
from bitlane.hw.top import BitlaneTop
from sim_tests import simlib
from sim_tests.coresim import CONFIGS, random_acts, random_trits
from sim_tests.toplink import HostLink

TOPLEVEL = "bitlane_top"


async def connect(dut, seed: int, **kw) -> HostLink:
    cfg = CONFIGS[os.environ["BITLANE_CONFIG"]]
    link = HostLink(dut, cfg, np.random.default_rng(seed), **kw)
    await link.start()
    return link


async def check(link: HostLink, rows: int, cols: int, n: int = 1, **bases) -> None:
    trits, q = random_trits(link.rng, (rows, cols)), random_acts(link.rng, (n, cols))
    got = await link.product(trits, q, **bases)
    want = TernaryCore.model(trits, q)
    bad = np.argwhere(got != want)
    assert not len(bad), (f"{rows}x{cols} n={n}: {len(bad)} wrong results, first at (vector, row) "
                          f"{tuple(bad[0])}: got {got[tuple(bad[0])]}, expected {want[tuple(bad[0])]}")


@cocotb.test()
async def info_matches_config(dut) -> None:
    link = await connect(dut, 1)
    assert await link.info() == p.Capabilities.from_config(link.cfg)


@cocotb.test()
async def matvec_shapes(dut) -> None:
    """1x1, primes, one off the tile sizes, at random bases."""
    link = await connect(dut, 2)
    L, K = link.cfg.lanes, link.cfg.k_per_cycle
    for rows, cols in [(1, 1), (2, 3), (L + 1, K - 1), (13, 31), (37, 101), (5, 257)]:
        await check(link, rows, cols, w_base=int(link.rng.integers(0, 100)),
                    a_base=int(link.rng.integers(0, 50)), o_base=int(link.rng.integers(0, 20)))


@cocotb.test()
async def matmul_shapes(dut) -> None:
    link = await connect(dut, 3)
    for rows, cols, n in [(1, 1, 3), (7, 11, 3), (17, 29, 5), (3, 61, 8)]:
        await check(link, rows, cols, n)


@cocotb.test()
async def long_k(dut) -> None:
    """K = max_k (8192): frames split across many WRITE_* requests, the widest accumulators."""
    link = await connect(dut, 4, rx_gap=0.05, tx_stall=0.05)
    await check(link, 3, link.cfg.max_k)


@cocotb.test()
async def golden_bitlinear(dut) -> None:
    """One BitLinear call of a golden model (written by the pytest side): same int32 accumulators."""
    layer = np.load(os.environ["BITLANE_GOLDEN"])
    link = await connect(dut, 5)
    got = await link.product(layer["trits"], layer["q"])
    want = layer["acc"].astype(np.int64)
    bad = np.argwhere(got != want)
    assert not len(bad), (f"golden {layer['name']}: {len(bad)} of {want.size} accumulators differ, first at "
                          f"(token, row) {tuple(bad[0])}: got {got[tuple(bad[0])]}, golden {want[tuple(bad[0])]}")
    dut._log.info(f"golden {layer['name']} {layer['trits'].shape} x {len(layer['q'])} tokens: bit-exact")


@pytest.fixture(scope="module")
def golden_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """q, trits and acc of the MLP down projection of a random golden checkpoint, as .npz."""
    import torch

    from bitlane import golden
    folder = tmp_path_factory.mktemp("golden")
    shape = dict(vocab_size=64, hidden_size=40, intermediate_size=88, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=32, bos_token_id=None, eos_token_id=None)
    model = golden.load_model(golden.make_random_checkpoint(folder / "checkpoint", shape, seed=7))
    ids = torch.randint(0, shape["vocab_size"], (1, 6), generator=torch.Generator().manual_seed(7))
    with torch.no_grad(), golden.trace(model) as records:
        model(ids)
    record = next(r for r in records if r.name.endswith("down_proj"))
    path = folder / "layer.npz"
    np.savez(path, name=record.name, q=record.q.numpy(), trits=record.trits.numpy(), acc=record.acc.numpy())
    return path


@pytest.mark.parametrize("config", ["tiny", "mid"])
def test_top(config: str, golden_layer: Path) -> None:
    build = simlib.build(BitlaneTop(CONFIGS[config]), TOPLEVEL)
    simlib.run("sim_tests.test_top", build, TOPLEVEL, name=f"test_top-{config}",
               env={"BITLANE_CONFIG": config, "BITLANE_GOLDEN": golden_layer})
