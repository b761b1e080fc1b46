"""The accelerator compute core: memories, sequencer and lane array behind one interface.

Interface contract with the command processor (hw/cmdproc.py):

- Weight / activation writes (`w_wr_*`, `a_wr_*`): one word per cycle while `w_wr_en` /
  `a_wr_en`; only while not `busy` (the weight memory is single-ported so that it maps to
  iCE40 SPRAM: a write takes the port for that cycle).
- Output reads: `o_rd_data` is valid the cycle after `o_rd_addr`; lane l at bits
  32*l .. 32*l+31, sign-extended from the `acc_bits`-wide accumulator.
- `start`: one-cycle pulse while not `busy`, sampled together with `run` (the RUN request's
  record: w_base, a_base, o_base, rows, cols, n_vectors), which must already be validated (all >= 1, cols <=
  max_k, every range inside its memory; see docs/protocol.md RUN). `busy` rises the cycle
  after `start`; `done` is a one-cycle pulse (in the last cycle of `busy`) when every result
  of the run is in output memory and readable.
- Counters: `busy_cycles` counts cycles in which the lanes consumed a (weight word,
  activation word) pair; `stall_cycles` counts cycles inside a run (`busy`) in which they did
  not. Both are `counter_bits` wide and cleared by `clear_counters`; they count one cycle
  late (a run's last cycle shows the cycle after `done`).

Rows past R read 0 only because the host pads weight tiles with zero trits (protocol).
"""
from __future__ import annotations

import numpy as np
from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bitlane.contract.config import FETCH_STAGES, CoreConfig
from bitlane.hw import zero_init  # noqa: F401  (all-zero memory contents stay out of the netlist)
from bitlane.hw.lane import LaneArray
from bitlane.hw.records import RunArgsLayout
from bitlane.hw.sequencer import Sequencer


def core_signature(config: CoreConfig) -> wiring.Signature:
    """The compute core's ports (the command processor drives the flipped signature)."""
    return wiring.Signature({
        "w_wr_addr": In(range(config.weight_depth)),
        "w_wr_data": In(config.weight_word_bits),
        "w_wr_en": In(1),
        "a_wr_addr": In(range(config.act_depth)),
        "a_wr_data": In(8 * config.k_per_cycle),
        "a_wr_en": In(1),
        "o_rd_addr": In(range(config.out_depth)),
        "o_rd_data": Out(32 * config.lanes),
        "start": In(1),
        "run": In(RunArgsLayout),
        "busy": Out(1),
        "done": Out(1),
        "busy_cycles": Out(config.counter_bits),
        "stall_cycles": Out(config.counter_bits),
        "clear_counters": In(1),
    })


