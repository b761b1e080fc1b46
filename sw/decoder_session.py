"""Decoder mode: the whole decoder step on the device; the host looks up embeddings and applies the LM head.

    image = plan_decoder(int_model, acc.caps)          # DecoderFitError: what does not fit, by how much
    with DecoderSession(int_model, image, acc) as session:
        logits = session.runner(ids, cache)            # called like golden.integer.IntegerModel

Loading writes the weights with WRITE_WEIGHTS at the image's placement, the CONST bank with
WRITE_BANK, the program with LOAD_PROGRAM and the row addresses with DECODE_SETUP (protocol v2,
docs/protocol.md). Each forward pass then sends the int16 embedding rows of its tokens (DECODE,
several per frame where max_payload allows: a prefill) and gets each token's final hidden state
back; the LM head is golden.integer's own (`IntegerModel.lm_head`), so the logits are those of
`--backend int`, bit for bit.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bitlane.contract import protocol as p
from bitlane.contract.config import BOARD_FACTS, BoardFacts
from bitlane.contract.decoder import Bank, MachineShape, Op, decode_cycles
from bitlane.contract.packing import pack_weights
from bitlane.contract.kv_stream import kv_load_cycles_estimate
from bitlane.contract.protocol import BitlaneError, Cmd
from bitlane.contract.weight_stream import fetch_cycles_estimate, sdram_words_per_weight_word
from bitlane.golden.integer import IntegerModel

from .accelerator import Accelerator
from .decoder_program import DecoderFitError, DecoderImage, compile_decoder
from .link import LinkStats
from .sdram import load_blob

LOAD_BATCH = 64  # requests per transaction while loading (the progress bar moves between them)


def plan_decoder(model: IntegerModel, caps: p.Capabilities) -> DecoderImage:
    """The decoder image of `model` for the device of `caps`; DecoderFitError names what does not fit.
    A context shorter than the model's is not checked here (`context_shortfall`)."""
    if not caps.decoder:
        raise DecoderFitError("the device has no decoder engine")
    try:
        spw = sdram_words_per_weight_word(caps)
    except ValueError:
        spw = None  # the weights stay in weight memory
    image = compile_decoder(model, MachineShape.from_capabilities(caps), caps.weight_depth, caps.sdram_words, spw)
    if caps.max_decode_count(image.hidden) < 1:
        raise DecoderFitError(f"DECODE: one hidden state of {image.hidden} values takes "
                              f"{p.decode_response_bytes(1, image.hidden)} bytes, the device's max_payload is "
                              f"{caps.max_payload}")
    return image


def context_shortfall(model: IntegerModel, caps: p.Capabilities) -> str | None:
    """Why the device's KV cache cannot hold the model's whole context, or None if it can."""
    need, have = model.int_config.max_positions, caps.dec_context
    if need <= have:
        return None
    return f"context {need}: the device's KV cache holds {have} positions ({need - have} short)"


