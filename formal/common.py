"""Shared pieces of the formal harnesses: the harness base class, small configurations, specs."""
from __future__ import annotations

from amaranth import ClockDomain, Elaboratable, Module, Mux, Signal
from amaranth.asserts import AnyConst, AnySeq  # noqa: F401  (re-exported for the harnesses)

from hw.config import CoreConfig
from sw.protocol import CRC_POLY


class Harness(Elaboratable):
    """A port-less formal top: one clock domain `sync` without reset, so every register
    starts at its init value in step 0 of a trace (the state right after reset)."""

    @property
    def domain(self) -> ClockDomain:
        if "_domain" not in self.__dict__:
            self._domain = ClockDomain("sync", reset_less=True)
        return self._domain

    @property
    def ports(self) -> list:
        """The clock is the top's only port (so that yosys keeps it a free, stepping clock)."""
        return [self.domain.clk]

    def elaborate(self, platform) -> Module:
        m = Module()
        m.domains.sync = self.domain
        self.build(m)
        return m

    def build(self, m: Module) -> None:
        raise NotImplementedError


def past(m: Module, value, cycles: int = 1, name: str = "past"):
    """`value` delayed by `cycles` registers (the value `cycles` steps ago; init before)."""
    for i in range(cycles):
        q = Signal.like(value, name=f"{name}_{i}") if isinstance(value, Signal) else Signal(value.shape(), name=f"{name}_{i}")
        m.d.sync += q.eq(value)
        value = q
    return value


def trit_times(code, x):
    """Spec of one ternary product: trit code (docs/protocol.md: 00 = 0, 01 = +1, 11 = -1,
    10 reserved = 0) times the int8 `x`, as a signed 10-bit value (no overflow possible)."""
    wide = x.as_signed()
    return Mux(code[0], Mux(code[1], -wide, wide), 0).as_signed()


def crc_textbook(crc, byte, keep=None):
    """CRC-16/CCITT-FALSE, one byte, bit-serial as in the textbooks: works unchanged on Python
    ints, numpy arrays and Amaranth Values (so one definition is both the formal spec and the
    exhaustively checked model of `sw.protocol.crc16`). `keep(value)`, for Amaranth, puts each
    bit step into a signal (`m` = the module): without it the expression tree doubles per bit."""
    crc = crc ^ (byte << 8)
    for _ in range(8):
        msb = (crc >> 15) & 1
        crc = ((crc << 1) & 0xFFFF) ^ (msb * CRC_POLY)
        if keep is not None:
            crc = keep(crc)
    return crc & 0xFFFF


def keeper(m: Module, prefix: str):
    """A `keep` for crc_textbook: each value becomes a fresh 16-bit combinational signal."""
    count = [0]

    def keep(value):
        sig = Signal(16, name=f"{prefix}{count[0]}")
        count[0] += 1
        m.d.comb += sig.eq(value)
        return sig
    return keep


def config(name: str, **fields) -> CoreConfig:
    """A small CoreConfig for proofs (memories of a few words, 8-bit counters)."""
    base = dict(lanes=2, k_per_cycle=2, weight_depth=16, act_depth=16, out_depth=4, max_k=16,
                max_payload=64, counter_bits=8)
    base.update(fields)
    return CoreConfig(f"formal-{name}", **base)
