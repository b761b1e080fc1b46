"""The KV cache in SDRAM (contract/kv_stream.py): KVLOAD's rows into the attention unit, KVAPPEND's row out.

    SDRAM fetch port --r_data (R words)--> KvLoad --cmd: APPEND_K|V (slot, pos j, exp)--> AttentionUnit
                                                  --i: the row's mantissas, W a beat----->
    vector unit's att_o --(tee)--> KvStore --req, w_data (16-bit words)--> SDRAM port `mem` (hw/top.py)

`KvLoad` executes a KVLOAD: it reads `rows` rows of `row_words` SDRAM words from the region's address
through the engine's read-only SDRAM port (the one hw/weight_fetch.py uses; DecoderCore shares it, the
engine runs one of them at a time), R = `fetch_ratio` SDRAM words a port word, and hands each row to the
attention unit as the APPEND command of position j with the row's exponent (word 0), then its mantissas
(words KV_MANT_WORD.. of the row, which start on a port word) in beats of W = `vector_lanes`, W / R port
words a beat; the zeros and the padding are dropped a port word a cycle. The attention unit takes a
command only when idle (`append_cycles(head_dim, W)` = head_dim / W + 2 cycles an APPEND), so a row
goes as fast as the SDRAM streams it on the ULX3S (68 words in 61 cycles of the 45 MHz core at a 50 MHz
SDRAM clock; it was one mantissa a cycle, 66, before the beats). Appending in position order rebuilds
the running maxima.

`KvStore` executes KVAPPEND's store: started with the APPEND, it requests a write of one row at the
region's address + POS * row_words, queues every beat the attention unit takes from the vector unit
(the same transfers) in a FIFO that holds all of a row's beats, and drains the row into the port a word
a cycle: the exponent, the zeros, the beats' mantissas, the padding. So the APPEND never waits for the
SDRAM; the engine waits for `busy` to fall after it, and counts that wait with the SDRAM's
(`cycles_fetch`), as contract/decoder.py says.
"""
from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from bitlane.contract.config import CoreConfig
from bitlane.contract.intmath import EXP_BITS
from bitlane.contract.kv_stream import KV_ALIGN, KV_MANT_WORD, kv_row_words
from bitlane.contract.weight_stream import SDRAM_WORD_BITS, fetch_ratio

from .attention import AttentionOp, beat_layout, command_layout
from .sdram_port import CONTROLLER_COUNT_BITS, mem_port_signature
from .weight_fetch import read_requests, weight_mem_signature

ROWS_BITS = 16  # positions (KVLOAD's rows: POS)


def kv_write_signature(config: CoreConfig) -> wiring.Signature:
    """The SDRAM write port KvStore drives: SdramPort's `mem` (one SDRAM word a port word), whose reads
    it never makes (`r_data.ready` low)."""
    return mem_port_signature(addr_bits=(config.sdram_words - 1).bit_length(), data_width=SDRAM_WORD_BITS,
                              count_bits=CONTROLLER_COUNT_BITS)


