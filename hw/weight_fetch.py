"""The decoder engine's WFETCH: weight words from SDRAM into the ternary core's weight memory.

    engine --start, (SDRAM word, weight word, words)--> WeightFetch --req--> SdramPort.fetch (hw/sdram_port.py)
           <--done----------------------------------              <--r_data (R SDRAM words a word)
                                                       --w_wr_*--> the core's weight memory

A weight word lies in SDRAM as `spw` consecutive 16-bit words, the lowest bits first
(contract/weight_stream.py). `WeightFetch` reads them through the SDRAM port's read-only `fetch`
port, R = `fetch_ratio(config)` SDRAM words a port word (2 on the ULX3S: 32 bits a 45 MHz cycle
outrun the SDRAM's 16 bits at 50 MHz, so the SDRAM sets the rate), in requests of at most 65,536
SDRAM words (the controller's count). It assembles each weight word from spw / R port words and
writes it into weight memory the cycle its last part arrives; it pulses `done` once the last word
is written. It takes every read word as it comes (`r_data.ready` high while it runs).

The port's `mem` (the command processor's MEM_*) and `fetch` (this) must not overlap their reads
(hw/sdram_port.py): they do not, since a DECODE holds the command processor in its DECODE_WAIT
state (it reads no frame) while the engine runs, the engine fetches only while it runs, and a
WFETCH retires only once every word of its requests has arrived; a MEM_WRITE's words may still be
in the port's FIFO when a DECODE starts, but the port serves requests in order, so a WFETCH after it
reads what it wrote.
"""
from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from bitlane.contract.config import CoreConfig
from bitlane.contract.weight_stream import SDRAM_WORD_BITS, fetch_ratio, sdram_words_per_weight_word

from .sdram_port import CONTROLLER_COUNT_BITS, read_port_signature

WORDS_BITS = 16  # WFETCH's n (contract/decoder.py Instruction.n)


def weight_mem_signature(config: CoreConfig) -> wiring.Signature:
    """The SDRAM port a WeightFetch drives: SdramPort's `fetch` with `fetch_ratio(config)`."""
    shift = fetch_ratio(config).bit_length() - 1
    return read_port_signature(addr_bits=(config.sdram_words - 1).bit_length() - shift,
                               data_width=SDRAM_WORD_BITS << shift, count_bits=CONTROLLER_COUNT_BITS - shift)


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


def read_requests(m: Module, mem, busy, total_bits: int) -> tuple[Signal, Signal]:
    """Drive `mem.req` with read requests while `busy`: from port word `req_addr`, `req_left` port words in
    requests of at most the controller's count. Returns (req_addr, req_left), for the caller to load when it
    starts; each taken request advances them."""
    chunk = 1 << len(mem.req.payload.count)  # port words per request
    req_addr = Signal(len(mem.req.payload.addr))
    req_left = Signal(total_bits)  # port words not yet requested
    m.d.comb += [
        mem.req.valid.eq(busy & (req_left != 0)),
        mem.req.payload.addr.eq(req_addr),
        mem.req.payload.count.eq(Mux(req_left > chunk, chunk - 1, req_left - 1)),
        mem.req.payload.write.eq(0),
    ]
    with m.If(mem.req.valid & mem.req.ready):
        m.d.sync += [req_addr.eq(req_addr + chunk), req_left.eq(Mux(req_left > chunk, req_left - chunk, 0))]
    return req_addr, req_left


class WeightFetch(wiring.Component):
    """Copies `words` weight words from SDRAM word `sdram_addr` into weight memory from `w_addr`
    (module docstring). Ranges are the program's business (the host's compiler checks them; the
    functional model faults on them): addresses wrap at the memories' sizes."""

    def __init__(self, config: CoreConfig) -> None:
        if not config.sdram_words:
            raise ValueError(f"config {config.name!r} has no SDRAM to fetch weights from")
        self.config = config
        self.ratio = fetch_ratio(config)
        self.parts = sdram_words_per_weight_word(config) // self.ratio  # port words per weight word
        super().__init__({
            "fetch": In(fetch_signature(config)),
            "mem": Out(weight_mem_signature(config)),
            "w_wr_addr": Out(range(config.weight_depth)),
            "w_wr_data": Out(config.weight_word_bits),
            "w_wr_en": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg, parts, fetch, mem = self.config, self.parts, self.fetch, self.mem
        shift = self.ratio.bit_length() - 1
        width = len(mem.r_data.payload)
        req_addr, req_left = read_requests(m, mem, fetch.busy, (((1 << WORDS_BITS) - 1) * parts).bit_length())
        words_left = Signal(WORDS_BITS)  # weight words not yet written
        part = Signal(range(max(parts, 2)))  # port words of the current weight word already in `word`
        word = Signal(cfg.weight_word_bits)
        w_addr = Signal(range(cfg.weight_depth))

        m.d.sync += fetch.done.eq(0)
        m.d.comb += mem.r_data.ready.eq(fetch.busy)

        # each read word in at the top: after `parts` of them the first is the lowest
        assembled = Cat(word[width:], mem.r_data.payload) if parts > 1 else mem.r_data.payload
        last = (part == parts - 1) if parts > 1 else Const(1)
        m.d.comb += [self.w_wr_addr.eq(w_addr), self.w_wr_data.eq(assembled),
                     self.w_wr_en.eq(fetch.busy & mem.r_data.valid & last)]
        with m.If(fetch.busy & mem.r_data.valid):
            if parts > 1:
                m.d.sync += [word.eq(assembled), part.eq(Mux(last, 0, part + 1))]
            with m.If(last):
                m.d.sync += [w_addr.eq(w_addr + 1), words_left.eq(words_left - 1)]
                with m.If(words_left == 1):
                    m.d.sync += [fetch.busy.eq(0), fetch.done.eq(1)]

        with m.If(fetch.start & ~fetch.busy):
            m.d.sync += [req_addr.eq(fetch.sdram_addr >> shift), req_left.eq(fetch.words * parts),
                         words_left.eq(fetch.words),
                         w_addr.eq(fetch.w_addr), part.eq(0)]
            with m.If(fetch.words == 0):
                m.d.sync += fetch.done.eq(1)
            with m.Else():
                m.d.sync += fetch.busy.eq(1)
        return m
