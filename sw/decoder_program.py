"""Compile an integer model into the decoder engine's program and memory images (contract/decoder.py).

The host does this once per model: `compile_decoder(model, shape)` gives the instructions of one
decoder step (all layers of one token), the CONST bank image (norm gains, RoPE omega), where each
ternary matrix goes in the core's weight memory, and where the engine takes the embedding row and
leaves the final hidden state. Every per-tensor constant of golden.integer's conversion becomes an
immediate of a MOVI, so the program and the CONST image are the whole model apart from the trits.
Ternary weights that do not fit the core's weight memory go to the device's SDRAM (`place_weights`),
and the program stages them into weight memory with WFETCH before their TRUN. A KV cache with more
(layer, KV head) pairs than the engine's cache has slots goes to SDRAM too, on an engine with
`kv_sdram` (contract/kv_stream.py): each KV head's attention first loads its K and V (KVLOAD) into
slot (0, 0), appends the token's K and V there and stores them to SDRAM (KVAPPEND's store), then
attends its query heads.

The program follows golden.integer.IntegerModel.hidden stage by stage (docs/arithmetic.md); the test
tests/test_decoder_program.py runs it on contract.decoder.DecoderMachine and compares every token's
final hidden state and the KV cache with the reference, integer for integer.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from bitlane.contract.decoder import (REGISTERS, WAIT_CORE, Bank, Instruction, MachineShape, Op, effects,
                                      needs_wait_core, overlap_schedule)
from bitlane.contract.intmath import FACTOR_ONE, MANT_BITS, TRIG_FRAC
from bitlane.contract.kv_stream import KV_ALIGN, KV_STORE, KV_V, kv_row_words
from bitlane.contract.packing import tiles
from bitlane.golden.integer import IntegerModel

BITLINEARS = ("q", "k", "v", "o", "gate", "up", "down")


class DecoderFitError(ValueError):
    """The model does not fit the engine: the message names what and by how much."""


@dataclass
class DecoderImage:
    """What the host loads for decoder mode, and where the engine's inputs and outputs are."""

    program: list[Instruction]
    const: np.ndarray                     # CONST bank words from address 0
    weights: dict[tuple[int, str], int]   # (layer, BitLinear) -> w_base (weight-memory word): the resident ones
    weight_words: int                     # weight-memory words used (resident matrices and the staging region)
    emb_addr: int                         # MAIN: the int16 embedding row goes here
    out_addr: int                         # MAIN: the final hidden state's int16 mantissas
    out_exp_reg: int                      # register holding its exponent
    bank_words: tuple[int, int, int]      # words used of MAIN, CONST, COPY
    hidden: int = 0
    listing: list[str] = field(default_factory=list)
    # weights in SDRAM (`WeightPlacement`): (layer, BitLinear) -> SDRAM word of its packed words, in
    # SDRAM order; the SDRAM words they take from `sdram_base`; the staging region's weight words
    streamed: dict[tuple[int, str], int] = field(default_factory=dict)
    sdram_base: int = 0
    sdram_words: int = 0
    stage: tuple[int, int] = (0, 0)
    # the KV cache in SDRAM (empty where it is in block RAM): its regions' first SDRAM word and words
    kv_sdram: tuple[int, int] = (0, 0)

    @property
    def fetched_words(self) -> int:
        """Weight words the program's WFETCHes copy per token."""
        return sum(ins.n for ins in self.program if ins.op == Op.WFETCH)


@dataclass
class WeightPlacement:
    """Where each BitLinear's weight words are: resident in the core's weight memory, or in the device's
    SDRAM, staged through one region of weight memory by WFETCH before each of its TRUNs.

    All resident where they fit (no SDRAM traffic). Otherwise the staging region takes `stage` words at
    the top of the used weight memory (the largest matrix, or all of weight memory less nothing where a
    matrix is larger: then its TRUN is split into runs of whole row tiles, which are consecutive words
    of the tile-major layout), and the matrices that fit the rest, in program order, stay resident.
    The fetch is synchronous (the engine waits for it), so one region suffices; a second region,
    fetched while the core runs from the first, would hide the fetch behind the product."""

    resident: dict[tuple[int, str], int]
    streamed: dict[tuple[int, str], int]  # SDRAM word (from `sdram_base`)
    stage: tuple[int, int]                # (first weight word, words); words 0 where nothing is streamed
    weight_words: int                     # weight-memory words used
    sdram_words: int                      # SDRAM words used


