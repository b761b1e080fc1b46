"""The decoder engine's vector unit: the vector ops of contract/decoder.py, bit-exact to
`DecoderMachine._op_v*`, one element per cycle through one fixed-length pipeline, and the two stream
ops that feed the attention unit.

    VMAXABS  VSHIFT  VNORM  VQUANT  VSCALE  VROPE  VRESID  VRELU2  VMUL     n + 12 cycles each
    KVAPPEND  ATTEND                     A out on att_o (, D in on att_i)   n + 6 cycles, more under backpressure

Results: R[r0] = `y0` (max|y|) for VMAXABS, VSHIFT, VNORM, VSCALE, VROPE, VRELU2 and VMUL, and
R[r2] = `y2` (sum x^2) for VNORM; the engine writes them at `done` (VQUANT and VRESID set no
register; ATTEND's R[r0] is the attention unit's).

The unit owns the three general banks (MAIN, CONST, COPY: signed 32-bit words, one read port for
operands and the host, one write port for D and the host) and reaches the ternary core's output
memory (OUT, one read address, the word the cycle after) and activation memory (ACT, one write
port) through its ports. An op never reads two operands from one memory (the model refuses such a
program), so each memory's read port serves the one operand (A, B or C) that names it.

The pipeline (stage k of element i is cycle start + 1 + i + k):

    0   operand addresses: A[i], B[i] (VROPE: B[(i + n/2) mod n]), C[i mod n/2] (VROPE's omega)
    1   read data; OUT's lane; the operand's bank -> a, b, c
    2   barrel shifts: a by R[r1] (either direction, with a spare low bit for rounding), b by
        R[r2] (VMUL) or R[r1] (VROPE); RopePhase takes (pos, c)
    3   rounding of a (floor or half up): x
    4-5 x and y wait for the sine (RopePhase, then SinCos: 2 + 2 cycles); multiplier operands
    6   two signed 16 x 17 products: x * (gain | R[r2] | x | y | cos), x * x or y * sin
    7   VROPE's sum, VQUANT's round and clamp, VRESID's barrel shift; sum of squares (VNORM)
    8   VRESID's rounding and add to B[i]; the op's result y
    9   D[i] = y (general banks); |y|; ACT bytes gathered into words
    10  ACT word written; running max|y|
    11  done (y0 = max|y|, y2 = sum x^2)

Cycle contract: `start` (a one-cycle pulse while not `busy`) samples the instruction's fields, the
registers' values x1..x3 and the position. For a vector op, `busy` is high from the next cycle and
`done` pulses in cycle start + n + VECTOR_LATENCY (11), the last cycle of `busy`, when every write
is in its memory and `y0`, `y2` hold the results (until the next start); a new op can start the
cycle after `done`, so an op takes `vector_cycles(op, n) = n + 12` cycles. The stream ops issue A's
reads as the 4-entry output FIFO has room: `att_o` offers A[0..n) as int16 (the low bits of each
word), and ATTEND writes the i-th value taken on `att_i` to D[i]; `done` comes the cycle after the
last transfer (KVAPPEND: the n-th value taken on `att_o`; ATTEND: that and the n-th written): in
cycle start + n + 5 without backpressure (start + 2 for n = 0), so `vector_cycles` gives n + 6.

What the engine must respect (the model accepts a few programs the pipeline cannot run):
- D may overlap an operand's vector only where D starts at most 8 elements above it (in place,
  D == A or D == B, is the use): element i is read 9 cycles before D[i] is written, so a D that
  starts 9 or more above an operand's start and overlaps it would read elements already written
  (9: in the cycle of the write). VROPE reads B out of order: its D must not overlap B.
- Shift counts are clamped to [-63, 63] (numpy `>>` by a negative count gives the sign, as a count
  of 63 does); the factors R[r2] of VQUANT, VSCALE and VRESID are taken as uint16 (their low 16 bits).
- The stream ops' D is a general bank.
- Values outside the widths that the model checks (a WidthError there) give unspecified results.

Host port: while not `busy`, `host_addr` reads word `host_addr` of bank `host_bank` (0 MAIN,
1 CONST, 2 COPY) into `host_rd_data` the next cycle, and `host_wr_en` writes `host_wr_data` there.
"""
from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bitlane.contract.decoder import REG_BITS, WORD_BITS, Bank, Op
from bitlane.contract.intmath import MANT_BITS, Q_MAX, Q_SHIFT
from bitlane.hw import zero_init  # noqa: F401  (all-zero memory contents stay out of the netlist)
from bitlane.hw.nonlinear import RopePhase, SinCos

