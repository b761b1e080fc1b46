"""Accelerator configurations, pipeline latencies and board facts: one definition each.

Every size that the gateware, the host driver and the functional model must
agree on lives here; derived quantities (accumulator width, word sizes,
latencies) are computed, never restated. The gateware is built from these
numbers (hw/lane.py, hw/core.py) and its tests check that it keeps them.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

FETCH_STAGES = 3  # cycles from the sequencer's address to the lanes' input registers (hw/core.py)


@dataclass(frozen=True)
class DecoderShape:
    """The decoder engine of a configuration (contract/decoder.py): its banks, program memory and the
    attention unit's KV cache. Every model whose sizes fit runs on it (sw/decoder_program.py says
    what does not fit and by how much); `contract.decoder.MachineShape.from_config` is the engine's
    whole shape, with the ternary core's sizes from the CoreConfig."""

    layers: int  # KV cache: layers
    kv_heads: int  # KV cache: KV heads per layer
    head_dim: int  # the attention unit's head length (a model's head_dim must equal it)
    context: int  # KV cache positions
    main_depth: int  # MAIN bank words (signed 32-bit)
    const_depth: int  # CONST bank words
    copy_depth: int  # COPY bank words
    program_depth: int  # program memory instructions
    # elements the vector unit processes per cycle (P): the banks are P elements wide, and vector
    # operands start at multiples of P (contract/decoder.py); a power of two, at most the core's lanes
    # and k_per_cycle (CoreConfig checks)
    vector_lanes: int = 16
    # the attention unit's multipliers (one DSP each): a score or weighted-V pass reads head_dim /
    # attention_macs cache words per position (contract/decoder.py `attend_cycles`), and the cache's
    # words are attention_macs mantissas wide; a divisor of head_dim. Not in the INFO record.
    attention_macs: int = 16
    # the KV cache can be staged from SDRAM (contract/kv_stream.py: KVLOAD, KVAPPEND's store): models
    # whose layers x KV heads exceed the cache's slots run with each (layer, KV head) loaded into a slot
    # before its attention; needs the configuration's SDRAM
    kv_sdram: bool = False

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if name != "kv_sdram" and value < 1:
                raise ValueError(f"decoder shape: {name} must be >= 1, got {value}")
        if self.vector_lanes & (self.vector_lanes - 1):
            raise ValueError(f"decoder shape: vector_lanes must be a power of two, got {self.vector_lanes}")
        if self.head_dim % self.attention_macs:
            raise ValueError(f"decoder shape: attention_macs {self.attention_macs} must divide head_dim "
                             f"{self.head_dim}")
        if self.attention_macs % self.vector_lanes:  # a cache word takes whole beats of the stream ops
            raise ValueError(f"decoder shape: vector_lanes {self.vector_lanes} must divide attention_macs "
                             f"{self.attention_macs}")


