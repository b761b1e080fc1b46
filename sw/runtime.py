"""Host runtime: talk to a bitlane device and run BitLinear products on it.

    import sw
    with sw.connect("sim://sim") as acc:          # or model://tiny, serial:///dev/ttyUSB1?baud=3000000
        acc.info()
        y = acc.matvec(trits, q)                   # int8 [R, C] x int8 [C] -> int32 [R]
        model.set_int_matmul(acc.int_matmul)       # golden's integer seam
        acc.load_model(model)                      # optional: preload every BitLinear

Products larger than the device memories are split on the host: columns into
chunks of at most `max_k` (their int32 partial results are summed exactly in
int64 on the host), rows into pieces whose weight words fit the memory region
they go to, vectors into batches whose activation and output words fit.

Weight placement: a named layer whose words fit the free weight memory stays
resident (written once); otherwise it is streamed into the scratch region at
the top of weight memory on every call. The scratch region is a quarter of
the memory unless `load_model` finds that the whole model fits.

Every request is answered within a bounded time, or a `DeviceTimeout`
is raised; a corrupted or unexpected response raises `ProtocolError`; after
either, `reset()` resynchronizes the link and the call can be retried.
"""
from __future__ import annotations

import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import parse_qs, urlsplit

import numpy as np

from sw import protocol as p
from sw.packing import PackingError, check_int8, check_trits, pack_activations, pack_weights, tiles
from sw.protocol import BadFrame, BitlaneError, Cmd, ProtocolError
from sw.transport import DeviceTimeout, ModelTransport, SerialTransport, SimTransport, Transport

# A RUN of c cycles may take c / SLOWEST_CYCLES_PER_S seconds beyond the base timeout
# (the simulator is the slowest device; it runs at ~1e6 cycles/s or more).
SLOWEST_CYCLES_PER_S = 50_000


def connect(url: str, timeout: float = 10.0, log=None) -> "Accelerator":
    """Open a device by URL.

    * `model://PRESET`: the functional model of a preset (hw/config.py)
    * `sim://PRESET[?trace=out.fst]`: the Verilated gateware of a preset, built on first use
    * `serial://DEVICE?baud=3000000[&window=1]`: a board on a serial port,
      e.g. `serial:///dev/ttyUSB1?baud=3000000`; DEVICE may be any pyserial URL, e.g.
      `serial://socket://127.0.0.1:PORT` for the UART-level board simulator (sw/sim/uart_sim.py).
      `window` is how many request frames may be in flight (1: the UART has no flow control).

    `log(line)`, if given, receives notices for the user (sim: the trace file and its format, a first build).
    """
    from hw.config import preset

    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme in ("model", "sim"):
        if parts.netloc and parts.path not in ("", "/"):  # model://tiny/../../etc is not model://tiny
            raise ValueError(f"{url!r}: unexpected {parts.path!r} after the preset name; "
                             f"expected {parts.scheme}://PRESET")
        config = preset(parts.netloc or parts.path.strip("/"))
        transport: Transport = (ModelTransport(config) if parts.scheme == "model"
                                else SimTransport(config, trace=query.get("trace"), log=log))
    elif parts.scheme == "serial":
        device = parts.netloc + parts.path
        if not device:
            raise ValueError(f"{url!r}: no serial device, expected e.g. serial:///dev/ttyUSB1?baud=3000000")
        transport = SerialTransport(device, baud=_positive_int(url, query, "baud", 3_000_000),
                                    pipeline_depth=_positive_int(url, query, "window", 1))
    else:
        raise ValueError(f"{url!r}: unknown device URL scheme {parts.scheme!r}; use model://, sim:// or serial://")
    try:
        return Accelerator(transport, timeout=timeout)
    except BaseException:
        transport.close()
        raise


def _positive_int(url: str, query: dict[str, str], key: str, default: int) -> int:
    text = query.get(key)
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{url!r}: {key}={text!r}, expected a whole number >= 1")
    return int(text)


