"""The integer arithmetic contract's constants and primitives (docs/arithmetic.md, "Units"): one definition
shared by the numpy reference (bitlane.golden.integer, which re-exports every name) and the gateware's
block models (bitlane.hw.nonlinear). Pure numpy: the tables are fixed by the contract and do not depend
on the model; `rope_omega` is the one per-model table (built at conversion).
"""
from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------- the contract's constants

MANT_BITS = 16         # signed mantissas fed to multipliers (int16) and unsigned factor mantissas (uint16)
EXP_BITS = 8           # signed exponent of every per-vector factor and block-floating vector
RES_BITS = 32          # residual stream, fixed point
ACC_BITS = 32          # ternary product accumulators
WIDE_BITS = 48         # sum of squares, attention scores and the weighted V sum (DSP accumulators)
Q_MAX = 127            # int8 activations: q in [-128, 127], absmax maps to 127
Q_SHIFT = 23           # quantizer: q = (x * c + 2^22) >> 23 with c = 127 * 2^24 / max (16 bits)
RECIP_SHIFT = 31       # reciprocal unit: floor((2^31 - 1) / m) ~ 2^31 / m for m in [2^15, 2^16)
RECIP_NUM = (1 << RECIP_SHIFT) - 1
RSQRT_SEED_BITS = 10   # rsqrt seed table: top 10 bits of a mantissa in [2^14, 2^16): 768 entries
RSQRT_FRAC = 22        # rsqrt unit output: y ~ 2^22 / sqrt(m)
RSQRT_SQ_SHIFT = 15    # rsqrt Newton step: a = y*y >> 15 and y' = y*h >> 15 keep a, h 16-bit operands
RSQRT_T_FRAC = 16      # ... t = m y^2 / 2^44 in Q16 (1.0 at convergence), h = (3 - t) / 2 in Q15
RSQRT_T_SHIFT = 2 * RSQRT_FRAC - RSQRT_SQ_SHIFT - RSQRT_T_FRAC  # t = m*a >> 13
EXP_FRAC = 10          # softmax: exp2 argument has 10 fraction bits; exp2 table has 2^10 entries
PROB_BITS = 15         # exp2 table entries: round(2^15 * 2^-f), so a probability weight is <= 2^15
EXP_SAT = 16 << EXP_FRAC  # exp2(-x) is 0 for x >= 16 (2^15 >> 16 == 0): arguments saturate here
PHASE_BITS = 32        # RoPE phase: unsigned fraction of a turn (wraps mod 1 turn by design)
SINE_INDEX_BITS = 10   # quarter-wave sine table: 1024 entries
TRIG_FRAC = 14         # cos/sin in Q14: 1.0 = 16384 fits int16
SIG_FRAC = 7           # SiLU: sigmoid table indexed by |x| with 7 fraction bits
SIG_RANGE_BITS = 3     # ... over |x| < 2^3 = 8: 1024 entries; beyond, sigmoid saturates to 0 / 1
MAX_POSITIONS = 1 << 16  # positions are uint16 multiplier operands
FACTOR_ONE = 1 << (MANT_BITS - 1)  # UF mantissas lie in [2^15, 2^16)
EPS_LIMIT = 1 << 46    # RMSNorm's eps term saturates here (the vector is then ~0 next to eps)
MAX_NORM_GAIN = (1 << (MANT_BITS - 1)) - 1  # largest |norm weight| accepted (int16 gain, shift 0)


class WidthError(ArithmeticError):
    """An intermediate left its declared width: the message names the stage, the width and the value."""


def fits(stage: str, x: np.ndarray, bits: int, signed: bool = True) -> np.ndarray:
    """Return x after checking every element lies in the `bits`-wide (signed or unsigned) range."""
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    x = np.asarray(x, dtype=np.int64)
    if x.size:
        bad = (x < lo) | (x > hi)
        if bad.any():
            value = int(x[bad].flat[0])
            raise WidthError(f"{stage}: value {value} outside {'int' if signed else 'uint'}{bits} [{lo}, {hi}]")
    return x


