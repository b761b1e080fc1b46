"""The decoder engine's instruction set and its bit-exact model: one definition for gateware and host.

The device runs a whole decoder step (every layer of one token) as a *program*: a list of
`Instruction`s that the host compiles once per model (bitlane.sw.decoder_program) and loads with
the model. The engine (bitlane.hw.decoder) fetches them one at a time and hands each to a unit:

    vector ops     stream `vector_lanes` (P) elements per cycle through a pipeline: read operands from
                   up to three memories, write one, reduce max|y| or sum(x^2) into registers
    scalar ops     per-vector arithmetic on 48-bit registers: priority encoder, factor product,
                   reciprocal, rsqrt, the quantizer's factor, RMSNorm's eps term
    TRUN           one ternary product on the existing core (activation and output memories shared),
                   which runs on while the engine issues the instructions after it (below)
    KVAPPEND /     the attention unit: write K or V of the current position into the cache; one head's
    ATTEND         scores, softmax and weighted V sum
    WFETCH         weight words from the device's SDRAM into the core's weight memory, for models whose
                   weights do not all fit it (contract/weight_stream.py; hw/weight_fetch.py)
    KVLOAD         a (layer, KV head)'s K or V from SDRAM into a cache slot, for models whose KV cache
                   does not fit the block-RAM cache (contract/kv_stream.py)

Why a program rather than a fixed state machine: the layer shape (heads, KV heads, head_dim,
intermediate size, layers, where each weight matrix sits) is data, so one bitstream runs every model
whose sizes fit, and the same program runs on `DecoderMachine` below, which is the gateware's
`.model()`: the tests run a program here against golden.integer (the contract's reference) and on
the gateware against this model, integer for integer.

Memories ("banks") the operands name. Elements of the general banks are signed 32-bit; `OUT` and
`ACT` are the ternary core's output and activation memories, addressed per element:

    MAIN   working vectors (residual h, norm outputs, q, attention outputs, the token's RoPE phases)
    CONST  per-model constants: norm gains (int16), RoPE omega (uint32 as its two's complement)
    COPY   second copies, so that an op never reads two operands from one bank
    OUT    core output memory, read only: element e is lane e % lanes of word e // lanes
    ACT    core activation memory, write only (int8): element e is byte e % k of word e // k

Alignment (the vector unit reads and writes P = `MachineShape.vector_lanes` elements per cycle; a
general bank's word is P elements, element e is lane e % P of word e // P): every operand address
(a, b, c) and destination address (d) of an op of the vector unit (the V* ops, KVAPPEND, ATTEND) is a
multiple of P; the length n may be anything (the last word is partial). An ACT destination starts at a
multiple of k_per_cycle. VROPE needs P to divide n/2; KVAPPEND and ATTEND stream A to the attention unit
in beats of P elements, so P divides their n. The model refuses other programs (ProgramError).

The core runs beside the engine: a TRUN starts it and retires in its second cycle. An instruction with
`flags & WAIT_CORE`, and every TRUN, WFETCH and HALT (`CORE_WAIT_OPS`: they use the core or its weight
memory, or end the DECODE), waits until the core has finished. Any other instruction that reads what a
running TRUN writes or writes what it reads (`effects`: OUT and ACT words), and a KVLOAD or a KVAPPEND
that stores (whose waits for the SDRAM a DECODE's cycles leave out, so the core must not run through
them), is refused (ProgramError) without WAIT_CORE (`needs_wait_core`): the compiler flags it
(sw/decoder_program.py, which also orders the program so that the core's work overlaps the rest).

Registers: `REGISTERS` signed 48-bit registers; R0 reads 0 and ignores writes. A UF factor occupies
an aligned register pair: mantissa in an even r, exponent in r + 1 = r | 1. The engine finds a pair's
second register by setting bit 0 of r, not by adding 1 (an adder in its register file's read address
was on the ULX3S's critical path), so the model refuses a pair at an odd r (ProgramError). `POS`, the
token's position, is set by the DECODE request and read by VPHASE, KVAPPEND and ATTEND.

Every op's semantics is one method of `DecoderMachine` (`_op_<name>`), with the widths the hardware
has; a value leaving its width raises `WidthError` naming the instruction, as golden.integer does.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from enum import IntEnum

import numpy as np

from .intmath import (EPS_LIMIT, EXP_BITS, EXP_FRAC, EXP_SAT, FACTOR_ONE, MANT_BITS, PHASE_BITS, Q_MAX, Q_SHIFT,
                      RECIP_SHIFT, WIDE_BITS, WidthError, cos_q14, exp2_neg, factor, factor_mul, normalize, recip16,
                      rope_phase, rsqrt_factor, scale_saturating, shift_right, sin_q14)
from .config import CoreConfig
from .kv_stream import KV_STORE, KV_V, kv_row_words, pack_row, region_address, unpack_rows
from .packing import tiles
from .protocol import Capabilities, Feature, WireRecord, wire, wire_record

REGISTERS = 64         # scalar registers (R0 reads 0)
WAIT_CORE = 1          # Instruction.flags: wait until the ternary core has finished its TRUN
REG_BITS = WIDE_BITS   # each register is a signed 48-bit integer
WORD_BITS = 32         # words of the general banks, signed


class Bank(IntEnum):
    MAIN = 0
    CONST = 1
    COPY = 2
    OUT = 3    # ternary core output memory (read only)
    ACT = 4    # ternary core activation memory (write only, int8)


GENERAL_BANKS = (Bank.MAIN, Bank.CONST, Bank.COPY)
WRITABLE_BANKS = (Bank.MAIN, Bank.CONST)  # the banks the host writes (WRITE_BANK)


class Op(IntEnum):
    """The engine's operations. Field use: `r0` the result register (pair), `r1..r3` operands,
    `a`, `b`, `c` source vectors (bank, addr), `d` the destination vector, `n` the length, `imm` a
    signed 32-bit constant. `A[i]` is element addr + i of the a operand, and so on."""

    HALT = 0       # end of program
    # -- vector ops (P elements per cycle; VPHASE one)
    VMAXABS = 1    # R[r0] = max_i |A[i]|
    VSHIFT = 2     # y = shift_right(A[i], R[r1], rounding=imm & 1); D[i] = y; R[r0] = max|y|
    VNORM = 3      # x = A[i] >> R[r1] (int16); R[r2] = sum x^2; z = x * B[i] (gain, int16); D[i] = z; R[r0] = max|z|
    VQUANT = 4     # D[i] = clamp((shift_right(A[i], R[r1]) * R[r2] + 2^22) >> 23, -128, 127)   (D in ACT)
    VSCALE = 5     # t = (A[i] >> R[r1]) * R[r2] (int16 x uint16); D[i] = t; R[r0] = max|t|
    VROPE = 6      # rotate-half RoPE of one head (n = head_dim): x = A[i] >> R[r1], y = B[(i + n/2) mod n] >> R[r1],
                   # (c, s) = the pair C[i mod n/2] (VPHASE's: cos in the low 16 bits, sin in the high, both
                   # signed); D[i] = x c -/+ y s (- for the first half); R[r0] = max|D|
    VRESID = 7     # D[i] = B[i] + shift_right((A[i] >> R[r1]) * R[r2], R[r3], rounding=True); R[r0] = max|D|
    VRELU2 = 8     # y = max(A[i] >> R[r1], 0)^2; D[i] = y; R[r0] = max|y|
    VMUL = 9       # y = (A[i] >> R[r1]) * (B[i] >> R[r2]) (int16 x int16); D[i] = y; R[r0] = max|y|
    VPHASE = 10    # phase = rope_phase(POS, C[i] as uint32); D[i] = cos_q14(phase) & 0xFFFF | sin_q14(phase) << 16
                   # (signed 32-bit): the token's RoPE pairs, once per token, for every VROPE (one element per cycle)
    # -- scalar ops
    MOVI = 16      # R[r0] = imm
    ADD = 17       # R[r0] = R[r1] + R[r2] + imm
    SUB = 18       # R[r0] = R[r1] - R[r2] + imm
    MAX = 19       # R[r0] = max(R[r1], R[r2])
    NSHIFT = 20    # R[r0] = max(bit_length(R[r1]) - (imm - 1), 0): normalize's shift to imm-bit mantissas
    FACTOR = 21    # pair r0 = factor(R[r1], R[r2])
    FMUL = 22      # pair r0 = factor_mul(pair r1, pair r2)
    RSQRT = 23     # pair r0 = rsqrt_factor(max(R[r1], 1))
    QFACTOR = 24   # quantize_int8's per-vector constants from M = R[r1]: (Mu, eM) = factor(M);
                   # pair r0 = (127 * recip16(max(Mu, 2^15)) >> 7, eM + 1)
    EPS = 25       # R[r0] = RMSNorm's eps term: t = pair r2 (x) inv (x) inv with inv = 1 / pair r1
                   # (recip16), then min(round(t 2^(-2 R[r3])), 2^46)
    # -- ternary core and attention unit
    TRUN = 32      # ternary product: weights from word imm, rows n, cols b.addr; int8 input at ACT word
                   # a.addr; int32 results at OUT word d.addr (one vector)
    KVAPPEND = 33  # cache[layer r2][kv head r3][V if imm & KV_V else K][POS] = A[0..n), exponent R[r1];
                   # with imm & KV_STORE also SDRAM row POS of the region at region_address(imm)
    ATTEND = 34    # one head: q = A[0..n) with exponent R[r1] against cache[layer r2][kv head r3][0..POS];
                   # D[0..n) = u (int16), R[r0] = eu   (see `attend_head`)
    # -- weights from SDRAM (see `_op_wfetch`)
    WFETCH = 35    # weight words d.addr .. d.addr + n - 1 = the n weight words at SDRAM word imm
    # -- the KV cache from SDRAM (see `_op_kvload`)
    KVLOAD = 36    # cache[layer r2][kv head r3][V if imm & KV_V else K][0..POS) = rows 0..POS-1 of the region
                   # at SDRAM word region_address(imm), n = head_dim


VECTOR_OPS = frozenset({Op.VMAXABS, Op.VSHIFT, Op.VNORM, Op.VQUANT, Op.VSCALE, Op.VROPE, Op.VRESID, Op.VRELU2,
                        Op.VMUL, Op.VPHASE})
ALIGNED_OPS = VECTOR_OPS | {Op.KVAPPEND, Op.ATTEND}  # the vector unit's: operands at multiples of vector_lanes


CORE_WAIT_OPS = frozenset({Op.TRUN, Op.WFETCH, Op.HALT})  # wait for the core without WAIT_CORE: they use it
# or its weight memory, or end the DECODE


@wire_record("decoder instruction")
class Instruction(WireRecord):
    """One instruction word (program memory word; `LOAD_PROGRAM` carries them in this byte order)."""

    op: int = wire(8)
    r0: int = wire(8, 0)
    r1: int = wire(8, 0)
    r2: int = wire(8, 0)
    r3: int = wire(8, 0)
    a_bank: int = wire(8, 0)
    b_bank: int = wire(8, 0)
    c_bank: int = wire(8, 0)
    d_bank: int = wire(8, 0)
    flags: int = wire(8, 0)  # WAIT_CORE
    a_addr: int = wire(16, 0)
    b_addr: int = wire(16, 0)
    c_addr: int = wire(16, 0)
    d_addr: int = wire(16, 0)
    n: int = wire(16, 0)
    imm: int = wire(32, 0)  # two's complement

    @property
    def imm_signed(self) -> int:
        return self.imm - (1 << 32) if self.imm & (1 << 31) else self.imm

    @property
    def waits_for_core(self) -> bool:
        """Whether the engine waits for the core to finish before issuing it (see the module docstring)."""
        return bool(self.flags & WAIT_CORE) or self.op in CORE_WAIT_OPS

    def __str__(self) -> str:
        name = Op(self.op).name
        return (f"{name} r0={self.r0} r1={self.r1} r2={self.r2} r3={self.r3} "
                f"a={Bank(self.a_bank).name}:{self.a_addr} b={Bank(self.b_bank).name}:{self.b_addr} "
                f"c={Bank(self.c_bank).name}:{self.c_addr} d={Bank(self.d_bank).name}:{self.d_addr} "
                f"n={self.n} imm={self.imm_signed}" + (" wait_core" if self.flags & WAIT_CORE else ""))


@dataclass(frozen=True)
class MachineShape:
    """Sizes of one engine: bank depths (elements), the ternary core's lanes and k_per_cycle (for the OUT
    and ACT element addressing), the attention unit's cache, the program memory, and the vector unit's
    elements per cycle (the alignment of vector operands)."""

    bank_depth: tuple[int, int, int]  # MAIN, CONST, COPY
    lanes: int
    k_per_cycle: int
    out_depth: int
    act_depth: int
    layers: int
    kv_heads: int
    head_dim: int
    context: int
    program_depth: int
    vector_lanes: int = 1
    # the attention unit's multipliers: only its speed depends on it, and the INFO record does not
    # carry it (from_capabilities assumes the default; from_config has the configuration's, which
    # DecoderShape checks to divide head_dim)
    attention_macs: int = 16
    kv_sdram: bool = False  # KVLOAD and KVAPPEND's store (the device's INFO: Feature.KV_SDRAM)

    def __post_init__(self) -> None:
        p = self.vector_lanes
        if p < 1 or p & (p - 1) or p > self.lanes or p > self.k_per_cycle:
            raise ValueError(f"vector_lanes {p}: a power of two, at most lanes {self.lanes} and k_per_cycle "
                             f"{self.k_per_cycle}")

    @classmethod
    def from_capabilities(cls, caps: Capabilities) -> "MachineShape":
        """The engine of a device, from its INFO record (what the host compiles for)."""
        if not caps.decoder:
            raise ValueError("the device has no decoder engine (its INFO record lacks Feature.DECODER)")
        return cls((caps.dec_main_depth, caps.dec_const_depth, caps.dec_copy_depth), caps.lanes, caps.k_per_cycle,
                   caps.out_depth, caps.act_depth, caps.dec_layers, caps.dec_kv_heads, caps.dec_head_dim,
                   caps.dec_context, caps.dec_program_depth, caps.dec_vector_lanes,
                   kv_sdram=bool(caps.features & Feature.KV_SDRAM))

    @classmethod
    def from_config(cls, config: CoreConfig) -> "MachineShape":
        """The engine of a configuration (its `decoder`), through the INFO record it answers, with the
        attention unit's multipliers (which that record lacks)."""
        shape = cls.from_capabilities(Capabilities.from_config(config))
        return replace(shape, attention_macs=config.decoder.attention_macs)