def place_weights(sizes: dict[tuple[int, str], int], weight_depth: int | None, sdram_words: int,
                  spw: int | None, sdram_base: int = 0, stage_words: int | None = None) -> WeightPlacement:
    """Place matrices of `sizes` weight words (in program order) on a device with `weight_depth` weight
    words (None: unbounded) and `sdram_words` SDRAM words of `spw` SDRAM words per weight word (None: its
    weight words are not whole SDRAM words). `stage_words` forces streaming through a region of that
    size (tests). DecoderFitError, in one line with both sizes, where the weights fit neither."""
    total = sum(sizes.values())
    if stage_words is not None and weight_depth is None:
        raise ValueError("stage_words needs the weight memory's depth")
    if stage_words is None and (weight_depth is None or total <= weight_depth):
        resident, used = {}, 0
        for key, words in sizes.items():
            resident[key] = used
            used += words
        return WeightPlacement(resident, {}, (0, 0), used, 0)
    if not sdram_words or spw is None:
        why = "the device has no SDRAM" if not sdram_words else "its weight words are not whole SDRAM words"
        raise DecoderFitError(f"weight memory: the model needs {total} words, the device has {weight_depth} "
                              f"({total - weight_depth} short; {why} to stream them from)")
    stage = min(stage_words or max(sizes.values()), weight_depth, 0xFFFF)  # WFETCH's n is 16 bits
    resident, streamed, used, sdram = {}, {}, 0, 0
    for key, words in sizes.items():
        if used + words <= weight_depth - stage:
            resident[key] = used
            used += words
        else:
            streamed[key] = sdram_base + sdram
            sdram += words * spw
    if sdram_base + sdram > sdram_words:
        raise DecoderFitError(f"weights: the model's {total:,} weight words do not fit: the weight memory holds "
                              f"{weight_depth:,} words, and the {sdram:,} SDRAM words of those streamed exceed "
                              f"the SDRAM's {sdram_words - sdram_base:,} from word {sdram_base}")
    return WeightPlacement(resident, streamed, (used, stage), used + stage, sdram)


class _Registers:
    """Named registers: one index per name for the whole program; pairs start at even indices."""

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        self.next = 2  # R0 is zero; R1 stays free so that the first pair is aligned

    def __call__(self, name: str, pair: bool = False) -> int:
        if name not in self.names:
            if pair and self.next % 2:
                self.next += 1
            self.names[name] = self.next
            self.next += 2 if pair else 1
            if self.next > REGISTERS:
                raise DecoderFitError(f"the program needs more than the engine's {REGISTERS} registers")
        return self.names[name]


