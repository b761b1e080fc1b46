"""The decoder engine's vector unit: the vector ops of contract/decoder.py, bit-exact to
`DecoderMachine._op_v*`, P = `vector_lanes` elements per cycle through one fixed-length pipeline,
and the two stream ops that feed the attention unit.

    VMAXABS VSHIFT VNORM VQUANT VSCALE VROPE VRESID VRELU2 VMUL   ceil(n / P) + L + 1 cycles each
    VPHASE                                                       n + L + 1 (one element per cycle)
    KVAPPEND  ATTEND                     A out on att_o (, D in on att_i)   n / P + 6 cycles, more under backpressure

with L = `vector_latency(P)` = 11 + ceil(log2(P) / 2) (11, 12, 12, 13, 13 for P = 1, 2, 4, 8, 16):
`vector_cycles(op, n, P)`.

Results: R[r0] = `y0` (max|y|) for VMAXABS, VSHIFT, VNORM, VSCALE, VROPE, VRESID, VRELU2 and VMUL,
and R[r2] = `y2` (sum x^2) for VNORM; the engine writes them at `done` (VQUANT and VPHASE set no
register; ATTEND's R[r0] is the attention unit's).

The unit owns the three general banks (MAIN, CONST, COPY: words of P signed 32-bit elements, element e
is lane e % P of word e // P; one read port for operands and the host, one write port with a write
enable per element for D and the host) and reaches the ternary core's output memory (OUT, one read
address, the word the cycle after; P of its lanes are one word here: P divides lanes) and activation
memory (ACT, one write port) through its ports. An op never reads two operands from one memory (the
model refuses such a program), so each memory's read port serves the one operand (A, B or C) that
names it. Operands start at multiples of P (the model's alignment rule), so word w of an operand is
one memory word; the lanes of the last word past n are masked: not written, 0 in the reductions.

The pipeline (stage k of word i is cycle start + 1 + i + k; P lanes of everything but the phase):

    0   operand word addresses: A[i], B[i] (VROPE: B[(i + n/2) mod n]), C[i mod n/2] (VROPE's pairs)
    1   read data; OUT's group of P lanes; the operand's bank -> a, b, c
    2   barrel shifts: a by R[r1] (either direction, with a spare low bit for rounding), b by
        R[r2] (VMUL) or R[r1] (VROPE); VPHASE: RopePhase takes (pos, c) of the word's one element
    3   rounding of a (floor or half up): x
    4-5 (VPHASE: RopePhase, then SinCos: 2 + 2 cycles); multiplier operands (VROPE: c's cos, sin)
    6   two signed 16 x 17 products per lane: x * (gain | R[r2] | x | y | cos), x * x or y * sin
    7   VROPE's sum, VQUANT's round and clamp, VRESID's barrel shift; x^2 into the adder tree (VNORM)
    8   VRESID's rounding and add to B[i]; the op's result y (VPHASE: the (cos, sin) pair)
    9   D word = y (lanes that hold elements); |y|; ACT bytes gathered into words (P bytes a cycle)
    10  max|y| tree, two levels a stage (ceil(log2(P) / 2) stages), then the running max
    L   done (y0 = max|y|, y2 = sum x^2)

Cycle contract: `start` (a one-cycle pulse while not `busy`) samples the instruction's fields, the
registers' values x1..x3 and the position. For a vector op, `busy` is high from the next cycle and
`done` pulses in cycle start + words + L (words = ceil(n / P); VPHASE: n), the last cycle of `busy`,
when every write is in its memory and `y0`, `y2` hold the results (until the next start); a new op
can start the cycle after `done`. The stream ops issue A's reads one word (P elements) a cycle as
the 4-beat output FIFO has room: `att_o` offers A[0..n) in beats of P int16 (the low bits of each
element; P divides n), and ATTEND writes the i-th value taken on `att_i` to D[i] (one element's write
enable); `done` comes the cycle after the last transfer (KVAPPEND: the last beat taken on `att_o`;
ATTEND: that and the n-th value written): in cycle start + n / P + 5 without backpressure (start + 2
for n = 0), so `vector_cycles` gives n / P + 6.

What the engine must respect (the model accepts a few programs the pipeline cannot run):
- D may overlap an operand's vector only where D starts at most 8 words (8 P elements) above it (in
  place, D == A or D == B, is the use): word i is read 9 cycles before D's word i is written. VROPE
  reads B out of order: its D must not overlap B.
- Shift counts are clamped to [-63, 63] (numpy `>>` by a negative count gives the sign, as a count
  of 63 does); the factors R[r2] of VQUANT, VSCALE and VRESID are taken as uint16 (their low 16 bits).
- The stream ops' D is a general bank; an ACT destination starts at a multiple of k_per_cycle (the
  model checks both alignments).
- Values outside the widths that the model checks (a WidthError there) give unspecified results.

Host port (elements, as before): while not `busy`, `host_addr` reads element `host_addr` of bank
`host_bank` (0 MAIN, 1 CONST, 2 COPY) into `host_rd_data` the next cycle, and `host_wr_en` writes
`host_wr_data` there (that element only).
"""
from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bitlane.contract.decoder import REG_BITS, VECTOR_STAGES, WORD_BITS, Bank, Op, tree_stages, vector_latency
from bitlane.contract.intmath import MANT_BITS, Q_MAX, Q_SHIFT
from bitlane.hw import zero_init  # noqa: F401  (all-zero memory contents stay out of the netlist)
from bitlane.hw.attention import beat_layout
from bitlane.hw.nonlinear import RopePhase, SinCos

