"""The attention unit of the integer decoder (docs/arithmetic.md, stages 4 and 5 and "KV cache"):
the K/V cache of every layer and kv head in block RAM, and one head's attention for one query token,
bit-exact to `IntegerModel._attention`:

    dot_j  = qm . km_j                                     [int48]  j = 0..p, macs multiplies per cycle
    t_j    = dot_j >> (ek* - ek_j)                         [int48]  ek* = max(ek_0..ek_p), a register
    p_j, sum, factor(sum), recip16                         SoftmaxRow (hw/softmax.py), c = eq + ek* + 10
    acc[i] = sum_j (p_j >> (ev* - ev_j)) * vm_j[i]         [int48]  macs multiplies per cycle
    am, ea = normalize(acc);  u = (am * recip16(sm)) >> 16 [int16]
    eu     = ea + ev* - es - 15                            (sm, es) = factor(sum)

`AttentionUnit.model` is the same in numpy (the contract's primitives); tests/test_attention_model.py
checks it equal to the reference's own "attn.out" on the shipped model and on random models, and
sim_tests/test_attention.py checks the gateware equal to the model.
"""

from types import SimpleNamespace

import numpy as np
from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bitlane.contract.intmath import (
    EXP_BITS, EXP_FRAC, MANT_BITS, MAX_POSITIONS, RECIP_SHIFT, WIDE_BITS, fits, normalize, shift_right,
)
from bitlane.contract.decoder import append_cycles, attend_cycles, tree_levels  # noqa: F401  (the unit's cycles)
from bitlane.hw.nonlinear import _bit_length
from bitlane.hw.softmax import SoftmaxRow, softmax_row

# Positions are uint16 (MAX_POSITIONS); the unit uses the bits that address its context.
POS_BITS = (MAX_POSITIONS - 1).bit_length()
# eu = ea + ev* - es - 15 with ea in [0, 33], ev* int8, es in [0, 16]: [-159, 145]; 10 bits signed.
EU_BITS = EXP_BITS + 2
# Largest right shift that still matters: an int48 shifted by 47 is its sign; p <= 2^15 by 16 is 0.
T_SHIFT_MAX = WIDE_BITS - 1
P_SHIFT_MAX = MANT_BITS
# Data bits of one block RAM (an ECP5 EBR without its parity bits); the cache is split to fit.
EBR_BITS = 1 << 14


class AttentionOp(enum.Enum, shape=2):
    """The command's operation."""
    APPEND_K = 0
    APPEND_V = 1
    ATTEND = 2


def command_layout(layers: int, kv_heads: int) -> data.StructLayout:
    """The command record: op, layer, kv_head, pos (uint16) and a signed 8-bit exponent."""
    return data.StructLayout({
        "op": AttentionOp,
        "layer": unsigned(max(1, (layers - 1).bit_length())),
        "kv_head": unsigned(max(1, (kv_heads - 1).bit_length())),
        "pos": unsigned(POS_BITS),
        "exp": signed(EXP_BITS),
    })


def beat_layout(lanes: int) -> data.ArrayLayout:
    """A beat of `lanes` int16 mantissas, the unit's input `i` (what the vector unit's att_o and KvLoad
    give it, and KvStore taps)."""
    return data.ArrayLayout(signed(MANT_BITS), lanes)


OUTPUT_LAYOUT = data.StructLayout({"value": signed(MANT_BITS), "exponent": signed(EU_BITS), "last": unsigned(1)})


def cache_slice_bits(depth: int) -> int:
    """Bits of each of the cache's memories: as many as one block RAM of EBR_BITS holds at `depth`
    words (an ECP5 DP16KD: 16384 x 1, 8192 x 2, 4096 x 4, 2048 x 8, ...); 1 beyond."""
    return max(1, EBR_BITS >> (depth - 1).bit_length())


