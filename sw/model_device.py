"""Functional model of the bitlane device: protocol bytes in, protocol bytes out.

Same memories, addressing, checks, error codes and counters as the gateware
(docs/protocol.md), computed with numpy. It exists so the driver can be tested
and benchmarked without a simulator, and so a preset can be "run" to project
board performance.

Cycle model (what `cycles`, `busy_cycles`, `stall_cycles` and the RUN
response report). RUN cycles, busy and stall cycles follow the gateware's
structure and equal its counts (sim_tests/test_sim_transport.py checks);
`cycles` is an estimate:

* a RUN streams one (weight word, activation word) pair per cycle through the
  lanes, tiles back to back: n_vectors * row_tiles * k_steps busy cycles
  (exactly the gateware's busy_cycles);
* plus `config.run_overhead` stall cycles per run to fill and drain the
  pipeline: the memory read and register stages, the select-mux stage, one
  stage per adder-tree level (log2 k_per_cycle), and one to finish, with the
  stage counts defined in contract/config.py, which the gateware is built from;
* the command processor moves about one byte per cycle, so each received and
  each transmitted byte adds a cycle to `cycles`; the gateware's `cycles`
  also counts the cycles it waits for the host, which a model cannot know;
  a MEM_CRC adds a cycle per word (the gateware's CRC takes a word per cycle).

Decoder mode (protocol v2, a configuration with a `decoder`): the engine is
contract.decoder.DecoderMachine, whose TRUN is this device's RUN product on
its own weight memory (so weights are loaded with WRITE_WEIGHTS). A DECODE's
cycles are the engine's, contract/decoder.py `decode_cycles` (the TRUNs' RUNs
are counted by the product, as in matmul mode), which equal the gateware's
counters for the programs of sw/decoder_program.py (sim_tests/test_decoder.py
and sim_tests/test_decoder_sim.py check). With SDRAM, the engine's WFETCH copies
weight words from the SDRAM array below into the weight memory
(contract/weight_stream.py's layout); its wait is not in a DECODE's cycles (it
depends on the SDRAM's state), and its estimate goes into `cycles`.

The SDRAM (`config.sdram_words`, MEM_* commands) is a zeroed array, allocated at the first
MEM_* command that passes the checks; on the gateware and a board never-written words hold
whatever the chip (or the simulator's SDRAM model) has.
"""
from __future__ import annotations

import numpy as np

from bitlane.contract import protocol as p
from bitlane.contract.decoder import (REGISTERS, WRITABLE_BANKS, Bank, DecoderMachine, Instruction, MachineShape, Op,
                                      ProgramError, decode_cycles)
from bitlane.contract.intmath import EXP_BITS, MANT_BITS, WidthError
from bitlane.contract.kv_stream import kv_load_cycles_estimate
from bitlane.contract.packing import tiles, words_to_trits
from bitlane.contract.protocol import BadFrame, Cmd, ErrorCode, Frame
from bitlane.contract.weight_stream import fetch_cycles_estimate, sdram_words_per_weight_word, weight_bytes

def _fits(values: np.ndarray, bits: int) -> bool:
    return bool(((-(1 << (bits - 1)) <= values) & (values < 1 << (bits - 1))).all())


class _Fault(Exception):
    """The engine stopped inside a DECODE: answered FAULT."""