@dataclass
class LinkStats:
    """Bytes and work as seen from the host, since connect."""

    wire_bytes_out: int = 0
    wire_bytes_in: int = 0
    payload_bytes_out: int = 0
    payload_bytes_in: int = 0
    frames: int = 0
    run_cycles: int = 0  # sum of the cycles reported by RUN responses
    useful_macs: int = 0  # rows * cols * vectors of every product, without padding

    @property
    def wire_bytes(self) -> int:
        return self.wire_bytes_out + self.wire_bytes_in

    @property
    def efficiency(self) -> float:
        """Payload bytes / bytes on the wire, both directions."""
        return (self.payload_bytes_out + self.payload_bytes_in) / max(1, self.wire_bytes)

    def snapshot(self) -> "LinkStats":
        return LinkStats(**vars(self))


@dataclass
class Piece:
    """Rows r0:r1 x columns c0:c1 of a layer, one RUN's worth of weights."""

    r0: int
    r1: int
    c0: int
    c1: int
    row_tiles: int
    k_steps: int
    w_base: int = 0
    words: bytes = b""  # packed weight words, kept on the host for streamed layers

    @property
    def n_words(self) -> int:
        return self.row_tiles * self.k_steps


@dataclass
class Layer:
    name: str
    rows: int
    cols: int
    resident: bool
    chunks: list[list[Piece]] = field(default_factory=list)  # per column chunk, its row pieces
    source: weakref.ref | None = None  # the array the weights came from, to notice when a caller changes it