# ----------------------------------------------------------------------------- the attention unit's function

def attend_head(qm: np.ndarray, eq: int, km: np.ndarray, ek: np.ndarray, vm: np.ndarray,
                ev: np.ndarray) -> tuple[np.ndarray, int]:
    """One query head against positions 0..p of its KV head (docs/arithmetic.md stages 4-5):
    qm [d] int16, km / vm [p + 1, d] mantissas, ek / ev [p + 1] exponents. Returns u [d] int16 and eu."""
    qm, km, vm = (np.asarray(a, dtype=np.int64) for a in (qm, km, vm))
    ek, ev = np.asarray(ek, dtype=np.int64), np.asarray(ev, dtype=np.int64)
    ek_max, ev_max = int(ek.max()), int(ev.max())
    dot = km @ qm                                                         # int48: |.| <= d 2^30
    t = dot >> (ek_max - ek)
    x = t.max() - t
    xs = scale_saturating(x, np.int64(eq + ek_max + EXP_FRAC), EXP_SAT)
    p = exp2_neg(xs)
    total = int(p.sum())
    acc = (p >> (ev_max - ev)) @ vm                                       # int48
    am, ea = normalize(acc[None, :])
    am, ea = am[0], ea[0, 0]
    sm, es = factor(np.int64(total))
    u = (am * recip16(sm)) >> MANT_BITS
    return u, int(ea) + ev_max - int(es) - (RECIP_SHIFT - MANT_BITS)


