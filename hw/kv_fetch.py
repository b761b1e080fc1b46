"""The KV cache in SDRAM (contract/kv_stream.py): KVLOAD's rows into the attention unit, KVAPPEND's row out.

    SDRAM fetch port --r_data (R words)--> KvLoad --cmd: APPEND_K|V (slot, pos j, exp)--> AttentionUnit
                                                  --i: the row's head_dim mantissas------>
    vector unit's att_o --(tee)--> KvStore --req, w_data (16-bit words)--> SDRAM port `mem` (hw/top.py)

`KvLoad` executes a KVLOAD: it reads `rows` rows of `row_words` SDRAM words from the region's address
through the engine's read-only SDRAM port (the one hw/weight_fetch.py uses; DecoderCore shares it, the
engine runs one of them at a time), R = `fetch_ratio` SDRAM words a port word, and hands each row to the
attention unit as the APPEND command of position j with the row's exponent (word 0), then its mantissas
(words 1..head_dim) one a cycle; the padding words are dropped (a row ends on a port word: R divides
`KV_ALIGN`). The attention unit takes a command only when idle (head_dim + 2 cycles an APPEND), so
a row takes `append_cycles(head_dim)` cycles when the SDRAM keeps up: the unit's append path, not
the SDRAM, sets the pace on the ULX3S. Appending in position order rebuilds the running maxima.

`KvStore` executes KVAPPEND's store: started with the APPEND, it requests a write of one row at the
region's address + POS * row_words, queues the exponent, every mantissa the attention unit takes from
the vector unit (the same transfers), and the padding, in a FIFO that holds a whole row, and drains it
into the port. So the APPEND never waits for the SDRAM; the engine waits for `busy` to fall after it,
and counts that wait with the SDRAM's (`cycles_fetch`), as contract/decoder.py says.
"""
from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from bitlane.contract.config import CoreConfig
from bitlane.contract.intmath import EXP_BITS, MANT_BITS
from bitlane.contract.kv_stream import KV_ALIGN, kv_row_words
from bitlane.contract.weight_stream import SDRAM_WORD_BITS, fetch_ratio

from .attention import AttentionOp, command_layout
from .sdram_port import CONTROLLER_COUNT_BITS, mem_port_signature
from .weight_fetch import read_requests, weight_mem_signature

ROWS_BITS = 16  # positions (KVLOAD's rows: POS)


def kv_write_signature(config: CoreConfig) -> wiring.Signature:
    """The SDRAM write port KvStore drives: SdramPort's `mem` (one SDRAM word a port word), whose reads
    it never makes (`r_data.ready` low)."""
    return mem_port_signature(addr_bits=(config.sdram_words - 1).bit_length(), data_width=SDRAM_WORD_BITS,
                              count_bits=CONTROLLER_COUNT_BITS)


def check_kv_sdram(config: CoreConfig) -> None:
    """A configuration's KV cache in SDRAM must have rows on whole port words."""
    ratio = fetch_ratio(config)
    if KV_ALIGN % ratio:
        raise ValueError(f"config {config.name!r}: the weight port's {ratio} SDRAM words a word do not divide "
                         f"the KV rows' alignment of {KV_ALIGN} (contract/kv_stream.py)")