def project_decoder(model: IntegerModel, board: BoardFacts, positions: Sequence[int], wire_bytes: float,
                    round_trips: float) -> dict[str, object]:
    """A board's decoder-mode tokens/s for `model` decoding tokens at `positions`, with `wire_bytes` on
    the link and `round_trips` request/response exchanges per token (what a session measured: the
    protocol is the same on every device).

        time/token = engine cycles / clock + wire bytes * 10 / baud + round trips * USB round trip

    The engine's cycles are the board's own, from contract.decoder.decode_cycles on the program compiled
    for its configuration (the gateware's counters equal them), averaged over the positions its KV
    cache holds, plus, for weights streamed from SDRAM, contract.weight_stream.fetch_cycles_estimate of
    each WFETCH, and for a KV cache in SDRAM, contract.kv_stream.kv_load_cycles_estimate of each KVLOAD
    (the engine does not count those waits); the command processor's own cycles around a
    DECODE (staging the embedding row, copying the hidden state out) are about as many as the bytes and
    hide behind the UART. The USB
    round trip is BoardFacts.usb_round_trip_s with the latency timer at 1 ms (what sw/transport.py
    sets), and `tokens_per_s_default_latency` at the FTDI default of 16 ms. Returns `fits` False and a
    `reason` where the model does not fit the board's decoder."""
    caps = p.Capabilities.from_config(board.core)
    try:
        image = plan_decoder(model, caps)
    except DecoderFitError as e:
        return {"board": board.name, "fits": False, "reason": str(e)}
    held = [pos for pos in positions if pos < caps.dec_context]
    if not held:
        return {"board": board.name, "fits": False,
                "reason": f"its KV cache holds {caps.dec_context} positions, none of those decoded"}
    shape = MachineShape.from_config(board.core)
    cycles = sum(decode_cycles(image.program, pos, shape, board.core.run_overhead).total for pos in held) / len(held)
    # weights and the KV cache from SDRAM: the WFETCHes' and KVLOADs' waits, which the engine's cycles
    # leave out (estimates; a KVLOAD reads the positions before the token's)
    fetch = sum(fetch_cycles_estimate(ins.n, board.core) for ins in image.program if ins.op == Op.WFETCH)
    kv_loads = sum(ins.op == Op.KVLOAD for ins in image.program)
    if kv_loads:
        fetch += kv_loads * sum(kv_load_cycles_estimate(pos, shape.head_dim, board.core) for pos in held) / len(held)
    t = board.token_time(cycles + fetch, wire_bytes, round_trips)
    return {"board": board.name, "fits": True, "positions": len(held), "context": caps.dec_context,
            "clock_hz": board.core.clock_hz, "baud": board.baud, "usb_uart": board.usb_uart,
            "cycles_per_token": cycles, "fetch_cycles_per_token": fetch,
            "compute_ms": 1e3 * t["compute_s"], "link_ms": 1e3 * t["link_s"], "usb_ms": 1e3 * t["usb_s"],
            "tokens_per_s": t["tokens_per_s"], "tokens_per_s_link_only": t["tokens_per_s_link_only"],
            "tokens_per_s_default_latency": t["tokens_per_s_default_latency"]}


@dataclass
class DecoderCache:
    """A sequence's KV cache, held on the device: how many positions it has."""

    length: int = 0

    def __len__(self) -> int:
        return self.length


