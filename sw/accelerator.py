"""BitLinear products on a bitlane device: weight placement, activation batches, exact results.

    from bitlane import connect
    with connect("sim://sim") as acc:              # or model://tiny, serial:///dev/ttyUSB1?baud=3000000
        y = acc.matvec(trits, q)                   # int8 [R, C] x int8 [C] -> int32 [R]
        model.set_int_matmul(acc.int_matmul)       # golden's integer seam
        acc.load_model(model)                      # optional: preload every BitLinear

Weight placement: a named layer whose words fit the free weight memory stays resident (written
once); otherwise it is streamed into the scratch region at the top of weight memory on every call.
The scratch region is a quarter of the memory unless `load_model` finds that the whole model fits.
Vectors go in batches whose activation and output words fit (sw/placement.py splits the rest).
"""
from __future__ import annotations

import weakref

import numpy as np

from bitlane.contract import protocol as p
from bitlane.contract.packing import PackingError, check_int8, check_trits, pack_activations, pack_weights
from bitlane.contract.protocol import BitlaneError, Cmd

from .link import Link
from .placement import Layer, Piece, max_field, plan_pieces
from .transport import Transport


class Accelerator(Link):
    """A connected bitlane device that runs ternary products."""

    def __init__(self, transport: Transport, timeout: float = 10.0) -> None:
        self.layers: dict[str, Layer] = {}
        super().__init__(transport, timeout)
        self._resident_end = 0  # weight words [0, _resident_end) hold resident layers
        self.reserve_words = self.caps.weight_depth // 4  # kept free for streaming

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
                          for request in p.HostCodec.write_requests(Cmd.WRITE_WEIGHTS, piece.w_base, piece.words,
                                                                    self.caps))
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
            batch = min(n, caps.act_depth // ks, caps.out_depth // max(pc.row_tiles for pc in pieces),
                        max_field(p.RunArgs, "n_vectors"))
            batches = [(n0, min(n, n0 + batch)) for n0 in range(0, n, batch)]
            if layer.resident or len(batches) == 1:
                order = [(b, pc) for b in batches for pc in pieces]
            else:  # streamed weights: write each piece once, run every batch through it
                order = [(b, pc) for pc in pieces for b in batches]
            acts_in = weights_in = None
            for (n0, n1), pc in order:
                if acts_in != (n0, n1):
                    words = pack_activations(q[n0:n1, c0:c1], caps.k_per_cycle, f"{layer.name} activations")
                    requests += p.HostCodec.write_requests(Cmd.WRITE_ACT, 0, words, self.caps)
                    acts_in = (n0, n1)
                if not layer.resident and weights_in is not pc:
                    requests += p.HostCodec.write_requests(Cmd.WRITE_WEIGHTS, pc.w_base, pc.words, self.caps)
                    weights_in = pc
                requests.append((Cmd.RUN, p.run(pc.w_base, 0, 0, pc.r1 - pc.r0, c1 - c0, n1 - n0)))
                self.stats.useful_macs += (pc.r1 - pc.r0) * (c1 - c0) * (n1 - n0)
                for first, count in p.HostCodec.read_requests(0, (n1 - n0) * pc.row_tiles * caps.lanes, caps):
                    reads.append((len(requests), n0, n1, pc, first))
                    requests.append((Cmd.READ_OUT, p.read_out(first, count)))
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
