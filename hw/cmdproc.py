"""The command processor: wire protocol bytes in, compute core driven, responses out.

    rx -> Unstuffer -> FrameReceiver -> [checks, execution] -> StreamRegister -> FrameSender -> Stuffer -> tx

Every frame gets exactly one response. A frame changes state (memories,
counters other than the error counters) only after every check of
docs/protocol.md has passed, in the protocol's order: the framing checks of
`FrameReceiver` (TRUNCATED, BAD_LENGTH at header time, BAD_CRC), then here
UNKNOWN_CMD, BAD_LENGTH, BAD_ARGUMENT, BAD_ADDRESS. While a frame is checked,
executed and answered, the receiver holds off the rx stream.

Counters follow the functional model (sw/model_device.py): `frames_ok` /
`frames_bad` count a frame as soon as its verdict is known, so a COUNTERS
record includes the COUNTERS request itself, and RESET clears every counter,
its own count included. `cycles` in a COUNTERS record is the cycle counter when
the request was checked. A RUN answers with the cycles from its start pulse to
the core's done pulse.

With SDRAM (`config.sdram_words`), the MEM_* commands use the `mem` port (hw/sdram_port.py:
requests and write words out, read words in, in order): MEM_WRITE sends one write request
and the frame's words, MEM_READ one read request whose words go straight into the response,
MEM_CRC read requests of up to 65,536 words while a CRC-32 takes one word per cycle.
Without SDRAM every MEM_* region is outside the (empty) memory: BAD_ADDRESS.
"""
from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from bitlane.contract.config import CoreConfig
from bitlane.contract.protocol import (ADDR_BYTES, CAPABILITIES_BYTES, COUNTERS_BYTES, ERROR_PAYLOAD_BYTES,
                                       MEM_CRC_RESPONSE_BYTES, MEM_LENGTH_RULES, MEM_WORD_BYTES,
                                       READ_OUT_REQUEST_BYTES, RESPONSE_FLAG, RESULT_BYTES, RUN_REQUEST_BYTES,
                                       RUN_RESPONSE_BYTES, Capabilities, Cmd, ErrorCode, MemReadRequest, MemRegion)

from .core import core_signature
from .crc import crc32_step
from .framing import BodyByte, FrameReceiver, FrameSender, StreamRegister, Stuffer, Unstuffer
from .records import CountersLayout, ReadOutLayout, RunArgsLayout, layout
from .sdram_port import CONTROLLER_COUNT_BITS, mem_port_signature

MemRegionLayout = layout(MemRegion)
MemReadLayout = layout(MemReadRequest)
MEM_WORD_BITS = 8 * MEM_WORD_BYTES
assert set(MEM_LENGTH_RULES) == {Cmd.MEM_WRITE, Cmd.MEM_CRC, Cmd.MEM_READ}  # the lengths checked below


def mem_signature(config: CoreConfig):
    """The command processor's SDRAM port: one SDRAM word per port word."""
    return mem_port_signature(addr_bits=(config.sdram_words - 1).bit_length(), data_width=MEM_WORD_BITS,
                              count_bits=CONTROLLER_COUNT_BITS)


def ceil_div(value, divisor: int):
    return (value + divisor - 1) // divisor


