"""The command processor: wire protocol bytes in, compute core driven, responses out.

    rx -> Unstuffer -> FrameReceiver -> [checks, execution] -> StreamRegister -> FrameSender -> Stuffer -> tx

Every frame gets exactly one response. A frame changes state (memories,
counters other than the error counters) only after every check of
docs/protocol.md has passed, in the protocol's order: the framing checks of
`FrameReceiver` (TRUNCATED, BAD_LENGTH at header time, BAD_CRC), then here
UNKNOWN_CMD, NOT_READY (DECODE), BAD_LENGTH, BAD_ARGUMENT, BAD_ADDRESS,
BAD_POSITION (DECODE). While a frame is checked, executed and answered, the
receiver holds off the rx stream.

Counters follow the functional model (sw/model_device.py): `frames_ok` /
`frames_bad` count a frame as soon as its verdict is known, so a COUNTERS
record includes the COUNTERS request itself, and RESET clears every counter,
its own count included. `cycles` in a COUNTERS record is the cycle counter when
the request was checked. A RUN answers with the cycles from its start pulse to
the core's done pulse.

Decoder mode (protocol v2), where the configuration has a decoder: the command
processor drives a hw.decoder.DecoderCore through `core` (the v1 commands, as
before) and `engine` (its host ports), and answers LOAD_PROGRAM, WRITE_BANK,
DECODE_SETUP and DECODE with the checks, order and bytes of the functional model
(sw/model_device.py), but for FAULT: the gateware does not check widths inside a
program. Payloads are written from the staging buffer by the same byte loop as
WRITE_* (`WRITE`); LOAD_PROGRAM's lengths and ops are checked by one pass over the
staged instructions (`SCAN`) before anything is written. A DECODE writes each
token's embedding row into MAIN, runs the engine and copies the final hidden state
into a response buffer (max_payload - 4 bytes, one more block RAM), token after token;
the response, whose first field is the engine's cycles for all tokens, is sent from
that buffer when the last token is done.

With SDRAM (`config.sdram_words`), the MEM_* commands use the `mem` port (hw/sdram_port.py:
requests and write words out, read words in, in order): MEM_WRITE sends one write request
and the frame's words, MEM_READ one read request whose words go straight into the response,
MEM_CRC read requests of up to 65,536 words while a CRC-32 takes one word per cycle.
Without SDRAM every MEM_* region is outside the (empty) memory: BAD_ADDRESS.
"""
from __future__ import annotations

from enum import IntEnum

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from bitlane.contract.config import CoreConfig
from bitlane.contract.decoder import REGISTERS, WRITABLE_BANKS, Bank, Instruction, MachineShape, Op
from bitlane.contract.protocol import (ADDR_BYTES, BANK_WORD_BYTES, CAPABILITIES_BYTES, COUNTERS_BYTES,
                                       ERROR_PAYLOAD_BYTES, MEM_CRC_RESPONSE_BYTES, MEM_LENGTH_RULES, MEM_WORD_BYTES,
                                       READ_OUT_REQUEST_BYTES, RESPONSE_FLAG, RESULT_BYTES, ROW_VALUE_BYTES,
                                       RUN_REQUEST_BYTES, RUN_RESPONSE_BYTES, BankWriteHeader, Capabilities, Cmd,
                                       DecodeArgs, DecodeResponse, DecodeSetup, ErrorCode, MemReadRequest, MemRegion,
                                       ProgramHeader)

from .core import core_signature
from .crc import crc32_step
from .decoder import engine_host_signature
from .framing import BodyByte, FrameReceiver, FrameSender, StreamRegister, Stuffer, Unstuffer
from .records import (BankWriteHeaderLayout, CountersLayout, DecodeArgsLayout, DecodeSetupLayout, ProgramHeaderLayout,
                      ReadOutLayout, RunArgsLayout, layout)
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