def plan_pieces(rows: int, cols: int, caps: p.Capabilities, region_words: int) -> list[list[Piece]]:
    """Split an R x C product into column chunks and row pieces that fit `region_words` of weight memory."""
    lanes, kpc = caps.lanes, caps.k_per_cycle
    rt_total, ks_total = tiles(rows, cols, lanes, kpc)
    ks_max = min(caps.max_k // kpc, region_words, caps.act_depth)
    if ks_max < 1:
        raise BitlaneError(f"no room for a {rows} x {cols} product: {region_words} free weight words")
    n_chunks = -(-ks_total // ks_max)
    ks_chunk = -(-ks_total // n_chunks)  # balanced
    chunks = []
    for ci in range(n_chunks):
        k0 = ci * ks_chunk
        ks = min(ks_chunk, ks_total - k0)
        rt_max = min(region_words // ks, caps.out_depth, 0xFFFF // lanes)
        n_pieces = -(-rt_total // rt_max)
        rt_piece = -(-rt_total // n_pieces)
        pieces = []
        for pi in range(n_pieces):
            t0 = pi * rt_piece
            rt = min(rt_piece, rt_total - t0)
            pieces.append(Piece(t0 * lanes, min(rows, (t0 + rt) * lanes), k0 * kpc, min(cols, (k0 + ks) * kpc),
                                rt, ks))
        chunks.append(pieces)
    return chunks


class Accelerator:
    """A connected bitlane device."""

    def __init__(self, transport: Transport, timeout: float = 10.0) -> None:
        self.transport = transport
        self.timeout = timeout
        self.stats = LinkStats()
        self._decoder = p.FrameDecoder()
        self._events: deque[p.Event] = deque()
        self._seq = 0
        self._desynced = False
        self._last_wait = timeout
        self.layers: dict[str, Layer] = {}
        self.reset()
        self.caps = self.info()
        self._decoder.max_payload = self.caps.max_payload
        self._resident_end = 0  # weight words [0, _resident_end) hold resident layers
        self.reserve_words = self.caps.weight_depth // 4  # kept free for streaming

    # ------------------------------------------------------------ requests

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> "Accelerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Accelerator {self.transport.description}>"

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def _send(self, frames: list[bytes]) -> None:
        data = b"".join(frames)
        self.stats.wire_bytes_out += len(data)
        self.transport.write(data)

    def _next_event(self, deadline: float, waiting_for: str) -> p.Event:
        while not self._events:
            left = deadline - time.monotonic()
            if left <= 0:
                self.transport.check_alive()
                self._desynced = True
                raise DeviceTimeout(f"{self.transport.description}: no answer to {waiting_for} "
                                    f"within {self._last_wait:.1f} s")
            data = self.transport.read(min(left, 0.5))
            if data:
                self.stats.wire_bytes_in += len(data)
                self._events.extend(self._decoder.feed(data))
            else:
                self.transport.check_alive()
        return self._events.popleft()

    def _wait_s(self, cmd: Cmd, payload: bytes) -> float:
        if cmd != Cmd.RUN:
            return self.timeout
        a = p.RunArgs.unpack(payload)
        rt, ks = tiles(a.rows, a.cols, self.caps.lanes, self.caps.k_per_cycle)
        return self.timeout + a.n_vectors * rt * ks / SLOWEST_CYCLES_PER_S

    def transact(self, requests: Iterable[tuple[Cmd, bytes]]) -> list[bytes]:
        """Send requests (pipelined up to the transport's depth), return their response payloads in order.

        A device ERROR answer raises DeviceError after the requests already in flight are
        answered (the link stays in sync); a timeout or bad response raises and leaves the
        link needing `reset()`.
        """
        if self._desynced:
            raise ProtocolError(f"{self.transport.description}: link out of sync after an earlier error; "
                                "call reset() first")
        requests = list(requests)
        results: list[bytes] = []
        in_flight: deque[tuple[int, Cmd, bytes]] = deque()
        depth = max(1, self.transport.pipeline_depth)
        error: p.DeviceError | None = None
        sent = 0
        while len(results) < len(requests) and (error is None or in_flight):
            frames = []
            while error is None and sent < len(requests) and len(in_flight) + len(frames) < depth:
                cmd, payload = requests[sent]
                seq = self._next_seq()
                frames.append(p.encode_frame(cmd, seq, payload))
                in_flight.append((seq, cmd, payload))
                self.stats.payload_bytes_out += len(payload)
                sent += 1
            if frames:
                self._send(frames)
            seq, cmd, payload = in_flight[0]
            self._last_wait = self._wait_s(cmd, payload)
            event = self._next_event(time.monotonic() + self._last_wait, f"{p.cmd_name(cmd)} (seq {seq})")
            in_flight.popleft()
            what = f"the response to {p.cmd_name(cmd)} (seq {seq})"
            if isinstance(event, BadFrame):
                self._desynced = True
                raise ProtocolError(f"{self.transport.description}: corrupted frame ({event.code.name}) "
                                    f"where {what} was expected; call reset() and retry")
            if event.seq != seq:
                self._desynced = True
                raise ProtocolError(f"{self.transport.description}: got seq {event.seq} (cmd 0x{event.cmd:02X}) "
                                    f"where {what} was expected")
            self.stats.frames += 1
            self.stats.payload_bytes_in += len(event.payload)
            if event.cmd == Cmd.ERROR:
                code, request = p.unpack_error(event.payload)
                error = error or p.DeviceError(code, request, seq)
                results.append(b"")
            elif event.cmd != cmd | p.RESPONSE_FLAG:
                self._desynced = True
                raise ProtocolError(f"{self.transport.description}: got cmd 0x{event.cmd:02X} as {what}")
            else:
                results.append(event.payload)
        if error is not None:
            raise error
        return results

    def request(self, cmd: Cmd, payload: bytes = b"") -> bytes:
        return self.transact([(cmd, payload)])[0]

    def reset(self) -> None:
        """Resynchronize the link and clear the device's counters and error state (memories are kept)."""
        deadline = time.monotonic() + self.timeout
        while self.transport.read(0.02):  # drop whatever is still arriving
            if time.monotonic() > deadline:
                raise DeviceTimeout(f"{self.transport.description}: the device does not stop sending")
        self._decoder = p.FrameDecoder(self._decoder.max_payload)
        self._events.clear()
        seq = self._next_seq()
        self._send([p.encode_frame(Cmd.RESET, seq)])
        self._last_wait = self.timeout
        while True:  # skip answers to frames cut short by our SYNC, late answers of earlier requests
            event = self._next_event(deadline, f"RESET (seq {seq})")
            if isinstance(event, p.Frame) and event.cmd == Cmd.RESET.response and event.seq == seq:
                break
        self._desynced = False

    def info(self) -> p.Capabilities:
        caps = p.Capabilities.unpack(self.request(Cmd.INFO))
        if caps.version != p.PROTOCOL_VERSION:
            raise ProtocolError(f"{self.transport.description}: device speaks protocol version {caps.version}, "
                                f"this driver version {p.PROTOCOL_VERSION}")
        return caps

    def counters(self) -> dict[str, int]:
        """Device counters since connect / reset: cycles, busy_cycles, stall_cycles, frames_ok, ..."""
        return p.Counters.unpack(self.request(Cmd.COUNTERS)).as_dict()

    # ------------------------------------------------------------ weights

    def unload(self) -> None:
        """Forget every placed layer: the whole weight memory is free for new ones."""
        self.layers.clear()
        self._resident_end = 0
        self.reserve_words = self.caps.weight_depth // 4

    @property
    def free_words(self) -> int:
        return self.caps.weight_depth - self._resident_end

    def _words_needed(self, rows: int, cols: int) -> int:
        return sum(piece.n_words for chunk in plan_pieces(rows, cols, self.caps, self.caps.weight_depth)
                   for piece in chunk)

    def load_model(self, model, progress: bool = False) -> None:
        """Place every BitLinear of a golden model (`model.bitlinear_layers()`), resident where it fits."""
        self.load_layers([(name, module.trits) for name, module in model.bitlinear_layers()], progress)

    def load_layers(self, layers: list[tuple[str, object]], progress: bool = False) -> None:
        """Place (name, trits) layers in order; if all of them fit, no scratch region is kept."""
        total = sum(self._words_needed(*t.shape) for _, t in layers)
        if total <= self.free_words and all(layer.resident for layer in self.layers.values()):
            self.reserve_words = 0
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=sum(t.shape[0] * t.shape[1] for _, t in layers), unit="trit", unit_scale=True,
                       desc=f"weights -> {self.transport.description}")
        for name, trits in layers:
            self.load_weights(name, trits)
            if bar is not None:
                bar.update(trits.shape[0] * trits.shape[1])
        if bar is not None:
            bar.close()

    def load_weights(self, name: str, trits) -> Layer:
        """Pack a ternary [R, C] matrix under `name`: written to device memory now if it stays
        resident, else kept packed on the host and streamed on each use."""
        t = check_trits(trits, name)
        rows, cols = t.shape
        if rows == 0 or cols == 0:
            raise PackingError(f"{name}: empty weight matrix of shape {t.shape}")
        old = self.layers.get(name)
        if old is not None and (old.rows, old.cols) != (rows, cols):
            raise BitlaneError(f"{name}: already loaded as {old.rows} x {old.cols}, now {rows} x {cols}")
        if old is not None:
            layer = old
        else:
            streaming = any(not layer.resident for layer in self.layers.values())
            need = self._words_needed(rows, cols)
            resident = not streaming and need <= self.free_words - self.reserve_words
            region = self.caps.weight_depth if resident else self.free_words
            layer = Layer(name, rows, cols, resident, plan_pieces(rows, cols, self.caps, region))
            if resident:
                for piece in (piece for chunk in layer.chunks for piece in chunk):
                    piece.w_base = self._resident_end
                    self._resident_end += piece.n_words
        try:
            layer.source = weakref.ref(trits)
        except TypeError:  # e.g. a list: nothing to recognize it by later
            layer.source = None
        self._pack_pieces(layer, t)
        if layer.resident:
            self.transact(request for chunk in layer.chunks for piece in chunk
                          for request in self._write_requests(Cmd.WRITE_WEIGHTS, piece.w_base, piece.words,
                                                              self.caps.weight_word_bytes))
            for piece in (piece for chunk in layer.chunks for piece in chunk):
                piece.words = b""  # on the device now
        self.layers[name] = layer
        return layer

    def _pack_pieces(self, layer: Layer, t: np.ndarray) -> None:
        lanes, kpc = self.caps.lanes, self.caps.k_per_cycle
        for piece in (piece for chunk in layer.chunks for piece in chunk):
            piece.words = pack_weights(t[piece.r0:piece.r1, piece.c0:piece.c1], lanes, kpc, layer.name)
            if not layer.resident:
                piece.w_base = self._resident_end

    def _write_requests(self, cmd: Cmd, addr: int, data: bytes, word_bytes: int) -> Iterable[tuple[Cmd, bytes]]:
        """WRITE_* frames for `data` (whole words) from word `addr`, as many words per frame as fit."""
        build = p.write_weights if cmd == Cmd.WRITE_WEIGHTS else p.write_act
        step = self.caps.max_write_words(word_bytes) * word_bytes
        for off in range(0, len(data), step):
            yield cmd, build(addr + off // word_bytes, data[off:off + step])

    # ------------------------------------------------------------ products

    def matvec(self, trits, q) -> np.ndarray:
        """int8 ternary [R, C] x int8 [C] -> int32 [R], streamed through scratch memory."""
        q = check_int8(q, "q", ndim=1)
        return self.matmul(trits, q[:, None])[:, 0]

    def matmul(self, trits, Q) -> np.ndarray:
        """int8 ternary [R, C] x int8 [C, N] -> int32 [R, N], streamed through scratch memory."""
        t = check_trits(trits, "trits")
        Q = check_int8(Q, "Q")
        if Q.shape[0] != t.shape[1]:
            raise PackingError(f"Q: expected {t.shape[1]} rows to match trits {t.shape}, got shape {Q.shape}")
        rows, cols = t.shape
        layer = Layer("<matmul>", rows, cols, False, plan_pieces(rows, cols, self.caps, self.free_words))
        self._pack_pieces(layer, t)
        return self._run_layer(layer, np.ascontiguousarray(Q.T)).T

    def matmul_loaded(self, name: str, q) -> np.ndarray:
        """Loaded layer `name` ([R, C]) times int8 vectors q [N, C] -> int32 [N, R]."""
        layer = self.layers[name]
        q = check_int8(q, f"{name} activations")
        if q.shape[1] != layer.cols:
            raise PackingError(f"{name} activations: expected [N, {layer.cols}], got shape {q.shape}")
        return self._run_layer(layer, q)

    def int_matmul(self, name: str, trits, q):
        """golden's integer seam: (name, trits int8 [out, in], q int8 [N, in]) -> torch int32 [N, out].

        A layer is loaded on its first call (unless `load_model` placed it already) and reused
        while the caller passes the same weight tensor; a different tensor is loaded again."""
        import torch

        layer = self.layers.get(name)
        if layer is None or layer.source is None or layer.source() is not trits:
            self.load_weights(name, trits)
        return torch.from_numpy(self.matmul_loaded(name, q.detach().cpu().numpy()))

    def _run_layer(self, layer: Layer, q: np.ndarray) -> np.ndarray:
        """q int8 [N, C] -> int32 [N, R]: every column chunk, row piece and vector batch."""
        caps = self.caps
        n = q.shape[0]
        acc = np.zeros((n, layer.rows), dtype=np.int64)
        requests: list[tuple[Cmd, bytes]] = []
        reads: list[tuple[int, int, int, Piece, int]] = []  # (request index, n0, n1, piece, read offset)
        for pieces in layer.chunks:
            c0, c1, ks = pieces[0].c0, pieces[0].c1, pieces[0].k_steps
            batch = min(n, caps.act_depth // ks, caps.out_depth // max(pc.row_tiles for pc in pieces), 0xFFFF)
            batches = [(n0, min(n, n0 + batch)) for n0 in range(0, n, batch)]
            if layer.resident or len(batches) == 1:
                order = [(b, pc) for b in batches for pc in pieces]
            else:  # streamed weights: write each piece once, run every batch through it
                order = [(b, pc) for pc in pieces for b in batches]
            acts_in = weights_in = None
            for (n0, n1), pc in order:
                if acts_in != (n0, n1):
                    words = pack_activations(q[n0:n1, c0:c1], caps.k_per_cycle, f"{layer.name} activations")
                    requests += self._write_requests(Cmd.WRITE_ACT, 0, words, caps.act_word_bytes)
                    acts_in = (n0, n1)
                if not layer.resident and weights_in is not pc:
                    requests += self._write_requests(Cmd.WRITE_WEIGHTS, pc.w_base, pc.words, caps.weight_word_bytes)
                    weights_in = pc
                requests.append((Cmd.RUN, p.run(pc.w_base, 0, 0, pc.r1 - pc.r0, c1 - c0, n1 - n0)))
                self.stats.useful_macs += (pc.r1 - pc.r0) * (c1 - c0) * (n1 - n0)
                total = (n1 - n0) * pc.row_tiles * caps.lanes
                for off in range(0, total, caps.max_read_count):
                    reads.append((len(requests), n0, n1, pc, off))
                    requests.append((Cmd.READ_OUT, p.read_out(off, min(caps.max_read_count, total - off))))
        responses = self.transact(requests)
        for cmd, payload in zip(requests, responses):
            if cmd[0] == Cmd.RUN:
                self.stats.run_cycles += p.unpack_run_response(payload)
        # Reassemble: each piece's output block is [vectors, row_tiles * lanes] elements, read in slices.
        blocks: dict[tuple[int, int, int], list[bytes]] = {}
        for index, n0, n1, pc, off in reads:
            blocks.setdefault((id(pc), n0, n1), []).append(responses[index])
        pieces_by_id = {id(pc): pc for chunk in layer.chunks for pc in chunk}
        for (pid, n0, n1), parts in blocks.items():
            pc = pieces_by_id[pid]
            block = np.frombuffer(b"".join(parts), dtype="<i4").reshape(n1 - n0, pc.row_tiles * caps.lanes)
            acc[n0:n1, pc.r0:pc.r1] += block[:, :pc.r1 - pc.r0]
        if acc.size and (acc.max() > 2**31 - 1 or acc.min() < -2**31):
            raise BitlaneError(f"{layer.name}: accumulator exceeds int32 (K = {layer.cols})")
        return acc.astype(np.int32)


@dataclass
class GoldenComparison:
    """Outcome of `compare_with_golden`."""

    golden_ids: list[int]
    device_ids: list[int]
    calls: int  # BitLinear calls compared
    mismatches: list[str]  # one line per call whose int32 accumulators differ

    @property
    def identical(self) -> bool:
        return self.golden_ids == self.device_ids and not self.mismatches and self.calls > 0


def compare_with_golden(model, acc: Accelerator, prompt_ids: list[int], max_new_tokens: int = 32) -> GoldenComparison:
    """Greedy-generate on golden's own integer path and on `acc`; compare every BitLinear call.

    Every call's int32 accumulator from the device must equal golden's exactly (its inputs then
    match too, since they are computed from the previous accumulators), and so must the tokens.
    """
    import torch

    import golden

    runs = []
    for fn in (None, acc.int_matmul):
        model.set_int_matmul(fn)
        try:
            with golden.trace(model) as records:
                ids = golden.generate(model, prompt_ids, max_new_tokens, greedy=True, eos_token_ids=set())
        finally:
            model.set_int_matmul(None)
        runs.append((ids, records))
    (ref_ids, ref), (dev_ids, dev) = runs
    mismatches = []
    for i, (r, d) in enumerate(zip(ref, dev)):
        if r.name != d.name or not torch.equal(r.q, d.q) or not torch.equal(r.acc, d.acc):
            diff = (r.acc.long() - d.acc.long()).abs().max().item() if r.acc.shape == d.acc.shape else "shape"
            mismatches.append(f"call {i} {r.name} / {d.name}: max |acc difference| {diff}")
    if len(ref) != len(dev):
        mismatches.append(f"golden made {len(ref)} BitLinear calls, the device run {len(dev)}")
    return GoldenComparison(ref_ids, dev_ids, min(len(ref), len(dev)), mismatches)


UART_BAUD = 3_000_000
UART_BITS_PER_BYTE = 10  # 8N1


def project_step(layers: list[tuple[str, object]], calls: list[tuple[str, object]], config,
                 baud: int = UART_BAUD) -> dict[str, float]:
    """Replay one forward pass's BitLinear calls, (name, int8 activations [N, in] as array or tensor),
    on the functional model of `config`.

    Returns the device cycles its RUNs take, the bytes on the link, and the time this costs a
    board at `config.clock_hz` behind a UART at `baud` (8N1): RUN cycles / clock + link bits /
    baud, the two in sequence as the protocol is request/response. Host compute is not included.
    """
    with Accelerator(ModelTransport(config)) as acc:
        acc.load_layers(layers)
        before = acc.stats.snapshot()
        for name, q in calls:
            acc.matmul_loaded(name, q)
        cycles = acc.stats.run_cycles - before.run_cycles
        wire = acc.stats.wire_bytes - before.wire_bytes
        resident = sum(layer.resident for layer in acc.layers.values())
    seconds = (cycles / config.clock_hz if config.clock_hz else 0.0) + wire * UART_BITS_PER_BYTE / baud
    return {"run_cycles": cycles, "wire_bytes": wire, "seconds": seconds, "tokens_per_s": 1 / seconds,
            "clock_hz": config.clock_hz, "resident_layers": resident, "layers": len(layers)}


class DeviceSession:
    """Run a golden model's BitLinear products on a device inside a `with` block, and report.

    On entry the weights are placed (with a progress bar); every product then goes through the
    device. The first BitLinear call of each forward pass marks a token: the first pass is the
    prompt (one batch of all its tokens), each later one decodes one token. `summary()` gives
    decode tokens/s, device cycles per token, lane utilization and link bytes per token, and
    with `project=True` the tokens/s each board preset would reach (see `project_step`).
    """

    def __init__(self, model, acc: Accelerator, progress: bool = True, report=None, project: bool = False) -> None:
        self.model, self.acc, self.progress, self.report, self.project = model, acc, progress, report, project
        self.first_layer = next(name for name, _ in model.bitlinear_layers())
        self.forwards = 0
        self.step_calls: list[tuple[str, object]] = []  # (layer name, int8 activations) of the latest pass
        self._decode_start: tuple[float, dict[str, int], LinkStats] | None = None
        self._last_end = 0.0

    def __enter__(self) -> "DeviceSession":
        try:
            self.acc.load_model(self.model, progress=self.progress)
        except BaseException:
            self.acc.close()
            raise
        self.model.set_int_matmul(self._int_matmul)
        return self

    def _int_matmul(self, name: str, trits, q):
        if name == self.first_layer:
            self.forwards += 1
            if self.forwards == 2:  # decoding starts: counters from here on
                self._decode_start = (time.perf_counter(), self.acc.counters(), self.acc.stats.snapshot())
            self.step_calls = []
        self.step_calls.append((name, q))  # the tensor itself: converted only if a projection replays it
        out = self.acc.int_matmul(name, trits, q)
        self._last_end = time.perf_counter()
        return out

    def summary(self) -> dict[str, object]:
        acc = self.acc
        out: dict[str, object] = {"device": acc.transport.description, "forward_passes": self.forwards,
                                  "resident_layers": sum(layer.resident for layer in acc.layers.values()),
                                  "layers": len(acc.layers)}
        tokens = self.forwards - 1
        if self._decode_start is not None and tokens > 0:
            t0, c0, s0 = self._decode_start
            c1, s1 = acc.counters(), acc.stats
            macs = s1.useful_macs - s0.useful_macs
            run_cycles = s1.run_cycles - s0.run_cycles
            out.update({
                "decode_tokens": tokens,
                "decode_tokens_per_s": tokens / max(self._last_end - t0, 1e-9),
                "cycles_per_token": (c1["cycles"] - c0["cycles"]) / tokens,
                "run_cycles_per_token": run_cycles / tokens,
                "lane_utilization": macs / max(1, run_cycles * acc.caps.lanes * acc.caps.k_per_cycle),
                "link_bytes_per_token": (s1.wire_bytes - s0.wire_bytes) / tokens,
                "link_efficiency": s1.efficiency,
            })
        if self.project and self.step_calls and self.forwards > 1:
            from hw.config import PRESETS
            layers = [(name, module.trits) for name, module in self.model.bitlinear_layers()]
            out["projected"] = {name: project_step(layers, self.step_calls, cfg)
                                for name, cfg in PRESETS.items() if cfg.clock_hz}
        return out

    def __exit__(self, *exc) -> None:
        self.model.set_int_matmul(None)
        try:
            if exc[0] is None and self.report is not None:
                print(format_summary(self.summary()), file=self.report)
        finally:
            self.acc.close()


def format_summary(s: dict[str, object]) -> str:
    """DeviceSession.summary() as the lines `bitlane generate` prints."""
    lines = [f"[{s['device']}: {s['resident_layers']}/{s['layers']} layers resident in device memory]"]
    if "decode_tokens" in s:
        lines.append(f"[decode: {s['decode_tokens_per_s']:.2f} tokens/s, "
                     f"{s['cycles_per_token']:,.0f} device cycles/token ({s['run_cycles_per_token']:,.0f} in RUNs), "
                     f"lane utilization {s['lane_utilization']:.1%}, {s['link_bytes_per_token']:,.0f} link bytes/token, "
                     f"link efficiency {s['link_efficiency']:.1%}]")
    for board, p_ in s.get("projected", {}).items():
        lines.append(f"[projected {board}: {p_['tokens_per_s']:.2f} tokens/s = {p_['run_cycles']:,} RUN cycles at "
                     f"{p_['clock_hz'] / 1e6:g} MHz + {p_['wire_bytes']:,} bytes at {UART_BAUD / 1e6:g} Mbaud "
                     f"per token; {p_['resident_layers']}/{p_['layers']} layers resident]")
    return "\n".join(lines)