VECTOR_LATENCY = VECTOR_STAGES  # one lane: start + n + 11: done (vector_latency(P) in general)
STREAM_FIFO_DEPTH = 4           # A beats read ahead of att_o
STREAM_STAGE = 2                # the pipeline stage whose A word a stream op puts into that FIFO
SHIFT_LIMIT = 63                # shift counts are clamped to [-63, 63]
SHIFT_BITS = 6
LEFT_BITS = 5                   # left shifts of a 32-bit value that stay inside 34 bits: < 32
STREAM_OPS = (Op.KVAPPEND, Op.ATTEND)
VECTOR_OPS = (Op.VMAXABS, Op.VSHIFT, Op.VNORM, Op.VQUANT, Op.VSCALE, Op.VROPE, Op.VRESID, Op.VRELU2, Op.VMUL,
              Op.VPHASE)
GENERAL = (Bank.MAIN, Bank.CONST, Bank.COPY)


def _numpy_right(s):
    """The count of numpy's `x >> s` for a signed register s: s (clamped to 63), or 63 (the sign)
    for s < 0."""
    return Mux(s[-1] | (s > SHIFT_LIMIT), SHIFT_LIMIT, s[:SHIFT_BITS])


def _contract_shift(s):
    """(right, left) counts of the contract's shift_right(x, s): right min(s, 63) for s > 0, left
    -s for s <= 0 (clamped: only left shifts below 32 keep a nonzero int32 inside the checked widths)."""
    right = Mux(s[-1], 0, Mux(s > SHIFT_LIMIT, SHIFT_LIMIT, s[:SHIFT_BITS]))
    left = Mux(s[-1], Mux(s < -((1 << LEFT_BITS) - 1), (1 << LEFT_BITS) - 1, (-s)[:LEFT_BITS]), 0)
    return right, left


