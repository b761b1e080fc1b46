"""Property 4: a frame that fails any check changes nothing but the error counters."""
from __future__ import annotations

from amaranth import Array, Const, Module, Mux, Signal
from amaranth.asserts import AnyConst, AnySeq
from amaranth.hdl import Assert, Assume
from amaranth.lib import wiring

from bitlane.contract.protocol import (ADDR_BYTES, MEM_CRC_REQUEST_BYTES, MEM_READ_REQUEST_BYTES, MEM_WORD_BYTES,
                                       READ_OUT_REQUEST_BYTES, RESULT_BYTES, RUN_REQUEST_BYTES, Cmd)

from .common import Harness, config


def le(byte_values, start: int, count: int):
    """Little-endian integer of bytes start .. start+count-1 (a Cat of 8-bit values)."""
    from amaranth import Cat
    return Cat(*byte_values[start:start + count])


class RejectedFrameWritesNothing(Harness):
    """P4: feed the command processor (from reset) one frame with free CMD, SEQ, LEN (any
    16-bit value), the first `cap` payload bytes free and free CRC bytes, stuffed on the wire by
    the (proven, P3) Stuffer, with the core's answers free. An independent restatement of the
    checks of docs/protocol.md after the CRC decides whether the frame is acceptable (LEN <=
    max_payload, known CMD, LEN for the CMD, arguments, addresses, in wide arithmetic). Then a
    weight write, an activation write, a RUN start or a counter clear happens only for an
    acceptable frame of exactly that command, whatever its CRC, and writes land only inside the
    frame's address range. With SDRAM (`sdram_words` among the fields), likewise on the memory
    port: a request, write word or read-word pop only for an acceptable MEM_* frame, requests
    inside its region (the port's answers free)."""

    def __init__(self, cap: int = 18, cmds: tuple | None = None, plain: bool = False, **fields) -> None:
        self.cfg = config("cmdproc", lanes=4, k_per_cycle=2, **fields)
        self.cap, self.cmds = cap, cmds
        self.plain = plain  # no byte of the frame needs escaping (keeps long frames shallow)

    def build(self, m: Module) -> None:
        from bitlane.hw.cmdproc import CommandProcessor
        from bitlane.hw.framing import Stuffer

        cfg, cap = self.cfg, self.cap
        m.submodules.dut = dut = CommandProcessor(cfg)
        m.submodules.stuffer = stuffer = Stuffer()
        wiring.connect(m, stuffer.o, dut.rx)
        m.d.comb += dut.tx.ready.eq(AnySeq(1))
        ports = [dut.core] + ([dut.mem] if cfg.sdram_words else [])
        for port in ports:
            for path, member, value in port.signature.flatten(port):
                if member.flow == wiring.In:  # the core's (memory port's) outputs, as the command processor sees them
                    m.d.comb += value.eq(AnySeq(len(value)))

        cmd, seq, length, crc = AnyConst(8), AnyConst(8), AnyConst(16), AnyConst(16)
        if self.cmds is not None:
            m.d.comb += Assume(sum((cmd == c for c in self.cmds), Const(0, 1)) != 0)
        payload = [AnyConst(8) for _ in range(cap)]
        body = [cmd, seq, length[:8], length[8:]] + payload  # then CRC_LO, CRC_HI
        if self.plain:
            from bitlane.contract.protocol import ESC, SYNC
            for byte in body + [crc[:8], crc[8:]]:
                m.d.comb += Assume((byte != SYNC) & (byte != ESC))

        # The CRC field is free and not part of the verdict below: the claim holds whatever the
        # CRC bytes are, so in particular for frames with a good CRC (see docs/formal.md for why
        # the CRC check itself is not in this proof).
        complete = length <= cap  # the whole frame is sent

        # the wire: SYNC mark, header, min(length, cap) payload bytes, CRC (only if complete)
        symbols = Array([Const(0, 8)] + body)
        index = Signal(range(cap + 8))
        n_symbols = Mux(complete, 1 + 4 + length + 2, 1 + 4 + cap)
        at_crc = index >= 5 + length  # while complete
        crc_byte = Mux(index == 5 + length, crc[:8], crc[8:])
        feeding = index < n_symbols
        m.d.comb += [
            stuffer.i.valid.eq(feeding),
            stuffer.i.payload.sync.eq(index == 0),
            stuffer.i.payload.data.eq(Mux(complete & at_crc, crc_byte, symbols[index])),
        ]
        with m.If(stuffer.i.valid & stuffer.i.ready):
            m.d.sync += index.eq(index + 1)

        # the checks of docs/protocol.md, restated
        words_w = (length - ADDR_BYTES) // cfg.weight_word_bytes
        words_a = (length - ADDR_BYTES) // cfg.act_word_bytes
        addr = le(payload, 0, 4)
        w_base, a_base, o_base = le(payload, 0, 4), le(payload, 4, 4), le(payload, 8, 4)
        rows, cols, n_vec = le(payload, 12, 2), le(payload, 14, 2), le(payload, 16, 2)
        rt = (rows + cfg.lanes - 1) // cfg.lanes
        ks = (cols + cfg.k_per_cycle - 1) // cfg.k_per_cycle
        r_addr, r_count = le(payload, 0, 4), le(payload, 4, 2)
        is_w, is_a = cmd == Cmd.WRITE_WEIGHTS, cmd == Cmd.WRITE_ACT
        is_run, is_read, is_reset = cmd == Cmd.RUN, cmd == Cmd.READ_OUT, cmd == Cmd.RESET
        is_nolen = (cmd == Cmd.INFO) | (cmd == Cmd.COUNTERS) | is_reset
        write_len_ok = lambda word: (length > ADDR_BYTES) & ((length - ADDR_BYTES) % word == 0)  # noqa: E731
        words_m = (length - ADDR_BYTES) // MEM_WORD_BYTES
        m_count32, m_count16 = le(payload, 4, 4), le(payload, 4, 2)
        is_mw, is_mc, is_mr = cmd == Cmd.MEM_WRITE, cmd == Cmd.MEM_CRC, cmd == Cmd.MEM_READ
        mem_ok = Mux(is_mw, write_len_ok(MEM_WORD_BYTES) & (addr + words_m <= cfg.sdram_words), Mux(
            is_mc, (length == MEM_CRC_REQUEST_BYTES) & (m_count32 != 0) & (addr + m_count32 <= cfg.sdram_words), Mux(
                is_mr, (length == MEM_READ_REQUEST_BYTES) & (m_count16 != 0)
                & (m_count16 <= cfg.max_payload // MEM_WORD_BYTES) & (addr + m_count16 <= cfg.sdram_words), 0)))
        acceptable = Signal()
        m.d.comb += acceptable.eq(
            complete & (length <= cfg.max_payload) & Mux(is_nolen, length == 0, Mux(
                is_w, write_len_ok(cfg.weight_word_bytes) & (addr + words_w <= cfg.weight_depth), Mux(
                    is_a, write_len_ok(cfg.act_word_bytes) & (addr + words_a <= cfg.act_depth), Mux(
                        is_run, (length == RUN_REQUEST_BYTES) & (rows != 0) & (cols != 0) & (n_vec != 0)
                        & (cols <= cfg.max_k) & (w_base + rt * ks <= cfg.weight_depth)
                        & (a_base + n_vec * ks <= cfg.act_depth) & (o_base + n_vec * rt <= cfg.out_depth), Mux(
                            is_read, (length == READ_OUT_REQUEST_BYTES) & (r_count != 0)
                            & (r_count <= cfg.max_payload // RESULT_BYTES)
                            & (r_addr + r_count <= cfg.out_depth * cfg.lanes),
                            mem_ok))))))

        core = dut.core
        m.d.comb += [
            Assert(~core.w_wr_en | (acceptable & is_w)),
            Assert(~core.a_wr_en | (acceptable & is_a)),
            Assert(~core.start | (acceptable & is_run)),
            Assert(~core.clear_counters | (acceptable & is_reset)),
        ]
        with m.If(core.w_wr_en):
            m.d.comb += Assert((core.w_wr_addr >= addr) & (core.w_wr_addr < addr + words_w))
        with m.If(core.a_wr_en):
            m.d.comb += Assert((core.a_wr_addr >= addr) & (core.a_wr_addr < addr + words_a))
        if cfg.sdram_words:
            mem, req = dut.mem, dut.mem.req.payload
            region = Mux(is_mw, words_m, Mux(is_mc, m_count32, m_count16))
            m.d.comb += [
                Assert(~mem.req.valid | (acceptable & (is_mw | is_mc | is_mr))),
                Assert(~mem.w_data.valid | (acceptable & is_mw)),
                Assert(~mem.r_data.ready | (acceptable & (is_mc | is_mr))),
            ]
            with m.If(mem.req.valid):
                m.d.comb += Assert((req.write == is_mw) & (req.addr >= addr)
                                   & (req.addr + req.count + 1 <= addr + region))
