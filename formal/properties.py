"""Every formal property of bitlane, with its method, depth, the reason the depth suffices,
and a one-line bug (a mutation of the gateware) that the property must catch."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from .sby import Result, comb_paths, run_sby


@dataclass(frozen=True)
class Mutation:
    path: str  # file relative to the repository root
    old: str  # must occur exactly once in the file
    new: str


@dataclass(frozen=True)
class Property:
    name: str
    issue_item: int  # 1..8 of issue 14
    claim: str
    method: str  # "k-induction", "BMC", "structural", "enumeration"
    depth: int
    why: str  # why the depth suffices
    build: Callable
    mutation: Mutation
    quick: bool = False  # also part of `make test`

    @property
    def method_text(self) -> str:
        if self.method in ("k-induction", "BMC"):
            return f"{self.method} depth {self.depth}"
        return self.method

    def run(self, workdir=None) -> Result:
        if self.method == "k-induction":
            return run_sby(self.name, self.build(), mode="prove", depth=self.depth, workdir=workdir)
        if self.method == "BMC":
            return run_sby(self.name, self.build(), mode="bmc", depth=self.depth, workdir=workdir)
        if self.method == "structural":
            return comb_paths(self.name, self.build(), workdir=workdir)
        start = time.monotonic()
        ok, log = self.build()()
        return Result(self.name, ok, time.monotonic() - start, "PASS" if ok else "FAIL", log)


# ---------------------------------------------------------------- builders (imports stay lazy,
# so that a mutated gateware file is read by a fresh process)

def _lane_pair(k):
    def build():
        from .props_arith import LanePair
        return LanePair(k)
    return build


def _lane_acc(lanes, k, max_k):
    def build():
        from .props_arith import LaneAccumulate
        return LaneAccumulate(lanes, k, max_k)
    return build


def _crc_step():
    from .props_arith import CrcStep
    return CrcStep()


def _crc_running():
    from .props_arith import CrcRunning
    return CrcRunning()


def _crc_exhaustive():
    from .props_arith import crc_exhaustive
    return crc_exhaustive


def _stuff_round_trip():
    from .props_stream import StuffRoundTrip
    return StuffRoundTrip()


def _rules(component: str):
    def build():
        from bitlane.hw import framing
        from .props_stream import StreamRules
        if component == "Unstuffer":
            return StreamRules(framing.Unstuffer, ["i"], ["o"])
        if component == "Stuffer":
            return StreamRules(framing.Stuffer, ["i"], ["o"])
        if component == "StreamRegister":
            return StreamRules(lambda: framing.StreamRegister(framing.BodyByte), ["i"], ["o"])
        if component == "FrameSender":
            return StreamRules(framing.FrameSender, ["i"], ["o"])
        if component == "FrameReceiver":
            return StreamRules(lambda: framing.FrameReceiver(64), ["i"], ["frame"])
        if component == "UartStreamBridge":
            from bitlane.hw.uart import UartStreamBridge
            return StreamRules(lambda: UartStreamBridge(divisor_bits=3, fifo_depth=2, counter_bits=4),
                               ["tx"], ["rx"], consts={"divisor"})
        if component == "CommandProcessor":
            from bitlane.hw.cmdproc import CommandProcessor
            from .common import config
            return StreamRules(lambda: CommandProcessor(config("rules", lanes=4, k_per_cycle=2)), ["rx"], ["tx"])
        raise ValueError(component)
    return build


def _comb_components():
    """Each stream component as its own top: (label, component, ready port, valid port)."""
    from bitlane.hw import framing
    from bitlane.hw.cmdproc import CommandProcessor
    from bitlane.hw.uart import UartStreamBridge

    from .common import config

    return [
        ("unstuffer", framing.Unstuffer(), "o__ready", "o__valid"),
        ("stuffer", framing.Stuffer(), "o__ready", "o__valid"),
        ("register", framing.StreamRegister(framing.BodyByte), "o__ready", "o__valid"),
        ("sender", framing.FrameSender(), "o__ready", "o__valid"),
        ("receiver", framing.FrameReceiver(64), "frame__ready", "frame__valid"),
        ("bridge", UartStreamBridge(divisor_bits=3, fifo_depth=2, counter_bits=4), "rx__ready", "rx__valid"),
        ("cmdproc", CommandProcessor(config("comb", lanes=4, k_per_cycle=2)), "tx__ready", "tx__valid"),
    ]


def _seq():
    from .props_seq import SequencerAddresses
    return SequencerAddresses(**SEQ_CONFIG)


def _core():
    from .props_seq import CoreRunTiming
    return CoreRunTiming(**SEQ_CONFIG)


def _cmdproc(cap, cmds=None, plain=False):
    def build():
        from .props_cmdproc import RejectedFrameWritesNothing
        return RejectedFrameWritesNothing(cap=cap, cmds=cmds, plain=plain)
    return build


def _cmdproc_run():
    from bitlane.contract.protocol import Cmd
    return _cmdproc(18, (Cmd.RUN,), plain=True)()


def _cmdproc_mem():
    from bitlane.contract.protocol import Cmd

    from .props_cmdproc import RejectedFrameWritesNothing
    return RejectedFrameWritesNothing(cap=8, cmds=(Cmd.MEM_WRITE, Cmd.MEM_CRC, Cmd.MEM_READ), plain=True,
                                      sdram_words=64, sdram_clock_hz=100_000_000)


def _uart():
    from .props_uart import UartLoopback
    return UartLoopback(max_divisor=UART_MAX_DIVISOR, nth=2)


def _bridge_fifos():
    from .props_uart import BridgeFifos
    return BridgeFifos(fifo_depth=2, nth=4)


# the sequencer/core proofs' configuration: 4 lanes x 4 (as `tiny`), memories of a few words
SEQ_CONFIG = dict(lanes=4, k_per_cycle=4, weight_depth=8, act_depth=4, out_depth=2, max_k=16)
SEQ_LONGEST_RUN = 8  # n_vectors * row_tiles * k_steps of the longest admitted RUN (test_formal checks)
SEQ_OVERHEAD = 3 + 3 + 1  # FETCH_STAGES + lane latency (k = 4) + 1 (test_formal checks)
UART_MAX_DIVISOR = 5

M = Mutation
PROPERTIES: list[Property] = [
    Property(
        "lane-pair-k2", 1,
        "LaneArray (2 lanes x 2): each lane's result is exactly t_a*a + t_b*b for every pair of "
        "trit codes (reserved 0b10 included) and every pair of int8 values, -128 included",
        "k-induction", 4, "the pair pipeline is latency = 2 registers deep with no other state; "
        "induction over any 4 consecutive cycles covers every input in every cycle",
        _lane_pair(2), M("hw/lane.py", "differ_now = code_b[0] & (code_a[1] ^ code_b[1])",
                         "differ_now = code_a[1] ^ code_b[1]"), quick=True),
    Property(
        "lane-pair-k1", 1,
        "LaneArray (4 lanes x 1, a lone input paired with a constant zero): exactly t*a for every "
        "trit code and int8",
        "k-induction", 4, "as lane-pair-k2",
        _lane_pair(1), M("hw/lane.py", "negative.eq(code_a[1]),", "negative.eq(code_b[1]),"), quick=True),
    Property(
        "lane-accumulate", 2,
        "LaneArray (1 lane x 4, max_k 16, 13-bit accumulator): for any sequence of tiles of at "
        "most max_k/k = 4 valid k-steps, with idle cycles anywhere, the lane's sum at a tile's last "
        "step equals the exact dot product; the accumulator never wraps",
        "k-induction", 6, "unbounded: the invariants (accumulator = exact partial sum modulo its "
        "width, |partial sum| <= 128*k*steps, steps < max_k/k) are inductive once the 3-stage "
        "pipeline has been refilled, which 6 steps cover",
        _lane_acc(1, 4, 16), M("contract/config.py", "return (self.max_k * 128).bit_length() + 1",
                               "return (self.max_k * 127).bit_length() + 1")),
    Property(
        "lane-accumulate-2x2", 2,
        "as lane-accumulate on 2 lanes x 2, max_k 12 (not a power of two): 3 k-steps per tile",
        "k-induction", 5, "as lane-accumulate (2-stage pipeline)",
        _lane_acc(2, 2, 12), M("hw/lane.py", "m.d.sync += acc.eq(Mux(last, 0, total))",
                               "m.d.sync += acc.eq(total)"), quick=True),
    Property(
        "crc-step", 7,
        "the gateware's one-byte CRC step (XOR network) equals the bit-serial CRC-16/CCITT-FALSE "
        "for all 2^16 states x 2^8 bytes",
        "BMC", 1, "combinational: one step covers every (state, byte)",
        _crc_step, M("hw/crc.py", "[crc16(bytes([1 << i]), 0) for i in range(8)])",
                     "[crc16(bytes([1 << i]), 0) for i in range(7)])"), quick=True),
    Property(
        "crc-running", 7,
        "CRC16's `value` is the CRC of the bytes fed since the last `first`, for any sequence of "
        "bytes, gaps and restarts",
        "k-induction", 3, "unbounded: value == spec register is inductive in one step (3 steps so "
        "that the base case sees a restart)",
        _crc_running, M("hw/crc.py", "crc16_step(Mux(self.first, CRC_INIT, state), self.data)",
                        "crc16_step(state, self.data)"), quick=True),
    Property(
        "crc-spec-vs-protocol", 7,
        "the bit-serial spec used by crc-step equals contract.protocol.crc16 for every one of the 2^24 "
        "(state, byte) pairs, so the gateware equals the protocol's own CRC function",
        "enumeration", 0, "exhaustive", _crc_exhaustive,
        M("contract/protocol.py", "CRC_POLY = 0x1021", "CRC_POLY = 0x1023"), quick=True),
    Property(
        "stuff-round-trip", 3,
        "Stuffer -> Unstuffer: the N-th symbol out is the N-th symbol in (frame marks and every "
        "byte value), nothing is invented, under any input and any backpressure; the wire carries "
        "SYNC only for a frame-start mark",
        "BMC", 20, "all symbol streams and stall patterns of 20 cycles from reset (up to ~9 "
        "symbols, every escape case back to back); the pair's whole state is 3 registers + a "
        "byte, each reached within 2 symbols",
        _stuff_round_trip, M("hw/framing.py", "with m.Elif((byte == SYNC) | (byte == ESC)):",
                             "with m.Elif(byte == ESC):")),
    Property(
        "stream-rules-unstuffer", 5, "Unstuffer.o obeys the stream rules when Unstuffer.i does",
        "k-induction", 4, "unbounded (induction)", _rules("Unstuffer"),
        M("hw/framing.py", "with m.If(self.o.valid & self.o.ready):\n            m.d.sync += escaped.eq(0)",
          "with m.If(self.o.valid):\n            m.d.sync += escaped.eq(0)"), quick=True),
    Property(
        "stream-rules-stuffer", 5, "Stuffer.o obeys the stream rules when Stuffer.i does",
        "k-induction", 4, "unbounded (induction)", _rules("Stuffer"),
        M("hw/framing.py", "can_load = ~self.o.valid | self.o.ready", "can_load = 1"), quick=True),
    Property(
        "stream-rules-register", 5, "StreamRegister.o obeys the stream rules when its input does",
        "k-induction", 4, "unbounded (induction)", _rules("StreamRegister"),
        M("hw/framing.py", "with m.If(self.i.ready):\n            m.d.sync += [self.o.valid",
          "with m.If(1):\n            m.d.sync += [self.o.valid"), quick=True),
    Property(
        "stream-rules-sender", 5, "FrameSender.o obeys the stream rules when FrameSender.i does",
        "k-induction", 4, "unbounded (induction)", _rules("FrameSender"),
        M("hw/framing.py", "with m.If(self.o.valid & self.o.ready):\n                    m.d.sync += first.eq(1)",
          "with m.If(self.o.valid):\n                    m.d.sync += first.eq(1)"), quick=True),
    Property(
        "stream-rules-receiver", 5,
        "FrameReceiver.frame (header held while offered) obeys the stream rules",
        "k-induction", 4, "unbounded (induction)", _rules("FrameReceiver"),
        M("hw/framing.py", "with m.If(self.frame.ready):\n                    with m.If(after_offer):",
          "with m.If(1):\n                    with m.If(after_offer):"), quick=True),
    Property(
        "stream-rules-bridge", 5,
        "UartStreamBridge.rx obeys the stream rules, whatever the pin does and whatever tx gets",
        "k-induction", 4, "unbounded (induction)", _rules("UartStreamBridge"),
        M("hw/uart.py", "rx_fifo.r_en.eq(self.rx.ready),", "rx_fifo.r_en.eq(1),"), quick=True),
    Property(
        "stream-rules-cmdproc", 5,
        "CommandProcessor.tx (the device's answer stream) obeys the stream rules, whatever rx "
        "and the core do",
        "k-induction", 4, "unbounded (induction)", _rules("CommandProcessor"),
        M("hw/framing.py", "        with m.If(can_load):\n", "        with m.If(1):\n")),
    Property(
        "valid-not-from-ready", 5,
        "in Unstuffer, Stuffer, StreamRegister, FrameSender, FrameReceiver, UartStreamBridge and "
        "CommandProcessor no output `valid` has a combinational path from its own `ready`",
        "structural", 0, "the whole flattened netlist: Yosys' combinational input cone of each "
        "valid holds no bit of its ready", _comb_components,
        M("hw/framing.py", 'm.d.comb += [self.o.payload.sync.eq(1), self.o.valid.eq(self.i.valid)]',
          'm.d.comb += [self.o.payload.sync.eq(1), self.o.valid.eq(self.i.valid & self.o.ready)]'),
        quick=True),
    Property(
        "sequencer-addresses", 6,
        "for every RUN the range check admits, started at any cycle, the Sequencer issues exactly "
        "n_vectors*row_tiles*k_steps pairs with exactly the documented weight/activation/output "
        "addresses, all inside the admitted ranges, `last` at each tile's end, then stops",
        "BMC", 20, f"the longest admitted RUN on this configuration issues {SEQ_LONGEST_RUN} pairs, "
        "so 20 steps hold two longest runs back to back from any start; every admitted RUN of the "
        "configuration is covered",
        _seq, M("hw/sequencer.py", "self.a_addr.eq(a_vector),", "self.a_addr.eq(a_vector + 1),")),
    Property(
        "core-run-timing", 6,
        "TernaryCore: after the start of an admitted RUN, done rises exactly once, exactly "
        "N + run_overhead cycles after start (the RUN response's cycle count of the model), busy "
        "spans exactly that run, and busy_cycles grows by exactly N",
        "BMC", 20, f"longest admitted RUN: {SEQ_LONGEST_RUN} + {SEQ_OVERHEAD} cycles, so 20 steps "
        "see start, done and the cycle after for every admitted RUN started in the first 4 cycles",
        _core, M("hw/core.py", "m.d.comb += self.done.eq(self.busy & ~pending)",
                 "m.d.comb += self.done.eq(self.busy & ~seq.issuing)")),
    Property(
        "rejected-frame-writes-nothing", 4,
        "CommandProcessor, one frame from reset with free CMD, SEQ, LEN (16 bits), CRC and first "
        "6 payload bytes, every byte possibly escaped: weight/activation writes, RUN start and "
        "counter clear happen only for a frame that passes the length, command, length-for-"
        "command, argument and address checks (restated independently, in wide arithmetic), "
        "whatever its CRC, only for its own command, and writes land only inside the frame's "
        "address range",
        "BMC", 34, "the longest complete frame with 6 payload bytes is 13 symbols = at most 25 "
        "wire bytes (every byte escaped) + 3 check cycles + its word writes: 34 steps run every "
        "such frame to its end",
        _cmdproc(6), M("hw/cmdproc.py", "addr_ok.eq(w_write_end <= cfg.weight_depth)",
                       "addr_ok.eq(w_write_end <= cfg.weight_depth + 1)")),
    Property(
        "rejected-run-starts-nothing", 4,
        "as rejected-frame-writes-nothing for RUN frames with all 18 payload bytes free (bases, "
        "rows, cols, n_vectors: any values, so every BAD_ARGUMENT / BAD_ADDRESS case incl. 32-bit "
        "wrap-around), frames whose bytes need no escaping: the core starts only for a RUN that "
        "passes every check",
        "BMC", 32, "the complete RUN frame is 25 wire bytes; its check and start take 4 more cycles",
        _cmdproc_run, M("hw/cmdproc.py", "& (run_o_end <= cfg.out_depth))]",
                        "& (run_o_end <= cfg.out_depth + 1))]")),
    Property(
        "rejected-mem-frame-touches-nothing", 4,
        "as rejected-frame-writes-nothing for MEM_WRITE / MEM_CRC / MEM_READ frames on a command "
        "processor with SDRAM (64 words), all 8 argument bytes free, frames whose bytes need no "
        "escaping, the memory port's answers free: a request, a write word or a read-word pop "
        "happens only for a frame that passes every check, and every request lies inside the "
        "frame's region",
        "BMC", 28, "the longest complete frame with 8 payload bytes is 15 wire bytes; its checks, "
        "request and two write words take at most 10 more cycles",
        _cmdproc_mem, M("hw/cmdproc.py", "addr_ok.eq(mem_crc_end <= cfg.sdram_words)",
                        "addr_ok.eq(mem_crc_end <= cfg.sdram_words + 1)")),
    Property(
        "uart-loopback", 8,
        f"UartRx of UartTx's pin at the same divisor (any of 4..{UART_MAX_DIVISOR}) returns each "
        "byte exactly once, in order, back to back, no framing error, each within 10 bit times + 4 "
        "cycles",
        "BMC", 110, "two back-to-back bytes at the largest divisor take 2 x 10 x 5 + 5 cycles",
        _uart, M("hw/uart.py", "shift.eq(Cat(shift[1:], line))", "shift.eq(Cat(line, shift[:-1]))")),
    Property(
        "bridge-fifos", 8,
        "UartStreamBridge (FIFO depth 2) with its UART receiver and transmitter replaced by free "
        "stand-ins (a byte in any cycle, taken whenever): the N-th byte out of rx is the N-th byte "
        "received while no overrun is counted, a received byte is dropped only into a full FIFO and "
        "then counted, the N-th byte sent is the N-th byte written into tx, nothing is invented",
        "BMC", 16, "N < 4 bytes through FIFOs of depth 2: 16 cycles let a byte arrive every cycle, "
        "fill, overflow and drain both FIFOs, with every stall pattern",
        _bridge_fifos, M("hw/uart.py", "tx_fifo.r_en.eq(transmitter.data.ready),", "tx_fifo.r_en.eq(1),")),
]

BY_NAME = {p.name: p for p in PROPERTIES}