# ----------------------------------------------------------------------------- the model

TernaryRun = Callable[[int, int, int, np.ndarray], np.ndarray]  # (w_base, rows, cols, q int8 [cols]) -> int32 [rows]
WeightFetch = Callable[[int, int, int], None]  # WFETCH: (SDRAM word, weight word, words) -> None
Sdram = Callable[[], np.ndarray]  # the device's SDRAM as uint16 words (KVLOAD, KVAPPEND's store)


class ProgramError(ValueError):
    """A program that the engine cannot run (bad bank, address out of range, bad register)."""


class DecoderMachine:
    """The engine's bit-exact model. `ternary(w_base, rows, cols, q)` is the core's product (the device
    model of bitlane.sw, or a dictionary of matrices in tests).

        machine = DecoderMachine(shape, ternary)
        machine.write(Bank.CONST, 0, gains); machine.load(program)
        machine.write(Bank.MAIN, emb_addr, row); machine.run(pos)
        y = machine.read(Bank.MAIN, out_addr, n); ey = machine.regs[out_reg]
    """

    def __init__(self, shape: MachineShape, ternary: TernaryRun, fetch: WeightFetch | None = None,
                 sdram: Sdram | None = None) -> None:
        self.shape, self.ternary, self.fetch, self.sdram = shape, ternary, fetch, sdram
        self.banks = [np.zeros(depth, dtype=np.int64) for depth in shape.bank_depth]
        self.out = np.zeros(shape.out_depth * shape.lanes, dtype=np.int64)
        self.act = np.zeros(shape.act_depth * shape.k_per_cycle, dtype=np.int64)
        self.regs = np.zeros(REGISTERS, dtype=np.int64)
        cache = (shape.layers, shape.kv_heads, 2, shape.context)
        self.kv = np.zeros(cache + (shape.head_dim,), dtype=np.int64)
        self.kv_exp = np.zeros(cache, dtype=np.int64)
        self.program: list[Instruction] = []
        self.pos = 0
        self.executed: dict[Op, int] = {}

    # -- host side
    def load(self, program: Sequence[Instruction]) -> None:
        if len(program) > self.shape.program_depth:
            raise ProgramError(f"program of {len(program)} instructions exceeds the program memory "
                               f"({self.shape.program_depth})")
        self.program = list(program)

    def write(self, bank: Bank, addr: int, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.int64)
        self._range(bank, addr, len(values), "write")
        self.banks[bank][addr:addr + len(values)] = self._word(values, f"write to {bank.name}")

    def read(self, bank: Bank, addr: int, n: int) -> np.ndarray:
        self._range(bank, addr, n, "read")
        return self.banks[bank][addr:addr + n].copy()

    def run(self, pos: int) -> None:
        """Execute the program for the token at position `pos` (the KV cache holds 0..pos-1)."""
        if not 0 <= pos < self.shape.context:
            raise ProgramError(f"position {pos} outside the context of {self.shape.context}")
        self.pos = pos
        running = None  # the TRUN the core runs: (its instruction's index, its reads, its writes)
        for pc, ins in enumerate(self.program):
            if ins.op == Op.HALT:
                return
            try:
                op = Op(ins.op)
            except ValueError:
                raise ProgramError(f"instruction {pc}: unknown op {ins.op}") from None
            self.executed[op] = self.executed.get(op, 0) + 1
            try:
                if ins.waits_for_core:
                    running = None
                elif running is not None and needs_wait_core(ins, self.shape, pos, running[1:]):
                    raise ProgramError(f"issued while the TRUN at instruction {running[0]} still runs, it "
                                       "needs WAIT_CORE (it touches what that reads or writes, or waits for the "
                                       "SDRAM: KVLOAD, KVAPPEND's store)")
                if op in ALIGNED_OPS:
                    self._aligned(op, ins)
                getattr(self, f"_op_{op.name.lower()}")(ins)
                if op == Op.TRUN:
                    running = (pc, *effects(ins, self.shape, pos))
            except (WidthError, ProgramError) as error:
                raise type(error)(f"instruction {pc} ({ins}): {error}") from None
        raise ProgramError("program ran off its end without HALT")

    # -- helpers
    _NAMES = {Op.VNORM: "abd", Op.VROPE: "abcd", Op.VRESID: "abd", Op.VMUL: "abd", Op.VPHASE: "cd",
              Op.VMAXABS: "a", Op.KVAPPEND: "a"}

    def _aligned(self, op: Op, ins: Instruction) -> None:
        p = self.shape.vector_lanes
        for name in self._NAMES.get(op, "ad"):
            addr = getattr(ins, f"{name}_addr")
            if addr % p:
                raise ProgramError(f"operand {name} at {addr}: not a multiple of vector_lanes {p}")
        if op != Op.VMAXABS and ins.d_bank == Bank.ACT and ins.d_addr % self.shape.k_per_cycle:
            raise ProgramError(f"ACT destination {ins.d_addr}: not a multiple of k_per_cycle {self.shape.k_per_cycle}")
        if op == Op.VROPE and (ins.n // 2) % p:
            raise ProgramError(f"VROPE over {ins.n}: vector_lanes {p} does not divide n/2")
        if op in (Op.KVAPPEND, Op.ATTEND) and ins.n % p:
            raise ProgramError(f"{op.name} over {ins.n}: its beats of vector_lanes {p} do not divide n")

    def _range(self, bank: int, addr: int, n: int, what: str) -> None:
        if bank in GENERAL_BANKS:
            depth = self.shape.bank_depth[bank]
        elif bank == Bank.OUT:
            depth = len(self.out)
        elif bank == Bank.ACT:
            depth = len(self.act)
        else:
            raise ProgramError(f"{what}: no bank {bank}")
        if not (0 <= addr and addr + n <= depth):
            raise ProgramError(f"{what}: {Bank(bank).name} {addr}..{addr + n - 1} outside its {depth} words")

    def _word(self, values: np.ndarray, what: str) -> np.ndarray:
        lo, hi = -(1 << (WORD_BITS - 1)), (1 << (WORD_BITS - 1)) - 1
        if values.size and (values.min() < lo or values.max() > hi):
            raise WidthError(f"{what}: value outside int{WORD_BITS}")
        return values

    def _src(self, bank: int, addr: int, n: int) -> np.ndarray:
        self._range(bank, addr, n, "source")
        if bank == Bank.ACT:
            raise ProgramError("ACT is write only")
        memory = self.out if bank == Bank.OUT else self.banks[bank]
        return memory[addr:addr + n].copy()

    def _dst(self, ins: Instruction, values: np.ndarray) -> None:
        self._range(ins.d_bank, ins.d_addr, len(values), "destination")
        if ins.d_bank == Bank.OUT:
            raise ProgramError("OUT is read only")
        if ins.d_bank == Bank.ACT:
            if values.size and (values.min() < -128 or values.max() > 127):
                raise WidthError("ACT element outside int8")
            self.act[ins.d_addr:ins.d_addr + len(values)] = values
        else:
            self.banks[ins.d_bank][ins.d_addr:ins.d_addr + len(values)] = self._word(values, "destination")

    def _operands(self, ins: Instruction, *names: str) -> list[np.ndarray]:
        banks = [getattr(ins, f"{name}_bank") for name in names]
        shared = {b for b in banks if banks.count(b) > 1}
        if shared:
            raise ProgramError(f"operands {', '.join(names)} read bank {Bank(shared.pop()).name} twice in one cycle")
        return [self._src(getattr(ins, f"{name}_bank"), getattr(ins, f"{name}_addr"), ins.n) for name in names]

    def _set(self, r: int, value) -> None:
        value = int(value)
        if not -(1 << (REG_BITS - 1)) <= value < 1 << (REG_BITS - 1):
            raise WidthError(f"register {r}: value {value} outside int{REG_BITS}")
        if not 0 <= r < REGISTERS:
            raise ProgramError(f"no register {r}")
        if r:
            self.regs[r] = value

    def _reg(self, r: int) -> int:
        if not 0 <= r < REGISTERS:
            raise ProgramError(f"no register {r}")
        return int(self.regs[r])

    @staticmethod
    def _aligned_pair(r: int) -> int:
        if r % 2:
            raise ProgramError(f"register pair at an odd register {r} (a pair is R[2i], R[2i + 1])")
        return r

    def _pair(self, r: int) -> tuple[np.int64, np.int64]:
        r = self._aligned_pair(r)
        return np.int64(self._reg(r)), np.int64(self._reg(r + 1))

    def _set_pair(self, r: int, pair) -> None:
        r = self._aligned_pair(r)
        self._set(r, pair[0])
        self._set(r + 1, pair[1])

    @staticmethod
    def _int16(x: np.ndarray, what: str) -> np.ndarray:
        if x.size and (x.min() < -(1 << 15) or x.max() >= 1 << 15):
            raise WidthError(f"{what}: multiplier operand outside int16")
        return x

    @staticmethod
    def _maxabs(y: np.ndarray) -> int:
        return int(np.abs(y).max(initial=0))

    # -- vector ops
    def _op_vmaxabs(self, ins: Instruction) -> None:
        (a,) = self._operands(ins, "a")
        self._set(ins.r0, self._maxabs(a))

    def _op_vshift(self, ins: Instruction) -> None:
        (a,) = self._operands(ins, "a")
        y = shift_right(a, self._reg(ins.r1), rounding=bool(ins.imm & 1))
        self._dst(ins, y)
        self._set(ins.r0, self._maxabs(y))

    def _op_vnorm(self, ins: Instruction) -> None:
        a, g = self._operands(ins, "a", "b")
        x = self._int16(a >> self._reg(ins.r1), "VNORM input")
        z = x * self._int16(g, "VNORM gain")
        self._dst(ins, z)
        self._set(ins.r2, int((x * x).sum()))
        self._set(ins.r0, self._maxabs(z))

    def _op_vquant(self, ins: Instruction) -> None:
        (a,) = self._operands(ins, "a")
        zq = self._int16(shift_right(a, self._reg(ins.r1)), "VQUANT input")
        q = (zq * self._reg(ins.r2) + (1 << (Q_SHIFT - 1))) >> Q_SHIFT
        self._dst(ins, np.clip(q, -Q_MAX - 1, Q_MAX))

    def _op_vscale(self, ins: Instruction) -> None:
        (a,) = self._operands(ins, "a")
        t = self._int16(a >> self._reg(ins.r1), "VSCALE input") * self._reg(ins.r2)
        self._dst(ins, t)
        self._set(ins.r0, self._maxabs(t))

    def _op_vrope(self, ins: Instruction) -> None:
        if ins.n % 2:
            raise ProgramError(f"VROPE over an odd length {ins.n}")
        a, b = self._operands(ins, "a", "b")
        half = ins.n // 2
        if ins.c_bank in (ins.a_bank, ins.b_bank):
            raise ProgramError("VROPE reads its pairs from the bank of another operand")
        pairs = self._src(ins.c_bank, ins.c_addr, half)
        cos, sin = ((pairs & 0xFFFF) ^ 0x8000) - 0x8000, pairs >> 16
        c, s = np.tile(cos, 2), np.tile(sin, 2)
        shift = self._reg(ins.r1)
        x = self._int16(a >> shift, "VROPE input")
        y = self._int16(np.roll(b, -half) >> shift, "VROPE partner")
        sign = np.where(np.arange(ins.n) < half, -1, 1)
        r = x * c + sign * y * s
        self._dst(ins, r)
        self._set(ins.r0, self._maxabs(r))

    def _op_vphase(self, ins: Instruction) -> None:
        (omega,) = self._operands(ins, "c")
        phase = rope_phase(np.int64(self.pos), omega & ((1 << PHASE_BITS) - 1))
        cos, sin = cos_q14(phase), sin_q14(phase)
        self._dst(ins, (cos & 0xFFFF) + (sin << 16))

    def _op_vresid(self, ins: Instruction) -> None:
        a, h = self._operands(ins, "a", "b")
        t = self._int16(a >> self._reg(ins.r1), "VRESID input") * self._reg(ins.r2)
        y = h + shift_right(t, self._reg(ins.r3), rounding=True)
        self._dst(ins, y)
        self._set(ins.r0, self._maxabs(y))

    def _op_vrelu2(self, ins: Instruction) -> None:
        (a,) = self._operands(ins, "a")
        x = self._int16(a >> self._reg(ins.r1), "VRELU2 input")
        y = np.maximum(x, 0) ** 2
        self._dst(ins, y)
        self._set(ins.r0, self._maxabs(y))

    def _op_vmul(self, ins: Instruction) -> None:
        a, b = self._operands(ins, "a", "b")
        y = self._int16(a >> self._reg(ins.r1), "VMUL a") * self._int16(b >> self._reg(ins.r2), "VMUL b")
        self._dst(ins, y)
        self._set(ins.r0, self._maxabs(y))

    # -- scalar ops
    def _op_movi(self, ins: Instruction) -> None:
        self._set(ins.r0, ins.imm_signed)

    def _op_add(self, ins: Instruction) -> None:
        self._set(ins.r0, self._reg(ins.r1) + self._reg(ins.r2) + ins.imm_signed)

    def _op_sub(self, ins: Instruction) -> None:
        self._set(ins.r0, self._reg(ins.r1) - self._reg(ins.r2) + ins.imm_signed)

    def _op_max(self, ins: Instruction) -> None:
        self._set(ins.r0, max(self._reg(ins.r1), self._reg(ins.r2)))

    def _op_nshift(self, ins: Instruction) -> None:
        x = self._reg(ins.r1)
        if x < 0:
            raise ProgramError(f"NSHIFT of a negative value {x}")
        self._set(ins.r0, max(x.bit_length() - (ins.imm_signed - 1), 0))

    def _op_factor(self, ins: Instruction) -> None:
        x = self._reg(ins.r1)
        if x < 0:
            raise ProgramError(f"FACTOR of a negative value {x}")
        self._set_pair(ins.r0, factor(np.int64(x), np.int64(self._reg(ins.r2))))

    def _op_fmul(self, ins: Instruction) -> None:
        self._set_pair(ins.r0, factor_mul(self._pair(ins.r1), self._pair(ins.r2)))

    def _op_rsqrt(self, ins: Instruction) -> None:
        self._set_pair(ins.r0, rsqrt_factor(np.int64(max(self._reg(ins.r1), 1))))

    def _op_qfactor(self, ins: Instruction) -> None:
        mu, em = factor(np.int64(self._reg(ins.r1)))
        c = (Q_MAX * recip16(np.maximum(mu, FACTOR_ONE))) >> (RECIP_SHIFT - Q_SHIFT - 1)
        self._set_pair(ins.r0, (c, em + 1))

    def _op_eps(self, ins: Instruction) -> None:
        scale_m, scale_e = self._pair(ins.r1)
        inverse = (recip16(np.maximum(scale_m, FACTOR_ONE)), -RECIP_SHIFT - scale_e)
        term = factor_mul(factor_mul(self._pair(ins.r2), inverse), inverse)
        self._set(ins.r0, scale_saturating(term[0], term[1] - 2 * self._reg(ins.r3), EPS_LIMIT))

    # -- core and attention
    def _op_trun(self, ins: Instruction) -> None:
        """The core reads whole ACT words and writes whole OUT words: the rows past n of its last word
        are 0 (the weight tiles' padding rows are zero trits)."""
        rows, cols, k, lanes = ins.n, ins.b_addr, self.shape.k_per_cycle, self.shape.lanes
        row_tiles, k_steps = tiles(rows, cols, lanes, k)
        self._range(Bank.ACT, ins.a_addr * k, k_steps * k, "TRUN input")
        self._range(Bank.OUT, ins.d_addr * lanes, row_tiles * lanes, "TRUN output")
        q = self.act[ins.a_addr * k:ins.a_addr * k + cols]
        acc = np.asarray(self.ternary(ins.imm, rows, cols, q), dtype=np.int64)
        out = self.out[ins.d_addr * lanes:(ins.d_addr + row_tiles) * lanes]
        out[:], out[:rows] = 0, acc

    def _cache_index(self, ins: Instruction) -> tuple[int, int]:
        if not (0 <= ins.r2 < self.shape.layers and 0 <= ins.r3 < self.shape.kv_heads):
            raise ProgramError(f"no KV cache for layer {ins.r2}, kv head {ins.r3}")
        if ins.n != self.shape.head_dim:
            raise ProgramError(f"head length {ins.n}, the cache holds {self.shape.head_dim}")
        return ins.r2, ins.r3

    def _op_kvappend(self, ins: Instruction) -> None:
        layer, head = self._cache_index(ins)
        (a,) = self._operands(ins, "a")
        kv = ins.imm & KV_V
        self.kv[layer, head, kv, self.pos] = self._int16(a, "KVAPPEND mantissa")
        e = self._reg(ins.r1)
        if not -(1 << (EXP_BITS - 1)) <= e < 1 << (EXP_BITS - 1):
            raise WidthError(f"KVAPPEND exponent {e} outside int{EXP_BITS} (the cache stores int{EXP_BITS})")
        self.kv_exp[layer, head, kv, self.pos] = e
        if ins.imm & KV_STORE:
            row_words = kv_row_words(self.shape.head_dim)
            addr = region_address(ins.imm) + self.pos * row_words
            self._kv_sdram(addr, row_words, "KVAPPEND's store")[addr:addr + row_words] = \
                pack_row(self.kv[layer, head, kv, self.pos], e, row_words)

    def _kv_sdram(self, addr: int, words: int, what: str) -> np.ndarray:
        """The SDRAM, for `words` words from `addr`; ProgramError without it or outside it."""
        if self.sdram is None or not self.shape.kv_sdram:
            raise ProgramError(f"{what} on an engine without the KV cache in SDRAM")
        sdram = self.sdram()
        if addr + words > len(sdram):
            raise ProgramError(f"{what}: SDRAM words {addr}..{addr + words - 1} outside the SDRAM's {len(sdram)}")
        return sdram

    def _op_kvload(self, ins: Instruction) -> None:
        """Copy positions 0..POS-1 of a (layer, KV head)'s K or V from its SDRAM region (contract/kv_stream.py)
        into cache slot (r2, r3), mantissas and exponents, as if appended there in order; position POS and
        later are left as they are (the KVAPPEND that follows writes POS). Like WFETCH, the engine waits for
        it and a DECODE's cycles count its issue cycle only (kv_stream.kv_load_cycles_estimate)."""
        layer, head = self._cache_index(ins)
        if ins.imm & KV_STORE:  # (the other low bits are the K/V bit and the region address's)
            raise ProgramError("KVLOAD's imm: a region address and the K/V bit only")
        row_words = kv_row_words(self.shape.head_dim)
        addr, rows = region_address(ins.imm), self.pos
        sdram = self._kv_sdram(addr, rows * row_words, "KVLOAD")
        m, e = unpack_rows(sdram[addr:addr + rows * row_words], self.shape.head_dim, row_words)
        kv = ins.imm & KV_V
        self.kv[layer, head, kv, :rows] = m
        self.kv_exp[layer, head, kv, :rows] = e

    def _op_attend(self, ins: Instruction) -> None:
        layer, head = self._cache_index(ins)
        (q,) = self._operands(ins, "a")
        seen = slice(0, self.pos + 1)
        u, eu = attend_head(self._int16(q, "ATTEND query"), self._reg(ins.r1), self.kv[layer, head, 0, seen],
                            self.kv_exp[layer, head, 0, seen], self.kv[layer, head, 1, seen],
                            self.kv_exp[layer, head, 1, seen])
        self._dst(ins, u)
        self._set(ins.r0, eu)

    # -- weights from SDRAM
    def _op_wfetch(self, ins: Instruction) -> None:
        """Copy n weight words from the device's SDRAM (from SDRAM word imm) into the core's weight memory
        (from word d.addr), where a later TRUN reads them. How a weight word lies in SDRAM is
        contract/weight_stream.py; `fetch` (the device's: sw/model_device.py) checks both ranges and the
        address's alignment and raises ProgramError outside them. The engine waits for the copy; its
        cycles depend on the SDRAM (refresh, open rows), so a DECODE's cycles count only the issue
        cycles of a WFETCH (`instruction_cycles`), and weight_stream.fetch_cycles_estimate says how long
        the wait is."""
        if self.fetch is None:
            raise ProgramError("WFETCH on an engine without SDRAM")
        if ins.n == 0:
            raise ProgramError("WFETCH of 0 words")
        self.fetch(ins.imm, ins.d_addr, ins.n)


# ----------------------------------------------------------------------------- the engine's cycles
#
# One definition of how many cycles each instruction takes on the gateware (hw/decoder.py and its
# units are built to these numbers and their sim tests measure them), used by the functional model
# (a DECODE's `cycles`, sw/model_device.py) and bench/decoder_bench.py.

START_CYCLES = 1          # a DECODE's first cycle: the engine loads instruction 0 (read and registered while idle)
ISSUE_CYCLES = 1          # an instruction's cycle that starts its unit
VECTOR_STAGES = 11        # the vector unit's pipeline for one lane: start + words + 11 is done
STREAM_CYCLES = 6         # a stream op (KVAPPEND, ATTEND's query) past its n / P beats of P elements, one a cycle
ATTEND_DRAIN = 3          # an ATTEND's done past the attention unit's cycles: the last output through
                          # the vector unit into D
RECIP_CYCLES = MANT_BITS  # Recip16: one quotient bit a cycle (hw/nonlinear.py Recip16.ITERATIONS)
RSQRT_CYCLES = 8          # RsqrtFactor's pipeline (hw/nonlinear.py RsqrtFactor.LATENCY)
SOFTMAX_LATENCY = 6       # SoftmaxRow: score taken to its first weight (hw/softmax.py)
SOFTMAX_ROW_LATENCY = RECIP_CYCLES + 3  # SoftmaxRow: factor(sum) and recip16 after the last score
ATTEND_FIXED = 18         # AttentionUnit: set-up, memory, its register, operand, product and output stages
# the scalar unit's cycles from start to done (hw/decoder_scalar.py), 1 for the ops not named
NORMALIZE_CYCLES = 1      # the scalar unit's normalizer: the bit length registered, then the shift and exponent
# NSHIFT: the bit length of its operand registered, then the difference (one cycle was the ULX3S core's
# critical path once the command processor's checks were registered)
SCALAR_CYCLES = {Op.NSHIFT: 2, Op.FACTOR: 2 + NORMALIZE_CYCLES, Op.FMUL: 3 + NORMALIZE_CYCLES,
                 Op.RSQRT: RSQRT_CYCLES + 2,
                 Op.QFACTOR: RECIP_CYCLES + 3 + NORMALIZE_CYCLES, Op.EPS: RECIP_CYCLES + 7 + 2 * NORMALIZE_CYCLES}
SCALAR_OPS = frozenset({Op.MOVI, Op.ADD, Op.SUB, Op.MAX, Op.NSHIFT, Op.FACTOR, Op.FMUL, Op.RSQRT, Op.QFACTOR,
                        Op.EPS})


def tree_stages(p: int) -> int:
    """Register stages of the vector unit's reduction trees over p lanes: two levels a stage."""
    return ((p - 1).bit_length() + 1) // 2


def vector_latency(vector_lanes: int = 1) -> int:
    """L: a vector op's `done` comes in cycle start + words + L (hw/decoder_vector.py)."""
    return VECTOR_STAGES + tree_stages(vector_lanes)


def vector_cycles(op: int, n: int, vector_lanes: int = 1) -> int:
    """Cycles one op occupies the vector unit, from its `start` to the first cycle another start is
    taken: ceil(n / P) + L + 1 for a vector op (VPHASE: n + L + 1); the least (no backpressure)
    for a stream op, whose A leaves P elements a beat."""
    if op in (Op.KVAPPEND, Op.ATTEND):
        return -(-n // vector_lanes) + STREAM_CYCLES if n else 3
    if op not in VECTOR_OPS:
        raise ValueError(f"{Op(op).name} is not an op of the vector unit")
    words = n if op == Op.VPHASE else -(-n // vector_lanes)
    return words + vector_latency(vector_lanes) + 1


def scalar_cycles(op: int) -> int:
    """The scalar unit's cycles of one op, from `start` to `done`."""
    return SCALAR_CYCLES.get(Op(op), 1)


def tree_levels(macs: int) -> int:
    """Registered adder levels of the attention unit's dot product over `macs` products."""
    return (macs - 1).bit_length()


def append_cycles(head_dim: int, in_lanes: int = 1) -> int:
    """Cycles an APPEND_K / APPEND_V occupies the attention unit with no input gaps: from the cycle its
    command is taken to the cycle the next command can be (the command, one set-up cycle, d elements
    in beats of `in_lanes`)."""
    return head_dim // in_lanes + 2


def attend_cycles(p: int, head_dim: int, macs: int, in_lanes: int = 1) -> int:
    """Cycles an ATTEND at position `p` occupies the attention unit (hw/attention.py) with no input gaps
    and its output taken at once: from the cycle its command is taken to the cycle the next command
    can be. With G = head_dim / macs words per position, T = tree_levels(macs) and W = `in_lanes`
    query elements a beat:

        d + d / W + (2 p + 1) G + T + 18 + max(2 G + 5, SOFTMAX_ROW_LATENCY)
                                            (4 p + 124 for d 64, macs 32, W 4; macs 16: 8 p + 125)

    Step by step as the gateware runs it (cycle 0 takes the command):"""
    d, G, T = head_dim, head_dim // macs, tree_levels(macs)
    score_end = 1 + d // in_lanes + (p + 1) * G  # set-up, d query elements in beats, then the last K word is read
    last_score = score_end + 6 + T           # memory, its register, operands, products, T tree levels, dot_j, t_p
    first_weight = last_score + 1 + SOFTMAX_LATENCY  # p_0 is taken and the first V word read
    last_weight = first_weight + p * G       # p_p is taken: G cycles per position
    row = max(last_weight + G - 1 + 6 + G,   # its last product in, G cycles of max |acc|, the encoder
              last_weight + SOFTMAX_ROW_LATENCY)  # SoftmaxRow's factor(sum) and recip16, taken
    return row + 4 + d                       # three output stages, d outputs, then idle


CYCLE_CLASSES = ("core", "attention", "vector", "scalar", "issue")


@dataclass
class DecodeCycles:
    """One DECODE token's engine cycles, split as the engine's counters split them: the ternary core's
    (a TRUN's second cycle, and the cycles an instruction waits for the core to finish), the attention
    unit's KVAPPEND and ATTEND, the vector and scalar units, and the engine's issue cycles. `runs` is the
    RUNs' own cycles, which overlap the rest and are not part of the total."""

    core: int = 0
    attention: int = 0
    vector: int = 0
    scalar: int = 0
    issue: int = 0
    runs: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, name) for name in CYCLE_CLASSES)

    def __add__(self, other: "DecodeCycles") -> "DecodeCycles":
        return DecodeCycles(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def run_cycles(rows: int, cols: int, lanes: int, k_per_cycle: int, run_overhead: int) -> int:
    """One vector's RUN on the ternary core: its busy cycles and its stall cycles (CoreConfig.run_overhead)."""
    row_tiles, k_steps = tiles(rows, cols, lanes, k_per_cycle)
    return row_tiles * k_steps + run_overhead


def instruction_cycles(ins: Instruction, pos: int, shape: MachineShape, run_overhead: int) -> DecodeCycles:
    """Engine cycles of one instruction of a DECODE at position `pos` on an engine of `shape` whose core
    stalls `run_overhead` cycles per RUN (hw/decoder.py), were the engine to wait for its unit: an
    instruction is loaded in the cycle its predecessor retires; then every instruction takes an issue
    cycle, in which its unit starts, and the cycles from there to its unit's done, in which it retires
    (the engine counts them to the unit); HALT takes its issue cycle. A TRUN's are its RUN's (`runs`
    too); the engine retires it after one (`decode_cycles`)."""
    op = Op(ins.op)
    cycles = DecodeCycles(issue=ISSUE_CYCLES)
    if op in VECTOR_OPS or op == Op.KVAPPEND:  # done in the cycle before the unit can start again
        unit = vector_cycles(op, ins.n, shape.vector_lanes) - 1
        if op == Op.KVAPPEND:
            cycles.attention = unit
        else:
            cycles.vector = unit
    elif op == Op.ATTEND:
        cycles.attention = attend_cycles(pos, ins.n, shape.attention_macs, shape.vector_lanes) + ATTEND_DRAIN
    elif op == Op.TRUN:
        cycles.runs = cycles.core = run_cycles(ins.n, ins.b_addr, shape.lanes, shape.k_per_cycle, run_overhead)
    elif op in SCALAR_OPS:
        cycles.scalar = scalar_cycles(op)
    # WFETCH, KVLOAD: the issue cycles only; the engine does not count their wait for the SDRAM (`_op_wfetch`)
    return cycles


TRUN_RETIRE = 1  # a TRUN's cycles after its issue cycle: the engine retires it while the core runs on


def decode_cycles(program: Sequence[Instruction], pos: int, shape: MachineShape, run_overhead: int) -> DecodeCycles:
    """Engine cycles of one DECODE token at position `pos`: the program up to and including its first HALT
    (what the gateware's counters give, for the programs of sw/decoder_program.py). Each instruction
    takes its `instruction_cycles` but a TRUN, which takes its issue cycle and TRUN_RETIRE while its RUN
    goes on; one that waits for the core (`Instruction.waits_for_core`) first waits, counted to the core,
    until the cycle after the RUN's last."""
    total = DecodeCycles(issue=START_CYCLES)
    t, core_idle = START_CYCLES, 0  # this instruction's issue cycle; the first cycle the core is idle
    for ins in program:
        if ins.waits_for_core and core_idle > t:
            total.core += core_idle - t
            t = core_idle
        cycles = instruction_cycles(ins, pos, shape, run_overhead)
        if ins.op == Op.TRUN:
            core_idle = t + ISSUE_CYCLES + cycles.runs
            cycles = DecodeCycles(issue=ISSUE_CYCLES, core=TRUN_RETIRE, runs=cycles.runs)
        total = total + cycles
        t += cycles.total
        if ins.op == Op.HALT:
            break
    return total



# ----------------------------------------------------------------------------- what an instruction touches
#
# The locations an instruction reads and writes in a DECODE at position POS, for reasoning about which
# instructions could overlap (the bound below; an engine that issues while a unit runs needs the same
# hazards). A location is a tuple: (bank, element) for an element of a bank (OUT and ACT per element, as
# their ops address them), ("R", r) for a register (R0 is a constant and is left out), ("KV", layer,
# kv head, K 0 / V 1, position) for one cached row (its mantissas and exponent), ("KV max", layer, kv head,
# K 0 / V 1) for the attention unit's running max of a slot's exponents (hw/attention.py: an append at
# position 0 sets it, a later one raises it; ATTEND reads it), ("WEIGHTS", word) for a word of the core's
# weight memory and ("SDRAM", word) for a word of the device's SDRAM.
# tests/test_decoder_program.py checks each op on the model: it changes nothing outside its writes, and
# what it writes does not depend on anything outside its reads.

Location = tuple

# the vector operands each op reads, n elements each (VROPE's pairs: n / 2)
_VECTOR_READS = {Op.VMAXABS: "a", Op.VSHIFT: "a", Op.VNORM: "ab", Op.VQUANT: "a", Op.VSCALE: "a", Op.VROPE: "abc",
                 Op.VRESID: "ab", Op.VRELU2: "a", Op.VMUL: "ab", Op.VPHASE: "c", Op.KVAPPEND: "a", Op.ATTEND: "a"}
# the register fields each op reads and writes; "r1:" names the aligned pair r1, r1 | 1
_REG_READS = {Op.VSHIFT: "r1", Op.VNORM: "r1", Op.VQUANT: "r1 r2", Op.VSCALE: "r1 r2", Op.VROPE: "r1",
              Op.VRESID: "r1 r2 r3", Op.VRELU2: "r1", Op.VMUL: "r1 r2", Op.ADD: "r1 r2", Op.SUB: "r1 r2",
              Op.MAX: "r1 r2", Op.NSHIFT: "r1", Op.FACTOR: "r1 r2", Op.FMUL: "r1: r2:", Op.RSQRT: "r1",
              Op.QFACTOR: "r1", Op.EPS: "r1: r2: r3", Op.KVAPPEND: "r1", Op.ATTEND: "r1"}
_REG_WRITES = {Op.VMAXABS: "r0", Op.VSHIFT: "r0", Op.VNORM: "r0 r2", Op.VSCALE: "r0", Op.VROPE: "r0",
               Op.VRESID: "r0", Op.VRELU2: "r0", Op.VMUL: "r0", Op.MOVI: "r0", Op.ADD: "r0", Op.SUB: "r0",
               Op.MAX: "r0", Op.NSHIFT: "r0", Op.FACTOR: "r0:", Op.FMUL: "r0:", Op.RSQRT: "r0:", Op.QFACTOR: "r0:",
               Op.EPS: "r0", Op.ATTEND: "r0"}


def _registers(ins: Instruction, fields: str) -> set[Location]:
    found = set()
    for name in fields.split():
        r = getattr(ins, name.rstrip(":"))
        found |= {("R", x) for x in ((r, r | 1) if name.endswith(":") else (r,)) if x}
    return found


def _span(space: object, start: int, n: int) -> set[Location]:
    return {(space, e) for e in range(start, start + n)}


def effects(ins: Instruction, shape: MachineShape, pos: int) -> tuple[frozenset[Location], frozenset[Location]]:
    """The locations `ins` reads and the locations it writes in a DECODE at `pos` on an engine of `shape`
    (see above)."""
    op = Op(ins.op)
    reads, writes = _registers(ins, _REG_READS.get(op, "")), _registers(ins, _REG_WRITES.get(op, ""))
    for name in _VECTOR_READS.get(op, ""):
        n = ins.n // 2 if op == Op.VROPE and name == "c" else ins.n
        reads |= _span(Bank(getattr(ins, f"{name}_bank")), getattr(ins, f"{name}_addr"), n)
    if op in VECTOR_OPS - {Op.VMAXABS} or op == Op.ATTEND:
        writes |= _span(Bank(ins.d_bank), ins.d_addr, ins.n)
    row_words = kv_row_words(shape.head_dim)
    slot = ("KV", ins.r2, ins.r3, ins.imm & KV_V)
    if op == Op.TRUN:
        row_tiles, k_steps = tiles(ins.n, ins.b_addr, shape.lanes, shape.k_per_cycle)  # whole words (_op_trun)
        reads |= _span(Bank.ACT, ins.a_addr * shape.k_per_cycle, k_steps * shape.k_per_cycle)
        reads |= _span("WEIGHTS", ins.imm, row_tiles * k_steps)
        writes |= _span(Bank.OUT, ins.d_addr * shape.lanes, row_tiles * shape.lanes)
    elif op == Op.KVAPPEND:
        writes |= {(*slot, pos), ("KV max", *slot[1:])}
        if pos:
            reads.add(("KV max", *slot[1:]))
        if ins.imm & KV_STORE:
            writes |= _span("SDRAM", region_address(ins.imm) + pos * row_words, row_words)
    elif op == Op.ATTEND:
        reads |= {("KV", ins.r2, ins.r3, kv, p) for kv in (0, 1) for p in range(pos + 1)}
        reads |= {("KV max", ins.r2, ins.r3, kv) for kv in (0, 1)}
    elif op == Op.KVLOAD:
        reads |= _span("SDRAM", region_address(ins.imm), pos * row_words)
        writes |= {(*slot, p) for p in range(pos)} | ({("KV max", *slot[1:])} if pos else set())
    elif op == Op.WFETCH:
        reads |= _span("SDRAM", ins.imm, ins.n)
        writes |= _span("WEIGHTS", ins.d_addr, ins.n)
    return frozenset(reads), frozenset(writes)


def conflicts(ins: Instruction, shape: MachineShape, pos: int,
              running: tuple[frozenset[Location], frozenset[Location]]) -> bool:
    """Whether `ins` reads what an instruction still running (its reads and writes: `running`) writes, or
    writes what it reads or writes."""
    reads, writes = effects(ins, shape, pos)
    return bool(reads & running[1] or writes & (running[0] | running[1]))


def needs_wait_core(ins: Instruction, shape: MachineShape, pos: int,
                    running: tuple[frozenset[Location], frozenset[Location]]) -> bool:
    """Whether `ins`, issued while the core runs a TRUN whose effects are `running`, must wait for it:
    a data hazard (`conflicts`), or a wait for the SDRAM (KVLOAD, KVAPPEND's store; see the module
    docstring)."""
    waits_for_sdram = ins.op == Op.KVLOAD or (ins.op == Op.KVAPPEND and bool(ins.imm & KV_STORE))
    return waits_for_sdram or conflicts(ins, shape, pos, running)


def unit_of(op: int) -> str:
    """The unit that runs `op`: one of CYCLE_CLASSES but "issue" (HALT), or "sdram" (WFETCH, KVLOAD)."""
    op = Op(op)
    if op in VECTOR_OPS:
        return "vector"
    if op in SCALAR_OPS:
        return "scalar"
    return {Op.TRUN: "core", Op.KVAPPEND: "attention", Op.ATTEND: "attention", Op.WFETCH: "sdram",
            Op.KVLOAD: "sdram"}.get(op, "issue")


def dependence_bound(program: Sequence[Instruction], pos: int, shape: MachineShape, run_overhead: int) -> int:
    """A lower bound on the cycles of `program`'s DECODE at `pos` on any engine built from these units,
    however it ordered and overlapped their work: the larger of the longest chain of true dependences
    (an instruction reads what an earlier one wrote, `effects`) and the busiest unit's cycles (a unit
    runs one instruction at a time). Each instruction takes its `instruction_cycles` as on this engine,
    issue cycle included, and, as there, a DECODE's first cycle and its HALT's issue cycle count. This
    engine, which runs one instruction at a time, takes `decode_cycles`: the bound is equal to it for a
    program that is one chain."""
    ready: dict[Location, int] = {}
    busy: dict[str, int] = {}
    chain = 0
    for ins in program:
        if ins.op == Op.HALT:
            break
        reads, writes = effects(ins, shape, pos)
        cycles = instruction_cycles(ins, pos, shape, run_overhead).total
        finish = max([0] + [ready.get(x, 0) for x in reads]) + cycles
        ready.update(dict.fromkeys(writes, finish))
        chain = max(chain, finish)
        busy[unit_of(ins.op)] = busy.get(unit_of(ins.op), 0) + cycles
    return START_CYCLES + max(chain, *busy.values()) + ISSUE_CYCLES  # the HALT


def overlap_schedule(program: Sequence[Instruction], pos: int, shape: MachineShape, run_overhead: int,
                     unit: Callable[[int], str] = unit_of) -> tuple[int, list[int]]:
    """A schedule of `program`'s DECODE at `pos` for an engine that issues one instruction a cycle to
    whichever unit is free, in any order that keeps the program's meaning: the cycles it takes and each
    instruction's start cycle up to the HALT (counted from the cycle after the DECODE's first). An
    instruction starts once every earlier one it depends on has finished (it reads what that one
    writes, or writes what that one reads or writes: the program's registers and buffers as compiled)
    and its unit has finished its previous instruction; it takes its `instruction_cycles`. Of the
    instructions that could start, the one with the longest chain of dependents after it goes first.
    The cycles are the DECODE's first, the last finish and the HALT's issue cycle (at least
    `dependence_bound`). `unit` names each op's unit: ops of one name run one at a time."""
    body = list(itertools.takewhile(lambda ins: ins.op != Op.HALT, program))
    cycles = [instruction_cycles(ins, pos, shape, run_overhead).total for ins in body]
    units = [unit(ins.op) for ins in body]
    after: list[list[int]] = [[] for _ in body]  # the instructions that wait for each
    waits = [0] * len(body)
    writer: dict[Location, int] = {}
    readers: dict[Location, list[int]] = {}
    for i, ins in enumerate(body):
        reads, writes = effects(ins, shape, pos)
        deps = {writer[x] for x in reads | writes if x in writer}
        deps.update(j for x in writes for j in readers.get(x, ()))
        for j in deps:
            after[j].append(i)
        waits[i] = len(deps)
        for x in reads:
            readers.setdefault(x, []).append(i)
        for x in writes:
            writer[x], readers[x] = i, []
    tail = cycles[:]  # each instruction's cycles plus its longest chain of dependents
    for i in reversed(range(len(body))):
        tail[i] += max((tail[k] for k in after[i]), default=0)
    start = [0] * len(body)
    earliest = [0] * len(body)  # when the dependences of an instruction have all finished
    unit_free: dict[str, int] = {}
    released = [i for i, n in enumerate(waits) if n == 0]  # every dependence started
    t = 0
    while released:
        startable = [i for i in released if max(earliest[i], unit_free.get(units[i], 0)) <= t]
        if not startable:
            t = min(max(earliest[i], unit_free.get(units[i], 0)) for i in released)
            continue
        i = max(startable, key=lambda i: (tail[i], -i))
        released.remove(i)
        start[i], unit_free[units[i]] = t, t + cycles[i]
        for k in after[i]:
            earliest[k] = max(earliest[k], t + cycles[i])
            waits[k] -= 1
            if waits[k] == 0:
                released.append(k)
        t += 1
    return START_CYCLES + max(unit_free.values(), default=0) + ISSUE_CYCLES, start

__all__ = ["Bank", "Op", "Instruction", "MachineShape", "DecoderMachine", "ProgramError", "attend_head",
           "REGISTERS", "REG_BITS", "WORD_BITS", "VECTOR_OPS", "ALIGNED_OPS", "GENERAL_BANKS", "WRITABLE_BANKS",
           "TernaryRun", "DecodeCycles", "decode_cycles", "instruction_cycles", "vector_cycles", "vector_latency",
           "scalar_cycles", "attend_cycles", "append_cycles", "tree_levels", "tree_stages", "run_cycles",
           "CYCLE_CLASSES", "SCALAR_OPS", "WAIT_CORE", "TRUN_RETIRE", "CORE_WAIT_OPS"]
__all__ += ["WeightFetch", "Sdram"]  # the device's callbacks: WFETCH, the KV cache in SDRAM
# hazards: the core beside the engine, the overlap bound and schedule
__all__ += ["Location", "effects", "conflicts", "needs_wait_core", "unit_of", "dependence_bound", "overlap_schedule"]
