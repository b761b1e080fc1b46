"""The run sequencer: walks a (matrix-vector or small matrix-matrix) product word by word.

For vector n, row tile rt and k-step ks it issues one (weight word, activation word) pair
per cycle with exactly the addressing of docs/protocol.md:

    weight word      w_base + rt * k_steps + ks
    activation word  a_base + n * k_steps + ks
    output word      o_base + n * row_tiles + rt   (written after the tile's last k-step)

No multipliers: within one vector the weight addresses are consecutive, the activation
address goes back to the vector's first word at each new tile, and the output address
simply counts tiles. Tiles follow each other with no bubble.
"""
from __future__ import annotations

from amaranth import Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from bitlane.contract.config import CoreConfig
from bitlane.hw.records import RunArgsLayout


class Sequencer(wiring.Component):
    """Issues one lane pair per cycle from `start` until the whole product is issued.

    `start` (one-cycle pulse, ignored while `issuing`) samples the bases and the shape, which
    the command processor has validated (rows, cols, n_vectors >= 1, cols <= max_k, ranges in
    memory). While `valid` is set, `w_addr`/`a_addr` address the pair and `first`/`last` mark
    a tile's first/last k-step; `o_addr` is the output word of the current tile.
    """

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        super().__init__({
            "start": In(1),
            "run": In(RunArgsLayout),
            "issuing": Out(1),
            "valid": Out(1),
            "w_addr": Out(range(config.weight_depth)),
            "a_addr": Out(range(config.act_depth)),
            "o_addr": Out(range(config.out_depth)),
            "last": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.config
        k, lanes = cfg.k_per_cycle, cfg.lanes
        run = self.run

        cols = Signal(range(cfg.max_k + 1))                  # the RUN's cols
        cols_left = Signal.like(cols)                        # columns of this tile from this step on
        rows = Signal(range(cfg.out_depth * lanes + 1))      # the RUN's rows
        rows_left = Signal.like(rows)                        # rows of this vector from this tile on
        n_left = Signal(range(cfg.out_depth + 1))            # vectors from this one on
        a_vector = Signal.like(self.a_addr)                  # first activation word of this vector
        w_vector = Signal.like(self.w_addr)                  # w_base, where every vector starts again

        def at_most(count: Signal, step: int) -> Value:
            """count <= step, for 1 <= count and step a power of two."""
            shift = step.bit_length() - 1
            high, low = count[shift:], count[:shift]
            return (high == 0) | ((high == 1) & (low == 0))

        last_step, last_tile, last_vector = at_most(cols_left, k), at_most(rows_left, lanes), n_left == 1
        m.d.comb += [
            self.valid.eq(self.issuing),
            self.last.eq(self.issuing & last_step),
        ]

        with m.If(~self.issuing):
            with m.If(self.start):
                m.d.sync += [
                    self.issuing.eq(1),
                    cols.eq(run.cols),
                    cols_left.eq(run.cols),
                    rows.eq(run.rows),
                    rows_left.eq(run.rows),
                    n_left.eq(run.n_vectors),
                    self.w_addr.eq(run.w_base),
                    w_vector.eq(run.w_base),
                    self.a_addr.eq(run.a_base),
                    a_vector.eq(run.a_base),
                    self.o_addr.eq(run.o_base),
                ]
        with m.Elif(~last_step):  # inside a tile
            m.d.sync += [
                cols_left.eq(cols_left - k),
                self.w_addr.eq(self.w_addr + 1),
                self.a_addr.eq(self.a_addr + 1),
            ]
        with m.Else():  # last k-step of a tile: the next tile starts right away
            m.d.sync += [
                cols_left.eq(cols),
                self.o_addr.eq(self.o_addr + 1),
            ]
            with m.If(~last_tile):  # next tile of the same vector
                m.d.sync += [
                    rows_left.eq(rows_left - lanes),
                    self.w_addr.eq(self.w_addr + 1),
                    self.a_addr.eq(a_vector),
                ]
            with m.Elif(~last_vector):  # first tile of the next vector
                m.d.sync += [
                    rows_left.eq(rows),
                    n_left.eq(n_left - 1),
                    self.w_addr.eq(w_vector),
                    self.a_addr.eq(self.a_addr + 1),
                    a_vector.eq(self.a_addr + 1),
                ]
            with m.Else():
                m.d.sync += self.issuing.eq(0)
        return m