def check_kv_sdram(config: CoreConfig) -> None:
    """A configuration's KV cache in SDRAM must have rows (and so their mantissas, KV_MANT_WORD = KV_ALIGN)
    on whole port words, and its beats of vector_lanes mantissas must be whole port words."""
    ratio, beat = fetch_ratio(config), config.decoder.vector_lanes
    if KV_ALIGN % ratio or beat % ratio:
        raise ValueError(f"config {config.name!r}: the weight port's {ratio} SDRAM words a word must divide the KV "
                         f"rows' alignment of {KV_ALIGN} (contract/kv_stream.py) and the beat of vector_lanes "
                         f"{beat} mantissas")


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
        To the attention unit's `cmd` and `i` (beats, `beat_layout`) while `busy`.
    """

    def __init__(self, config: CoreConfig) -> None:
        check_kv_sdram(config)
        d = config.decoder
        self.config, self.head_dim = config, d.head_dim
        self.ratio, self.beat = fetch_ratio(config), d.vector_lanes
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
            "i": Out(stream.Signature(beat_layout(d.vector_lanes))),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        R, d, W, row_words, mem = self.ratio, self.head_dim, self.beat, self.row_words, self.mem
        shift = R.bit_length() - 1
        port_words, per_beat = row_words // R, W // R  # a row's port words; a beat's
        first_mant, end_mant = KV_MANT_WORD // R, (KV_MANT_WORD + d) // R
        req_addr, req_left = read_requests(m, mem, self.busy, (((1 << ROWS_BITS) - 1) * port_words).bit_length())
        rows_left = Signal(ROWS_BITS)  # rows not yet handed over
        pos = Signal(ROWS_BITS)        # the row being handed over
        index = Signal(range(port_words))  # the row's port word at r_data
        part = Signal(range(max(per_beat, 2)))  # its place in the beat (mantissa words)
        gathered = [Signal(R * SDRAM_WORD_BITS, name=f"gathered{k}") for k in range(per_beat - 1)]

        m.d.sync += self.done.eq(0)

        # The port word at r_data: word 0 (the exponent) goes with the row's command (taken when the
        # attention unit is idle), a mantissa word into the beat, which leaves on `i` with its last
        # word; the zeros and the padding are dropped.
        word = mem.r_data.payload
        have = self.busy & mem.r_data.valid
        is_cmd = index == 0
        is_mant = (index >= first_mant) & (index < end_mant)
        beat_end = is_mant & (part == per_beat - 1)
        elements = [w.word_select(k, SDRAM_WORD_BITS) for w in (*gathered, word) for k in range(R)]
        m.d.comb += [
            self.cmd.valid.eq(have & is_cmd),
            self.cmd.payload.op.eq(Mux(self.is_v, AttentionOp.APPEND_V, AttentionOp.APPEND_K)),
            self.cmd.payload.layer.eq(self.layer), self.cmd.payload.kv_head.eq(self.kv_head),
            self.cmd.payload.pos.eq(pos), self.cmd.payload.exp.eq(word[:EXP_BITS]),
            self.i.valid.eq(have & beat_end),
            self.i.payload.eq(Cat(elements)),
        ]
        take = have & Mux(is_cmd, self.cmd.ready, Mux(beat_end, self.i.ready, 1))
        m.d.comb += mem.r_data.ready.eq(take)
        with m.If(take):
            m.d.sync += index.eq(index + 1)
            with m.If(is_mant):
                m.d.sync += part.eq(Mux(part == per_beat - 1, 0, part + 1))
                m.d.sync += [held.eq(value) for held, value in zip(gathered, [*gathered[1:], word])]
            with m.If(index == port_words - 1):  # the row is in
                m.d.sync += [index.eq(0), pos.eq(pos + 1), rows_left.eq(rows_left - 1)]
                with m.If(rows_left == 1):
                    m.d.sync += [self.busy.eq(0), self.done.eq(1)]

        with m.If(self.start & ~self.busy):
            m.d.sync += [req_addr.eq(self.sdram_addr >> shift), req_left.eq(self.rows * port_words),
                         rows_left.eq(self.rows), pos.eq(0), index.eq(0), part.eq(0)]
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
    element_valid, element : In(1), In(beat_layout(vector_lanes))
        A beat of the row's mantissas as the attention unit takes it (a tap: nothing is driven back).
    busy : Out(1)
        From `start` until every word of the row is in the SDRAM port.
    mem : Out(kv_write_signature)
        The SDRAM port's `mem`, for writes only.
    """

    def __init__(self, config: CoreConfig) -> None:
        check_kv_sdram(config)
        self.config, self.head_dim, self.beat = config, config.decoder.head_dim, config.decoder.vector_lanes
        self.row_words = kv_row_words(self.head_dim)
        super().__init__({
            "start": In(1),
            "sdram_addr": In(32),
            "exp": In(signed(EXP_BITS)),
            "element_valid": In(1),
            "element": In(beat_layout(self.beat)),
            "busy": Out(1),
            "mem": Out(kv_write_signature(config)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        d, W, row_words, mem = self.head_dim, self.beat, self.row_words, self.mem
        beats = d // W
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=W * SDRAM_WORD_BITS, depth=beats)
        addr = Signal(len(mem.req.payload.addr))
        exp = Signal(SDRAM_WORD_BITS)
        requested = Signal()              # the write request is taken
        sent = Signal(range(row_words + 1))  # words of the row given to the port so far
        lane = Signal(range(max(W, 2)))   # the word of the queue's beat that goes next
        m.d.comb += [
            mem.req.valid.eq(self.busy & ~requested),
            mem.req.payload.addr.eq(addr),
            mem.req.payload.count.eq(row_words - 1),
            mem.req.payload.write.eq(1),
            mem.r_data.ready.eq(0),
            queue.w_en.eq(self.busy & self.element_valid), queue.w_data.eq(self.element.as_value()),
        ]
        with m.If(mem.req.valid & mem.req.ready):
            m.d.sync += requested.eq(1)
        # the port's words: the exponent, the zeros, the beats' mantissas, the padding
        body = (sent >= KV_MANT_WORD) & (sent < KV_MANT_WORD + d)
        m.d.comb += [
            mem.w_data.valid.eq(self.busy & (sent != row_words) & (~body | queue.r_rdy)),
            mem.w_data.payload.eq(Mux(body, queue.r_data.word_select(lane, SDRAM_WORD_BITS),
                                      Mux(sent == 0, exp, 0))),
        ]
        with m.If(mem.w_data.valid & mem.w_data.ready):
            m.d.sync += sent.eq(sent + 1)
            with m.If(body):
                m.d.sync += lane.eq(Mux(lane == W - 1, 0, lane + 1))
                m.d.comb += queue.r_en.eq(lane == W - 1)
        with m.If(self.start & ~self.busy):
            m.d.sync += [addr.eq(self.sdram_addr), exp.eq(self.exp), requested.eq(0), sent.eq(0),
                         lane.eq(0), self.busy.eq(1)]
        with m.If(self.busy & requested & (sent == row_words)):
            m.d.sync += self.busy.eq(0)
        return m