class DecoderRunner:
    """The model on a decoder-mode device, called like golden.integer.IntegerModel:
    runner(ids [B, T], cache) -> logits [B, T, vocab]. The device holds one KV cache: a cache continues
    only where the device left it; a new one (or none) restarts at position 0."""

    def __init__(self, model: IntegerModel, image: DecoderImage, acc: Accelerator) -> None:
        self.model, self.image, self.acc = model, image, acc
        self.config = model.config
        self.forwards = 0
        self.decoded_tokens = 0
        self.positions: list[int] = []  # of every token decoded, in order
        self.decode_cycles = 0
        self._holding: DecoderCache | None = None  # the cache whose positions the device holds
        # for the report: (time, decoded tokens, cycles, link stats) when the second forward pass began
        self.decode_start: tuple[float, int, int, LinkStats] | None = None
        self.last_end = 0.0

    def new_cache(self) -> DecoderCache:
        return DecoderCache()

    def __call__(self, input_ids, cache: DecoderCache | None = None):
        import torch

        ids = np.asarray(input_ids.cpu() if isinstance(input_ids, torch.Tensor) else input_ids, dtype=np.int64)
        if ids.ndim != 2:
            raise ValueError(f"expected token ids [batch, tokens], got shape {ids.shape}")
        if cache is not None and len(ids) != 1:
            raise ValueError(f"a decoder-mode device holds one sequence's KV cache; got a batch of {len(ids)}")
        self.forwards += 1
        if self.forwards == 2:  # the prompt is done; decoding starts
            self.decode_start = (time.perf_counter(), self.decoded_tokens, self.decode_cycles,
                                 self.acc.stats.snapshot())
        y = np.zeros(ids.shape + (self.image.hidden,), dtype=np.int64)
        e = np.zeros(ids.shape + (1,), dtype=np.int64)
        for b, row in enumerate(ids):
            start = 0 if cache is None else len(cache)
            if start and cache is not self._holding:
                raise BitlaneError(f"{self.acc.transport.description}: the device's KV cache does not hold this "
                                   f"sequence's {start} positions (it decodes one sequence at a time; start a "
                                   "new cache)")
            y[b], e[b, :, 0] = self.hidden(row, start)
            if cache is not None:
                cache.length = start + len(row)
                self._holding = cache
        logits = torch.from_numpy(self.model.lm_head(y, e))
        self.last_end = time.perf_counter()
        return logits

    def hidden(self, ids: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
        """DECODE tokens `ids` from position `start`: final hidden states int16 [T, hidden], exponents [T]."""
        caps, end = self.acc.caps, start + len(ids)
        if end > caps.dec_context:
            raise BitlaneError(f"{self.acc.transport.description}: positions {start}..{end - 1} are past the "
                               f"device's decoder context of {caps.dec_context} positions (--backend-opt "
                               "mode=matmul runs the model's whole context)")
        self._holding = None  # until the device answers every DECODE
        chunks = list(p.HostCodec.decode_requests(start, self.model.embedding[ids], caps))
        responses = self.acc.transact(request for _, _, request in chunks)
        ys, es = [], []
        for (_, count, _), payload in zip(chunks, responses):
            cycles, y, e = p.unpack_decode_response(payload, count, self.image.hidden)
            self.decode_cycles += cycles
            ys.append(y)
            es.append(e)
        self.decoded_tokens += len(ids)
        self.positions.extend(range(start, end))
        return np.concatenate(ys).astype(np.int64), np.concatenate(es).astype(np.int64)


def sdram_weights(model: IntegerModel, image: DecoderImage, caps: p.Capabilities) -> bytes:
    """The SDRAM image of the image's streamed matrices (from SDRAM word `image.sdram_base`): each one's packed
    weight words at its place (contract/weight_stream.py: packed bytes are SDRAM words, little-endian)."""
    blob = bytearray(image.sdram_words * p.MEM_WORD_BYTES)
    for (i, key), addr in image.streamed.items():
        words = pack_weights(model.layers[i].trits[key], caps.lanes, caps.k_per_cycle, f"layer {i} {key}")
        start = (addr - image.sdram_base) * p.MEM_WORD_BYTES
        blob[start:start + len(words)] = words
    return bytes(blob)


def load_decoder(model: IntegerModel, image: DecoderImage, acc: Accelerator, progress: bool = False) -> None:
    """Weights at the image's placement (the streamed ones into SDRAM by sw/sdram.py's `load_blob`, which
    skips them where the device holds them already), the CONST bank, the program and DECODE_SETUP, with
    progress bars in bytes/s."""
    caps = acc.caps
    if image.streamed:  # the SDRAM's weights first: loaded, verified, and reused where the device holds them
        load_blob(acc, sdram_weights(model, image, caps), image.sdram_base, progress=progress)
    requests: list[tuple[Cmd, bytes]] = []
    for (i, key), w_base in sorted(image.weights.items(), key=lambda item: item[1]):
        words = pack_weights(model.layers[i].trits[key], caps.lanes, caps.k_per_cycle, f"layer {i} {key}")
        requests += p.HostCodec.write_requests(Cmd.WRITE_WEIGHTS, w_base, words, caps)
    requests += p.HostCodec.write_bank_requests(Bank.CONST, 0, image.const, caps)
    requests += p.HostCodec.load_program_requests(0, image.program, caps)
    requests.append((Cmd.DECODE_SETUP, p.decode_setup(image.hidden, image.emb_addr, image.out_addr,
                                                      image.out_exp_reg)))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(len(payload) for _, payload in requests), unit="B", unit_scale=True,
                   unit_divisor=1024, desc=f"decoder model -> {acc.transport.description}")
    for first in range(0, len(requests), LOAD_BATCH):
        batch = requests[first:first + LOAD_BATCH]
        acc.transact(batch)
        if bar is not None:
            bar.update(sum(len(payload) for _, payload in batch))
    if bar is not None:
        bar.close()