# ----------------------------------------------------------------------------- primitives (gateware mirrors these)

def bit_length(x: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 values (0 -> 0): a priority encoder. Input < 2^63, output 0..63."""
    x = np.asarray(x, dtype=np.int64).copy()
    n = np.zeros(x.shape, dtype=np.int64)
    for step in (32, 16, 8, 4, 2, 1):
        big = x >= (np.int64(1) << step)
        x = np.where(big, x >> step, x)
        n += big * step
    return n + (x > 0)


def shift_right(x: np.ndarray, s: np.ndarray, rounding: bool = False, stage: str = "shift") -> np.ndarray:
    """x * 2^-s for integer s of either sign: arithmetic right shift (floor, or round half up when
    `rounding`: add 2^(s-1) first) for s > 0, exact left shift for s <= 0. A barrel shifter.
    A left shift that would leave int64 raises WidthError (numpy would wrap)."""
    x, s = np.asarray(x, dtype=np.int64), np.asarray(s, dtype=np.int64)
    left = np.maximum(-s, 0)
    overflow = (left > 0) & (x != 0) & (bit_length(np.abs(x)) + left > 62)
    if overflow.any():
        value, amount = np.broadcast_arrays(x, left)
        raise WidthError(f"{stage}: value {int(value[overflow].flat[0])} << {int(amount[overflow].flat[0])} "
                         f"leaves int64")
    # numpy takes a shift count modulo 64; from 63 on, every |x| < 2^62 (all that the left-shift
    # guard lets through) leaves only its sign (floor) or 0 (rounding), which a count of 63 gives too
    right = np.minimum(np.maximum(s, 0), 63)
    half = np.where(rounding & (right > 0), np.int64(1) << np.maximum(right - 1, 0), 0)
    return np.where(s > 0, (x + half) >> right, x << np.where(overflow | (x == 0), 0, left))


def normalize(x: np.ndarray, bits: int = MANT_BITS) -> tuple[np.ndarray, np.ndarray]:
    """Block floating point along the last axis: (m, e) with x ~ m * 2^e, |m| < 2^(bits-1) (fits a signed
    `bits`-wide operand), e >= 0 per vector. One max|x| over the vector, one priority encode, then a
    truncating shift of each element (error < 1 LSB of the mantissa). Integers that fit are kept exact."""
    x = np.asarray(x, dtype=np.int64)
    e = np.maximum(bit_length(np.abs(x).max(axis=-1, keepdims=True)) - (bits - 1), 0)
    return x >> e, e


def factor(x: np.ndarray, e: np.ndarray | int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A per-vector factor x * 2^e (x >= 0 integer) as a UF value (m, e'): m in [2^15, 2^16), or (0, 0)
    for x == 0. Left shifts are exact; right shifts truncate (error < 2^-15 relative)."""
    x = np.asarray(x, dtype=np.int64)
    s = bit_length(x) - MANT_BITS
    m = shift_right(x, s)
    return m, np.where(x == 0, 0, np.asarray(e, dtype=np.int64) + s)


def factor_mul(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Product of two UF factors: one unsigned 16 x 16 multiply (32-bit product), then renormalize."""
    p = fits("factor product", a[0] * b[0], 2 * MANT_BITS, signed=False)
    return factor(p, a[1] + b[1])


def recip16(m: np.ndarray) -> np.ndarray:
    """floor((2^31 - 1) / m) for m in [2^15, 2^16), result in [2^15, 2^16): the reciprocal unit.
    Restoring division, 16 iterations of one compare-and-subtract each (one quotient bit per cycle).
    (2^31 - 1 rather than 2^31 keeps m = 2^15 inside 16 bits.)"""
    m = np.asarray(m, dtype=np.int64)
    remainder = np.full(m.shape, RECIP_NUM >> MANT_BITS, dtype=np.int64)  # 15 bits: always < m
    quotient = np.zeros(m.shape, dtype=np.int64)
    for bit in range(MANT_BITS - 1, -1, -1):
        remainder = (remainder << 1) | ((RECIP_NUM >> bit) & 1)
        take = remainder >= m
        remainder -= np.where(take, m, 0)
        quotient = (quotient << 1) | take
    return quotient


def rsqrt_seed_table() -> np.ndarray:
    """Seed table of the rsqrt unit: 768 entries (index i = top 10 bits of m in [2^14, 2^16), i in
    256..1023, stored at i - 256) of round(2^22 / sqrt(m at the bucket's middle)), 16 bits unsigned."""
    lo = 1 << (RSQRT_SEED_BITS - 2)
    i = np.arange(lo, 1 << RSQRT_SEED_BITS, dtype=np.float64)
    mid = (i + 0.5) * (1 << (MANT_BITS - RSQRT_SEED_BITS))
    return np.round(2.0 ** RSQRT_FRAC / np.sqrt(mid)).astype(np.int64)


RSQRT_SEED = rsqrt_seed_table()


def rsqrt16(m: np.ndarray) -> np.ndarray:
    """y ~ 2^22 / sqrt(m) for m in [2^14, 2^16), y in [2^14 - 1, 2^15): seed from RSQRT_SEED, then one
    Newton step y' = y * (3 - m y^2 / 2^44) / 2 using three unsigned 16 x 16 multiplies:
    a = y*y >> 15, t = m*a >> 13 (~ 2^16 = 1.0), y' = y * ((3*2^16 - t) >> 2) >> 15.
    Relative error vs the float value below 2^-13 over the whole domain (measured 8.0e-5)."""
    m = np.asarray(m, dtype=np.int64)
    y = RSQRT_SEED[(m >> (MANT_BITS - RSQRT_SEED_BITS)) - (1 << (RSQRT_SEED_BITS - 2))]
    a = (y * y) >> RSQRT_SQ_SHIFT
    t = (m * a) >> RSQRT_T_SHIFT
    return (y * (((3 << RSQRT_T_FRAC) - t) >> (RSQRT_T_FRAC - RSQRT_SQ_SHIFT + 1))) >> RSQRT_SQ_SHIFT


def rsqrt_factor(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1 / sqrt(x) for an integer x > 0 of up to WIDE_BITS bits as a UF factor: shift x by an even
    amount 2k into [2^14, 2^16) (priority encoder), rsqrt16 the mantissa, exponent -22 - k."""
    x = np.asarray(x, dtype=np.int64)
    k = (bit_length(x) - (MANT_BITS - 1)) // 2
    m = shift_right(x, 2 * k)
    return factor(rsqrt16(m), -RSQRT_FRAC - k)


def exp2_table() -> np.ndarray:
    """exp2 table: 1024 entries round(2^15 * 2^(-f / 1024)), f = 0..1023, in [2^14, 2^15], 16 bits unsigned."""
    f = np.arange(1 << EXP_FRAC, dtype=np.float64)
    return np.round(2.0 ** PROB_BITS * 2.0 ** (-f / (1 << EXP_FRAC))).astype(np.int64)


EXP2_TABLE = exp2_table()


def exp2_neg(x: np.ndarray) -> np.ndarray:
    """p ~ 2^15 * 2^(-x / 1024) for x >= 0 with 10 fraction bits: table[x mod 1024] >> (x div 1024).
    Arguments >= EXP_SAT give 0. Absolute error < 1.5 (0.5 table rounding + < 1 shift truncation;
    measured max 1.0)."""
    x = np.minimum(np.asarray(x, dtype=np.int64), EXP_SAT)
    return EXP2_TABLE[x & ((1 << EXP_FRAC) - 1)] >> (x >> EXP_FRAC)


def sine_table() -> np.ndarray:
    """Quarter-wave sine table: 1024 entries round(2^14 sin(2 pi (i + 0.5) / 4096)), 15 bits unsigned.
    Sampling at bucket middles makes a truncated phase index round to the nearest sample."""
    i = np.arange(1 << SINE_INDEX_BITS, dtype=np.float64)
    return np.round(2.0 ** TRIG_FRAC * np.sin(2 * np.pi * (i + 0.5) / (4 << SINE_INDEX_BITS))).astype(np.int64)


SINE_TABLE = sine_table()


def sin_q14(phase: np.ndarray) -> np.ndarray:
    """sin(2 pi phase / 2^32) in Q14 from a uint32 phase: index = top 12 bits (2 quadrant + 10 table bits),
    mirrored / negated per quadrant. Error <= pi/4096 + 2^-15 (about 7.9e-4)."""
    p = np.asarray(phase, dtype=np.int64) >> (PHASE_BITS - SINE_INDEX_BITS - 2)
    quadrant, i = p >> SINE_INDEX_BITS, p & ((1 << SINE_INDEX_BITS) - 1)
    value = SINE_TABLE[np.where(quadrant & 1, (1 << SINE_INDEX_BITS) - 1 - i, i)]
    return np.where(quadrant >= 2, -value, value)


def cos_q14(phase: np.ndarray) -> np.ndarray:
    """cos = sin a quarter turn later (phase + 2^30 mod 2^32)."""
    return sin_q14((np.asarray(phase, dtype=np.int64) + (1 << (PHASE_BITS - 2))) & ((1 << PHASE_BITS) - 1))


def rope_phase(positions: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """Phase pos * omega mod 2^32 (fraction of a turn) for uint16 positions and uint32 omega (turns per
    position, UQ0.32) held as two 16-bit halves: two unsigned 16 x 16 multiplies, shift, add, drop the
    carry out of bit 31. Exact."""
    pos = np.asarray(positions, dtype=np.int64)[..., None]
    hi, lo = omega >> 16, omega & 0xFFFF
    return (((pos * hi) << 16) + pos * lo) & ((1 << PHASE_BITS) - 1)


def rope_omega(head_dim: int, theta: float) -> np.ndarray:
    """Conversion: omega_i = round(2^32 theta^(-2i/d) / (2 pi)), i < d/2, uint32 (two 16-bit tables)."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return np.round(inv_freq / (2 * np.pi) * 2.0 ** PHASE_BITS).astype(np.int64) & ((1 << PHASE_BITS) - 1)


def sigmoid_table() -> np.ndarray:
    """SiLU's sigmoid table: 1024 entries round(2^15 sigmoid((i + 0.5) / 128)), i < 1024, <= 2^15."""
    i = np.arange(1 << (SIG_FRAC + SIG_RANGE_BITS), dtype=np.float64)
    return np.round(2.0 ** PROB_BITS / (1 + np.exp(-(i + 0.5) / (1 << SIG_FRAC)))).astype(np.int64)


SIGMOID_TABLE = sigmoid_table()


def scale_saturating(x: np.ndarray, c: np.ndarray, limit: int, rounding: bool = True) -> np.ndarray:
    """min(x * 2^c, limit) for x >= 0 and c of either sign (round half up, or floor): the left shift is
    taken only when bit_length(x) + c cannot exceed limit's bit length, so it never overflows."""
    x, c = np.asarray(x, dtype=np.int64), np.asarray(c, dtype=np.int64)
    over = (x > 0) & (bit_length(x) + c > bit_length(np.int64(limit)))
    return np.where(over, limit, np.minimum(shift_right(np.where(over, 0, x), np.where(over, 0, -c), rounding), limit))


def sigmoid_q15(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    """2^15 sigmoid(x * 2^e) for an int32 x and exponent e: index = |x| 2^(e+7) truncated; from index
    1024 (|x| >= 8) on, sigmoid saturates to 2^15 (0 for x < 0); 2^15 - table for x < 0.
    Error <= 2^-10 of 2^15 (half an index step times the largest slope 1/4, plus rounding; measured 9.9e-4)."""
    x, e = np.asarray(x, dtype=np.int64), np.asarray(e, dtype=np.int64)
    size = 1 << (SIG_FRAC + SIG_RANGE_BITS)
    i = scale_saturating(np.abs(x), e + SIG_FRAC, size, rounding=False)
    value = np.where(i >= size, 1 << PROB_BITS, SIGMOID_TABLE[np.minimum(i, size - 1)])
    return np.where(x < 0, (1 << PROB_BITS) - value, value)