@dataclass(frozen=True)
class CoreConfig:
    name: str
    lanes: int  # output rows computed in parallel
    k_per_cycle: int  # (trit, int8) pairs each lane consumes per cycle
    weight_depth: int  # weight memory words (lanes * k_per_cycle trits each)
    act_depth: int  # activation memory words (k_per_cycle int8 each)
    out_depth: int  # output memory words (lanes int32 each)
    max_k: int  # largest number of columns a RUN accepts
    max_payload: int = 1024  # largest frame payload, bytes
    counter_bits: int = 48  # width of the hardware performance counters
    clock_hz: int = 0  # the board's PLL clock that hw/boards.py builds for; 0 where unknown (simulation)
    decoder: DecoderShape | None = None  # the decoder engine, None where the device has none
    sdram_words: int = 0  # 16-bit words of SDRAM behind the MEM_* commands (docs/sdram.md); 0 = none
    sdram_clock_hz: int = 0  # the SDRAM controller's clock (hw/sdram_port.py); 0 without SDRAM

    def __post_init__(self) -> None:
        for field in ("lanes", "k_per_cycle", "weight_depth", "act_depth", "out_depth", "max_k"):
            if getattr(self, field) < 1:
                raise ValueError(f"config {self.name!r}: {field} must be >= 1, got {getattr(self, field)}")
        for field in ("lanes", "k_per_cycle"):
            value = getattr(self, field)
            if value & (value - 1):
                raise ValueError(f"config {self.name!r}: {field} must be a power of two "
                                 f"(tiles and k-steps are counted by shifting), got {value}")
        if (self.lanes * self.k_per_cycle) % 4:
            raise ValueError(
                f"config {self.name!r}: lanes * k_per_cycle = {self.lanes * self.k_per_cycle} "
                "must be a multiple of 4 (four 2-bit trits per byte)")
        if self.max_k > 0xFFFF:
            raise ValueError(f"config {self.name!r}: max_k {self.max_k} exceeds the u16 'cols' field of RUN")
        if self.max_k > self.act_depth * self.k_per_cycle:
            raise ValueError(
                f"config {self.name!r}: max_k {self.max_k} does not fit the activation memory "
                f"({self.act_depth} words of {self.k_per_cycle})")
        if self.acc_bits > 32:
            raise ValueError(
                f"config {self.name!r}: max_k {self.max_k} needs {self.acc_bits}-bit accumulators, "
                "more than the 32 bits results have on the wire")
        if self.decoder is not None and self.decoder.vector_lanes > min(self.lanes, self.k_per_cycle):
            raise ValueError(
                f"config {self.name!r}: the decoder's vector_lanes {self.decoder.vector_lanes} exceeds lanes "
                f"{self.lanes} or k_per_cycle {self.k_per_cycle} (a vector word lies in one OUT / ACT word)")
        if self.decoder is not None and self.decoder.kv_sdram and not self.sdram_words:
            raise ValueError(f"config {self.name!r}: a KV cache staged from SDRAM (kv_sdram) needs sdram_words")
        if self.max_payload < max(64, self.weight_word_bytes + 4, self.k_per_cycle + 4):
            raise ValueError(f"config {self.name!r}: max_payload {self.max_payload} cannot hold one weight word")
        if self.sdram_words < 0 or self.sdram_words & (self.sdram_words - 1):
            raise ValueError(f"config {self.name!r}: sdram_words must be 0 or a power of two, got {self.sdram_words}")
        if bool(self.sdram_words) != bool(self.sdram_clock_hz):
            raise ValueError(f"config {self.name!r}: sdram_words ({self.sdram_words}) and sdram_clock_hz "
                             f"({self.sdram_clock_hz}) must be given together")

    @property
    def acc_bits(self) -> int:
        """Exact accumulator width: |acc| <= max_k * 128, plus a sign bit."""
        return (self.max_k * 128).bit_length() + 1

    @property
    def weight_word_bits(self) -> int:
        return self.lanes * self.k_per_cycle * 2

    @property
    def weight_word_bytes(self) -> int:
        return self.weight_word_bits // 8

    @property
    def act_word_bytes(self) -> int:
        return self.k_per_cycle

    @property
    def macs_per_cycle(self) -> int:
        return self.lanes * self.k_per_cycle

    @property
    def adder_levels(self) -> int:
        """Levels of each lane's adder tree over its k_per_cycle products (at least one)."""
        return max(1, (self.k_per_cycle - 1).bit_length())

    @property
    def lane_latency(self) -> int:
        """Cycles from a (weight, activation) word at the lanes to its sum in the accumulator:
        one register stage after the select muxes, one per adder-tree level (hw/lane.py)."""
        return 1 + self.adder_levels

    @property
    def run_overhead(self) -> int:
        """Stall cycles of one RUN beyond its busy cycles: the fetch stages and the lanes' pipeline
        to fill and drain, and the cycle in which the run ends (hw/core.py)."""
        return FETCH_STAGES + self.lane_latency + 1

    def with_(self, **changes) -> "CoreConfig":
        return replace(self, **changes)


