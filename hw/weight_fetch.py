"""The decoder engine's WFETCH: weight words from SDRAM into the ternary core's weight memory.

    engine --start, (SDRAM word, weight word, words)--> WeightFetch --req--> mem port (hw/sdram_port.py)
           <--done----------------------------------              <--r_data (16-bit SDRAM words)
                                                       --w_wr_*--> the core's weight memory

A weight word lies in SDRAM as `spw` consecutive 16-bit words, the lowest bits first
(contract/weight_stream.py). `WeightFetch` asks the port for all of them in requests of at most
65,536 SDRAM words (the controller's count) and assembles each weight word from `spw` read words,
writing it into weight memory the cycle its last word arrives; it pulses `done` once the last word is
written. It takes every read word as it comes (`r_data.ready` high while it runs), so the fetch runs
at the port's rate: one SDRAM word per core cycle through the 16-bit port.

`MemArbiter` gives one SdramPort two users that never use it at once: the command processor's MEM_*
commands and the engine's WFETCH. A DECODE holds the command processor in its DECODE_WAIT state
(it reads no frame) while the engine runs, and the engine fetches only while it runs and has taken
every word of its requests when a WFETCH retires; a MEM_WRITE's words may still be in the port's
FIFO when a DECODE starts, but the port serves requests in order, so a WFETCH after it reads what it
wrote. So the port follows the engine's `busy`: no arbitration beyond a multiplexer.
"""
from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from bitlane.contract.config import CoreConfig
from bitlane.contract.weight_stream import SDRAM_WORD_BITS, sdram_words_per_weight_word

from .sdram_port import CONTROLLER_COUNT_BITS, mem_port_signature

WORDS_BITS = 16  # WFETCH's n (contract/decoder.py Instruction.n)


def weight_mem_signature(config: CoreConfig) -> wiring.Signature:
    """The SDRAM port a WeightFetch drives: one SDRAM word per port word (as the command processor's)."""
    return mem_port_signature(addr_bits=(config.sdram_words - 1).bit_length(), data_width=SDRAM_WORD_BITS,
                              count_bits=CONTROLLER_COUNT_BITS)


def fetch_signature(config: CoreConfig) -> wiring.Signature:
    """The engine's side of a WeightFetch: a WFETCH's fields and its handshake."""
    return wiring.Signature({
        "start": In(1),                     # a pulse while not busy, with the fields below
        "sdram_addr": In(32),               # first SDRAM word (a multiple of spw)
        "w_addr": In(range(config.weight_depth)),
        "words": In(WORDS_BITS),            # weight words (0: done at once)
        "done": Out(1),                     # a pulse: every word is in weight memory
        "busy": Out(1),
    })


class WeightFetch(wiring.Component):
    """Copies `words` weight words from SDRAM word `sdram_addr` into weight memory from `w_addr`
    (module docstring). Ranges are the program's business (the host's compiler checks them; the
    functional model faults on them): addresses wrap at the memories' sizes."""

    def __init__(self, config: CoreConfig) -> None:
        if not config.sdram_words:
            raise ValueError(f"config {config.name!r} has no SDRAM to fetch weights from")
        self.config = config
        self.spw = sdram_words_per_weight_word(config)
        super().__init__({
            "fetch": In(fetch_signature(config)),
            "mem": Out(weight_mem_signature(config)),
            "w_wr_addr": Out(range(config.weight_depth)),
            "w_wr_data": Out(config.weight_word_bits),
            "w_wr_en": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg, spw, fetch, mem = self.config, self.spw, self.fetch, self.mem
        total_bits = (((1 << WORDS_BITS) - 1) * spw).bit_length()
        chunk = 1 << CONTROLLER_COUNT_BITS
        req_addr = Signal(len(mem.req.payload.addr))
        req_left = Signal(total_bits)    # SDRAM words not yet requested
        words_left = Signal(WORDS_BITS)  # weight words not yet written
        part = Signal(range(spw))        # SDRAM words of the current weight word already in `word`
        word = Signal(cfg.weight_word_bits)
        w_addr = Signal(range(cfg.weight_depth))

        m.d.sync += fetch.done.eq(0)
        m.d.comb += [
            mem.req.valid.eq(fetch.busy & (req_left != 0)),
            mem.req.payload.addr.eq(req_addr),
            mem.req.payload.count.eq(Mux(req_left > chunk, chunk - 1, req_left - 1)),
            mem.req.payload.write.eq(0),
            mem.w_data.valid.eq(0),
            mem.r_data.ready.eq(fetch.busy),
        ]
        with m.If(mem.req.valid & mem.req.ready):
            m.d.sync += [req_addr.eq(req_addr + chunk), req_left.eq(Mux(req_left > chunk, req_left - chunk, 0))]

        # each read word in at the top: after spw of them the first is the lowest
        assembled = Cat(word[SDRAM_WORD_BITS:], mem.r_data.payload) if spw > 1 else mem.r_data.payload
        last = part == spw - 1
        m.d.comb += [self.w_wr_addr.eq(w_addr), self.w_wr_data.eq(assembled),
                     self.w_wr_en.eq(fetch.busy & mem.r_data.valid & last)]
        with m.If(fetch.busy & mem.r_data.valid):
            m.d.sync += [word.eq(assembled), part.eq(Mux(last, 0, part + 1))]
            with m.If(last):
                m.d.sync += [w_addr.eq(w_addr + 1), words_left.eq(words_left - 1)]
                with m.If(words_left == 1):
                    m.d.sync += [fetch.busy.eq(0), fetch.done.eq(1)]

        with m.If(fetch.start & ~fetch.busy):
            m.d.sync += [req_addr.eq(fetch.sdram_addr), req_left.eq(fetch.words * spw), words_left.eq(fetch.words),
                         w_addr.eq(fetch.w_addr), part.eq(0)]
            with m.If(fetch.words == 0):
                m.d.sync += fetch.done.eq(1)
            with m.Else():
                m.d.sync += fetch.busy.eq(1)
        return m


class MemArbiter(wiring.Component):
    """One SDRAM port (`port`) for two users that never use it at once (module docstring): `engine`
    while `engine_selected`, `host` (the command processor) otherwise. The unselected user sees
    `ready` and `valid` low."""

    def __init__(self, signature: wiring.Signature) -> None:
        super().__init__({
            "host": In(signature),
            "engine": In(signature),
            "port": Out(signature),
            "engine_selected": In(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        sel = self.engine_selected
        for name in ("req", "w_data"):  # the users' outgoing streams
            out, a, b = getattr(self.port, name), getattr(self.host, name), getattr(self.engine, name)
            m.d.comb += [out.valid.eq(Mux(sel, b.valid, a.valid)), out.payload.eq(Mux(sel, b.payload, a.payload)),
                         a.ready.eq(out.ready & ~sel), b.ready.eq(out.ready & sel)]
        r, a, b = self.port.r_data, self.host.r_data, self.engine.r_data
        m.d.comb += [a.payload.eq(r.payload), b.payload.eq(r.payload), a.valid.eq(r.valid & ~sel),
                     b.valid.eq(r.valid & sel), r.ready.eq(Mux(sel, b.ready, a.ready))]
        return m