class KvLoad(wiring.Component):
    """Loads rows 0..rows-1 of a KV region from SDRAM into the attention unit (module docstring).

    Members
    -------
    start : In(1)
        A pulse while not `busy`, with `sdram_addr` (the region's first SDRAM word, a multiple of
        KV_ALIGN), `rows`, `is_v`, `layer`, `kv_head` (the cache slot).
    done : Out(1)
        A pulse once the last row's last mantissa is in the attention unit (at once for 0 rows).
    mem : Out(read port)
        The engine's SDRAM read port (`weight_mem_signature`).
    cmd, i : Out(stream)
        To the attention unit's `cmd` and `i` while `busy`.
    """

    def __init__(self, config: CoreConfig) -> None:
        check_kv_sdram(config)
        d = config.decoder
        self.config, self.head_dim = config, d.head_dim
        self.ratio = fetch_ratio(config)
        self.row_words = kv_row_words(d.head_dim)
        super().__init__({
            "start": In(1),
            "sdram_addr": In(32),
            "rows": In(ROWS_BITS),
            "is_v": In(1),
            "layer": In(range(max(d.layers, 2))),
            "kv_head": In(range(max(d.kv_heads, 2))),
            "busy": Out(1),
            "done": Out(1),
            "mem": Out(weight_mem_signature(config)),
            "cmd": Out(stream.Signature(command_layout(d.layers, d.kv_heads))),
            "i": Out(stream.Signature(signed(MANT_BITS))),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        R, d, row_words, mem = self.ratio, self.head_dim, self.row_words, self.mem
        shift = R.bit_length() - 1
        req_addr, req_left = read_requests(m, mem, self.busy, (((1 << ROWS_BITS) - 1) * row_words // R).bit_length())
        rows_left = Signal(ROWS_BITS)  # rows not yet handed over
        pos = Signal(ROWS_BITS)        # the row being handed over
        word = Signal(R * SDRAM_WORD_BITS)  # the port word being taken apart, its next SDRAM word lowest
        have = Signal(range(R + 1))    # SDRAM words of `word` not yet taken
        index = Signal(range(row_words + R))  # the row's word at the bottom of `word`

        m.d.sync += self.done.eq(0)

        # The bottom word: the exponent goes with the row's command (taken when the attention unit is
        # idle), a mantissa into `i`, padding at once with the rest of its port word (all padding).
        element = word[:SDRAM_WORD_BITS]
        ready = self.busy & (have != 0)
        m.d.comb += [
            self.cmd.valid.eq(ready & (index == 0)),
            self.cmd.payload.op.eq(Mux(self.is_v, AttentionOp.APPEND_V, AttentionOp.APPEND_K)),
            self.cmd.payload.layer.eq(self.layer), self.cmd.payload.kv_head.eq(self.kv_head),
            self.cmd.payload.pos.eq(pos), self.cmd.payload.exp.eq(element[:EXP_BITS]),
            self.i.valid.eq(ready & (index >= 1) & (index <= d)),
            self.i.payload.eq(element),
        ]
        step = (self.cmd.valid & self.cmd.ready) | (self.i.valid & self.i.ready & (index != d))
        drop = (self.i.valid & self.i.ready & (index == d)) | (ready & (index > d))  # the rest of the word
        m.d.comb += mem.r_data.ready.eq(self.busy & ((have == 0) | ((have == 1) & step) | drop))
        with m.If(step):
            m.d.sync += [index.eq(index + 1), word.eq(word >> SDRAM_WORD_BITS), have.eq(have - 1)]
        with m.If(drop):
            m.d.sync += [index.eq(index + have), have.eq(0)]
            with m.If(index + have == row_words):  # the row is in
                m.d.sync += [index.eq(0), pos.eq(pos + 1), rows_left.eq(rows_left - 1)]
                with m.If(rows_left == 1):
                    m.d.sync += [self.busy.eq(0), self.done.eq(1)]
        with m.If(mem.r_data.valid & mem.r_data.ready):
            m.d.sync += [word.eq(mem.r_data.payload), have.eq(R)]

        with m.If(self.start & ~self.busy):
            m.d.sync += [req_addr.eq(self.sdram_addr >> shift), req_left.eq(self.rows * (row_words // R)),
                         rows_left.eq(self.rows), pos.eq(0), have.eq(0), index.eq(0)]
            with m.If(self.rows == 0):
                m.d.sync += self.done.eq(1)
            with m.Else():
                m.d.sync += self.busy.eq(1)
        return m


class KvStore(wiring.Component):
    """Writes one row of the KV cache to SDRAM (module docstring).

    Members
    -------
    start : In(1)
        A pulse while not `busy`, with `sdram_addr` (the row's first SDRAM word) and `exp`.
    element : In(stream.Signature(signed(16)))
        The row's mantissas as the attention unit takes them (a tap: `ready` is not driven here).
    busy : Out(1)
        From `start` until every word of the row is in the SDRAM port.
    mem : Out(kv_write_signature)
        The SDRAM port's `mem`, for writes only.
    """

    def __init__(self, config: CoreConfig) -> None:
        check_kv_sdram(config)
        self.config, self.head_dim = config, config.decoder.head_dim
        self.row_words = kv_row_words(self.head_dim)
        super().__init__({
            "start": In(1),
            "sdram_addr": In(32),
            "exp": In(signed(EXP_BITS)),
            "element_valid": In(1),
            "element": In(signed(MANT_BITS)),
            "busy": Out(1),
            "mem": Out(kv_write_signature(config)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        d, row_words, mem = self.head_dim, self.row_words, self.mem
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=SDRAM_WORD_BITS, depth=row_words)
        addr = Signal(len(mem.req.payload.addr))
        requested = Signal()                   # the write request is taken
        queued = Signal(range(row_words + 1))  # words of the row queued so far
        wiring.connect(m, queue.r_stream, wiring.flipped(mem.w_data))
        m.d.comb += [
            mem.req.valid.eq(self.busy & ~requested),
            mem.req.payload.addr.eq(addr),
            mem.req.payload.count.eq(row_words - 1),
            mem.req.payload.write.eq(1),
            mem.r_data.ready.eq(0),
        ]
        with m.If(mem.req.valid & mem.req.ready):
            m.d.sync += requested.eq(1)
        # the exponent with `start`, then the mantissas as they pass, then the padding, one a cycle
        padding = self.busy & (queued > d) & (queued != row_words)
        with m.If(self.start & ~self.busy):
            m.d.comb += [queue.w_en.eq(1), queue.w_data.eq(self.exp)]  # sign-extended
            m.d.sync += [addr.eq(self.sdram_addr), requested.eq(0), queued.eq(1), self.busy.eq(1)]
        with m.Elif(self.busy & self.element_valid & (queued != 0) & (queued <= d)):
            m.d.comb += [queue.w_en.eq(1), queue.w_data.eq(self.element)]
            m.d.sync += queued.eq(queued + 1)
        with m.Elif(padding):
            m.d.comb += [queue.w_en.eq(1), queue.w_data.eq(0)]
            m.d.sync += queued.eq(queued + 1)
        with m.If(self.busy & requested & (queued == row_words) & ~queue.r_rdy):
            m.d.sync += self.busy.eq(0)
        return m