class ModelDevice:
    """One device instance; `process(rx_bytes) -> tx_bytes`."""

    def __init__(self, config) -> None:
        self.config = config
        self.caps = p.Capabilities.from_config(config)
        lanes, kpc = config.lanes, config.k_per_cycle
        # Weights are kept decoded (one int8 trit per lane and column) so a RUN needs no unpacking.
        self.weights = np.zeros((config.weight_depth, lanes * kpc), dtype=np.int8)
        self.acts = np.zeros((config.act_depth, kpc), dtype=np.int8)
        self.out = np.zeros((config.out_depth, lanes), dtype=np.int32)
        # RUN operand cache: (w_base, row_tiles, k_steps) -> the stored matrix as float32, dropped
        # when a write touches its words. float32 is exact here: every partial sum is an integer
        # of magnitude <= cols * 128 <= 65535 * 128 < 2**24.
        self._matrices: dict[tuple[int, int, int], np.ndarray] = {}
        self._sdram: np.ndarray | None = None  # 16-bit SDRAM words, see `sdram`
        self.decoder = p.FrameDecoder(config.max_payload)
        self._counter_mask = (1 << config.counter_bits) - 1
        self._clear_counters()
        # decoder mode: the engine, its program memory, DECODE_SETUP, the next position DECODE may take
        self.engine = None if config.decoder is None else DecoderMachine(
            MachineShape.from_config(config), self._ternary, self._wfetch if config.sdram_words else None,
            (lambda: self.sdram) if config.sdram_words else None)
        self.program: list[Instruction] = [Instruction(Op.HALT)] * (0 if self.engine is None
                                                                    else config.decoder.program_depth)
        self.program_loaded = False
        self.setup: p.DecodeSetup | None = None
        self.next_pos = 0
        self._trun_cycles = 0

    def _clear_counters(self) -> None:
        self.cycles = self.busy_cycles = self.stall_cycles = 0
        self.frames_ok = self.frames_bad = 0
        self.decoder.dropped_bytes = 0

    @property
    def sdram(self) -> np.ndarray:
        """The SDRAM's words (allocated on first use: calloc'd, so untouched pages cost nothing)."""
        if self._sdram is None:
            self._sdram = np.zeros(self.config.sdram_words, dtype="<u2")
        return self._sdram

    def counters(self) -> p.Counters:
        m, m32 = self._counter_mask, 0xFFFFFFFF
        return p.Counters(self.cycles & m, self.busy_cycles & m, self.stall_cycles & m,
                          self.frames_ok & m & m32, self.frames_bad & m & m32,
                          self.decoder.dropped_bytes & m & m32)

    def process(self, data: bytes) -> bytes:
        """Receive bytes; return every response they complete, in order."""
        self.cycles += len(data)
        responses = []
        # Piece by piece, each starting at a SYNC: within a piece every dropped byte comes after
        # the piece's events (before them a frame is open), so those bytes are counted after the
        # events are answered, as in the gateware, and a RESET among them does not erase them.
        data = bytes(data)
        begin = 0
        while begin < len(data):
            end = data.find(p.SYNC, begin + 1)
            end = len(data) if end < 0 else end
            before = self.decoder.dropped_bytes
            events = self.decoder.feed(data[begin:end])
            late, self.decoder.dropped_bytes = self.decoder.dropped_bytes - before, before
            for event in events:
                response = self._answer(event)
                self.cycles += len(response)
                responses.append(response)
            self.decoder.dropped_bytes += late
            begin = end
        return b"".join(responses)

    def _answer(self, event: p.Event) -> bytes:
        if isinstance(event, BadFrame):
            self.frames_bad += 1
            return event.error_frame()
        error = self._check(event)
        if error is None:
            self.frames_ok += 1  # before executing: a RESET clears it with the other counters
            try:
                payload = self._execute(Cmd(event.cmd), event.payload)
                return p.encode_frame(Cmd(event.cmd).response, event.seq, payload)
            except _Fault:  # a DECODE whose program stopped: a bad frame after all
                self.frames_ok -= 1
                error = ErrorCode.FAULT
        self.frames_bad += 1
        return p.encode_error(error, event.cmd, event.seq)

    def _check(self, frame: Frame) -> ErrorCode | None:
        """The checks after the CRC, in protocol order; None if the frame may run."""
        cfg = self.config
        if frame.cmd not in p.REQUESTS or (frame.cmd in p.DECODER_REQUESTS and self.engine is None):
            return ErrorCode.UNKNOWN_CMD
        cmd, payload = Cmd(frame.cmd), frame.payload
        if cmd == Cmd.DECODE and not (self.program_loaded and self.setup is not None):
            return ErrorCode.NOT_READY
        if not p.request_length_ok(cmd, len(payload), self.caps):
            return ErrorCode.BAD_LENGTH
        if cmd in p.DECODER_REQUESTS:
            return self._check_decoder(cmd, payload)
        if cmd in (Cmd.WRITE_WEIGHTS, Cmd.WRITE_ACT):
            addr, data = p.unpack_addr(payload)
            word = cfg.weight_word_bytes if cmd == Cmd.WRITE_WEIGHTS else cfg.act_word_bytes
            depth = cfg.weight_depth if cmd == Cmd.WRITE_WEIGHTS else cfg.act_depth
            if addr + len(data) // word > depth:
                return ErrorCode.BAD_ADDRESS
        elif cmd == Cmd.READ_OUT:
            addr, count = p.unpack_read_out_request(payload)
            if not 1 <= count <= self.caps.max_read_count:
                return ErrorCode.BAD_ARGUMENT
            if addr + count > cfg.out_depth * cfg.lanes:
                return ErrorCode.BAD_ADDRESS
        elif cmd == Cmd.RUN:
            a = p.RunArgs.unpack(payload)
            if a.rows == 0 or a.cols == 0 or a.n_vectors == 0 or a.cols > cfg.max_k:
                return ErrorCode.BAD_ARGUMENT
            rt, ks = tiles(a.rows, a.cols, cfg.lanes, cfg.k_per_cycle)
            if (a.w_base + rt * ks > cfg.weight_depth or a.a_base + a.n_vectors * ks > cfg.act_depth
                    or a.o_base + a.n_vectors * rt > cfg.out_depth):
                return ErrorCode.BAD_ADDRESS
        elif cmd == Cmd.MEM_WRITE:
            addr, data = p.unpack_addr(payload)
            if addr + len(data) // p.MEM_WORD_BYTES > cfg.sdram_words:
                return ErrorCode.BAD_ADDRESS
        elif cmd == Cmd.MEM_CRC:
            region = p.MemRegion.unpack(payload)
            if region.count == 0:
                return ErrorCode.BAD_ARGUMENT
            if region.addr + region.count > cfg.sdram_words:
                return ErrorCode.BAD_ADDRESS
        elif cmd == Cmd.MEM_READ:
            request = p.MemReadRequest.unpack(payload)
            if not 1 <= request.count <= self.caps.max_mem_read_count:
                return ErrorCode.BAD_ARGUMENT
            if request.addr + request.count > cfg.sdram_words:
                return ErrorCode.BAD_ADDRESS
        return None

    def _check_decoder(self, cmd: Cmd, payload: bytes) -> ErrorCode | None:
        """The decoder commands' checks past their basic length, in protocol order."""
        shape = self.engine.shape
        if cmd == Cmd.LOAD_PROGRAM:
            index, program = self._unpack_program(payload)
            if any(ins.op not in Op._value2member_map_ for ins in program):
                return ErrorCode.BAD_ARGUMENT
            if index + len(program) > shape.program_depth:
                return ErrorCode.BAD_ADDRESS
        elif cmd == Cmd.WRITE_BANK:
            header = p.BankWriteHeader.unpack(payload[:p.BankWriteHeader.SIZE])
            if header.bank not in WRITABLE_BANKS:
                return ErrorCode.BAD_ARGUMENT
            words = (len(payload) - p.BankWriteHeader.SIZE) // p.BANK_WORD_BYTES
            if header.addr + words > shape.bank_depth[header.bank]:
                return ErrorCode.BAD_ADDRESS
        elif cmd == Cmd.DECODE_SETUP:
            s = p.DecodeSetup.unpack(payload)
            if s.hidden == 0 or not 0 < s.out_exp_reg < REGISTERS:
                return ErrorCode.BAD_ARGUMENT
            if max(s.emb_addr, s.out_addr) + s.hidden > shape.bank_depth[Bank.MAIN]:
                return ErrorCode.BAD_ADDRESS
        else:
            a = p.DecodeArgs.unpack(payload[:p.DecodeArgs.SIZE])
            if len(payload) != p.decode_request_bytes(a.count, self.setup.hidden):
                return ErrorCode.BAD_LENGTH
            if not 1 <= a.count <= self.caps.max_decode_count(self.setup.hidden):
                return ErrorCode.BAD_ARGUMENT
            if a.pos not in (0, self.next_pos) or a.pos + a.count > shape.context:
                return ErrorCode.BAD_POSITION
        return None

    @staticmethod
    def _unpack_program(payload: bytes) -> tuple[int, list[Instruction]]:
        index = p.ProgramHeader.unpack(payload[:p.ProgramHeader.SIZE]).index
        body, size = payload[p.ProgramHeader.SIZE:], Instruction.SIZE
        return index, [Instruction.unpack(body[i:i + size]) for i in range(0, len(body), size)]

    def _execute_decoder(self, cmd: Cmd, payload: bytes) -> bytes:
        engine = self.engine
        if cmd == Cmd.LOAD_PROGRAM:
            index, program = self._unpack_program(payload)
            self.program[index:index + len(program)] = program
            engine.load(self.program)
            self.program_loaded = True
        elif cmd == Cmd.WRITE_BANK:
            header = p.BankWriteHeader.unpack(payload[:p.BankWriteHeader.SIZE])
            engine.write(Bank(header.bank), header.addr,
                         np.frombuffer(payload, dtype="<i4", offset=p.BankWriteHeader.SIZE))
        elif cmd == Cmd.DECODE_SETUP:
            self.setup = p.DecodeSetup.unpack(payload)
        else:
            return self._decode(p.DecodeArgs.unpack(payload[:p.DecodeArgs.SIZE]), payload[p.DecodeArgs.SIZE:])
        return b""

    def _decode(self, a: p.DecodeArgs, data: bytes) -> bytes:
        """Run the program once per token, in order; a fault leaves the cache to be restarted at 0."""
        s, engine = self.setup, self.engine
        rows = np.frombuffer(data, dtype="<i2").reshape(a.count, s.hidden)
        y = np.zeros((a.count, s.hidden), dtype=np.int64)
        e = np.zeros(a.count, dtype=np.int64)
        self._trun_cycles = 0  # counted into `cycles` by each TRUN's product
        other = 0
        try:
            for i, row in enumerate(rows):
                engine.write(Bank.MAIN, s.emb_addr, row)
                kvloads = engine.executed.get(Op.KVLOAD, 0)
                engine.run(a.pos + i)
                y[i], e[i] = engine.read(Bank.MAIN, s.out_addr, s.hidden), engine.regs[s.out_exp_reg]
                cycles = decode_cycles(self.program, a.pos + i, engine.shape, self.config.run_overhead)
                other += cycles.total - cycles.runs
                # KVLOADs wait for the SDRAM beyond the DECODE's cycles: their estimate, as WFETCH's
                kvloads = engine.executed.get(Op.KVLOAD, 0) - kvloads
                if kvloads:
                    self.cycles += kvloads * kv_load_cycles_estimate(a.pos + i, engine.shape.head_dim, self.config)
        except (WidthError, ProgramError):
            self.next_pos = 0
            raise _Fault from None
        if not (_fits(y, MANT_BITS) and _fits(e, EXP_BITS)):  # what the response carries: int16, int8
            self.next_pos = 0
            raise _Fault
        self.next_pos = a.pos + a.count
        self.cycles += other
        return p.pack_decode_response(self._trun_cycles + other, y, e)

    def _ternary(self, w_base: int, rows: int, cols: int, q: np.ndarray) -> np.ndarray:
        """TRUN: the core's product of weights at w_base [rows, cols] and one int8 vector."""
        cfg = self.config
        rt, ks = tiles(rows, cols, cfg.lanes, cfg.k_per_cycle)
        if cols > cfg.max_k or w_base + rt * ks > cfg.weight_depth:
            raise ProgramError(f"TRUN of {rows} x {cols} weights at word {w_base}: outside the core "
                               f"(max_k {cfg.max_k}, weight_depth {cfg.weight_depth})")
        x = np.zeros((1, ks * cfg.k_per_cycle), dtype=np.int8)
        x[0, :cols] = q
        acc, cycles = self._product(w_base, rt, ks, x)
        self._trun_cycles += cycles
        return acc[0, :rows]

    def _store_weights(self, addr: int, data: bytes) -> None:
        """Packed weight words into weight memory from word `addr` (WRITE_WEIGHTS, WFETCH)."""
        cfg = self.config
        trits = words_to_trits(data, cfg.lanes * cfg.k_per_cycle)
        self.weights[addr:addr + len(trits)] = trits
        end = addr + len(trits)
        for key in [k for k in self._matrices if k[0] < end and addr < k[0] + k[1] * k[2]]:
            del self._matrices[key]

    def _wfetch(self, sdram_addr: int, w_addr: int, words: int) -> None:
        """WFETCH: `words` weight words from SDRAM word `sdram_addr` (contract/weight_stream.py's layout)
        into weight memory from word `w_addr`. The engine does not count the wait in a DECODE's cycles;
        the estimate goes into the COUNTERS record's `cycles` (itself an estimate here)."""
        cfg = self.config
        try:
            spw = sdram_words_per_weight_word(cfg)
        except ValueError as e:
            raise ProgramError(f"WFETCH: {e}") from None
        if sdram_addr % spw or sdram_addr + words * spw > cfg.sdram_words:
            raise ProgramError(f"WFETCH of {words} weight words from SDRAM word {sdram_addr}: outside the SDRAM's "
                               f"{cfg.sdram_words} words or not a multiple of {spw}")
        if w_addr + words > cfg.weight_depth:
            raise ProgramError(f"WFETCH of {words} weight words to word {w_addr}: outside the weight memory's "
                               f"{cfg.weight_depth} words")
        self._store_weights(w_addr, weight_bytes(self.sdram, sdram_addr, words, cfg))
        self.cycles += fetch_cycles_estimate(words, cfg)

    def _execute(self, cmd: Cmd, payload: bytes) -> bytes:
        cfg = self.config
        if cmd in p.DECODER_REQUESTS:
            return self._execute_decoder(cmd, payload)
        if cmd == Cmd.INFO:
            return self.caps.pack()
        if cmd == Cmd.COUNTERS:
            return self.counters().pack()
        if cmd == Cmd.RESET:
            self._clear_counters()
            return b""
        if cmd == Cmd.WRITE_WEIGHTS:
            self._store_weights(*p.unpack_addr(payload))
            return b""
        if cmd == Cmd.WRITE_ACT:
            addr, data = p.unpack_addr(payload)
            words = np.frombuffer(data, dtype=np.int8).reshape(-1, cfg.k_per_cycle)
            self.acts[addr:addr + len(words)] = words
            return b""
        if cmd == Cmd.READ_OUT:
            addr, count = p.unpack_read_out_request(payload)
            return self.out.reshape(-1)[addr:addr + count].astype("<i4").tobytes()
        if cmd == Cmd.MEM_WRITE:
            addr, data = p.unpack_addr(payload)
            self.sdram[addr:addr + len(data) // p.MEM_WORD_BYTES] = np.frombuffer(data, dtype="<u2")
            return b""
        if cmd == Cmd.MEM_READ:
            request = p.MemReadRequest.unpack(payload)
            return self.sdram[request.addr:request.addr + request.count].tobytes()
        if cmd == Cmd.MEM_CRC:
            region = p.MemRegion.unpack(payload)
            self.cycles += region.count
            return p.MemCrc(p.crc32(self.sdram[region.addr:region.addr + region.count])).pack()
        assert cmd == Cmd.RUN
        return p.pack_run_response(self._run(p.RunArgs.unpack(payload)))

    def _run(self, a: p.RunArgs) -> int:
        cfg = self.config
        rt, ks = tiles(a.rows, a.cols, cfg.lanes, cfg.k_per_cycle)
        x = self.acts[a.a_base:a.a_base + a.n_vectors * ks].reshape(a.n_vectors, ks * cfg.k_per_cycle)
        acc, cycles = self._product(a.w_base, rt, ks, x)
        self.out[a.o_base:a.o_base + a.n_vectors * rt] = acc.reshape(a.n_vectors * rt, cfg.lanes)
        return cycles

    def _product(self, w_base: int, rt: int, ks: int, x: np.ndarray) -> tuple[np.ndarray, int]:
        """The core's product of the rt x ks weight words at w_base and int8 vectors x [n, ks * k_per_cycle]:
        int32 [n, rt * lanes], and the cycles it takes (counted as RUN cycles)."""
        cfg = self.config
        lanes, kpc = cfg.lanes, cfg.k_per_cycle
        w = self._matrices.get((w_base, rt, ks))
        if w is None:
            # [rt, ks, lanes, kpc] -> [rt * lanes, ks * kpc]: the padded R x C matrix as stored
            w = (self.weights[w_base:w_base + rt * ks]
                 .reshape(rt, ks, lanes, kpc).transpose(0, 2, 1, 3).reshape(rt * lanes, ks * kpc)
                 .astype(np.float32))
            self._matrices[(w_base, rt, ks)] = w
        # The lanes see whole words, as in the gateware: padding rows and columns take part with
        # whatever the words hold, so results past R are 0 because the host pads with zero trits.
        acc = (w @ x.T.astype(np.float32)).T.astype(np.int32)
        busy = len(x) * rt * ks
        stall = cfg.run_overhead
        self.busy_cycles += busy
        self.stall_cycles += stall
        self.cycles += busy + stall
        return acc, busy + stall
