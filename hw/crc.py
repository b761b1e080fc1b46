"""Byte-wise CRC-16/CCITT-FALSE, the frame check of the wire protocol.

One step of the CRC (one byte into a 16-bit state, no reflection) is linear
over GF(2): each bit of the next state is the XOR of some state bits and data
bits. `crc16_step` finds those bits by feeding unit vectors through the
reference `contract.protocol.crc16` (the one definition of the polynomial), and
builds one XOR per output bit, so the hardware takes a byte per cycle.
"""
from amaranth import Cat, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from bitlane.contract.protocol import CRC_INIT, crc16, crc32


def crc16_step(crc: Value, byte: Value) -> Value:
    """The CRC after feeding `byte` into `crc` (both unsigned Values)."""
    # inputs[i] and its effect on the next state: crc bits 0..15, then data bits 0..7
    inputs = [crc[i] for i in range(16)] + [byte[i] for i in range(8)]
    effects = ([crc16(b"\x00", 1 << i) for i in range(16)] +
               [crc16(bytes([1 << i]), 0) for i in range(8)])
    return Cat(*(Cat(*(bit for bit, effect in zip(inputs, effects) if effect >> out & 1)).xor()
                 for out in range(16)))


class CRC16(wiring.Component):
    """Running CRC over a byte sequence, one byte per cycle.

    `value` is the CRC of every byte fed since (and including) the last one
    fed with `first` set; before any byte it is the initial value.
    """

    data: In(8)
    valid: In(1)  # feed `data` this cycle
    first: In(1)  # `data` starts a new message
    value: Out(16)

    @staticmethod
    def model(data: bytes, crc: int = CRC_INIT) -> int:
        """Bit-exact model: `value` after feeding `data` (the first byte with `first` set when
        `crc` is CRC_INIT), one byte per cycle; latency one cycle."""
        return crc16(data, crc)

    def elaborate(self, platform) -> Module:
        m = Module()
        state = Signal(16, init=CRC_INIT)
        m.d.comb += self.value.eq(state)
        with m.If(self.valid):
            m.d.sync += state.eq(crc16_step(Mux(self.first, CRC_INIT, state), self.data))
        return m


def crc32_step(register: Value, data: Value, nbytes: int) -> Value:
    """MEM_CRC's CRC-32 register after feeding the `nbytes` bytes of `data` (little-endian, low
    byte first) into `register`, several bytes per cycle.

    `register` is the complement of the running value of `contract.protocol.crc32` (the one
    definition of the polynomial): start it at 0xFFFFFFFF (crc32's init 0), and the CRC of
    what was fed is ~register. The step is linear over GF(2) in that register, so, as for
    `crc16_step`, each output bit is an XOR found by feeding unit vectors through the reference.
    """
    mask = 0xFFFFFFFF

    def step(reg: int, value: int) -> int:  # the reference, on the complemented register
        return ~crc32(value.to_bytes(nbytes, "little"), ~reg & mask) & mask

    inputs = [register[i] for i in range(32)] + [data[i] for i in range(8 * nbytes)]
    effects = [step(1 << i, 0) for i in range(32)] + [step(0, 1 << j) for j in range(8 * nbytes)]
    return Cat(*(Cat(*(bit for bit, effect in zip(inputs, effects) if effect >> out & 1)).xor()
                 for out in range(32)))