PRESETS: dict[str, CoreConfig] = {
    # Large, for simulation: holds a ~30M-trit model resident. Its decoder holds every shipped model with
    # its full context (h512-english, the largest, needs banks of 4320 / 22048 / 2112 words and 2,600
    # instructions), and models of up to 8 layers and 8 KV heads of head_dim 64 whose banks fit. Its
    # attention unit has 32 multipliers, not 64: the simulator evaluates every unit every cycle, and 64
    # cost h128 more simulator time (51 against 45 ms per token) than their cycles saved (16 per position).
    "sim": CoreConfig("sim", lanes=32, k_per_cycle=16, weight_depth=65536, act_depth=4096,
                      out_depth=4096, max_k=16384, max_payload=4096,
                      decoder=DecoderShape(layers=8, kv_heads=8, head_dim=64, context=256, main_depth=8192,
                                           const_depth=32768, copy_depth=4096, program_depth=4096,
                                           attention_macs=32)),
    # Small and quick to simulate: the second configuration every sim test runs on.
    "tiny": CoreConfig("tiny", lanes=4, k_per_cycle=4, weight_depth=4096, act_depth=2048,
                       out_depth=512, max_k=8192, max_payload=256),
    # iCEBreaker (iCE40 UP5K): 32 trits/cycle = 64-bit weight words in the four SPRAMs.
    "icebreaker": CoreConfig("icebreaker", lanes=4, k_per_cycle=8, weight_depth=16384, act_depth=512,
                             out_depth=256, max_k=4096, max_payload=512, counter_bits=40,
                             clock_hz=18_000_000),
    # ULX3S (ECP5-85F): 256 MACs/cycle, weights in EBR; its 32 MB SDRAM (16M x 16 bit) at 50 MHz. Its decoder is
    # sized for h128 (3328 of the 4096 weight words; banks of 1248 / 3232 / 576 words, 672 instructions). The
    # output memory holds 512 words (15 EBRs; 1024 took 29), enough for the decoder's 48 and for matmul-mode
    # batches of 8192 results. The KV cache's block RAM is one slot of 256 positions, and the whole cache lives
    # in SDRAM (kv_sdram, contract/kv_stream.py): each KV head is loaded into the slot for its attention, so
    # h128 runs its full context of 256 at the price of reading its KV rows back every token.
    # Sized to route: with 8 vector lanes and 32 attention multipliers (~35k LUT4 + 6.4k CCU2C, 207 of 208
    # EBRs) nextpnr's routers never resolved the congestion (router2: 26,394 wires still overused after 4
    # iterations); 4 lanes and 32 multipliers (~28.6k LUT4 + 5.8k CCU2C, 199 EBRs) route from 9 of 15 seeds
    # and meet the core's 50 MHz target from 2 (seed 8: 53.3 MHz; README "ULX3S timing"); 8 lanes and 16 multipliers
    # (207 EBRs) routed from none of 4 in 26 minutes. The SDRAM runs at 50 MHz, which it closes with margin
    # (65-86 MHz routed, 54 MHz placed at 100); h128's weights are in block RAM, but its KV rows come at the
    # SDRAM's pace (61 core cycles a row, 31 with the SDRAM at 100 MHz). The core runs at 45 MHz, the next
    # clock beside the SDRAM's 50 MHz that one VCO (450 MHz) makes with an exact 3 Mbaud (15 cycles a bit);
    # the build places and routes it for 50 MHz (hw/boards.py `core_target_mhz`).
    # `python bench/decoder_bench.py` and the README's synthesis table measure it.
    "ulx3s": CoreConfig("ulx3s", lanes=16, k_per_cycle=16, weight_depth=4096, act_depth=1024,
                        out_depth=512, max_k=8192, max_payload=1024, clock_hz=45_000_000,
                        sdram_words=1 << 24, sdram_clock_hz=50_000_000,
                        decoder=DecoderShape(layers=1, kv_heads=1, head_dim=64, context=256, main_depth=1536,
                                             const_depth=3584, copy_depth=1024, program_depth=1024,
                                             vector_lanes=4, attention_macs=32, kv_sdram=True)),
}
# The ULX3S's core, clocks, SDRAM and link with an engine grown for the SDRAM-sized models: h512-english
# (7 layers, 8 KV heads; banks of 4320 / 22048 / 2112 words, 2,859 instructions) and issue 13's ~18M
# model (6 layers, 2 KV heads), their weights streamed from SDRAM by WFETCH through a weight memory of
# 1,024 words (32 EBRs rather than `ulx3s`'s 128: every matrix of these models is streamed anyway, the
# larger ones in parts), their KV caches in SDRAM through one slot of 256 positions (as on `ulx3s`), and
# frames that carry a hidden state of 512 (1,029 bytes). yosys fits it on the ECP5-85F (188 of 208 EBRs,
# 25.5k LUT4 + 4.9k CCU2C with 16 attention multipliers; ~3k LUT4 more with `ulx3s`'s 32); no board spec
# builds it (it has not been placed and routed), and it runs as sim://ulx3s-large.
PRESETS["ulx3s-large"] = PRESETS["ulx3s"].with_(
    name="ulx3s-large", weight_depth=1024, max_payload=2048,
    decoder=replace(PRESETS["ulx3s"].decoder, main_depth=4352, const_depth=22528, copy_depth=2176,
                    program_depth=3072))