class DecoderSession:
    """A model on a decoder-mode device inside a `with` block, and its report (as DeviceSession's):
    on entry the model is loaded; `runner` is what to call; the first forward pass is the prompt, each
    later one decodes one token."""

    def __init__(self, model: IntegerModel, image: DecoderImage, acc: Accelerator, progress: bool = True,
                 report=None) -> None:
        self.model, self.image, self.acc, self.progress, self.report = model, image, acc, progress, report
        self.runner = DecoderRunner(model, image, acc)

    def __enter__(self) -> "DecoderSession":
        try:
            load_decoder(self.model, self.image, self.acc, self.progress)
        except BaseException:
            self.acc.close()
            raise
        return self

    def summary(self) -> dict[str, object]:
        runner, acc = self.runner, self.acc
        out: dict[str, object] = {"device": acc.transport.description, "mode": "decoder",
                                  "forward_passes": runner.forwards, "program": len(self.image.program),
                                  "weight_words": self.image.weight_words,
                                  "sdram_weight_bytes_per_token": self.image.fetched_words * acc.caps.weight_word_bytes}
        if runner.decode_start is not None:
            t0, tokens0, cycles0, s0 = runner.decode_start
            tokens = runner.decoded_tokens - tokens0
            if tokens > 0:
                s1 = acc.stats
                wire_bytes = (s1.wire_bytes - s0.wire_bytes) / tokens
                out.update({
                    "decode_tokens": tokens,
                    "decode_tokens_per_s": tokens / max(runner.last_end - t0, 1e-9),
                    "cycles_per_token": (runner.decode_cycles - cycles0) / tokens,
                    "link_bytes_per_token": wire_bytes,
                    "link_efficiency": s1.efficiency,
                    "projected": {name: project_decoder(self.model, board, runner.positions[tokens0:], wire_bytes,
                                                        (s1.frames - s0.frames) / tokens)
                                  for name, board in BOARD_FACTS.items()},
                })
        return out

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None and self.report is not None:
                print(format_decoder_summary(self.summary()), file=self.report)
        finally:
            self.acc.close()


def format_decoder_summary(s: dict[str, object]) -> str:
    """DecoderSession.summary() as the lines `bitlane generate` prints."""
    streamed = s.get("sdram_weight_bytes_per_token", 0)
    sdram = f", {streamed:,} bytes of weights from SDRAM per token" if streamed else ""
    lines = [f"[{s['device']}: decoder mode, {s['program']} instructions, {s['weight_words']:,} weight words{sdram}]"]
    if "decode_tokens" in s:
        lines.append(f"[decode: {s['decode_tokens_per_s']:.2f} tokens/s, {s['cycles_per_token']:,.0f} device "
                     f"cycles/token, {s['link_bytes_per_token']:,.0f} link bytes/token, "
                     f"link efficiency {s['link_efficiency']:.1%}]")
    for name, j in s.get("projected", {}).items():
        if not j["fits"]:
            lines.append(f"[projected {name}: no decoder mode: {j['reason']}]")
            continue
        held = "" if j["positions"] == s["decode_tokens"] else (
            f"; the {j['positions']} of {s['decode_tokens']} tokens inside its context of {j['context']}")
        fetch = (f" + {j['fetch_cycles_per_token']:,.0f} waiting for SDRAM (weights, KV cache)"
                 if j["fetch_cycles_per_token"] else "")
        lines.append(f"[projected {name}: {j['tokens_per_s']:,.0f} tokens/s = {j['cycles_per_token']:,.0f} "
                     f"cycles{fetch} "
                     f"at {j['clock_hz'] / 1e6:g} MHz {j['compute_ms']:.2f} ms + link {j['link_ms']:.2f} ms at "
                     f"{j['baud'] / 1e6:g} Mbaud + USB {j['usb_ms']:.2f} ms ({j['usb_uart']}, latency timer 1 ms); "
                     f"{j['tokens_per_s_default_latency']:,.0f} tokens/s at the FTDI default 16 ms{held}]")
    return "\n".join(lines)

