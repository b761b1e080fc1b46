"""Ternary weight words in SDRAM: where they lie and what fetching them costs (the decoder's WFETCH).

One definition for the host (sw/decoder_program.py places them, sw/decoder_session.py loads them),
the functional model (contract/decoder.py's WFETCH through sw/model_device.py) and the gateware
(hw/weight_fetch.py assembles them).

Layout: a weight word in SDRAM is exactly the bytes `contract.packing.pack_weights` gives for it
(`weight_word_bytes` of them: trit i of the word in byte i // 4, bits 2 (i % 4) + 1 .. 2 (i % 4)),
read as little-endian 16-bit SDRAM words (the MEM_* word, `protocol.MEM_WORD_BYTES`): SDRAM word
j of the weight word holds bits 16 j .. 16 j + 15 of the word, the lowest first. So a packed
matrix is its own SDRAM image, loaded as one blob (sw/sdram.py's `load_blob`), and weight word w
of a matrix placed at SDRAM word `base` starts at SDRAM word base + w * `sdram_words_per_weight_word`.
WFETCH addresses must be multiples of that number (whole weight words), so that a wider port
(several SDRAM words a port word, hw/sdram_port.py's `ratio`) can read them too.
"""
from __future__ import annotations

import math

import numpy as np

from .config import CoreConfig
from .protocol import MEM_WORD_BYTES, Capabilities

SDRAM_WORD_BITS = 8 * MEM_WORD_BYTES


def sdram_words_per_weight_word(device: CoreConfig | Capabilities) -> int:
    """SDRAM words one weight word takes on a device (its CoreConfig or INFO record: lanes * k_per_cycle
    trits of 2 bits); ValueError where a word is not whole SDRAM words."""
    bits = 2 * device.lanes * device.k_per_cycle
    if bits % SDRAM_WORD_BITS:
        raise ValueError(f"a weight word of {bits} bits is not whole {SDRAM_WORD_BITS}-bit SDRAM words "
                         "(lanes * k_per_cycle must be a multiple of 8 for weights in SDRAM)")
    return bits // SDRAM_WORD_BITS


def fetch_ratio(config: CoreConfig) -> int:
    """SDRAM words per word of the engine's weight port (hw/sdram_port.py's `fetch_ratio`): the least power
    of two that lets the core domain take a word a cycle as fast as the SDRAM streams them (4 for 100 MHz
    SDRAM and a 30 MHz core), but no more than a weight word, so that weight words are whole port words."""
    need = config.sdram_clock_hz / (config.clock_hz or config.sdram_clock_hz)
    ratio = 1
    while ratio < need:
        ratio *= 2
    return min(ratio, sdram_words_per_weight_word(config))


def sdram_image(packed: bytes) -> np.ndarray:
    """Packed weight words (pack_weights' bytes) as the SDRAM words that hold them."""
    return np.frombuffer(packed, dtype="<u2")


def weight_bytes(sdram: np.ndarray, addr: int, words: int, config: CoreConfig) -> bytes:
    """The packed bytes of `words` weight words from SDRAM word `addr` (the inverse of sdram_image)."""
    spw = sdram_words_per_weight_word(config)
    return sdram[addr:addr + words * spw].astype("<u2").tobytes()


# The fetch's duration depends on the SDRAM's state (open rows, refresh due) and on the clock
# crossing, so the engine does not count it in a DECODE's cycles (contract/decoder.py, WFETCH): this
# is an estimate for projections, not a count the gateware must equal. Measured on the Verilated
# ULX3S-clocked top (30 MHz core, 100 MHz SDRAM, sim_tests/test_decoder_sdram_sim.py's 4 x 4 engine,
# whose weight port is 2 SDRAM words wide): a token with 20 WFETCHes of 7,872 SDRAM words in all
# waits 328 core cycles longer than one with 13 WFETCHes of 7,360, i.e. half a core cycle per SDRAM
# word (the port's rate) and ~10 core cycles (~30 SDRAM cycles) per request. On sim://ulx3s (4-word
# port: the SDRAM sets the rate) h128 with every matrix streamed (28 WFETCHes, 212,992 bytes) waits
# ~33,140 core cycles a token, this estimate 33,168: 193 MB/s of the SDRAM's 200.
FETCH_REQUEST_CYCLES = 30  # SDRAM cycles per request: FIFO crossings, ACTIVATE + tRCD, CAS latency, read delay
REFRESH_SHARE = 0.03       # of the SDRAM's cycles: one refresh (~20 cycles with its precharge) per 7.8 us


def fetch_cycles_estimate(words: int, config: CoreConfig, ratio: int | None = None,
                          request_words: int = 1 << 16) -> int:
    """Core cycles a WFETCH of `words` weight words takes, estimated: the SDRAM streams a word per
    SDRAM cycle, the core domain takes `ratio` SDRAM words per core cycle (the weight port's,
    `fetch_ratio`, unless given), the slower of the two sets the rate; plus each request's latency
    (requests of at most `request_words` SDRAM words) and the refresh share."""
    if not config.sdram_words:
        raise ValueError(f"config {config.name!r} has no SDRAM")
    ratio = fetch_ratio(config) if ratio is None else ratio
    sdram_words = words * sdram_words_per_weight_word(config)
    per_core_cycle = min(ratio, config.sdram_clock_hz / (config.clock_hz or config.sdram_clock_hz))
    requests = -(-sdram_words // request_words)
    sdram_cycles = requests * FETCH_REQUEST_CYCLES + sdram_words * REFRESH_SHARE
    core_per_sdram = (config.clock_hz or config.sdram_clock_hz) / config.sdram_clock_hz
    return math.ceil(sdram_words / per_core_cycle + sdram_cycles * core_per_sdram)


__all__ = ["SDRAM_WORD_BITS", "sdram_words_per_weight_word", "fetch_ratio", "sdram_image", "weight_bytes",
           "fetch_cycles_estimate", "FETCH_REQUEST_CYCLES", "REFRESH_SHARE"]