class Target(IntEnum):
    """Where the WRITE loop stores the words it assembles from the staged payload (the last three only
    with the decoder engine)."""

    WEIGHTS = 0  # WRITE_WEIGHTS: weight memory
    ACT = 1      # WRITE_ACT: activation memory
    PROGRAM = 2  # LOAD_PROGRAM: program memory
    BANK = 3     # WRITE_BANK: an int32 word of MAIN or CONST
    EMBED = 4    # DECODE: an int16 embedding value, sign-extended into MAIN


def word_bytes(config: CoreConfig) -> dict[Target, int]:
    """Bytes per word of each write target the configuration has."""
    sizes = {Target.WEIGHTS: config.weight_word_bytes, Target.ACT: config.act_word_bytes}
    if config.decoder is not None:
        sizes |= {Target.PROGRAM: Instruction.SIZE, Target.BANK: BANK_WORD_BYTES, Target.EMBED: ROW_VALUE_BYTES}
    return sizes


class CommandProcessor(wiring.Component):
    """Implements docs/protocol.md on a pair of byte streams for one CoreConfig.

    `rx`: host -> device bytes, `tx`: device -> host bytes (tx honours
    backpressure), `core`: to hw.core.TernaryCore. `o_rd_data` must hold its
    value while `o_rd_addr` holds still (a read port that is always enabled).
    With a decoder in the configuration, `engine` drives the engine's host ports
    of hw.decoder.DecoderCore (whose `core_port` is `core`'s counterpart).
    `mem` (only with `config.sdram_words`): to hw.sdram_port.SdramPort.
    """

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        members = {
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "core": Out(core_signature(config).flip()),
        }
        if config.decoder is not None:
            members["engine"] = Out(engine_host_signature(MachineShape.from_config(config)).flip())
        if config.sdram_words:
            members["mem"] = Out(mem_signature(config))
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.config
        core = self.core
        dec = cfg.decoder  # None: no decoder engine, only the v1 commands

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
        ready, pos_ok = Signal(), Signal()  # decoder mode's NOT_READY and BAD_POSITION checks
        m.d.comb += [args_ok.eq(1), addr_ok.eq(1), ready.eq(1), pos_ok.eq(1)]
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

        # ---- WRITE_* and the decoder's loads: staged payload bytes -> words -> a memory
        sizes = word_bytes(cfg)
        target = Signal(range(len(sizes)))
        word_bits = 8 * max(sizes.values())
        word = Signal(word_bits)  # bytes shift in at the top: the last word_bytes bytes are the word
        word_byte = Signal(range(max(sizes.values())))
        last_word_byte = Signal.like(word_byte)
        with m.Switch(target):
            for which, size in sizes.items():
                with m.Case(which):
                    m.d.comb += last_word_byte.eq(size - 1)
        # next staged byte to fetch (LOAD_PROGRAM's SCAN steps over whole instructions)
        ptr = Signal(range(cfg.max_payload + (1 if dec is None else Instruction.SIZE)))
        write_end = frame.length if dec is None else Signal(16)  # the staged byte after the last one to write
        fetched = Signal()  # receiver.buf_data holds staged byte ptr - 1
        store = Signal()  # word is complete: write it
        word_addr = Signal(32)
        m.d.comb += [
            core.w_wr_data.eq(word[word_bits - cfg.weight_word_bits:]),
            core.a_wr_data.eq(word[word_bits - 8 * cfg.act_word_bytes:]),
            core.w_wr_addr.eq(word_addr), core.a_wr_addr.eq(word_addr),
            receiver.buf_addr.eq(ptr),
        ]

        def start_write(which, addr, first, end=frame.length):
            """WRITE staged bytes first ..= end - 1 as words of `which` from word `addr`."""
            m.d.sync += [target.eq(which), word_addr.eq(addr), ptr.eq(first), word_byte.eq(0)]
            if dec is not None:
                m.d.sync += write_end.eq(end)
            m.next = "WRITE"

        # ---- decoder mode: what LOAD_PROGRAM and DECODE_SETUP leave for DECODE, the decoder commands'
        # checks (from registers behind the frame, as above), and the DECODE loop
        if dec is not None:
            engine, shape = self.engine, MachineShape.from_config(cfg)
            main_depth = shape.bank_depth[Bank.MAIN]
            program_args = data.View(ProgramHeaderLayout, receiver.args[:ProgramHeaderLayout.size])
            bank_args = data.View(BankWriteHeaderLayout, receiver.args[:BankWriteHeaderLayout.size])
            setup_args = data.View(DecodeSetupLayout, receiver.args[:DecodeSetupLayout.size])
            decode_args = data.View(DecodeArgsLayout, receiver.args[:DecodeArgsLayout.size])
            program_loaded = Signal()  # a LOAD_PROGRAM has succeeded
            setup_done = Signal()  # `setup` holds a DECODE_SETUP
            setup = Signal(DecodeSetupLayout)
            next_pos = Signal(range(dec.context + 1))  # where a DECODE may continue the KV cache
            # LOAD_PROGRAM: SCAN counts the staged instructions and checks their ops
            instructions, bad_op, program_end = Signal(16), Signal(), Signal(17)
            m.d.sync += program_end.eq(program_args.index + instructions)
            # WRITE_BANK: the words after the header, the end of their range
            bank_len = Signal(16)
            m.d.comb += bank_len.eq(frame.length - BankWriteHeader.SIZE)
            bank_words, bank_rest, bank_end = Signal(16), Signal(range(BANK_WORD_BYTES)), Signal(33)
            word_shift = exact_log2(BANK_WORD_BYTES)
            m.d.sync += [bank_words.eq(bank_len >> word_shift), bank_rest.eq(bank_len[:word_shift]),
                         bank_end.eq(bank_args.addr + bank_words)]
            # DECODE_SETUP: the ends of the input and the output row
            emb_end, out_end = Signal(17), Signal(17)
            m.d.sync += [emb_end.eq(setup_args.emb_addr + setup_args.hidden),
                         out_end.eq(setup_args.out_addr + setup_args.hidden)]
            # DECODE: the request's length for its count, the answer's length (once the request's is right, it
            # is the request's plus one exponent byte per token: no division), the positions it takes
            decode_values, decode_len_ok = Signal(32), Signal()
            decode_reply, decode_pos_end = Signal(17), Signal(17)
            m.d.sync += [decode_values.eq(decode_args.count * setup.hidden),
                         decode_len_ok.eq(frame.length == DecodeArgs.SIZE + decode_values * ROW_VALUE_BYTES),
                         decode_reply.eq(frame.length + decode_args.count),
                         decode_pos_end.eq(decode_args.pos + decode_args.count)]
            with m.Switch(frame.cmd):
                with m.Case(Cmd.LOAD_PROGRAM):
                    m.d.comb += [known.eq(1),
                                 length_ok.eq((frame.length > ProgramHeader.SIZE) & (ptr == frame.length)),
                                 args_ok.eq(~bad_op), addr_ok.eq(program_end <= dec.program_depth)]
                with m.Case(Cmd.WRITE_BANK):
                    m.d.comb += [known.eq(1),
                                 length_ok.eq((frame.length > BankWriteHeader.SIZE) & (bank_rest == 0)),
                                 args_ok.eq(Cat(*(bank_args.bank == b for b in WRITABLE_BANKS)).any()),
                                 addr_ok.eq(Cat(*((bank_args.bank == b) & (bank_end <= shape.bank_depth[b])
                                                  for b in WRITABLE_BANKS)).any())]
                with m.Case(Cmd.DECODE_SETUP):
                    m.d.comb += [known.eq(1), length_ok.eq(frame.length == DecodeSetup.SIZE),
                                 args_ok.eq((setup_args.hidden != 0) & (setup_args.out_exp_reg != 0)
                                            & (setup_args.out_exp_reg < REGISTERS)),
                                 addr_ok.eq((emb_end <= main_depth) & (out_end <= main_depth))]
                with m.Case(Cmd.DECODE):
                    m.d.comb += [known.eq(1), ready.eq(program_loaded & setup_done),
                                 length_ok.eq((frame.length >= DecodeArgs.SIZE) & decode_len_ok),
                                 args_ok.eq((decode_args.count != 0) & (decode_reply <= cfg.max_payload)),
                                 pos_ok.eq(((decode_args.pos == 0) | (decode_args.pos == next_pos))
                                           & (decode_pos_end <= dec.context))]
            # the DECODE loop: tokens to go, the engine's cycles so far, the hidden states in the response buffer
            tokens_left, values_left = Signal(16), Signal(16)
            decode_cycles = Signal(8 * DecodeResponse.SIZE)
            high_byte = Signal(8)
            m.submodules.states = states = Memory(shape=8, depth=cfg.max_payload - DecodeResponse.SIZE, init=[])
            states_wr, states_rd = states.write_port(), states.read_port()
            state_ptr = Signal(range(cfg.max_payload - DecodeResponse.SIZE + 1))
            m.d.comb += [
                states_wr.addr.eq(state_ptr), states_rd.addr.eq(state_ptr),
                engine.prog_wr_addr.eq(word_addr), engine.prog_wr_data.eq(word[word_bits - 8 * Instruction.SIZE:]),
                engine.host_addr.eq(word_addr),
                engine.host_wr_data.eq(Mux(target == Target.EMBED,
                                           word[word_bits - 8 * ROW_VALUE_BYTES:].as_signed(),
                                           word[word_bits - 8 * BANK_WORD_BYTES:].as_signed())),
                engine.reg_rd_addr.eq(setup.out_exp_reg),
            ]

        # ---- the response: 4 header bytes, then a record, the READ_OUT results or DECODE's hidden states
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
            if dec is not None:
                with m.Case(Cmd.DECODE.response):
                    m.d.comb += record.eq(decode_cycles)
            with m.Case(Cmd.ERROR):
                m.d.comb += record.eq(Cat(error_code, frame.cmd))
            with m.Case(Cmd.MEM_CRC.response):
                m.d.comb += record.eq(~mem_crc)
        index = Signal(16)  # header / record byte being sent
        verdict = Signal(8)  # the first failing check's ErrorCode, 0 when the frame passes

        def reject(code):
            m.d.sync += [frames_bad.eq(frames_bad + 1), error_code.eq(code), reply_cmd.eq(Cmd.ERROR),
                         reply_len.eq(ERROR_PAYLOAD_BYTES), index.eq(0)]
            m.next = "HEADER"

        # ---- RUN
        m.d.comb += core.run.eq(run)

        # ---- READ_OUT: element e is lane e % lanes of output word e // lanes
        out_word = Signal(32)
        out_lane = Signal(range(cfg.lanes))
        out_byte = Signal(range(RESULT_BYTES))
        remaining = Signal(16)  # results still to send
        # the result being sent, registered from the output memory's word (a lanes-to-1 select after the
        # block RAM's slow output, then a byte select, did not fit the ULX3S's clock in one cycle)
        result = Signal(8 * RESULT_BYTES)
        m.d.comb += core.o_rd_addr.eq(out_word)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(receiver.frame.valid):
                    with m.If(frame.error != 0):
                        reject(frame.error)
                    with m.Else():
                        m.next = "SETTLE"
            with m.State("SETTLE"):  # the check registers catch up with the frame
                m.next = "CHECK"
                if dec is not None:
                    with m.If(frame.cmd == Cmd.LOAD_PROGRAM):
                        m.d.sync += [ptr.eq(ProgramHeader.SIZE), instructions.eq(0), bad_op.eq(0)]
                        m.next = "SCAN"
            if dec is not None:
                with m.State("SCAN"):  # the op of every staged instruction, and where they end
                    more = ptr < frame.length
                    with m.If(more):
                        m.d.sync += [ptr.eq(ptr + Instruction.SIZE), instructions.eq(instructions + 1)]
                    m.d.sync += fetched.eq(more)
                    with m.If(fetched & ~Cat(*(receiver.buf_data == op for op in Op)).any()):
                        m.d.sync += bad_op.eq(1)
                    with m.If(~more & ~fetched):
                        m.next = "CHECK"
            with m.State("CHECK"):  # the verdict is registered: DECIDE's many enables come from one register
                m.d.sync += verdict.eq(0)
                for failed, code in ((~pos_ok, ErrorCode.BAD_POSITION), (~addr_ok, ErrorCode.BAD_ADDRESS),
                                     (~args_ok, ErrorCode.BAD_ARGUMENT), (~length_ok, ErrorCode.BAD_LENGTH),
                                     (~ready, ErrorCode.NOT_READY), (~known, ErrorCode.UNKNOWN_CMD)):
                    with m.If(failed):  # the last assignment wins: the first check in protocol order
                        m.d.sync += verdict.eq(code)
                m.next = "DECIDE"
            with m.State("DECIDE"):
                with m.If(verdict != 0):
                    reject(verdict)
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
                            start_write(Mux(frame.cmd == Cmd.WRITE_WEIGHTS, Target.WEIGHTS, Target.ACT),
                                        write_addr, ADDR_BYTES)
                        with m.Case(Cmd.RUN):
                            m.d.sync += reply_len.eq(RUN_RESPONSE_BYTES)
                            m.next = "RUN_START"
                        with m.Case(Cmd.READ_OUT):
                            m.d.sync += [reply_len.eq(read.count * RESULT_BYTES), remaining.eq(read.count),
                                         out_word.eq(read.addr // cfg.lanes), out_lane.eq(read.addr % cfg.lanes),
                                         out_byte.eq(0)]
                        if dec is not None:
                            with m.Case(Cmd.LOAD_PROGRAM):
                                m.d.sync += program_loaded.eq(1)
                                start_write(Target.PROGRAM, program_args.index, ProgramHeader.SIZE)
                            with m.Case(Cmd.WRITE_BANK):
                                m.d.sync += engine.host_bank.eq(bank_args.bank)
                                start_write(Target.BANK, bank_args.addr, BankWriteHeader.SIZE)
                            with m.Case(Cmd.DECODE_SETUP):
                                m.d.sync += [setup.eq(setup_args), setup_done.eq(1)]
                            with m.Case(Cmd.DECODE):
                                m.d.sync += [reply_len.eq(decode_reply), tokens_left.eq(decode_args.count),
                                             engine.pos.eq(decode_args.pos), engine.host_bank.eq(Bank.MAIN),
                                             decode_cycles.eq(0), state_ptr.eq(0)]
                                start_write(Target.EMBED, setup.emb_addr, DecodeArgs.SIZE,
                                            DecodeArgs.SIZE + setup.hidden * ROW_VALUE_BYTES)
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
                more = ptr != write_end
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
                    m.d.comb += [core.w_wr_en.eq(target == Target.WEIGHTS), core.a_wr_en.eq(target == Target.ACT)]
                    if dec is not None:
                        m.d.comb += [engine.prog_wr_en.eq(target == Target.PROGRAM),
                                     engine.host_wr_en.eq((target == Target.BANK) | (target == Target.EMBED))]
                    m.d.sync += word_addr.eq(word_addr + 1)
                with m.If(~more & ~fetched & ~store):
                    m.next = "HEADER"
                    if dec is not None:
                        with m.If(target == Target.EMBED):  # a DECODE's embedding row is in MAIN
                            m.next = "DECODE_START"
            if dec is not None:
                with m.State("DECODE_START"):
                    m.d.comb += engine.start.eq(1)
                    m.next = "DECODE_WAIT"
                with m.State("DECODE_WAIT"):
                    with m.If(engine.done):
                        m.d.sync += [decode_cycles.eq(decode_cycles + engine.cycles), word_addr.eq(setup.out_addr),
                                     values_left.eq(setup.hidden)]
                        m.next = "STATE_READ"
                with m.State("STATE_READ"):  # host_rd_data follows word_addr a cycle later
                    m.next = "STATE_LOW"
                with m.State("STATE_LOW"):  # an int16 mantissa, little-endian; the next word is read meanwhile
                    m.d.comb += [states_wr.en.eq(1), states_wr.data.eq(engine.host_rd_data[:8])]
                    m.d.sync += [high_byte.eq(engine.host_rd_data[8:16]), state_ptr.eq(state_ptr + 1),
                                 word_addr.eq(word_addr + 1)]
                    m.next = "STATE_HIGH"
                with m.State("STATE_HIGH"):
                    m.d.comb += [states_wr.en.eq(1), states_wr.data.eq(high_byte)]
                    m.d.sync += [state_ptr.eq(state_ptr + 1), values_left.eq(values_left - 1)]
                    m.next = "STATE_LOW"
                    with m.If(values_left == 1):
                        m.next = "STATE_EXPONENT"
                with m.State("STATE_EXPONENT"):  # the int8 exponent; then the next token, or the answer
                    m.d.comb += [states_wr.en.eq(1), states_wr.data.eq(engine.reg_rd_data[:8])]
                    m.d.sync += [state_ptr.eq(state_ptr + 1), tokens_left.eq(tokens_left - 1),
                                 engine.pos.eq(engine.pos + 1)]
                    with m.If(tokens_left == 1):
                        m.d.sync += next_pos.eq(engine.pos + 1)
                        m.next = "HEADER"
                    with m.Else():  # the staged rows follow each other: ptr is at the next one
                        start_write(Target.EMBED, setup.emb_addr, ptr, write_end + setup.hidden * ROW_VALUE_BYTES)
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
                    if dec is not None:  # a DECODE answer: its hidden states follow the cycles
                        with m.Elif((reply_cmd == Cmd.DECODE.response) & (index == DecodeResponse.SIZE - 1)):
                            m.d.sync += state_ptr.eq(0)
                            m.next = "STATES_LOAD"
            if dec is not None:
                with m.State("STATES_LOAD"):  # the response buffer answers a cycle after state_ptr
                    m.next = "STATES_SEND"
                with m.State("STATES_SEND"):
                    last = index == reply_len - 1
                    m.d.comb += [body.valid.eq(1), body.payload.last.eq(last), body.payload.data.eq(states_rd.data)]
                    with m.If(body.ready):
                        m.d.sync += [index.eq(index + 1), state_ptr.eq(state_ptr + 1)]
                        m.next = "STATES_LOAD"
                        with m.If(last):
                            m.next = "FINISH"
            with m.State("READ_LOAD"):  # o_rd_data follows out_word one cycle later
                m.next = "READ_LATCH"
            with m.State("READ_LATCH"):  # the lane's result into `result`
                m.d.sync += result.eq(core.o_rd_data.word_select(out_lane, 8 * RESULT_BYTES))
                m.next = "READ_SEND"
            with m.State("READ_SEND"):
                last = (remaining == 1) & (out_byte == RESULT_BYTES - 1)
                m.d.comb += [body.valid.eq(1), body.payload.last.eq(last),
                             body.payload.data.eq(result.word_select(out_byte, 8))]
                with m.If(body.ready):
                    m.d.sync += out_byte.eq(out_byte + 1)
                    with m.If(out_byte == RESULT_BYTES - 1):
                        m.d.sync += [out_byte.eq(0), remaining.eq(remaining - 1), out_lane.eq(out_lane + 1)]
                        m.next = "READ_LATCH"  # the next lane of the same word (the read port holds it)
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