class AttentionUnit(wiring.Component):
    """K/V cache and one head's attention for one query token (see the module docstring).

    Commands come on ``cmd`` (one at a time; ``cmd.ready`` is high only when the unit is idle):

    - ``APPEND_K`` / ``APPEND_V`` (``layer``, ``kv_head``, ``pos``, ``exp``): takes ``head_dim``
      mantissas on ``i``, ``in_lanes`` a beat (int16-wide, values within ``kv_bits``; the low ``kv_bits`` bits are
      stored) and writes them to ``cache[layer][kv_head][K|V][pos]``, stores ``exp`` as that
      position's ``ek`` / ``ev`` and updates the running maximum of (layer, kv_head, K|V):
      ``exp`` if ``pos == 0``, else ``max(max, exp)``. ``pos`` must be below ``context`` (not
      checked: a larger one writes another region of the cache).
    - ``ATTEND`` (``layer``, ``kv_head``, ``pos = p``, ``exp = eq``): takes the query head's
      ``head_dim`` int16 mantissas ``qm`` on ``i`` (in beats) and gives the ``head_dim`` outputs ``u`` on ``o``,
      each with the exponent ``eu`` (the same on every element of the vector) and ``last`` on
      the final one. It attends to positions ``0..p`` of (layer, kv_head), aligning to the
      running maxima ``ek*``, ``ev*``, which are the maxima over ``0..p`` when K and V were
      appended for positions ``0..p`` in order and nothing after ``p`` (what decoding and
      token-by-token prefill do: append position p, attend at p). Grouped-query attention:
      the caller passes ``kv_head = head // (heads // kv_heads)``.

    Datapath: ``macs`` multipliers (one DSP each) shared by both passes. The cache holds
    ``layers * kv_heads * 2 * context * G`` words of ``macs * kv_bits`` bits (``G = head_dim /
    macs`` words per position; one read feeds every multiplier), split into memories of
    ``cache_slice_bits(depth)`` bits side by side so that each is one block RAM (no cascade
    multiplexers: 16384 x 1 on the ECP5 for h128's cache at kv_bits 8); the exponents
    ``(ek, ev)`` per position and the maxima ``(ek*, ev*)`` per (layer, kv_head) are two small
    memories with byte writes. Pass 1 reads K word by word (``G`` cycles per position), multiplies
    by the query (held in a ring of ``G`` registers of ``macs`` lanes), sums the ``macs`` products
    in a registered adder tree of ``T = ceil(log2 macs)`` levels, accumulates ``G`` sums into
    ``dot_j``, shifts it to ``t_j`` and hands it to ``SoftmaxRow(context)``, whose row buffer holds
    the scores. Pass 2 takes each weight ``p_j`` from ``SoftmaxRow`` (holding it back for ``G``
    cycles), aligns it by ``ev* - ev_j`` and multiplies it by V word by word into ``head_dim``
    int48 accumulators (a ring of ``G`` registers of ``macs`` lanes, one 48-bit adder per lane).
    Then ``G`` cycles find ``bit_length(max |acc|)`` (OR of the magnitudes), a priority encoder
    gives ``ea``, and once ``SoftmaxRow`` has the row's ``recip16`` and ``es``, an output pipeline
    (lane select, shift by ``ea``, one more multiplier) gives ``u``, one element per cycle.

    Cycle contract: with W = ``in_lanes``, an APPEND occupies the unit ``append_cycles(d, W) = d / W + 2``
    cycles, an ATTEND at ``p`` ``attend_cycles(p, d, macs, W)`` cycles (with no input gaps and
    ``o.ready`` high; about ``2 (p + 1) G + d + d / W + 40``: 4 p + 124 for d = 64, macs = 32, W = 4;
    the function spells out each step), counted from the cycle the command is taken to the cycle the
    next one can be. The query is taken from the second cycle after the command; outputs leave one per cycle. Input
    gaps and output backpressure only add their own cycles; ``i.ready`` and ``cmd.ready`` are
    state bits (no path from ``o.ready`` to them).

    Parameters
    ----------
    head_dim : int
        ``d``, even; a multiple of ``macs``.
    kv_heads, layers : int
        The cache's key-value heads per layer and layers.
    context : int
        Positions per (layer, kv_head): the cache's depth and SoftmaxRow's row length.
    kv_bits : int
        Stored mantissa width, 8..16.
    macs : int
        Parallel multipliers (16 x ``kv_bits``, signed; 17 x ``kv_bits`` in pass 2).
    in_lanes : int
        W, the mantissas of one beat on ``i``; a divisor of ``macs`` (a cache word is whole beats).

    Members
    -------
    cmd : ``In(stream.Signature(command_layout(layers, kv_heads)))``
        ``op`` (``AttentionOp``), ``layer``, ``kv_head``, ``pos`` (uint16), ``exp`` (int8).
    i : ``In(stream.Signature(beat_layout(in_lanes)))``
        The ``head_dim`` mantissas of an APPEND or ATTEND, in element order, ``in_lanes`` a beat.
    o : ``Out(stream.Signature(StructLayout({"value": signed(16), "exponent": signed(10), "last": 1})))``
        ``u`` in element order, ``eu`` on every element, ``last`` on the final one.
    """

    def __init__(self, head_dim: int, kv_heads: int, layers: int, context: int, kv_bits: int = MANT_BITS,
                 macs: int = 16, in_lanes: int = 1) -> None:
        if head_dim < 2 or head_dim % 2:
            raise ValueError(f"head_dim {head_dim} must be even")
        if macs < 1 or head_dim % macs:
            raise ValueError(f"macs {macs} must divide head_dim {head_dim}")
        if in_lanes < 1 or macs % in_lanes:
            raise ValueError(f"in_lanes {in_lanes} must divide macs {macs}")
        if not 8 <= kv_bits <= MANT_BITS:
            raise ValueError(f"kv_bits {kv_bits} must be 8 to {MANT_BITS}")
        if kv_heads < 1 or layers < 1 or not 2 <= context <= MAX_POSITIONS:
            raise ValueError("kv_heads and layers must be >= 1, context 2 to 65536")
        self.head_dim, self.kv_heads, self.layers, self.context = head_dim, kv_heads, layers, context
        self.kv_bits, self.macs, self.in_lanes = kv_bits, macs, in_lanes
        self.groups = head_dim // macs
        super().__init__({
            "cmd": In(stream.Signature(command_layout(layers, kv_heads))),
            "i": In(stream.Signature(beat_layout(in_lanes))),
            "o": Out(stream.Signature(OUTPUT_LAYOUT)),
        })

    def cycles(self, p: int) -> int:
        """attend_cycles for this unit's shape."""
        return attend_cycles(p, self.head_dim, self.macs, self.in_lanes)

    @staticmethod
    def model(qm: np.ndarray, eq: int, km: np.ndarray, ek: np.ndarray, vm: np.ndarray,
              ev: np.ndarray) -> tuple[np.ndarray, int]:
        """One head's attention for one query in numpy, with the contract's primitives: qm [d] int16,
        km / vm [p + 1, d] mantissas and ek / ev [p + 1] exponents of positions 0..p (the running
        maxima are computed here). Returns (u [d] int16, eu)."""
        qm, km, vm = (np.asarray(a, dtype=np.int64) for a in (qm, km, vm))
        ek, ev = np.asarray(ek, dtype=np.int64), np.asarray(ev, dtype=np.int64)
        ek_max, ev_max = int(ek.max()), int(ev.max())
        dot = fits("score dot product", km @ qm, WIDE_BITS)
        t = shift_right(dot, ek_max - ek)
        row = softmax_row(t, int(eq) + ek_max + EXP_FRAC)
        weights = shift_right(row["p"], ev_max - ev)
        acc = fits("weighted V sum", weights @ vm, WIDE_BITS)
        am, ea = normalize(acc)
        u = fits("attention output", (am * row["recip"]) >> MANT_BITS, MANT_BITS)
        return u, int(ea[0]) + ev_max - row["exponent"] - (RECIP_SHIFT - MANT_BITS)

    def elaborate(self, platform) -> Module:
        m = Module()
        d, KV, C, G, macs, kvb = self.head_dim, self.kv_heads, self.context, self.groups, self.macs, self.kv_bits
        W = self.in_lanes
        beats = macs // W  # beats of `i` in a cache word
        m.submodules.softmax = softmax = SoftmaxRow(C)

        # ---- memories
        slots = self.layers * KV
        m.submodules.exps = exps = Memory(shape=unsigned(2 * EXP_BITS), depth=slots * C, init=[])  # context >= 2: depth >= 2
        m.submodules.maxima = maxima = Memory(shape=unsigned(2 * EXP_BITS), depth=max(slots, 2), init=[])  # no 0-bit address
        cache_w, cache_r = self._cache(m, macs * kvb, slots * 2 * C * G)
        exps_w, exps_r = exps.write_port(granularity=EXP_BITS), exps.read_port()
        max_w, max_r = maxima.write_port(granularity=EXP_BITS), maxima.read_port()

        # ---- the command
        pos_bits = max(1, (C - 1).bit_length())
        op = Signal(AttentionOp)
        is_v = Signal()
        pos = Signal(pos_bits)
        exp = Signal(signed(EXP_BITS))
        slot = Signal(range(max(slots, 2)))
        k_base = Signal(range(slots * 2 * C * G))  # the (layer, kv_head)'s K words; V follows C * G on
        v_base = Signal(range(slots * 2 * C * G))
        e_base = Signal(range(max(slots * C, 2)))
        w_addr = Signal(range(slots * 2 * C * G))  # APPEND: the next word to write
        e_addr = Signal(range(max(slots * C, 2)))          # APPEND: the position's exponents
        ek_max, ev_max = max_r.data[:EXP_BITS].as_signed(), max_r.data[EXP_BITS:].as_signed()
        ek_r, ev_r = exps_r.data[:EXP_BITS].as_signed(), exps_r.data[EXP_BITS:].as_signed()

        # ---- the input: a collector of macs - W elements; the beat completing a group goes with
        # them straight into the cache's write port or the query ring
        take = self.i.valid & self.i.ready
        setup = Signal()  # the maxima are read in the set-up cycle and held
        lane = Signal(range(max(beats, 2)))  # the beat within the group
        element = Signal(range(d))
        collector = [Signal(signed(MANT_BITS), name=f"collect{k}") for k in range(macs - W)]
        group_in = [*collector, *(self.i.payload[k] for k in range(W))]
        query = [[Signal(signed(MANT_BITS), name=f"q{g}_{k}") for k in range(macs)] for g in range(G)]
        m.d.comb += [
            cache_w.addr.eq(w_addr),
            cache_w.data.eq(Cat(x[:kvb] for x in group_in)),
            exps_w.addr.eq(e_addr), exps_w.data.eq(Cat(exp, exp)),
            max_w.addr.eq(slot),
            max_r.addr.eq(slot), max_r.en.eq(setup),
        ]
        with m.If(take):
            m.d.sync += [lane.eq(Mux(lane == beats - 1, 0, lane + 1)), element.eq(element + W)]
            m.d.sync += [held.eq(value) for held, value in zip(collector, group_in[W:])]

        # ---- passes 1 and 2 share stages 0-3: issue (memory addresses), memory data, operands, products
        j = Signal(range(max(C, 2)))             # position
        g = Signal(range(max(G, 2)))             # word of the position
        r_addr = Signal(range(slots * 2 * C * G))
        j_addr = Signal(range(max(slots * C, 2)))
        issue, second = Signal(), Signal()  # a word is read this cycle; in pass 2
        # stage k's flags: valid, pass 2, the position's last word, the last position
        v = [Signal(name=f"valid{k}") for k in range(1, 5)]
        sec = [Signal(name=f"second{k}") for k in range(1, 5)]
        lg = [Signal(name=f"last_word{k}") for k in range(1, 5)]
        lp = [Signal(name=f"last_pos{k}") for k in range(1, 5)]
        p1, p2 = Signal(MANT_BITS), Signal(MANT_BITS)       # p_j <= 2^15
        q2 = [Signal(signed(MANT_BITS), name=f"q2_{k}") for k in range(macs)]
        b2 = [Signal(signed(kvb), name=f"b2_{k}") for k in range(macs)]
        a3 = [Signal(signed(MANT_BITS + 1), name=f"a3_{k}") for k in range(macs)]
        b3 = [Signal(signed(kvb), name=f"b3_{k}") for k in range(macs)]
        e_diff = Signal(EXP_BITS)  # ek* - ek_j or ev* - ev_j, in [0, 255] (the maxima are maxima)
        t_shift3, t_shift4 = Signal(range(T_SHIFT_MAX + 1)), Signal(range(T_SHIFT_MAX + 1))
        products = [Signal(signed(MANT_BITS + 1 + kvb), name=f"product{k}") for k in range(macs)]
        m.d.comb += [
            cache_r.addr.eq(r_addr), cache_r.en.eq(issue),
            exps_r.addr.eq(j_addr), exps_r.en.eq(issue),
        ]
        weight = p2 >> Mux(e_diff > P_SHIFT_MAX, P_SHIFT_MAX, e_diff)[:P_SHIFT_MAX.bit_length()]
        m.d.sync += [
            v[0].eq(issue), sec[0].eq(second), lg[0].eq(g == G - 1), lp[0].eq(j == pos),
            *(later.eq(earlier) for flags in (v, sec, lg, lp) for earlier, later in zip(flags, flags[1:])),
            # stage 2: the block RAMs' data registered (their clock-to-output is slow), the exponent
            # difference; the query group read in stage 0 is at the back of the ring now
            e_diff.eq(Mux(sec[0], ev_max - ev_r, ek_max - ek_r)), p2.eq(p1),
            *(a.eq(b) for a, b in zip(q2, query[G - 1])),
            *(b2[k].eq(cache_r.data[k * kvb:(k + 1) * kvb].as_signed()) for k in range(macs)),
            # stage 3: the operands; stage 4: the products
            t_shift3.eq(Mux(e_diff > T_SHIFT_MAX, T_SHIFT_MAX, e_diff)), t_shift4.eq(t_shift3),
            *(a3[k].eq(Mux(sec[1], weight, q2[k])) for k in range(macs)),
            *(a.eq(b) for a, b in zip(b3, b2)),
            *(products[k].eq(a3[k] * b3[k]) for k in range(macs)),
        ]

        # ---- pass 1: adder tree, dot_j, t_j into SoftmaxRow
        level, valid, last_word, last_pos, shift = list(products), v[3] & ~sec[3], lg[3], lp[3], t_shift4
        depth = 0
        while len(level) > 1:
            depth += 1
            pairs = [level[k:k + 2] for k in range(0, len(level), 2)]
            nxt = [Signal(signed(len(pair[0]) + 1), name=f"tree{depth}_{k}") for k, pair in enumerate(pairs)]
            m.d.sync += [reg.eq(sum(pair)) for reg, pair in zip(nxt, pairs)]
            flags = [Signal(name=f"tree{depth}_valid"), Signal(name=f"tree{depth}_lg"), Signal(name=f"tree{depth}_lp"),
                     Signal(range(T_SHIFT_MAX + 1), name=f"tree{depth}_shift")]
            m.d.sync += [f.eq(x) for f, x in zip(flags, (valid, last_word, last_pos, shift))]
            level, (valid, last_word, last_pos, shift) = nxt, flags
        dot = Signal(signed(WIDE_BITS))
        dot_j = Signal(signed(WIDE_BITS))
        dot_valid, dot_last = Signal(), Signal()
        dot_shift = Signal(range(T_SHIFT_MAX + 1))
        total = dot + level[0]
        m.d.sync += dot_valid.eq(valid & last_word)
        with m.If(valid):
            m.d.sync += dot.eq(Mux(last_word, 0, total))
            with m.If(last_word):
                m.d.sync += [dot_j.eq(total), dot_last.eq(last_pos), dot_shift.eq(shift)]
        m.d.sync += [
            softmax.i.valid.eq(dot_valid),   # SoftmaxRow is ready (LOAD) throughout pass 1
            softmax.i.payload.t.eq(dot_j >> dot_shift),
            softmax.i.payload.last.eq(dot_last),
        ]
        m.d.comb += softmax.i.payload.c.eq(exp + ek_max + EXP_FRAC)

        # ---- pass 2: the accumulators, a ring of G groups of macs lanes; group 0 is updated (with
        # the products in flight) or just moved on, and goes to the back
        ring = [[Signal(signed(WIDE_BITS), name=f"acc{gr}_{k}") for k in range(macs)] for gr in range(G)]
        rotate, clear = Signal(), Signal()
        add = v[3] & sec[3]
        with m.If(clear):
            m.d.sync += [acc.eq(0) for group in ring for acc in group]
        with m.Elif(rotate | add):
            for gr in range(G - 1):
                m.d.sync += [a.eq(b) for a, b in zip(ring[gr], ring[gr + 1])]
            m.d.sync += [ring[G - 1][k].eq(ring[0][k] + Mux(add, products[k], 0)) for k in range(macs)]

        # ---- normalize: bit_length(max |acc|) as bit_length of the OR of the magnitudes
        magnitudes = Signal(WIDE_BITS)
        ea = Signal(range(WIDE_BITS - MANT_BITS + 2))  # 0..33
        length = Signal(range(WIDE_BITS + 1))
        m.d.comb += length.eq(_bit_length(magnitudes))

        # ---- the output pipeline: lane select, shift by ea, multiply by recip16(sm), >> 16
        recip = Signal(MANT_BITS)
        eu = Signal(signed(EU_BITS))
        out_lane = Signal(range(max(macs, 2)))
        out_count = Signal(range(d + 1))
        source = Signal()
        advance = Signal()
        ov1, ov2, ol1, ol2 = Signal(), Signal(), Signal(), Signal()
        selected = Signal(signed(WIDE_BITS))
        am = Signal(signed(MANT_BITS))
        # `advance` moves the output pipeline; it is a flip-flop's (`skid_valid`), not `o.ready`, so that no
        # path runs from the consumer's ready into the enables of the accumulator ring (3,072 flip-flops
        # for h128: that path limited the ULX3S's clock). When `o` is held, the value the pipeline
        # finishes waits in the skid register and the pipeline stops after it; with `o.ready` high the
        # skid stays empty and the timing is as if `o.ready` drove the pipeline.
        skid_valid, skid_last = Signal(), Signal()
        skid_value = Signal.like(self.o.payload.value)
        finished_value = (am * recip) >> MANT_BITS
        m.d.comb += [
            advance.eq(~skid_valid),
            self.o.payload.exponent.eq(eu),
        ]
        with m.If(~self.o.valid | self.o.ready):
            with m.If(skid_valid):
                m.d.sync += [self.o.valid.eq(1), self.o.payload.last.eq(skid_last), self.o.payload.value.eq(skid_value),
                             skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o.valid.eq(ov2), self.o.payload.last.eq(ol2), self.o.payload.value.eq(finished_value)]
        with m.Elif(advance & ov2):
            m.d.sync += [skid_valid.eq(1), skid_last.eq(ol2), skid_value.eq(finished_value)]
        # group 0's first lane leaves directly, the others through a shift register (no macs-way mux)
        later = [Signal(signed(WIDE_BITS), name=f"later{k}") for k in range(macs - 1)]
        first_lane = out_lane == 0
        lanes = Mux(first_lane, ring[0][0], later[0]) if later else ring[0][0]
        with m.If(advance):
            m.d.sync += [
                ov1.eq(source), ol1.eq(out_count == d - 1), selected.eq(lanes),
                ov2.eq(ov1), ol2.eq(ol1), am.eq(selected >> ea),
            ]
        out_take = source & advance

        # ---- control
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    c = self.cmd.payload
                    m.d.sync += [
                        op.eq(c.op), is_v.eq(c.op == AttentionOp.APPEND_V), pos.eq(c.pos[:pos_bits]), exp.eq(c.exp),
                        slot.eq(_times(c.layer, KV) + c.kv_head),
                    ]
                    m.next = "SETUP"
            with m.State("SETUP"):
                m.d.comb += [setup.eq(1), clear.eq(1)]
                region = _times(slot, 2 * C * G)
                m.d.sync += [
                    k_base.eq(region), v_base.eq(region + C * G), e_base.eq(_times(slot, C)),
                    w_addr.eq(region + Mux(is_v, C * G, 0) + _times(pos, G)),
                    e_addr.eq(_times(slot, C) + pos),
                    lane.eq(0), element.eq(0), magnitudes.eq(0), dot.eq(0),
                ]
                m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += self.i.ready.eq(1)
                complete = take & (lane == beats - 1)
                with m.If(op == AttentionOp.ATTEND):
                    with m.If(complete):
                        for gr in range(G - 1):
                            m.d.sync += [a.eq(b) for a, b in zip(query[gr], query[gr + 1])]
                        m.d.sync += [a.eq(b) for a, b in zip(query[G - 1], group_in)]
                with m.Else():
                    m.d.comb += cache_w.en.eq(complete)
                    with m.If(complete):
                        m.d.sync += w_addr.eq(w_addr + 1)
                with m.If(take & (element == d - W)):
                    with m.If(op == AttentionOp.ATTEND):
                        m.d.sync += [j.eq(0), g.eq(0), r_addr.eq(k_base), j_addr.eq(e_base)]
                        m.next = "SCORE"
                    with m.Else():
                        old = Mux(is_v, ev_max, ek_max)
                        byte = Mux(is_v, 0b10, 0b01)
                        m.d.comb += [exps_w.en.eq(byte),
                                     max_w.en.eq(Mux((pos == 0) | (exp > old), byte, 0)),
                                     max_w.data.eq(Cat(exp, exp))]
                        m.next = "IDLE"
            with m.State("SCORE"):
                m.d.comb += issue.eq(1)
                self._step(m, j, g, r_addr, j_addr, pos)
                for gr in range(G - 1):
                    m.d.sync += [a.eq(b) for a, b in zip(query[gr], query[gr + 1])]
                m.d.sync += [a.eq(b) for a, b in zip(query[G - 1], query[0])]
                with m.If((j == pos) & (g == G - 1)):
                    m.d.sync += [j.eq(0), g.eq(0), r_addr.eq(v_base), j_addr.eq(e_base)]
                    m.next = "WEIGHT"
            with m.State("WEIGHT"):
                first = g == 0
                m.d.comb += [
                    softmax.o.ready.eq(first),
                    issue.eq(~first | softmax.o.valid), second.eq(1),
                ]
                with m.If(issue):
                    self._step(m, j, g, r_addr, j_addr, pos)
                    with m.If(first):
                        m.d.sync += p1.eq(softmax.o.payload.p)
                    with m.If((j == pos) & (g == G - 1)):
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If(~v[0] & ~v[1] & ~v[2]):  # the last product is added this cycle
                    m.next = "NORM"
            with m.State("NORM"):
                m.d.comb += rotate.eq(1)
                magnitude = [((acc.as_unsigned() ^ acc[-1].replicate(WIDE_BITS)) + acc[-1])[:WIDE_BITS] for acc in ring[0]]
                m.d.sync += [magnitudes.eq(magnitudes | _or(magnitude)), g.eq(g + 1)]
                with m.If(g == G - 1):
                    m.d.sync += g.eq(0)
                    m.next = "ENCODE"
            with m.State("ENCODE"):
                m.d.sync += ea.eq(Mux(length > MANT_BITS - 1, length - (MANT_BITS - 1), 0))
                m.next = "ROW"
            with m.State("ROW"):
                m.d.comb += softmax.row.ready.eq(1)
                with m.If(softmax.row.valid):
                    m.d.sync += [
                        recip.eq(softmax.row.payload.recip),
                        eu.eq(ea + ev_max - softmax.row.payload.factor.exponent - (RECIP_SHIFT - MANT_BITS)),
                        out_lane.eq(0), out_count.eq(0),
                    ]
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += source.eq(out_count != d)
                with m.If(out_take):
                    m.d.sync += [out_count.eq(out_count + 1), out_lane.eq(Mux(out_lane == macs - 1, 0, out_lane + 1))]
                    m.d.comb += rotate.eq(first_lane)
                    m.d.sync += [a.eq(Mux(first_lane, b, c)) for a, b, c in zip(later, ring[0][1:], later[1:] + [0])]
                with m.If(self.o.valid & self.o.ready & self.o.payload.last):
                    m.next = "IDLE"
        return m

    @staticmethod
    def _cache(m: Module, width: int, depth: int) -> tuple[SimpleNamespace, SimpleNamespace]:
        """The cache: `depth` words of `width` bits, as memories of `cache_slice_bits(depth)` bits each
        side by side (one block RAM each when the depth fits one), so that no output multiplexers
        cascade block RAMs. Returns a write and a read port (addr, data, en) that drive them all."""
        cells = {"addr": unsigned((depth - 1).bit_length()), "data": unsigned(width), "en": unsigned(1)}
        ports = [SimpleNamespace(**{k: Signal(v, name=f"cache_{kind}_{k}") for k, v in cells.items()})
                 for kind in ("w", "r")]
        w, r = ports
        step = cache_slice_bits(depth)
        for n, lo in enumerate(range(0, width, step)):
            bits = min(step, width - lo)
            m.submodules[f"cache{n}"] = mem = Memory(shape=unsigned(bits), depth=depth, init=[])
            write, read = mem.write_port(), mem.read_port()
            m.d.comb += [
                write.addr.eq(w.addr), write.data.eq(w.data[lo:lo + bits]), write.en.eq(w.en),
                read.addr.eq(r.addr), read.en.eq(r.en), r.data[lo:lo + bits].eq(read.data),
            ]
        return w, r

    def _step(self, m: Module, j: Signal, g: Signal, r_addr: Signal, j_addr: Signal, pos: Signal) -> None:
        """One word read in a pass: the next word, position and exponent address."""
        m.d.sync += [r_addr.eq(r_addr + 1), g.eq(g + 1)]
        with m.If(g == self.groups - 1):
            m.d.sync += [g.eq(0), j.eq(j + 1), j_addr.eq(j_addr + 1)]


def _times(x, constant: int):
    """x * constant as shifted additions (no multiplier for the address arithmetic)."""
    terms = [x << k for k in range(constant.bit_length()) if constant >> k & 1]
    return sum(terms[1:], terms[0]) if terms else 0


def _or(values):
    result = values[0]
    for v in values[1:]:
        result = result | v
    return result