def preset(name: str) -> CoreConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


# ---------------------------------------------------------------- boards

DEFAULT_BAUD = 3_000_000  # every board's UART rate unless told otherwise
UART_BITS_PER_BYTE = 10  # 8N1

# FTDI USB-UART bridges (FT231X, FT2232H: FTDI AN232B-04, "Data Throughput, Latency and Handshaking") hold
# received bytes until a full USB packet is there, the event character arrives, or the latency timer
# (1-255 ms, 16 ms from the factory) expires since the last packet. A response's last short packet
# therefore waits for the timer. The host sets the timer: Linux's ftdi_sio exposes it as
# /sys/bus/usb-serial/devices/<tty>/latency_timer (sw/transport.py sets 1 ms where it may).
FTDI_DEFAULT_LATENCY_S = 0.016
FTDI_MIN_LATENCY_S = 0.001
USB_FRAME_S = {"full": 1e-3, "high": 125e-6}  # a full-speed frame, a high-speed microframe


@dataclass(frozen=True, kw_only=True)
class BoardFacts:
    """What both sides know of a dev board: its FPGA, clocks and serial link.

    The gateware side (hw/boards.py) adds pins, PLL and build options; the host projects a
    board's tokens/s from these facts (sw/session.py)."""

    name: str
    family: str  # "ice40" or "ecp5": PLL primitive, synthesis and place-and-route flow
    device: str  # nextpnr's device option, e.g. "up5k", "85k"
    package: str  # nextpnr's package option
    core: CoreConfig  # clock_hz is the PLL output, the `sync` clock
    osc_hz: int  # the board's oscillator, the PLL's input
    baud: int = DEFAULT_BAUD
    max_baud: int  # what the board's USB-UART bridge can do
    usb_uart: str  # the USB-UART bridge chip (FTDI)
    usb_speed: str  # its USB speed: "full" or "high" (USB_FRAME_S)

    def usb_round_trip_s(self, latency_timer_s: float = FTDI_MIN_LATENCY_S) -> float:
        """What USB adds to one request/response round trip: the request waits for the bus's next frame,
        the response's last short packet for the bridge's latency timer (the projection's figure: the timer
        at its 1 ms minimum; FTDI_DEFAULT_LATENCY_S is what an unconfigured host gets)."""
        return USB_FRAME_S[self.usb_speed] + latency_timer_s

    def token_time(self, cycles: float, wire_bytes: float, round_trips: float) -> dict[str, float]:
        """One token's time on this board, the terms in sequence (the protocol is request/response): device
        `cycles` at its clock, `wire_bytes` at its baud (8N1), `round_trips` USB round trips with the latency
        timer at 1 ms; seconds per term, tokens/s, the link-only bound and tokens/s at the FTDI default."""
        compute_s = cycles / self.core.clock_hz
        link_s = wire_bytes * UART_BITS_PER_BYTE / self.baud
        usb_s = round_trips * self.usb_round_trip_s(FTDI_MIN_LATENCY_S)
        usb_default_s = round_trips * self.usb_round_trip_s(FTDI_DEFAULT_LATENCY_S)
        return {"compute_s": compute_s, "link_s": link_s, "usb_s": usb_s,
                "tokens_per_s": 1 / (compute_s + link_s + usb_s), "tokens_per_s_link_only": 1 / link_s,
                "tokens_per_s_default_latency": 1 / (compute_s + link_s + usb_default_s)}

    def facts(self) -> dict[str, object]:
        """These fields as keyword arguments (for a subclass that adds its own)."""
        return {f.name: getattr(self, f.name) for f in fields(BoardFacts)}


BOARD_FACTS: dict[str, BoardFacts] = {
    # FT2232H (high-speed USB): up to 12 Mbaud, which needs >= 48 MHz here (4 cycles per bit).
    "icebreaker": BoardFacts(name="icebreaker", family="ice40", device="up5k", package="sg48",
                             core=PRESETS["icebreaker"], osc_hz=12_000_000, max_baud=12_000_000,
                             usb_uart="FT2232H", usb_speed="high"),
    # FT231X (full-speed USB): up to 3 Mbaud.
    "ulx3s": BoardFacts(name="ulx3s", family="ecp5", device="85k", package="CABGA381",
                        core=PRESETS["ulx3s"], osc_hz=25_000_000, max_baud=3_000_000, usb_uart="FT231X",
                        usb_speed="full"),
}
