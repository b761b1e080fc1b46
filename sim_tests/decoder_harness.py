"""Drive hw/decoder.py's DecoderCore from cocotb: load a compiled model, decode tokens, read the result.

Shared by sim_tests/test_decoder.py and bench/decoder_bench.py, so the test and the benchmark load and
run the gateware the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge, SimTimeoutError, with_timeout

from bitlane.contract.config import CoreConfig
from bitlane.contract.decoder import Bank, DecoderMachine, Instruction, MachineShape, Op
from bitlane.contract.packing import pack_weights
from bitlane.golden.integer import IntegerModel
from bitlane.sw.decoder_program import DecoderImage, compile_decoder


@dataclass
class TokenCycles:
    total: int
    core: int
    attention: int
    vector: int
    scalar: int

    @property
    def overhead(self) -> int:
        return self.total - self.core - self.attention - self.vector - self.scalar


class DecoderHarness:
    """One DecoderCore under cocotb with one model loaded."""

    def __init__(self, dut, config: CoreConfig, shape: MachineShape, model: IntegerModel) -> None:
        self.dut, self.config, self.shape, self.model = dut, config, shape, model
        self.image: DecoderImage = compile_decoder(model, shape)

    def machine(self) -> DecoderMachine:
        """The engine's model loaded with the same program, constants and weights."""
        matrices = {self.image.weights[i, key]: layer.trits[key].astype(np.int64)
                    for i, layer in enumerate(self.model.layers) for key in layer.trits}
        machine = DecoderMachine(self.shape, lambda w_base, rows, cols, q: matrices[w_base] @ q)
        machine.load(self.image.program)
        machine.write(Bank.CONST, 0, self.image.const)
        return machine

    async def tick(self, n: int = 1) -> None:
        for _ in range(n):
            await RisingEdge(self.dut.clk)

    async def load(self) -> None:
        dut, cfg, image = self.dut, self.config, self.image
        word_bytes = cfg.weight_word_bits // 8
        for (layer, key), w_base in image.weights.items():
            data = pack_weights(self.model.layers[layer].trits[key], cfg.lanes, cfg.k_per_cycle)
            for i in range(len(data) // word_bytes):
                dut.w_wr_addr.value = w_base + i
                dut.w_wr_data.value = int.from_bytes(data[i * word_bytes:(i + 1) * word_bytes], "little")
                dut.w_wr_en.value = 1
                await self.tick()
        dut.w_wr_en.value = 0
        await self.write_program(enumerate(image.program))
        await self.write_bank(Bank.CONST, 0, image.const)

    async def write_program(self, words) -> None:
        """Write (address, Instruction) pairs into the engine's program memory, one a cycle."""
        dut = self.dut
        for pc, ins in words:
            dut.engine_prog_wr_addr.value = pc
            dut.engine_prog_wr_data.value = int.from_bytes(ins.pack(), "little")
            dut.engine_prog_wr_en.value = 1
            await self.tick()
        dut.engine_prog_wr_en.value = 0

    async def write_bank(self, bank: Bank, addr: int, values) -> None:
        dut = self.dut
        dut.engine_host_bank.value = int(bank)
        for i, value in enumerate(np.asarray(values, dtype=np.int64)):
            dut.engine_host_addr.value = addr + i
            dut.engine_host_wr_data.value = int(value)
            dut.engine_host_wr_en.value = 1
            await self.tick()
        dut.engine_host_wr_en.value = 0

    async def read_bank(self, bank: Bank, addr: int, n: int) -> np.ndarray:
        dut = self.dut
        dut.engine_host_bank.value = int(bank)
        out = []
        for i in range(n):
            dut.engine_host_addr.value = addr + i
            await self.tick()
            await ReadOnly()
            out.append(dut.engine_host_rd_data.value.to_signed())
            await self._leave_readonly()
        return np.array(out, dtype=np.int64)

    async def _leave_readonly(self) -> None:
        """Signals cannot be written in the read-only phase: move on to the next clock edge."""
        await RisingEdge(self.dut.clk)

    async def read_register(self, r: int) -> int:
        self.dut.engine_reg_rd_addr.value = r
        await self.tick()
        await ReadOnly()
        value = self.dut.engine_reg_rd_data.value.to_signed()
        await self._leave_readonly()
        return value

    async def decode(self, token: int, pos: int, limit: int = 10_000_000,
                     rewrite_first: bool = False) -> tuple[np.ndarray, int, TokenCycles]:
        """Run one token: embedding row in, (y mantissas, exponent, cycles) out. With `rewrite_first`,
        instruction 0 is overwritten with a HALT and then written again in the two cycles before the
        start: the engine, which reads word 0 ahead while idle, must run the word written last (and
        count the same cycles)."""
        dut, image = self.dut, self.image
        await self.write_bank(Bank.MAIN, image.emb_addr, self.model.embedding[token])
        if rewrite_first:
            await self.write_program([(0, Instruction(op=int(Op.HALT))), (0, image.program[0])])
        dut.engine_pos.value = pos
        dut.engine_start.value = 1
        await self.tick()
        dut.engine_start.value = 0
        try:  # event-driven: no Python runs per simulated cycle
            await with_timeout(RisingEdge(dut.engine_done), limit * 10, "ns")
        except SimTimeoutError:
            raise TimeoutError(f"token at position {pos}: no done in {limit} cycles") from None
        await self._leave_readonly()
        cycles = TokenCycles(*(int(getattr(dut, f"engine_{name}").value) for name in
                               ("cycles", "cycles_core", "cycles_attention", "cycles_vector", "cycles_scalar")))
        y = await self.read_bank(Bank.MAIN, image.out_addr, image.hidden)
        ey = await self.read_register(image.out_exp_reg)
        return y, ey, cycles