VECTOR_LATENCY = 11             # start + n + 11: done
STREAM_FIFO_DEPTH = 4           # A elements read ahead of att_o
STREAM_STAGE = 2                # the pipeline stage whose A element a stream op puts into that FIFO
SHIFT_LIMIT = 63                # shift counts are clamped to [-63, 63]
SHIFT_BITS = 6
LEFT_BITS = 5                   # left shifts of a 32-bit value that stay inside 34 bits: < 32
STREAM_OPS = (Op.KVAPPEND, Op.ATTEND)
VECTOR_OPS = (Op.VMAXABS, Op.VSHIFT, Op.VNORM, Op.VQUANT, Op.VSCALE, Op.VROPE, Op.VRESID, Op.VRELU2, Op.VMUL)
GENERAL = (Bank.MAIN, Bank.CONST, Bank.COPY)


def vector_cycles(op: int, n: int) -> int:
    """Cycles one op occupies the unit, from its `start` to the first cycle another start is
    taken: n + 12 for a vector op; the least (no backpressure) for a stream op."""
    if Op(op) in STREAM_OPS:
        return n + 6 if n else 3
    if Op(op) not in VECTOR_OPS:
        raise ValueError(f"{Op(op).name} is not an op of the vector unit")
    return n + VECTOR_LATENCY + 1


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
        Words of MAIN, CONST, COPY.
    lanes, k_per_cycle, out_depth, act_depth : int
        The ternary core's shape: OUT element e is lane e % lanes of word e // lanes, ACT element
        e is byte e % k_per_cycle of word e // k_per_cycle (both powers of two).
    """

    def __init__(self, bank_depth: tuple[int, int, int], lanes: int, k_per_cycle: int, out_depth: int,
                 act_depth: int) -> None:
        for name, value in (("lanes", lanes), ("k_per_cycle", k_per_cycle)):
            if value < 1 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two, got {value}")
        self.bank_depth, self.lanes, self.k = tuple(bank_depth), lanes, k_per_cycle
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
            "att_o": Out(stream.Signature(signed(MANT_BITS))),
            "att_i": In(stream.Signature(signed(MANT_BITS))),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        lane_bits, k_bits = (self.lanes - 1).bit_length(), (self.k - 1).bit_length()

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
        is_vector, is_stream = Signal(), Signal()
        writes_bank = {b: Signal(name=f"writes_{b.name.lower()}") for b in GENERAL}
        writes_act = Signal()
        active = Signal()

        with m.If(self.start & ~active):
            x1, x2, x3 = self.x1, self.x2, self.x3
            numpy_right, contract = _numpy_right(x1), _contract_shift(x1)
            shift_right_op = (self.op == Op.VSHIFT) | (self.op == Op.VQUANT)  # the contract's shift_right
            t_r = _contract_shift(x3)[0]
            t_l = Mux(x3[-1], Mux(x3 < -33, 33, (-x3)[:LEFT_BITS + 1]), 0)  # |d| < 2^32: left <= 32
            m.d.sync += [
                op.eq(self.op), n.eq(self.n),
                half.eq(Mux(self.op == Op.VROPE, self.n >> 1, 0)),
                *(banks[name].eq(getattr(self, f"{name}_bank")) for name in "abcd"),
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
                is_stream.eq((self.op == Op.KVAPPEND) | (self.op == Op.ATTEND)),
                *(writes_bank[b].eq((self.d_bank == b) & (self.op != Op.VMAXABS)) for b in GENERAL),
                writes_act.eq((self.d_bank == Bank.ACT) & (self.op != Op.VMAXABS)),
            ]

        # ---- issue: one element per cycle (stream ops: while the FIFO has room)
        issuing = Signal()
        index = Signal(16)
        a_ptr, b_ptr, c_ptr = Signal(16), Signal(16), Signal(16)
        in_flight = Signal(range(STREAM_FIFO_DEPTH + 1))  # A elements read and not yet taken on att_o
        issue, issue_last = Signal(), Signal()
        m.d.comb += [
            issue.eq(issuing & (~is_stream | (in_flight < STREAM_FIFO_DEPTH))),
            issue_last.eq(index == n - 1),
        ]
        with m.If(self.start & ~active):
            m.d.sync += [
                issuing.eq(self.n != 0), index.eq(0),
                a_ptr.eq(self.a_addr),
                b_ptr.eq(self.b_addr + Mux(self.op == Op.VROPE, self.n >> 1, 0)),
                c_ptr.eq(self.c_addr),
            ]
        with m.Elif(issue):
            wrap = index + 1 == half
            m.d.sync += [
                index.eq(index + 1), a_ptr.eq(a_ptr + 1),
                b_ptr.eq(Mux(wrap, addrs["b"], b_ptr + 1)),
                c_ptr.eq(Mux(wrap, addrs["c"], c_ptr + 1)),
            ]
            with m.If(issue_last):
                m.d.sync += issuing.eq(0)

        # Per-stage flags: valid, last (the op's final element, or n = 0's empty token), first half.
        stages = VECTOR_LATENCY + 1
        valid = [Signal(name=f"valid{k}") for k in range(stages)]
        last = [Signal(name=f"last{k}") for k in range(stages)]
        first = [Signal(name=f"first{k}") for k in range(stages)]
        m.d.comb += [valid[0].eq(issue), last[0].eq(issue & issue_last), first[0].eq(index < half)]
        # a stream op's elements leave the pipeline at stage 2 for the FIFO: past it they would reach
        # the next op's reductions and its `last` (the engine may start a vector op 3 cycles after a
        # stream op's done)
        for k in range(1, stages):
            keep = is_vector if k == STREAM_STAGE + 1 else 1
            m.d.sync += [valid[k].eq(valid[k - 1] & keep), last[k].eq(last[k - 1] & keep), first[k].eq(first[k - 1])]
        with m.If(self.start & ~active & (self.n == 0) & Cat(self.op == o for o in VECTOR_OPS).any()):
            m.d.sync += last[1].eq(1)

        # ---- stage 0: addresses; stage 1: read data and operand selection
        rd_ports, wr_ports = {}, {}
        for b in GENERAL:
            mem = Memory(shape=signed(WORD_BITS), depth=self.bank_depth[b], init=[], attrs={"no_rw_check": 1})
            m.submodules[f"bank_{b.name.lower()}"] = mem
            rd_ports[b], wr_ports[b] = mem.read_port(), mem.write_port()
            operand_addr = Mux(banks["a"] == b, a_ptr, Mux(banks["b"] == b, b_ptr, c_ptr))
            m.d.comb += rd_ports[b].addr.eq(Mux(active, operand_addr, self.host_addr))
        out_elem = Mux(banks["a"] == Bank.OUT, a_ptr, Mux(banks["b"] == Bank.OUT, b_ptr, c_ptr))
        out_lane = Signal(max(lane_bits, 1))
        m.d.comb += self.out_rd_addr.eq(out_elem >> lane_bits)
        m.d.sync += out_lane.eq(out_elem[:lane_bits] if lane_bits else 0)
        out_value = self.out_rd_data.word_select(out_lane, 32).as_signed() if lane_bits else \
            self.out_rd_data[:32].as_signed()

        def operand(name: str):
            value = out_value
            for b in GENERAL:
                value = Mux(banks[name] == b, rd_ports[b].data, value)
            return value

        host_bank = Signal(2)
        m.d.sync += host_bank.eq(self.host_bank)
        host_data = rd_ports[Bank.MAIN].data
        for b in (Bank.CONST, Bank.COPY):
            host_data = Mux(host_bank == b, rd_ports[b].data, host_data)
        m.d.comb += self.host_rd_data.eq(host_data)

        a2 = Signal(signed(WORD_BITS), reset_less=True)
        b2 = Signal(signed(WORD_BITS), reset_less=True)
        c2 = Signal(unsigned(WORD_BITS), reset_less=True)
        m.d.sync += [a2.eq(operand("a")), b2.eq(operand("b")), c2.eq(operand("c"))]

        # ---- stage 2: shifts (a keeps one bit below its LSB for the rounding), the phase
        w3 = Signal(signed(WORD_BITS + 2), reset_less=True)   # 2 a 2^-s
        b3 = Signal(signed(WORD_BITS), reset_less=True)
        doubled = Cat(Const(0, 1), a2).as_signed()
        m.d.sync += [
            w3.eq(Mux(a_left.any(), (doubled << a_left)[:WORD_BITS + 2].as_signed(), doubled >> a_right)),
            b3.eq(b2 >> b_right),
        ]
        m.submodules.phase = phase = RopePhase()
        m.submodules.sincos = sincos = SinCos()
        m.d.comb += [
            phase.i.valid.eq(1), phase.i.payload.position.eq(pos), phase.i.payload.omega.eq(c2),
            phase.o.ready.eq(1),
            sincos.i.valid.eq(phase.o.valid), sincos.i.payload.eq(phase.o.payload),
            sincos.o.ready.eq(1),
        ]

        # ---- stage 3: floor or round half up: x = (w + round) >> 1
        x4 = Signal(signed(WORD_BITS + 1), reset_less=True)
        b4 = Signal(signed(WORD_BITS), reset_less=True)
        m.d.sync += [x4.eq((w3 + a_round) >> 1), b4.eq(b3)]

        # ---- stages 4-5: wait for the sine; the multipliers' operands
        x5 = Signal(signed(WORD_BITS + 1), reset_less=True)
        b5 = Signal(signed(WORD_BITS), reset_less=True)
        m.d.sync += [x5.eq(x4), b5.eq(b4)]
        x16, b16 = x5[:MANT_BITS].as_signed(), b5[:MANT_BITS].as_signed()
        relu = Mux(x16[-1], 0, x16)
        p6 = Signal(signed(MANT_BITS), reset_less=True)
        q6 = Signal(signed(MANT_BITS + 1), reset_less=True)
        u6 = Signal(signed(MANT_BITS), reset_less=True)
        x6 = Signal(signed(WORD_BITS + 1), reset_less=True)
        b6 = Signal(signed(WORD_BITS), reset_less=True)
        uses_factor = is_op[Op.VQUANT] | is_op[Op.VSCALE] | is_op[Op.VRESID]
        m.d.sync += [
            p6.eq(Mux(is_op[Op.VRELU2], relu, x16)),
            q6.eq(Mux(uses_factor, factor, Mux(is_op[Op.VRELU2], relu, b16))),
            u6.eq(Mux(is_op[Op.VROPE], b16, x16)),
            x6.eq(x5), b6.eq(b5),
        ]

        # ---- stage 6: the products
        trig = sincos.o.payload
        m1 = Signal(signed(2 * MANT_BITS + 1), reset_less=True)
        m2 = Signal(signed(2 * MANT_BITS + 1), reset_less=True)
        x7 = Signal(signed(WORD_BITS + 1), reset_less=True)
        b7 = Signal(signed(WORD_BITS), reset_less=True)
        m.d.sync += [
            m1.eq(p6 * Mux(is_op[Op.VROPE], trig.cos, q6)),
            m2.eq(u6 * Mux(is_op[Op.VROPE], trig.sin, u6)),
            x7.eq(x6), b7.eq(b6),
        ]

        # ---- stage 7: VROPE's sum, VQUANT's code, VRESID's shift (2 t 2^-s), the sum of squares
        rope8 = Signal(signed(2 * MANT_BITS + 2), reset_less=True)
        quant8 = Signal(signed(8), reset_less=True)
        w8 = Signal(signed(2 * MANT_BITS + 4), reset_less=True)
        m1_8 = Signal(signed(2 * MANT_BITS + 1), reset_less=True)
        x8 = Signal(signed(WORD_BITS + 1), reset_less=True)
        b8 = Signal(signed(WORD_BITS), reset_less=True)
        sumsq = Signal(REG_BITS)
        q = (m1 + (1 << (Q_SHIFT - 1))) >> Q_SHIFT
        t2 = Cat(Const(0, 1), m1).as_signed()
        m.d.sync += [
            rope8.eq(Mux(first[7], m1 - m2, m1 + m2)),
            quant8.eq(Mux(q > Q_MAX, Q_MAX, Mux(q < -Q_MAX - 1, -Q_MAX - 1, q))),
            w8.eq(Mux(t_left.any(), (t2 << t_left)[:len(w8)].as_signed(), t2 >> t_right)),
            m1_8.eq(m1), x8.eq(x7), b8.eq(b7),
        ]
        with m.If(valid[7] & is_op[Op.VNORM]):
            m.d.sync += sumsq.eq(sumsq + m2.as_unsigned())

        # ---- stage 8: the op's result y
        y9 = Signal(signed(WORD_BITS), reset_less=True)
        resid = (w8 + Cat(Const(1, 1), b8).as_signed()) >> 1
        with m.Switch(op):
            with m.Case(Op.VMAXABS, Op.VSHIFT):
                m.d.sync += y9.eq(x8)
            with m.Case(Op.VQUANT):
                m.d.sync += y9.eq(quant8)
            with m.Case(Op.VROPE):
                m.d.sync += y9.eq(rope8)
            with m.Case(Op.VRESID):
                m.d.sync += y9.eq(resid)
            with m.Default():
                m.d.sync += y9.eq(m1_8)

        # ---- stage 9: D[i] = y; |y|; ACT words
        d_ptr = Signal(16)
        for b in GENERAL:
            host = ~active & self.host_wr_en & (self.host_bank == b)
            from_vector = valid[9] & is_vector & writes_bank[b]
            from_stream = self.att_i.valid & self.att_i.ready & writes_bank[b]
            m.d.comb += [
                wr_ports[b].addr.eq(Mux(active, d_ptr, self.host_addr)),
                wr_ports[b].data.eq(Mux(active, Mux(is_stream, self.att_i.payload, y9), self.host_wr_data)),
                wr_ports[b].en.eq(host | from_vector | from_stream),
            ]
        magnitude10 = Signal(WORD_BITS, reset_less=True)
        m.d.sync += magnitude10.eq(Mux(y9[-1], -y9, y9))

        # The word gathers in the ACT data register itself: the core reads it only with act_wr_en,
        # in the cycle after its last byte came, before the next word's first byte clears it.
        byte = Signal(range(self.k))
        act_word = Signal(16)
        m.d.sync += self.act_wr_en.eq(0)
        with m.If(valid[9] & is_vector & writes_act):
            m.d.sync += byte.eq(byte + 1)
            for j in range(self.k):
                with m.If(byte == j):
                    m.d.sync += self.act_wr_data.word_select(j, 8).eq(y9[:8])
                with m.Elif((byte == 0) & (j != 0)):
                    m.d.sync += self.act_wr_data.word_select(j, 8).eq(0)
            with m.If((byte == self.k - 1) | last[9]):
                m.d.sync += [self.act_wr_en.eq(1), self.act_wr_addr.eq(act_word), act_word.eq(act_word + 1), byte.eq(0)]

        # ---- stage 10: the running max|y|; stage 11: done
        running = Signal(WORD_BITS)
        with m.If(valid[10]):
            m.d.sync += running.eq(Mux(magnitude10 > running, magnitude10, running))
        m.d.comb += [self.y0.eq(running), self.y2.eq(sumsq)]

        # ---- the stream ops: A through the FIFO to att_o; att_i to D
        m.submodules.fifo = fifo = SyncFIFO(width=MANT_BITS, depth=STREAM_FIFO_DEPTH)
        taken_o = self.att_o.valid & self.att_o.ready
        m.d.comb += [
            fifo.w_en.eq(valid[STREAM_STAGE] & is_stream), fifo.w_data.eq(a2[:MANT_BITS]),
            self.att_o.valid.eq(fifo.r_rdy), self.att_o.payload.eq(fifo.r_data), fifo.r_en.eq(self.att_o.ready),
        ]
        m.d.sync += in_flight.eq(in_flight + (issue & is_stream) - taken_o)
        count_o, count_i = Signal(17), Signal(17)
        m.d.comb += self.att_i.ready.eq(active & is_op[Op.ATTEND] & (count_i < n))
        with m.If(taken_o):
            m.d.sync += count_o.eq(count_o + 1)
        with m.If(self.att_i.valid & self.att_i.ready):
            m.d.sync += [count_i.eq(count_i + 1), d_ptr.eq(d_ptr + 1)]
        with m.If(valid[9] & is_vector):
            m.d.sync += d_ptr.eq(d_ptr + 1)

        # ---- run state
        stream_done = Signal()
        finished = (count_o == n) & (is_op[Op.KVAPPEND] | (count_i == n))
        m.d.sync += stream_done.eq(active & is_stream & finished & ~stream_done)
        m.d.comb += [
            self.done.eq(Mux(is_stream, stream_done, last[VECTOR_LATENCY])),
            self.busy.eq(active),
        ]
        with m.If(self.start & ~active):
            m.d.sync += [
                active.eq(1), running.eq(0), sumsq.eq(0), d_ptr.eq(self.d_addr), count_o.eq(0), count_i.eq(0),
                act_word.eq(self.d_addr >> k_bits), byte.eq(0),
            ]
        with m.Elif(self.done):
            m.d.sync += active.eq(0)
        return m