class _Memory:
    """Bump allocation of named vectors in one bank, each at a multiple of `align` (the vector unit's
    elements per cycle: contract/decoder.py's alignment rule)."""

    def __init__(self, bank: Bank, align: int = 1) -> None:
        self.bank, self.align, self.used, self.where = bank, align, 0, {}

    def __call__(self, name: str, n: int) -> tuple[Bank, int]:
        if name not in self.where:
            self.where[name] = self.used
            self.used += -(-n // self.align) * self.align
        return self.bank, self.where[name]


def _ins(op: Op, *, r0=0, r1=0, r2=0, r3=0, a=(0, 0), b=(0, 0), c=(0, 0), d=(0, 0), n=0, imm=0) -> Instruction:
    return Instruction(op=int(op), r0=r0, r1=r1, r2=r2, r3=r3, a_bank=int(a[0]), b_bank=int(b[0]),
                       c_bank=int(c[0]), d_bank=int(d[0]), a_addr=a[1], b_addr=b[1], c_addr=c[1], d_addr=d[1],
                       n=n, imm=imm & 0xFFFFFFFF)


def overlap_core(program: list[Instruction], shape: MachineShape) -> list[Instruction]:
    """`program` (ending in HALT) reordered so that the ternary core's RUNs overlap the engine's other
    work, and WAIT_CORE set where an instruction touches what a running TRUN reads or writes
    (contract/decoder.py). The order is contract.decoder.overlap_schedule's for an engine that runs one
    instruction at a time beside the core; it keeps every dependence of the program, so that its results
    are the program's at every position from 1 on (where a KVLOAD writes rows that an ATTEND reads) and
    at 0. (The schedule's cycles are those of position 1 without the core's fill and drain: the order
    depends on them little, and the counted cycles are `decode_cycles`.)"""
    body, halt = program[:-1], program[-1]
    pos = min(1, shape.context - 1)
    _, start = overlap_schedule(body, pos, shape, 0, unit=lambda op: "core" if op == Op.TRUN else "engine")
    ordered, running = [], None
    for ins in [body[i] for i in sorted(range(len(body)), key=lambda i: (start[i], i))] + [halt]:
        if ins.waits_for_core:
            running = None
        elif running is not None and needs_wait_core(ins, shape, pos, running):  # (a TRUN's effects: any position)
            ins, running = replace(ins, flags=ins.flags | WAIT_CORE), None
        ordered.append(ins)
        if ins.op == Op.TRUN:
            running = effects(ins, shape, pos)
    return ordered


def compile_decoder(model: IntegerModel, shape: MachineShape, weight_depth: int | None = None,
                    sdram_words: int = 0, spw: int | None = None, sdram_base: int = 0,
                    stage_words: int | None = None) -> DecoderImage:
    """The decoder engine's program and images for `model` on an engine of `shape`; raises
    DecoderFitError naming what does not fit. `weight_depth`, `sdram_words` and `spw` (SDRAM words per
    weight word, contract/weight_stream.py) are the device's: weights that do not fit the weight memory
    go to SDRAM from word `sdram_base` (`place_weights`; `stage_words` forces it). Without
    `weight_depth` every matrix is resident and the caller checks the size (`weight_words`)."""
    cfg = model.int_config
    n, m, H, KV, d = cfg.hidden, cfg.intermediate, cfg.heads, cfg.kv_heads, cfg.head_dim
    if cfg.act != "relu2":
        raise DecoderFitError(f"activation {cfg.act!r}: the decoder engine runs relu2 models only")
    if d != shape.head_dim:
        raise DecoderFitError(f"head_dim {d}: the engine's attention unit is built for {shape.head_dim}")
    # the KV cache: in the attention unit's slots, or staged from SDRAM through slot (0, 0)
    staged = cfg.layers > shape.layers or KV > shape.kv_heads
    if staged and not (shape.kv_sdram and sdram_words):
        what, need, have = ("layers", cfg.layers, shape.layers) if cfg.layers > shape.layers else \
            ("kv_heads", KV, shape.kv_heads)
        raise DecoderFitError(f"{what} {need}: the engine's attention unit is built for {have}"
                              " and cannot stage its KV cache from SDRAM")
    lanes, k = shape.lanes, shape.k_per_cycle
    out_words = lambda rows: -(-rows // lanes)  # noqa: E731
    R = _Registers()
    P = shape.vector_lanes
    if d % (2 * P):
        raise DecoderFitError(f"head_dim {d}: VROPE needs a multiple of twice the vector unit's {P} lanes")
    main, const, copy = _Memory(Bank.MAIN, P), _Memory(Bank.CONST, P), _Memory(Bank.COPY, P)
    prog: list[Instruction] = []
    emit = prog.append

    # ---- the CONST image: per layer four gains, the final gain, omega
    const_words: list[np.ndarray] = []

    def put_const(name: str, values: np.ndarray) -> tuple[Bank, int]:
        place = const(name, len(values))
        const_words.append(np.asarray(values, dtype=np.int64))
        const_words.append(np.zeros(const.used - place[1] - len(values), dtype=np.int64))  # to the next word
        return place

    omega = put_const("omega", np.where(model.omega >= 1 << 31, model.omega - (1 << 32), model.omega))
    gains = {}
    for i, layer in enumerate(model.layers):
        for key, norm in layer.norms.items():
            gains[i, key] = put_const(f"gain {i} {key}", norm.gain)
    final_gain = put_const("gain final", model.final.gain)

    # ---- weight placement: every BitLinear is one RUN from weight memory, resident or staged there
    # from SDRAM by a WFETCH (in row-tile runs where it is larger than the staging region)
    sizes = {}
    for i, layer in enumerate(model.layers):
        for key in BITLINEARS:
            rt, ks = tiles(*layer.trits[key].shape, lanes, k)
            sizes[i, key] = rt * ks
    placement = place_weights(sizes, weight_depth, sdram_words, spw, sdram_base, stage_words)
    weights = placement.resident
    # the KV regions after the weights: (layer, KV head, K|V), `context` rows each
    row_words = kv_row_words(d)
    kv_base = -(-(sdram_base + placement.sdram_words) // KV_ALIGN) * KV_ALIGN
    region_words = shape.context * row_words
    kv_words = cfg.layers * KV * 2 * region_words if staged else 0
    if kv_base + kv_words > sdram_words and staged:
        raise DecoderFitError(f"KV cache in SDRAM: {kv_words:,} words ({cfg.layers} layers x {KV} KV heads x K, V "
                              f"x {shape.context} positions x {row_words} words) from word {kv_base:,} exceed the "
                              f"SDRAM's {sdram_words:,} words")

    def kv_region(layer: int, g: int, kind: int) -> int:
        return kv_base + ((layer * KV + g) * 2 + kind) * region_words

    def movi_pair(name: str, value: tuple) -> int:
        r = R(name, pair=True)
        emit(_ins(Op.MOVI, r0=r, imm=int(value[0])))
        emit(_ins(Op.MOVI, r0=r + 1, imm=int(value[1])))
        return r

    def norm_quant(src: tuple[Bank, int], length: int, gain: tuple[Bank, int], scale: int, eps: int) -> int:
        """RMSNorm statistics and int8 quantization of src into ACT word 0; returns the ratio pair.
        R[rM] holds max|src|: the op that wrote src left it there (no VMAXABS pass)."""
        rM, rS, rSS, rZM, rE = R("nq max"), R("nq shift"), R("nq ss"), R("nq zmax"), R("nq eps")
        z = copy("z", max(n, m))
        emit(_ins(Op.NSHIFT, r0=rS, r1=rM, imm=MANT_BITS))
        emit(_ins(Op.VNORM, r0=rZM, r1=rS, r2=rSS, a=src, b=gain, d=z, n=length))
        emit(_ins(Op.EPS, r0=rE, r1=scale, r2=eps, r3=rS))
        emit(_ins(Op.ADD, r0=rSS, r1=rSS, r2=rE))
        rQ = R("nq quant", pair=True)
        emit(_ins(Op.QFACTOR, r0=rQ, r1=rZM))
        emit(_ins(Op.VQUANT, r1=rQ + 1, r2=rQ, a=z, d=(Bank.ACT, 0), n=length))
        rF, rR, ratio = R("nq fz", pair=True), R("nq rsqrt", pair=True), R("ratio", pair=True)
        emit(_ins(Op.FACTOR, r0=rF, r1=rZM, r2=0))
        emit(_ins(Op.RSQRT, r0=rR, r1=rSS))
        emit(_ins(Op.FMUL, r0=ratio, r1=rF, r2=rR))
        return ratio

    def trun(layer: int, key: str, out_word: int) -> None:
        rows, cols = model.layers[layer].trits[key].shape
        if (layer, key) in weights:
            emit(_ins(Op.TRUN, a=(Bank.ACT, 0), b=(0, cols), d=(Bank.OUT, out_word), n=rows,
                      imm=weights[layer, key]))
            return
        # staged from SDRAM: runs of whole row tiles (their words are consecutive), each fetched, then run
        stage, stage_words = placement.stage
        rt_total, ks = tiles(rows, cols, lanes, k)
        per_run = stage_words // ks
        if per_run < 1:
            raise DecoderFitError(f"layer {layer} {key}: one row tile of {ks} weight words exceeds the staging "
                                  f"region of {stage_words}")
        for rt in range(0, rt_total, per_run):
            tiles_now = min(per_run, rt_total - rt)
            emit(_ins(Op.WFETCH, d=(0, stage), n=tiles_now * ks,
                      imm=placement.streamed[layer, key] + rt * ks * spw))
            emit(_ins(Op.TRUN, a=(Bank.ACT, 0), b=(0, cols), d=(Bank.OUT, out_word + rt),
                      n=min(rows - rt * lanes, tiles_now * lanes), imm=stage))

    def dequant(layer: int, key: str, ratio: int, slot: int = 0) -> int:
        """f = ratio (x) C_key into factor slot `slot` (products used together take different slots)."""
        c = movi_pair("constant", model.layers[layer].factors[key])
        f = R(f"factor {slot}", pair=True)
        emit(_ins(Op.FMUL, r0=f, r1=ratio, r2=c))
        return f

    def scale_head(src: tuple[Bank, int], f: int, bits: int, dst: tuple[Bank, int], rope: bool) -> int:
        """_rope (if `rope`) and _scale of one head's accumulators into `dst`; returns the exponent register."""
        rA, rS1, rS2, rS3, rT = R("h max"), R("h s1"), R("h s2"), R("h s3"), R("h tmax")
        rE = R("h exp")
        t = copy("t", max(n, d))
        if rope:  # VROPE reads the rotate-half partner from another bank: the copy also gives max|src|
            partner, rotated = copy("partner", d), main("rotated", d)
            emit(_ins(Op.VSHIFT, r0=rA, a=src, d=partner, n=d))
        else:
            emit(_ins(Op.VMAXABS, r0=rA, a=src, n=d))
        emit(_ins(Op.NSHIFT, r0=rS1, r1=rA, imm=MANT_BITS))
        if rope:
            emit(_ins(Op.VROPE, r0=rT, r1=rS1, a=src, b=partner, c=phases, d=rotated, n=d))
            emit(_ins(Op.NSHIFT, r0=rS2, r1=rT, imm=MANT_BITS))
            emit(_ins(Op.VSCALE, r0=rT, r1=rS2, r2=f, a=rotated, d=t, n=d))
            emit(_ins(Op.ADD, r0=rE, r1=rS1, r2=rS2, imm=-TRIG_FRAC))
        else:
            emit(_ins(Op.VSCALE, r0=rT, r1=rS1, r2=f, a=src, d=t, n=d))
            emit(_ins(Op.ADD, r0=rE, r1=rS1, r2=0))
        emit(_ins(Op.NSHIFT, r0=rS3, r1=rT, imm=bits))
        emit(_ins(Op.VSHIFT, r1=rS3, a=t, d=dst, n=d))
        emit(_ins(Op.ADD, r0=rE, r1=rE, r2=rS3))
        emit(_ins(Op.ADD, r0=rE, r1=rE, r2=f + 1))
        return rE

    rM = R("nq max")  # max|x| of the vector that the next norm_quant takes, from the op that writes it

    def residual(f: int) -> None:
        rA, rSa, rT = R("h max"), R("h s1"), R("h s2")  # the head temporaries are free here
        emit(_ins(Op.VMAXABS, r0=rA, a=(Bank.OUT, 0), n=n))
        emit(_ins(Op.NSHIFT, r0=rSa, r1=rA, imm=MANT_BITS))
        emit(_ins(Op.ADD, r0=rT, r1=rSa, r2=f + 1, imm=cfg.res_frac))
        emit(_ins(Op.SUB, r0=rT, r1=0, r2=rT))
        emit(_ins(Op.VRESID, r0=rM, r1=rSa, r2=f, r3=rT, a=(Bank.OUT, 0), b=h, d=h, n=n))

    # ---- prologue: the token's RoPE pairs (cos, sin) for every VROPE; the embedding row into the
    # residual's fixed point
    phases = main("rope pairs", d // 2)
    emit(_ins(Op.VPHASE, c=omega, d=phases, n=d // 2))
    emb, h = main("embedding", n), main("h", n)
    res_scale = movi_pair("res scale", model.res_scale)
    eps_n, eps_m = movi_pair("eps n", model.eps[n]), movi_pair("eps m", model.eps[m])
    rEmb = R("emb shift")
    emit(_ins(Op.MOVI, r0=rEmb, imm=cfg.emb_frac - cfg.res_frac))
    emit(_ins(Op.VSHIFT, r0=rM, r1=rEmb, a=emb, d=h, n=n, imm=1))

    groups = H // KV
    o_k, o_v = out_words(H * d), out_words(H * d) + out_words(KV * d)
    for i, layer in enumerate(model.layers):
        # ---- attention
        ratio = norm_quant(h, n, gains[i, "input"], res_scale, eps_n)
        for key, word in (("q", 0), ("k", o_k), ("v", o_v)):
            trun(i, key, word)
        f = {key: dequant(i, key, ratio, slot) for slot, key in enumerate("qkv")}
        u = main("u", H * d)

        def append(g: int, slot: tuple[int, int], store: bool) -> None:
            for key, word, kind in (("k", o_k, 0), ("v", o_v, KV_V)):
                src = (Bank.OUT, word * lanes + g * d)
                mant = main("kv mantissas", d)
                e = scale_head(src, f[key], cfg.kv_bits, mant, rope=key == "k")
                imm = kind | (kv_region(i, g, kind) | KV_STORE if store else 0)
                emit(_ins(Op.KVAPPEND, r1=e, r2=slot[0], r3=slot[1], a=mant, n=d, imm=imm))

        def attend(hd: int, slot: tuple[int, int]) -> None:
            qh = main("q head", d)
            eq = scale_head((Bank.OUT, hd * d), f["q"], MANT_BITS, qh, rope=True)
            emit(_ins(Op.ATTEND, r0=R(f"eu {hd}"), r1=eq, r2=slot[0], r3=slot[1], a=qh, d=(u[0], u[1] + hd * d),
                      n=d))

        if staged:  # one KV head at a time through slot (0, 0): load 0..POS-1, append and store POS, attend
            for g in range(KV):
                for kind in (0, KV_V):
                    emit(_ins(Op.KVLOAD, n=d, imm=kv_region(i, g, kind) | kind))
                append(g, (0, 0), store=True)
                for hd in range(g * groups, (g + 1) * groups):
                    attend(hd, (0, 0))
        else:
            for g in range(KV):
                append(g, (i, g), store=False)
            for hd in range(H):
                attend(hd, (i, hd // groups))
        rEu = R("eu max")
        emit(_ins(Op.ADD, r0=rEu, r1=R("eu 0"), r2=0))
        for hd in range(1, H):
            emit(_ins(Op.MAX, r0=rEu, r1=rEu, r2=R(f"eu {hd}")))
        rSh, rHm = R("eu shift"), R("h max")
        for hd in range(H):
            head = (u[0], u[1] + hd * d)
            emit(_ins(Op.SUB, r0=rSh, r1=rEu, r2=R(f"eu {hd}")))
            emit(_ins(Op.VSHIFT, r0=rHm if hd else rM, r1=rSh, a=head, d=head, n=d))
            if hd:
                emit(_ins(Op.MAX, r0=rM, r1=rM, r2=rHm))
        sub = R("sub scale", pair=True)
        emit(_ins(Op.MOVI, r0=sub, imm=FACTOR_ONE))
        emit(_ins(Op.ADD, r0=sub + 1, r1=rEu, imm=-(MANT_BITS - 1)))
        ratio = norm_quant(u, n, gains[i, "attn_sub"], sub, eps_n)
        trun(i, "o", 0)
        residual(dequant(i, "o", ratio))
        # ---- MLP
        ratio = norm_quant(h, n, gains[i, "post_attn"], res_scale, eps_n)
        o_up = out_words(m)
        trun(i, "gate", 0)
        trun(i, "up", o_up)
        f_gate, f_up = dequant(i, "gate", ratio, 0), dequant(i, "up", ratio, 1)
        # the head temporaries are free in the MLP
        rG, rSg, rU, rSu, rQ, rS2 = R("h max"), R("h s1"), R("h s2"), R("h s3"), R("h tmax"), R("h exp")
        gate, up = (Bank.OUT, 0), (Bank.OUT, o_up * lanes)
        emit(_ins(Op.VMAXABS, r0=rG, a=gate, n=m))
        emit(_ins(Op.NSHIFT, r0=rSg, r1=rG, imm=MANT_BITS))
        emit(_ins(Op.VMAXABS, r0=rU, a=up, n=m))
        emit(_ins(Op.NSHIFT, r0=rSu, r1=rU, imm=MANT_BITS))
        square, act = copy("z", max(n, m)), main("act", m)
        emit(_ins(Op.VRELU2, r0=rQ, r1=rSg, a=gate, d=square, n=m))
        emit(_ins(Op.NSHIFT, r0=rS2, r1=rQ, imm=MANT_BITS))
        emit(_ins(Op.VMUL, r0=rM, r1=rS2, r2=rSu, a=square, b=up, d=act, n=m))
        g_scale, act_scale = R("g scale", pair=True), R("act scale", pair=True)
        emit(_ins(Op.FMUL, r0=g_scale, r1=f_gate, r2=f_gate))
        emit(_ins(Op.FMUL, r0=act_scale, r1=g_scale, r2=f_up))
        for r in (rS2, rSg, rSg, rSu):
            emit(_ins(Op.ADD, r0=act_scale + 1, r1=act_scale + 1, r2=r))
        ratio = norm_quant(act, m, gains[i, "ffn_sub"], act_scale, eps_m)
        trun(i, "down", 0)
        residual(dequant(i, "down", ratio))

    # ---- final norm and the output row
    rS, rSS, rZM, rE = R("nq shift"), R("nq ss"), R("nq zmax"), R("nq eps")
    z = copy("z", max(n, m))
    emit(_ins(Op.NSHIFT, r0=rS, r1=rM, imm=MANT_BITS))
    emit(_ins(Op.VNORM, r0=rZM, r1=rS, r2=rSS, a=h, b=final_gain, d=z, n=n))
    emit(_ins(Op.EPS, r0=rE, r1=res_scale, r2=eps_n, r3=rS))
    emit(_ins(Op.ADD, r0=rSS, r1=rSS, r2=rE))
    rR, cf, f = R("nq rsqrt", pair=True), movi_pair("constant", model.final_factor), R("factor 0", pair=True)
    emit(_ins(Op.RSQRT, r0=rR, r1=rSS))
    emit(_ins(Op.FMUL, r0=f, r1=rR, r2=cf))
    rEx, rT, rSt, rEy = R("h s1"), R("h tmax"), R("h s3"), R("y exp")
    y, t = main("y", n), main("y product", n)
    emit(_ins(Op.NSHIFT, r0=rEx, r1=rZM, imm=MANT_BITS))
    emit(_ins(Op.VSCALE, r0=rT, r1=rEx, r2=f, a=z, d=t, n=n))
    emit(_ins(Op.NSHIFT, r0=rSt, r1=rT, imm=MANT_BITS))
    emit(_ins(Op.VSHIFT, r1=rSt, a=t, d=y, n=n))
    emit(_ins(Op.ADD, r0=rEy, r1=rEx, r2=rSt))
    emit(_ins(Op.ADD, r0=rEy, r1=rEy, r2=f + 1))
    emit(_ins(Op.HALT))
    prog = overlap_core(prog, shape)

    # ---- fit checks, naming what does not fit
    used = (main.used, const.used, copy.used)
    for bank, need, have in zip(("MAIN", "CONST", "COPY"), used, shape.bank_depth):
        if need > have:
            raise DecoderFitError(f"bank {bank}: the model needs {need} words, the engine has {have} "
                                  f"({need - have} short)")
    if len(prog) > shape.program_depth:
        raise DecoderFitError(f"program: {len(prog)} instructions, the engine holds {shape.program_depth} "
                              f"({len(prog) - shape.program_depth} short)")
    for what, need, have in (("output memory", o_v + out_words(KV * d), shape.out_depth),
                             ("output memory", 2 * out_words(m), shape.out_depth),
                             ("activation memory", -(-max(n, m) // k), shape.act_depth)):
        if need > have:
            raise DecoderFitError(f"{what}: the model needs {need} words, the core has {have}")
    return DecoderImage(prog, np.concatenate(const_words), weights, placement.weight_words, emb[1], y[1], rEy, used,
                        n, [str(ins) for ins in prog], placement.streamed, sdram_base, placement.sdram_words,
                        placement.stage, (kv_base, kv_words) if staged else (0, 0))