class CommandProcessor(wiring.Component):
    """Implements docs/protocol.md on a pair of byte streams for one CoreConfig.

    `rx`: host -> device bytes, `tx`: device -> host bytes (tx honours
    backpressure), `core`: to hw.core.TernaryCore. `o_rd_data` must hold its
    value while `o_rd_addr` holds still (a read port that is always enabled).
    `mem` (only with `config.sdram_words`): to hw.sdram_port.SdramPort.
    """

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        members = {
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "core": Out(core_signature(config).flip()),
        }
        if config.sdram_words:
            members["mem"] = Out(mem_signature(config))
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.config
        core = self.core

        m.submodules.unstuffer = unstuffer = Unstuffer()
        m.submodules.receiver = receiver = FrameReceiver(cfg.max_payload)
        m.submodules.body_register = body_register = StreamRegister(BodyByte)  # response bytes come from wide muxes
        m.submodules.sender = sender = FrameSender()
        m.submodules.stuffer = stuffer = Stuffer()
        wiring.connect(m, wiring.flipped(self.rx), unstuffer.i)
        wiring.connect(m, unstuffer.o, receiver.i)
        wiring.connect(m, body_register.o, sender.i)
        wiring.connect(m, sender.o, stuffer.i)
        wiring.connect(m, stuffer.o, wiring.flipped(self.tx))

        frame = receiver.frame.payload
        body = body_register.i
        run = data.View(RunArgsLayout, receiver.args[:RunArgsLayout.size])
        read = data.View(ReadOutLayout, receiver.args[:ReadOutLayout.size])
        write_addr = receiver.args[:8 * ADDR_BYTES]

        # ---- counters
        frame_counter_bits = min(32, cfg.counter_bits)
        cycles = Signal(cfg.counter_bits)
        frames_ok = Signal(frame_counter_bits)
        frames_bad = Signal(frame_counter_bits)
        dropped = Signal(frame_counter_bits)
        clear = Signal()  # RESET
        m.d.sync += [cycles.eq(cycles + 1), dropped.eq(dropped + receiver.dropped)]
        m.d.comb += core.clear_counters.eq(clear)

        # ---- checks, from registers two stages behind the (stable) frame, to keep paths short
        data_len = Signal(16)  # payload bytes after the address of a WRITE_*
        m.d.comb += data_len.eq(frame.length - ADDR_BYTES)
        w_words, w_rest = Signal(16), Signal(range(cfg.weight_word_bytes))
        a_words, a_rest = Signal(16), Signal(range(cfg.act_word_bytes))
        row_tiles, k_steps = Signal(16), Signal(16)
        m.d.sync += [
            w_words.eq(data_len // cfg.weight_word_bytes), w_rest.eq(data_len % cfg.weight_word_bytes),
            a_words.eq(data_len // cfg.act_word_bytes), a_rest.eq(data_len % cfg.act_word_bytes),
            row_tiles.eq(ceil_div(run.rows, cfg.lanes)), k_steps.eq(ceil_div(run.cols, cfg.k_per_cycle)),
        ]
        w_write_end, a_write_end, read_end = Signal(33), Signal(33), Signal(33)
        run_w_end, run_a_end, run_o_end = Signal(33), Signal(33), Signal(33)
        m.d.sync += [
            w_write_end.eq(write_addr + w_words), a_write_end.eq(write_addr + a_words),
            read_end.eq(read.addr + read.count),
            run_w_end.eq(run.w_base + row_tiles * k_steps),
            run_a_end.eq(run.a_base + run.n_vectors * k_steps),
            run_o_end.eq(run.o_base + run.n_vectors * row_tiles),
        ]
        # MEM_* regions (SDRAM words), staged like the others
        mem_region = data.View(MemRegionLayout, receiver.args[:MemRegionLayout.size])
        mem_read = data.View(MemReadLayout, receiver.args[:MemReadLayout.size])
        mem_write_words = Signal(16)
        mem_write_end, mem_crc_end, mem_read_end = Signal(33), Signal(33), Signal(33)
        m.d.sync += [
            mem_write_words.eq(data_len // MEM_WORD_BYTES),
            mem_write_end.eq(write_addr + mem_write_words),
            mem_crc_end.eq(mem_region.addr + mem_region.count),
            mem_read_end.eq(mem_read.addr + mem_read.count),
        ]
        known, length_ok, args_ok, addr_ok = Signal(), Signal(), Signal(), Signal()
        m.d.comb += [args_ok.eq(1), addr_ok.eq(1)]
        with m.Switch(frame.cmd):
            with m.Case(Cmd.INFO, Cmd.COUNTERS, Cmd.RESET):
                m.d.comb += [known.eq(1), length_ok.eq(frame.length == 0)]
            with m.Case(Cmd.WRITE_WEIGHTS):
                m.d.comb += [known.eq(1), length_ok.eq((frame.length > ADDR_BYTES) & (w_rest == 0)),
                             addr_ok.eq(w_write_end <= cfg.weight_depth)]
            with m.Case(Cmd.WRITE_ACT):
                m.d.comb += [known.eq(1), length_ok.eq((frame.length > ADDR_BYTES) & (a_rest == 0)),
                             addr_ok.eq(a_write_end <= cfg.act_depth)]
            with m.Case(Cmd.RUN):
                m.d.comb += [known.eq(1), length_ok.eq(frame.length == RUN_REQUEST_BYTES),
                             args_ok.eq((run.rows != 0) & (run.cols != 0) & (run.n_vectors != 0)
                                        & (run.cols <= cfg.max_k)),
                             addr_ok.eq((run_w_end <= cfg.weight_depth) & (run_a_end <= cfg.act_depth)
                                        & (run_o_end <= cfg.out_depth))]
            with m.Case(Cmd.READ_OUT):
                m.d.comb += [known.eq(1), length_ok.eq(frame.length == READ_OUT_REQUEST_BYTES),
                             args_ok.eq((read.count != 0) & (read.count <= cfg.max_payload // RESULT_BYTES)),
                             addr_ok.eq(read_end <= cfg.out_depth * cfg.lanes)]
            with m.Case(Cmd.MEM_WRITE):
                m.d.comb += [known.eq(1), length_ok.eq((frame.length > ADDR_BYTES) & (data_len % MEM_WORD_BYTES == 0)),
                             addr_ok.eq(mem_write_end <= cfg.sdram_words)]
            with m.Case(Cmd.MEM_CRC):
                m.d.comb += [known.eq(1), length_ok.eq(frame.length == MemRegion.SIZE),
                             args_ok.eq(mem_region.count != 0), addr_ok.eq(mem_crc_end <= cfg.sdram_words)]
            with m.Case(Cmd.MEM_READ):
                m.d.comb += [known.eq(1), length_ok.eq(frame.length == MemReadRequest.SIZE),
                             args_ok.eq((mem_read.count != 0) & (mem_read.count <= cfg.max_payload // MEM_WORD_BYTES)),
                             addr_ok.eq(mem_read_end <= cfg.sdram_words)]

        # ---- MEM_*: the SDRAM port (its states are at the end of the FSM)
        mem = self.mem if cfg.sdram_words else None
        mem_addr = Signal(32)  # next request's first word
        mem_count = Signal(16)  # its words - 1
        mem_lo = Signal(8)  # MEM_WRITE: the word's low byte; MEM_READ: sending the high byte
        mem_words_left = Signal(32)  # MEM_READ, MEM_CRC: words still to come
        mem_requests_left = Signal(32)  # MEM_CRC: words not yet requested
        mem_crc = Signal(32, init=0xFFFFFFFF)  # MEM_CRC: the complemented CRC-32 register (hw/crc.py)
        chunk = 1 << CONTROLLER_COUNT_BITS  # most words one request moves

        # ---- the response: 4 header bytes, then a record or the READ_OUT results
        reply_cmd = Signal(8)
        reply_len = Signal(16)
        error_code = Signal(8)
        cycles_snapshot = Signal(cfg.counter_bits)
        run_cycles = Signal(8 * RUN_RESPONSE_BYTES)
        record = Signal(8 * max(COUNTERS_BYTES, CAPABILITIES_BYTES))
        counters = data.View(CountersLayout, Signal(CountersLayout))
        m.d.comb += [counters.cycles.eq(cycles_snapshot), counters.busy_cycles.eq(core.busy_cycles),
                     counters.stall_cycles.eq(core.stall_cycles), counters.frames_ok.eq(frames_ok),
                     counters.frames_bad.eq(frames_bad), counters.dropped_bytes.eq(dropped)]
        with m.Switch(reply_cmd):
            with m.Case(Cmd.INFO.response):
                m.d.comb += record.eq(int.from_bytes(Capabilities.from_config(cfg).pack(), "little"))
            with m.Case(Cmd.COUNTERS.response):
                m.d.comb += record.eq(counters.as_value())
            with m.Case(Cmd.RUN.response):
                m.d.comb += record.eq(run_cycles)
            with m.Case(Cmd.ERROR):
                m.d.comb += record.eq(Cat(error_code, frame.cmd))
            with m.Case(Cmd.MEM_CRC.response):
                m.d.comb += record.eq(~mem_crc)
        index = Signal(16)  # header / record byte being sent

        def reject(code):
            m.d.sync += [frames_bad.eq(frames_bad + 1), error_code.eq(code), reply_cmd.eq(Cmd.ERROR),
                         reply_len.eq(ERROR_PAYLOAD_BYTES), index.eq(0)]
            m.next = "HEADER"

        # ---- WRITE_*: staged payload bytes -> words -> core
        is_weights = Signal()
        word_bits = max(cfg.weight_word_bits, 8 * cfg.act_word_bytes)
        word = Signal(word_bits)  # bytes shift in at the top: the last word_bytes bytes are the word
        word_byte = Signal(range(max(cfg.weight_word_bytes, cfg.act_word_bytes)))
        last_word_byte = Mux(is_weights, cfg.weight_word_bytes - 1, cfg.act_word_bytes - 1)
        ptr = Signal(range(cfg.max_payload + 1))  # next staged byte to fetch
        fetched = Signal()  # receiver.buf_data holds staged byte ptr - 1
        store = Signal()  # word is complete: write it
        word_addr = Signal(32)
        m.d.comb += [
            core.w_wr_data.eq(word[word_bits - cfg.weight_word_bits:]),
            core.a_wr_data.eq(word[word_bits - 8 * cfg.act_word_bytes:]),
            core.w_wr_addr.eq(word_addr), core.a_wr_addr.eq(word_addr),
            receiver.buf_addr.eq(ptr),
        ]

        # ---- RUN
        m.d.comb += core.run.eq(run)

        # ---- READ_OUT: element e is lane e % lanes of output word e // lanes
        out_word = Signal(32)
        out_lane = Signal(range(cfg.lanes))
        out_byte = Signal(range(RESULT_BYTES))
        remaining = Signal(16)  # results still to send
        m.d.comb += core.o_rd_addr.eq(out_word)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(receiver.frame.valid):
                    with m.If(frame.error != 0):
                        reject(frame.error)
                    with m.Else():
                        m.next = "SETTLE"
            with m.State("SETTLE"):  # the check registers catch up with the frame
                m.next = "DECIDE"
            with m.State("DECIDE"):
                with m.If(~known):
                    reject(ErrorCode.UNKNOWN_CMD)
                with m.Elif(~length_ok):
                    reject(ErrorCode.BAD_LENGTH)
                with m.Elif(~args_ok):
                    reject(ErrorCode.BAD_ARGUMENT)
                with m.Elif(~addr_ok):
                    reject(ErrorCode.BAD_ADDRESS)
                with m.Else():
                    m.d.sync += [frames_ok.eq(frames_ok + 1), reply_cmd.eq(frame.cmd | RESPONSE_FLAG), reply_len.eq(0),
                                 index.eq(0), cycles_snapshot.eq(cycles)]
                    m.next = "HEADER"
                    with m.Switch(frame.cmd):
                        with m.Case(Cmd.INFO):
                            m.d.sync += reply_len.eq(CAPABILITIES_BYTES)
                        with m.Case(Cmd.COUNTERS):
                            m.d.sync += reply_len.eq(COUNTERS_BYTES)
                        with m.Case(Cmd.RESET):
                            m.d.comb += clear.eq(1)
                        with m.Case(Cmd.WRITE_WEIGHTS, Cmd.WRITE_ACT):
                            m.d.sync += [is_weights.eq(frame.cmd == Cmd.WRITE_WEIGHTS), word_addr.eq(write_addr),
                                         ptr.eq(ADDR_BYTES), word_byte.eq(0)]
                            m.next = "WRITE"
                        with m.Case(Cmd.RUN):
                            m.d.sync += reply_len.eq(RUN_RESPONSE_BYTES)
                            m.next = "RUN_START"
                        with m.Case(Cmd.READ_OUT):
                            m.d.sync += [reply_len.eq(read.count * RESULT_BYTES), remaining.eq(read.count),
                                         out_word.eq(read.addr // cfg.lanes), out_lane.eq(read.addr % cfg.lanes),
                                         out_byte.eq(0)]
                        if mem is not None:  # without SDRAM no MEM_* frame gets here
                            with m.Case(Cmd.MEM_WRITE):
                                m.d.sync += [mem_addr.eq(write_addr), mem_count.eq(mem_write_words - 1),
                                             ptr.eq(ADDR_BYTES)]
                                m.next = "MEM_WRITE_REQUEST"
                            with m.Case(Cmd.MEM_READ):
                                m.d.sync += [reply_len.eq(mem_read.count * MEM_WORD_BYTES),
                                             mem_addr.eq(mem_read.addr), mem_count.eq(mem_read.count - 1),
                                             mem_words_left.eq(mem_read.count), mem_lo.eq(0)]
                                m.next = "MEM_READ_REQUEST"
                            with m.Case(Cmd.MEM_CRC):
                                m.d.sync += [reply_len.eq(MEM_CRC_RESPONSE_BYTES), mem_addr.eq(mem_region.addr),
                                             mem_words_left.eq(mem_region.count),
                                             mem_requests_left.eq(mem_region.count), mem_crc.eq(0xFFFFFFFF)]
                                m.next = "MEM_CRC"
            with m.State("WRITE"):
                more = ptr != frame.length
                with m.If(more):
                    m.d.sync += ptr.eq(ptr + 1)
                m.d.sync += [fetched.eq(more), store.eq(0)]
                with m.If(fetched):
                    m.d.sync += word.eq(Cat(word[8:], receiver.buf_data))
                    with m.If(word_byte == last_word_byte):
                        m.d.sync += [word_byte.eq(0), store.eq(1)]
                    with m.Else():
                        m.d.sync += word_byte.eq(word_byte + 1)
                with m.If(store):
                    m.d.comb += [core.w_wr_en.eq(is_weights), core.a_wr_en.eq(~is_weights)]
                    m.d.sync += word_addr.eq(word_addr + 1)
                with m.If(~more & ~fetched & ~store):
                    m.next = "HEADER"
            with m.State("RUN_START"):
                m.d.comb += core.start.eq(1)
                m.d.sync += run_cycles.eq(0)
                m.next = "RUN_WAIT"
            with m.State("RUN_WAIT"):
                m.d.sync += run_cycles.eq(run_cycles + 1)
                with m.If(core.done):
                    m.next = "HEADER"
            with m.State("HEADER"):
                last = (index == 3) & (reply_len == 0)
                m.d.comb += [body.valid.eq(1), body.payload.last.eq(last),
                             body.payload.data.eq(Cat(reply_cmd, frame.seq, reply_len).word_select(index[:2], 8))]
                with m.If(body.ready):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == 3):
                        m.d.sync += index.eq(0)
                        with m.If(last):
                            m.next = "FINISH"
                        with m.Elif(reply_cmd == Cmd.READ_OUT.response):
                            m.next = "READ_LOAD"
                        if mem is not None:
                            with m.Elif(reply_cmd == Cmd.MEM_READ.response):
                                m.next = "MEM_READ_SEND"
                        with m.Else():
                            m.next = "RECORD"
            with m.State("RECORD"):
                last = index == reply_len - 1
                m.d.comb += [body.valid.eq(1), body.payload.last.eq(last),
                             body.payload.data.eq(record.word_select(index, 8))]
                with m.If(body.ready):
                    m.d.sync += index.eq(index + 1)
                    with m.If(last):
                        m.next = "FINISH"
            with m.State("READ_LOAD"):  # o_rd_data follows out_word one cycle later
                m.next = "READ_SEND"
            with m.State("READ_SEND"):
                last = (remaining == 1) & (out_byte == RESULT_BYTES - 1)
                m.d.comb += [body.valid.eq(1), body.payload.last.eq(last),
                             body.payload.data.eq(core.o_rd_data.word_select(out_lane * RESULT_BYTES + out_byte, 8))]
                with m.If(body.ready):
                    m.d.sync += out_byte.eq(out_byte + 1)
                    with m.If(out_byte == RESULT_BYTES - 1):
                        m.d.sync += [out_byte.eq(0), remaining.eq(remaining - 1), out_lane.eq(out_lane + 1)]
                        with m.If(last):
                            m.next = "FINISH"
                        with m.Elif(out_lane == cfg.lanes - 1):
                            m.d.sync += [out_lane.eq(0), out_word.eq(out_word + 1)]
                            m.next = "READ_LOAD"
            with m.State("FINISH"):
                m.d.comb += receiver.frame.ready.eq(1)
                m.next = "IDLE"

            if mem is not None:
                # MEM_WRITE: one request, then the staged bytes in pairs. receiver.buf_data is the
                # byte at `ptr` one cycle later: REQUEST/FETCH present the low byte's address,
                # LOW takes it and presents the high byte's, HIGH sends the word.
                with m.State("MEM_WRITE_REQUEST"):
                    m.d.comb += [mem.req.valid.eq(1), mem.req.payload.addr.eq(mem_addr),
                                 mem.req.payload.count.eq(mem_count), mem.req.payload.write.eq(1)]
                    with m.If(mem.req.ready):
                        m.d.sync += ptr.eq(ptr + 1)
                        m.next = "MEM_WRITE_LOW"
                with m.State("MEM_WRITE_FETCH"):
                    m.d.sync += ptr.eq(ptr + 1)
                    m.next = "MEM_WRITE_LOW"
                with m.State("MEM_WRITE_LOW"):
                    m.d.sync += mem_lo.eq(receiver.buf_data)
                    m.next = "MEM_WRITE_HIGH"
                with m.State("MEM_WRITE_HIGH"):
                    m.d.comb += [mem.w_data.valid.eq(1), mem.w_data.payload.eq(Cat(mem_lo, receiver.buf_data))]
                    with m.If(mem.w_data.ready):
                        m.d.sync += ptr.eq(ptr + 1)
                        with m.If(ptr == frame.length - 1):
                            m.next = "HEADER"
                        with m.Else():
                            m.next = "MEM_WRITE_FETCH"

                # MEM_READ: one request, then its words straight into the response, low byte first.
                with m.State("MEM_READ_REQUEST"):
                    m.d.comb += [mem.req.valid.eq(1), mem.req.payload.addr.eq(mem_addr),
                                 mem.req.payload.count.eq(mem_count), mem.req.payload.write.eq(0)]
                    with m.If(mem.req.ready):
                        m.next = "HEADER"
                with m.State("MEM_READ_SEND"):
                    high = mem_lo[0]
                    last = (mem_words_left == 1) & high
                    m.d.comb += [body.valid.eq(mem.r_data.valid), body.payload.last.eq(last),
                                 body.payload.data.eq(Mux(high, mem.r_data.payload[8:], mem.r_data.payload[:8]))]
                    with m.If(body.ready & mem.r_data.valid):
                        m.d.sync += mem_lo.eq(~high)
                        with m.If(high):
                            m.d.comb += mem.r_data.ready.eq(1)
                            m.d.sync += mem_words_left.eq(mem_words_left - 1)
                            with m.If(last):
                                m.next = "FINISH"

                # MEM_CRC: read requests of up to `chunk` words go out while the words come back
                # and go through the CRC, one per cycle; the response follows the last word.
                with m.State("MEM_CRC"):
                    whole = mem_requests_left >= chunk
                    m.d.comb += [mem.req.valid.eq(mem_requests_left != 0), mem.req.payload.addr.eq(mem_addr),
                                 mem.req.payload.count.eq(Mux(whole, chunk - 1, mem_requests_left - 1)),
                                 mem.req.payload.write.eq(0), mem.r_data.ready.eq(1)]
                    with m.If(mem.req.valid & mem.req.ready):
                        m.d.sync += [mem_addr.eq(mem_addr + chunk),
                                     mem_requests_left.eq(Mux(whole, mem_requests_left - chunk, 0))]
                    with m.If(mem.r_data.valid):
                        m.d.sync += [mem_crc.eq(crc32_step(mem_crc, mem.r_data.payload, MEM_WORD_BYTES)),
                                     mem_words_left.eq(mem_words_left - 1)]
                        with m.If(mem_words_left == 1):
                            m.next = "HEADER"

        with m.If(clear):  # after the FSM: RESET wins over this cycle's counting
            m.d.sync += [cycles.eq(0), frames_ok.eq(0), frames_bad.eq(0), dropped.eq(0)]
        return m