class VectorUnit(wiring.Component):
    """The vector ops and the attention unit's streams (the contract is the module docstring).

    Parameters
    ----------
    bank_depth : (int, int, int)
        Elements of MAIN, CONST, COPY.
    lanes, k_per_cycle, out_depth, act_depth : int
        The ternary core's shape: OUT element e is lane e % lanes of word e // lanes, ACT element
        e is byte e % k_per_cycle of word e // k_per_cycle (both powers of two).
    vector_lanes : int
        P, elements per cycle: a power of two, at most lanes and k_per_cycle.
    """

    def __init__(self, bank_depth: tuple[int, int, int], lanes: int, k_per_cycle: int, out_depth: int,
                 act_depth: int, vector_lanes: int = 1) -> None:
        for name, value in (("lanes", lanes), ("k_per_cycle", k_per_cycle), ("vector_lanes", vector_lanes)):
            if value < 1 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two, got {value}")
        if vector_lanes > min(lanes, k_per_cycle):
            raise ValueError(f"vector_lanes {vector_lanes} exceeds lanes {lanes} or k_per_cycle {k_per_cycle}")
        self.bank_depth, self.lanes, self.k, self.p = tuple(bank_depth), lanes, k_per_cycle, vector_lanes
        self.out_depth, self.act_depth = out_depth, act_depth
        super().__init__({
            "start": In(1), "op": In(8), "n": In(16),
            "a_bank": In(3), "b_bank": In(3), "c_bank": In(3), "d_bank": In(3),
            "a_addr": In(16), "b_addr": In(16), "c_addr": In(16), "d_addr": In(16),
            "imm": In(32), "x1": In(signed(REG_BITS)), "x2": In(signed(REG_BITS)), "x3": In(signed(REG_BITS)),
            "pos": In(16),
            "busy": Out(1), "done": Out(1), "y0": Out(signed(REG_BITS)), "y2": Out(signed(REG_BITS)),
            "out_rd_addr": Out(range(out_depth)), "out_rd_data": In(32 * lanes),
            "act_wr_addr": Out(range(act_depth)), "act_wr_data": Out(8 * k_per_cycle), "act_wr_en": Out(1),
            "host_bank": In(2), "host_addr": In(16), "host_wr_data": In(signed(WORD_BITS)), "host_wr_en": In(1),
            "host_rd_data": Out(signed(WORD_BITS)),
            "att_o": Out(stream.Signature(beat_layout(vector_lanes))),
            "att_i": In(stream.Signature(signed(MANT_BITS))),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        P = self.p
        pb = (P - 1).bit_length()
        lane_bits, k_bits = (self.lanes - 1).bit_length(), (self.k - 1).bit_length()
        tree = tree_stages(P)
        latency = vector_latency(P)

        def word_addr(elem):
            return elem >> pb

        def lane_of(elem):
            return elem[:pb] if pb else Const(0, 1)

        def lanes_of(word, bits=WORD_BITS):
            return [word.word_select(j, bits) for j in range(P)]

        # ---- the op, registered at start
        op = Signal(8)
        n = Signal(16)
        half = Signal(16)
        banks = {name: Signal(3, name=f"{name}_bank_r") for name in "abcd"}
        addrs = {name: Signal(16, name=f"{name}_addr_r") for name in "bcd"}
        a_right, a_left, a_round = Signal(SHIFT_BITS), Signal(LEFT_BITS), Signal()
        b_right = Signal(SHIFT_BITS)
        t_right, t_left = Signal(SHIFT_BITS), Signal(LEFT_BITS + 1)
        factor = Signal(MANT_BITS)
        pos = Signal(16)
        is_op = {o: Signal(name=f"is_{o.name.lower()}") for o in (*VECTOR_OPS, *STREAM_OPS)}
        is_vector, is_stream, single = Signal(), Signal(), Signal()
        writes_bank = {b: Signal(name=f"writes_{b.name.lower()}") for b in GENERAL}
        writes_act = Signal()
        active = Signal()

        with m.If(self.start & ~active):
            x1, x2, x3 = self.x1, self.x2, self.x3
            numpy_right, contract = _numpy_right(x1), _contract_shift(x1)
            shift_right_op = (self.op == Op.VSHIFT) | (self.op == Op.VQUANT)  # the contract's shift_right
            t_r = _contract_shift(x3)[0]
            t_l = Mux(x3[-1], Mux(x3 < -33, 33, (-x3)[:LEFT_BITS + 1]), 0)  # |d| < 2^32: left <= 32
            is_str = (self.op == Op.KVAPPEND) | (self.op == Op.ATTEND)
            m.d.sync += [
                op.eq(self.op), n.eq(self.n),
                half.eq(Mux(self.op == Op.VROPE, self.n >> 1, 0)),
                # VPHASE reads only C: A and B name its bank too, so that the one read port follows C
                *(banks[name].eq(Mux(self.op == Op.VPHASE, self.c_bank, getattr(self, f"{name}_bank")))
                  for name in "ab"),
                *(banks[name].eq(getattr(self, f"{name}_bank")) for name in "cd"),
                *(addrs[name].eq(getattr(self, f"{name}_addr")) for name in "bcd"),
                a_right.eq(Mux(self.op == Op.VMAXABS, 0, Mux(shift_right_op, contract[0], numpy_right))),
                a_left.eq(Mux(shift_right_op, contract[1], 0)),
                a_round.eq((self.op == Op.VSHIFT) & self.imm[0]),
                b_right.eq(Mux(self.op == Op.VMUL, _numpy_right(x2), Mux(self.op == Op.VROPE, numpy_right, 0))),
                t_right.eq(t_r), t_left.eq(t_l),
                factor.eq(x2[:MANT_BITS]),
                pos.eq(self.pos),
                *(flag.eq(self.op == o) for o, flag in is_op.items()),
                is_vector.eq(Cat(self.op == o for o in VECTOR_OPS).any()),
                is_stream.eq(is_str),
                single.eq(self.op == Op.VPHASE),
                *(writes_bank[b].eq((self.d_bank == b) & (self.op != Op.VMAXABS)) for b in GENERAL),
                writes_act.eq((self.d_bank == Bank.ACT) & (self.op != Op.VMAXABS)),
            ]

        # ---- issue: P elements per cycle (VPHASE one; stream ops a word while the FIFO has room)
        issuing = Signal()
        index = Signal(16)
        a_ptr, b_ptr, c_ptr = Signal(16), Signal(16), Signal(16)   # element addresses
        in_flight = Signal(range(STREAM_FIFO_DEPTH + 1))  # A beats read and not yet taken on att_o
        issue, issue_last = Signal(), Signal()
        remaining = Signal(17)
        step = Mux(single, 1, P)
        m.d.comb += [
            remaining.eq(n - index),
            issue.eq(issuing & (~is_stream | (in_flight < STREAM_FIFO_DEPTH))),
            issue_last.eq(remaining <= step),
        ]
        with m.If(self.start & ~active):
            m.d.sync += [
                issuing.eq(self.n != 0), index.eq(0),
                a_ptr.eq(Mux(self.op == Op.VPHASE, self.c_addr, self.a_addr)),
                b_ptr.eq(Mux(self.op == Op.VPHASE, self.c_addr, self.b_addr + Mux(self.op == Op.VROPE, self.n >> 1, 0))),
                c_ptr.eq(self.c_addr),
            ]
        with m.Elif(issue):
            wrap = is_op[Op.VROPE] & (index + P == half)
            m.d.sync += [
                index.eq(index + step), a_ptr.eq(a_ptr + step),
                b_ptr.eq(Mux(wrap, addrs["b"], b_ptr + step)),
                c_ptr.eq(Mux(wrap, addrs["c"], c_ptr + step)),
            ]
            with m.If(issue_last):
                m.d.sync += issuing.eq(0)

        # Per-stage flags: valid, last (the op's final word, or n = 0's empty token), first half, and
        # the lanes that hold elements (past n, or all but one lane for VPHASE, are masked).
        stages = latency + 1
        valid = [Signal(name=f"valid{k}") for k in range(stages)]
        last = [Signal(name=f"last{k}") for k in range(stages)]
        first = [Signal(name=f"first{k}") for k in range(stages)]
        mask = [Signal(P, name=f"mask{k}") for k in range(stages)]
        lane = [Signal(max(pb, 1), name=f"lane{k}") for k in range(3)]  # the element's lane (single ops)
        mask0 = Cat(Mux(single, index[:pb] == j if pb else 1, remaining > j) for j in range(P))
        m.d.comb += [valid[0].eq(issue), last[0].eq(issue & issue_last), first[0].eq(index < half),
                     mask[0].eq(Mux(issue, mask0, 0)), lane[0].eq(index[:pb] if pb else 0)]
        # a stream op's elements leave the pipeline at STREAM_STAGE for the FIFO: past it they would
        # reach the next op's reductions and its `last` (the engine may start a vector op the cycle
        # after a stream op's done)
        for k in range(1, stages):
            keep = is_vector if k == STREAM_STAGE + 1 else 1
            m.d.sync += [valid[k].eq(valid[k - 1] & keep), last[k].eq(last[k - 1] & keep), first[k].eq(first[k - 1]),
                         mask[k].eq(mask[k - 1])]
        for k in range(1, 3):
            m.d.sync += lane[k].eq(lane[k - 1])
        with m.If(self.start & ~active & (self.n == 0) & Cat(self.op == o for o in VECTOR_OPS).any()):
            m.d.sync += last[1].eq(1)

        # ---- stage 0: addresses; stage 1: read data and operand selection (words of P elements)
        rd_ports, wr_ports = {}, {}
        for b in GENERAL:
            mem = Memory(shape=unsigned(WORD_BITS * P), depth=-(-self.bank_depth[b] // P), init=[],
                         attrs={"no_rw_check": 1})
            m.submodules[f"bank_{b.name.lower()}"] = mem
            rd_ports[b], wr_ports[b] = mem.read_port(), mem.write_port(granularity=WORD_BITS)
            operand_addr = Mux(banks["a"] == b, a_ptr, Mux(banks["b"] == b, b_ptr, c_ptr))
            m.d.comb += rd_ports[b].addr.eq(word_addr(Mux(active, operand_addr, self.host_addr)))
        out_elem = Mux(banks["a"] == Bank.OUT, a_ptr, Mux(banks["b"] == Bank.OUT, b_ptr, c_ptr))
        m.d.comb += self.out_rd_addr.eq(out_elem >> lane_bits)
        if self.lanes > P:
            out_group = Signal(lane_bits - pb)
            m.d.sync += out_group.eq(out_elem[pb:lane_bits])
            out_value = self.out_rd_data.word_select(out_group, WORD_BITS * P)
        else:
            out_value = self.out_rd_data

        def operand(name: str):
            value = out_value
            for b in GENERAL:
                value = Mux(banks[name] == b, rd_ports[b].data, value)
            return value

        host_bank = Signal(2)
        host_lane = Signal(max(pb, 1))
        m.d.sync += [host_bank.eq(self.host_bank), host_lane.eq(lane_of(self.host_addr))]
        host_word = rd_ports[Bank.MAIN].data
        for b in (Bank.CONST, Bank.COPY):
            host_word = Mux(host_bank == b, rd_ports[b].data, host_word)
        m.d.comb += self.host_rd_data.eq(host_word.word_select(host_lane, WORD_BITS).as_signed() if pb else
                                         host_word.as_signed())

        a2w = Signal(WORD_BITS * P, reset_less=True)
        b2w = Signal(WORD_BITS * P, reset_less=True)
        c2w = Signal(WORD_BITS * P, reset_less=True)
        m.d.sync += [a2w.eq(operand("a")), b2w.eq(operand("b")), c2w.eq(operand("c"))]
        a2, b2, c2 = ([v.as_signed() for v in lanes_of(w)] for w in (a2w, b2w, c2w))
        c_single2 = c2w.word_select(lane[2], WORD_BITS) if pb else c2w

        # ---- VPHASE's sine: one element per cycle, (pos, C[i]) at stage 2, (cos, sin) at stage 6
        m.submodules.phase = phase = RopePhase()
        m.submodules.sincos = sincos = SinCos()
        m.d.comb += [
            phase.i.valid.eq(1), phase.i.payload.position.eq(pos), phase.i.payload.omega.eq(c_single2),
            phase.o.ready.eq(1),
            sincos.i.valid.eq(phase.o.valid), sincos.i.payload.eq(phase.o.payload),
            sincos.o.ready.eq(1),
        ]
        trig = sincos.o.payload
        trig7 = Signal(WORD_BITS, reset_less=True)
        trig8 = Signal(WORD_BITS, reset_less=True)
        m.d.sync += [trig7.eq(Cat(trig.cos[:MANT_BITS], trig.sin[:MANT_BITS])), trig8.eq(trig7)]

        uses_factor = is_op[Op.VQUANT] | is_op[Op.VSCALE] | is_op[Op.VRESID]
        y9 = []
        m2s = []
        for j in range(P):
            def sig(name, shape):
                return Signal(shape, name=f"{name}_l{j}", reset_less=True)
            # ---- stage 2: shifts (a keeps one bit below its LSB for the rounding)
            w3, b3 = sig("w3", signed(WORD_BITS + 2)), sig("b3", signed(WORD_BITS))
            doubled = Cat(Const(0, 1), a2[j]).as_signed()
            m.d.sync += [
                w3.eq(Mux(a_left.any(), (doubled << a_left)[:WORD_BITS + 2].as_signed(), doubled >> a_right)),
                b3.eq(b2[j] >> b_right),
            ]
            # VROPE's (cos, sin) pair waits for the multipliers
            c3, c4, c5 = sig("c3", WORD_BITS), sig("c4", WORD_BITS), sig("c5", WORD_BITS)
            m.d.sync += [c3.eq(c2[j]), c4.eq(c3), c5.eq(c4)]
            # ---- stage 3: floor or round half up: x = (w + round) >> 1
            x4, b4 = sig("x4", signed(WORD_BITS + 1)), sig("b4", signed(WORD_BITS))
            m.d.sync += [x4.eq((w3 + a_round) >> 1), b4.eq(b3)]
            # ---- stages 4-5: the multipliers' operands
            x5, b5 = sig("x5", signed(WORD_BITS + 1)), sig("b5", signed(WORD_BITS))
            m.d.sync += [x5.eq(x4), b5.eq(b4)]
            x16, b16 = x5[:MANT_BITS].as_signed(), b5[:MANT_BITS].as_signed()
            cos5, sin5 = c5[:MANT_BITS].as_signed(), c5[MANT_BITS:].as_signed()
            relu = Mux(x16[-1], 0, x16)
            p6, q6 = sig("p6", signed(MANT_BITS)), sig("q6", signed(MANT_BITS + 1))
            u6, v6 = sig("u6", signed(MANT_BITS)), sig("v6", signed(MANT_BITS))
            x6, b6 = sig("x6", signed(WORD_BITS + 1)), sig("b6", signed(WORD_BITS))
            m.d.sync += [
                p6.eq(Mux(is_op[Op.VRELU2], relu, x16)),
                q6.eq(Mux(is_op[Op.VROPE], cos5, Mux(uses_factor, factor, Mux(is_op[Op.VRELU2], relu, b16)))),
                u6.eq(Mux(is_op[Op.VROPE], b16, x16)),
                v6.eq(Mux(is_op[Op.VROPE], sin5, x16)),
                x6.eq(x5), b6.eq(b5),
            ]
            # ---- stage 6: the products
            m1, m2 = sig("m1", signed(2 * MANT_BITS + 1)), sig("m2", signed(2 * MANT_BITS + 1))
            x7, b7 = sig("x7", signed(WORD_BITS + 1)), sig("b7", signed(WORD_BITS))
            m.d.sync += [m1.eq(p6 * q6), m2.eq(u6 * v6), x7.eq(x6), b7.eq(b6)]
            m2s.append(Mux(mask[7][j], m2[:2 * MANT_BITS], 0))  # x^2 for VNORM: 0 <= x^2 <= 2^30
            # ---- stage 7: VROPE's sum, VQUANT's code, VRESID's shift (2 t 2^-s)
            rope8, quant8 = sig("rope8", signed(2 * MANT_BITS + 2)), sig("quant8", signed(8))
            w8, m1_8 = sig("w8", signed(2 * MANT_BITS + 4)), sig("m1_8", signed(2 * MANT_BITS + 1))
            x8, b8 = sig("x8", signed(WORD_BITS + 1)), sig("b8", signed(WORD_BITS))
            q = (m1 + (1 << (Q_SHIFT - 1))) >> Q_SHIFT
            t2 = Cat(Const(0, 1), m1).as_signed()
            m.d.sync += [
                rope8.eq(Mux(first[7], m1 - m2, m1 + m2)),
                quant8.eq(Mux(q > Q_MAX, Q_MAX, Mux(q < -Q_MAX - 1, -Q_MAX - 1, q))),
                w8.eq(Mux(t_left.any(), (t2 << t_left)[:len(w8)].as_signed(), t2 >> t_right)),
                m1_8.eq(m1), x8.eq(x7), b8.eq(b7),
            ]
            # ---- stage 8: the op's result y
            y = sig("y9", signed(WORD_BITS))
            resid = (w8 + Cat(Const(1, 1), b8).as_signed()) >> 1
            with m.Switch(op):
                with m.Case(Op.VMAXABS, Op.VSHIFT):
                    m.d.sync += y.eq(x8)
                with m.Case(Op.VQUANT):
                    m.d.sync += y.eq(quant8)
                with m.Case(Op.VROPE):
                    m.d.sync += y.eq(rope8)
                with m.Case(Op.VRESID):
                    m.d.sync += y.eq(resid)
                with m.Case(Op.VPHASE):
                    m.d.sync += y.eq(trig8)
                with m.Default():
                    m.d.sync += y.eq(m1_8)
            y9.append(y)

        # ---- sum of squares: the lanes' x^2 through an adder tree (two levels a stage), then the total
        sumsq = Signal(REG_BITS)
        part = _reduce(m, m2s, lambda u, v: u + v, "sq")
        with m.If(valid[7 + tree] & is_op[Op.VNORM]):
            m.d.sync += sumsq.eq(sumsq + part)

        # ---- stage 9: D = y (the word's lanes that hold elements); |y|; ACT words
        d_ptr = Signal(16)
        y9w = Cat(*y9)
        stream_word = Signal(signed(WORD_BITS))
        m.d.comb += stream_word.eq(self.att_i.payload)
        stream_value = Cat(*([stream_word] * P))
        d_onehot = Cat(lane_of(d_ptr) == j if pb else Const(1, 1) for j in range(P))
        host_onehot = Cat(lane_of(self.host_addr) == j if pb else Const(1, 1) for j in range(P))
        host_value = Cat(*([self.host_wr_data] * P))
        for b in GENERAL:
            host = ~active & self.host_wr_en & (self.host_bank == b)
            from_vector = valid[9] & is_vector & writes_bank[b]
            from_stream = self.att_i.valid & self.att_i.ready & writes_bank[b]
            m.d.comb += [
                wr_ports[b].addr.eq(word_addr(Mux(active, d_ptr, self.host_addr))),
                wr_ports[b].data.eq(Mux(active, Mux(is_stream, stream_value, y9w), host_value)),
                wr_ports[b].en.eq(Mux(host, host_onehot, 0) | Mux(from_vector, mask[9], 0) |
                                  Mux(from_stream, d_onehot, 0)),
            ]
        magnitudes = []
        for j in range(P):
            mag = Signal(WORD_BITS, name=f"mag10_l{j}", reset_less=True)
            m.d.sync += mag.eq(Mux(mask[9][j], Mux(y9[j][-1], -y9[j], y9[j]), 0))
            magnitudes.append(mag)

        # The word gathers in the ACT data register itself: the core reads it only with act_wr_en,
        # in the cycle after its last group came, before the next word's first group clears it.
        groups = self.k // P
        group = Signal(range(max(groups, 2)))  # (a 0-width signal would lint as [-1:0])
        act_word = Signal(16)
        act_bytes = Cat(Mux(mask[9][j], y9[j][:8], 0) for j in range(P))
        m.d.sync += self.act_wr_en.eq(0)
        with m.If(valid[9] & is_vector & writes_act):
            m.d.sync += group.eq(group + 1)
            for g in range(groups):
                with m.If(group == g):
                    m.d.sync += self.act_wr_data.word_select(g, 8 * P).eq(act_bytes)
                with m.Elif((group == 0) & (g != 0)):
                    m.d.sync += self.act_wr_data.word_select(g, 8 * P).eq(0)
            with m.If((group == groups - 1) | last[9]):
                m.d.sync += [self.act_wr_en.eq(1), self.act_wr_addr.eq(act_word), act_word.eq(act_word + 1),
                             group.eq(0)]

        # ---- stages 10..: the lanes' max|y| through a tree (two levels a stage), the running max; done
        running = Signal(WORD_BITS)
        peak = _reduce(m, magnitudes, lambda u, v: Mux(u > v, u, v), "max")
        with m.If(valid[10 + tree]):
            m.d.sync += running.eq(Mux(peak > running, peak, running))
        m.d.comb += [self.y0.eq(running), self.y2.eq(sumsq)]

        # ---- the stream ops: A through the FIFO to att_o; att_i to D
        m.submodules.fifo = fifo = SyncFIFO(width=MANT_BITS * P, depth=STREAM_FIFO_DEPTH)
        taken_o = self.att_o.valid & self.att_o.ready
        m.d.comb += [
            fifo.w_en.eq(valid[STREAM_STAGE] & is_stream), fifo.w_data.eq(Cat(x[:MANT_BITS] for x in a2)),
            self.att_o.valid.eq(fifo.r_rdy), self.att_o.payload.eq(fifo.r_data), fifo.r_en.eq(self.att_o.ready),
        ]
        m.d.sync += in_flight.eq(in_flight + (issue & is_stream) - taken_o)
        count_o, count_i = Signal(17), Signal(17)
        m.d.comb += self.att_i.ready.eq(active & is_op[Op.ATTEND] & (count_i < n))
        with m.If(taken_o):
            m.d.sync += count_o.eq(count_o + P)
        with m.If(self.att_i.valid & self.att_i.ready):
            m.d.sync += [count_i.eq(count_i + 1), d_ptr.eq(d_ptr + 1)]
        with m.If(valid[9] & is_vector):
            m.d.sync += d_ptr.eq(d_ptr + Mux(single, 1, P))

        # ---- run state
        stream_done = Signal()
        # (>=: an n that is not whole beats, which the model refuses, still ends)
        finished = (count_o >= n) & (is_op[Op.KVAPPEND] | (count_i == n))
        m.d.sync += stream_done.eq(active & is_stream & finished & ~stream_done)
        m.d.comb += [
            self.done.eq(Mux(is_stream, stream_done, last[latency])),
            self.busy.eq(active),
        ]
        with m.If(self.start & ~active):
            m.d.sync += [
                active.eq(1), running.eq(0), sumsq.eq(0), d_ptr.eq(self.d_addr), count_o.eq(0), count_i.eq(0),
                act_word.eq(self.d_addr >> k_bits), group.eq(0),
            ]
        with m.Elif(self.done):
            m.d.sync += active.eq(0)
        return m


def _reduce(m: Module, values: list, combine, name: str):
    """Reduce `values` pairwise with `combine`: a register after every two levels of the tree (and
    after the last), so the result comes `tree_stages(len(values))` cycles after the values (0: the
    value itself for one lane)."""
    level = 0
    while len(values) > 1:
        values = [combine(values[j], values[j + 1]) for j in range(0, len(values), 2)]
        level += 1
        if level % 2 == 0 or len(values) == 1:
            registered = []
            for j, v in enumerate(values):
                r = Signal(v.shape(), name=f"{name}_t{level}_{j}", reset_less=True)
                m.d.sync += r.eq(v)
                registered.append(r)
            values = registered
    return values[0]