class TernaryCore(wiring.Component):
    """Memories, sequencer and lane array: one RUN is the exact product of a tile-major ternary
    weight block with a batch of int8 vectors (the interface contract is the module docstring)."""

    @staticmethod
    def model(trits: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Bit-exact model of a RUN's results: acc[n, r] = sum_k t[r, k] * q[n, k] (int64; the
        gateware's acc_bits are derived so that this never wraps)."""
        return np.asarray(q, dtype=np.int64) @ np.asarray(trits, dtype=np.int64).T

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        super().__init__(core_signature(config))

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.config

        m.submodules.seq = seq = Sequencer(cfg)
        m.submodules.lanes = lanes = LaneArray(cfg)
        # No port ever reads a word in the cycle another port writes it (writes happen only
        # between runs, output reads only after `done`), so Yosys need not add collision
        # bypass logic around the block RAMs.
        ram_attrs = {"no_rw_check": 1}
        m.submodules.weights = w_mem = Memory(shape=cfg.weight_word_bits, depth=cfg.weight_depth, init=[],
                                              attrs=ram_attrs)
        m.submodules.acts = a_mem = Memory(shape=8 * cfg.k_per_cycle, depth=cfg.act_depth, init=[],
                                           attrs=ram_attrs)
        m.submodules.outs = o_mem = Memory(shape=cfg.acc_bits * cfg.lanes, depth=cfg.out_depth, init=[],
                                           attrs=ram_attrs)

        m.d.comb += [
            seq.start.eq(self.start & ~self.busy),
            seq.run.eq(self.run),
        ]

        # Fetch pipeline (FETCH_STAGES cycles from the sequencer's address to the lanes' input
        # registers): addresses are registered at the memories, the memories answer a cycle
        # later, and their words are registered once more before the lanes. On a wide core the
        # block RAMs spread over the whole chip, so both the address fan-out to every RAM and
        # the route from a RAM to its lanes get a cycle of their own instead of adding to the
        # RAM's slow clock-to-output.
        #
        # Weight memory: one address shared by the read and the write port (single-port RAM,
        # so that it maps to iCE40 SPRAM); writes pass through the same address register.
        w_addr = Signal.like(self.w_wr_addr, reset_less=True)
        w_wr_data = Signal.like(self.w_wr_data, reset_less=True)
        w_wr_en = Signal()
        m.d.sync += [
            w_addr.eq(Mux(self.w_wr_en, self.w_wr_addr, seq.w_addr)),
            w_wr_data.eq(self.w_wr_data),
            w_wr_en.eq(self.w_wr_en),
        ]
        w_rd, w_wr = w_mem.read_port(), w_mem.write_port()
        m.d.comb += [
            w_rd.addr.eq(w_addr),
            w_rd.en.eq(~w_wr_en),  # no read during a write: matches SPRAM "no change" reads
            w_wr.addr.eq(w_addr),
            w_wr.data.eq(w_wr_data),
            w_wr.en.eq(w_wr_en),
        ]

        a_addr = Signal.like(seq.a_addr, reset_less=True)
        m.d.sync += a_addr.eq(seq.a_addr)
        a_rd, a_wr = a_mem.read_port(), a_mem.write_port()
        m.d.comb += [
            a_rd.addr.eq(a_addr),
            a_wr.addr.eq(self.a_wr_addr),
            a_wr.data.eq(self.a_wr_data),
            a_wr.en.eq(self.a_wr_en),
        ]

        valid, last = seq.valid, seq.last
        for stage in range(FETCH_STAGES):
            valid_q, last_q = Signal(name=f"fetch_valid{stage}"), Signal(name=f"fetch_last{stage}")
            m.d.sync += [valid_q.eq(valid), last_q.eq(last)]
            valid, last = valid_q, last_q
        weights = Signal.like(w_rd.data, reset_less=True)
        acts = Signal.like(a_rd.data, reset_less=True)
        m.d.sync += [weights.eq(w_rd.data), acts.eq(a_rd.data)]
        m.d.comb += [
            lanes.valid.eq(valid),
            lanes.last.eq(last),
            lanes.weights.eq(weights),
            lanes.acts.eq(acts),
        ]

        # The output address travels beside the pipeline; a tile's result is written the
        # cycle the lanes form it, while the next tile's first pairs are already in the tree.
        o_addr = seq.o_addr
        for stage in range(FETCH_STAGES + lanes.latency):
            o_addr_q = Signal.like(seq.o_addr, name=f"o_addr_s{stage}")
            m.d.sync += o_addr_q.eq(o_addr)
            o_addr = o_addr_q
        # valid bits of every pair issued and not yet through the lanes
        in_flight = Signal(FETCH_STAGES + lanes.latency)
        m.d.sync += in_flight.eq(Cat(seq.valid, in_flight[:-1]))

        o_wr = o_mem.write_port()
        m.d.comb += [
            o_wr.addr.eq(o_addr),
            o_wr.data.eq(lanes.sums),
            o_wr.en.eq(lanes.sums_valid),
        ]

        o_rd = o_mem.read_port()
        m.d.comb += o_rd.addr.eq(self.o_rd_addr)
        for lane in range(cfg.lanes):
            acc = o_rd.data[cfg.acc_bits * lane:cfg.acc_bits * (lane + 1)].as_signed()
            m.d.comb += self.o_rd_data[32 * lane:32 * (lane + 1)].eq(acc)

        # Run state: busy from the cycle after start until the last result is written.
        pending = seq.issuing | in_flight.any()
        with m.If(seq.start):
            m.d.sync += self.busy.eq(1)
        with m.Elif(self.busy & ~pending):
            m.d.sync += self.busy.eq(0)
        m.d.comb += self.done.eq(self.busy & ~pending)

        # Increment as carry-in, clear as synchronous reset: one LUT per counter bit. The
        # increments are registered first, so the counters' long carry chains start at a
        # flip-flop; they count one cycle late.
        lanes_fed, lanes_starved = Signal(), Signal()
        with m.If(self.clear_counters):
            m.d.sync += [self.busy_cycles.eq(0), self.stall_cycles.eq(0), lanes_fed.eq(0), lanes_starved.eq(0)]
        with m.Else():
            m.d.sync += [
                lanes_fed.eq(seq.valid),
                lanes_starved.eq(self.busy & ~seq.valid),
                self.busy_cycles.eq(self.busy_cycles + lanes_fed),
                self.stall_cycles.eq(self.stall_cycles + lanes_starved),
            ]
        return m
