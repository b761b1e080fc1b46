"""Weight and activation packing against the layout of docs/protocol.md."""
import numpy as np
import pytest

from bitlane.contract.packing import (PackingError, pack_activations, pack_weights, tiles, unpack_activations,
                                      unpack_weights, words_to_trits)


def reference_pack(t: np.ndarray, lanes: int, kpc: int) -> bytes:
    """The spec, read literally: one trit at a time."""
    rows, cols = t.shape
    rt, ks = tiles(rows, cols, lanes, kpc)
    out = bytearray(rt * ks * lanes * kpc // 4)
    word_bytes = lanes * kpc // 4
    for r in range(rt):
        for s in range(ks):
            base = (r * ks + s) * word_bytes
            for lane in range(lanes):
                for j in range(kpc):
                    row, col = r * lanes + lane, s * kpc + j
                    v = int(t[row, col]) if row < rows and col < cols else 0
                    code = {0: 0b00, 1: 0b01, -1: 0b11}[v]
                    i = lane * kpc + j
                    out[base + i // 4] |= code << (2 * (i % 4))
    return bytes(out)


@pytest.mark.parametrize("lanes,kpc,rows,cols", [(4, 4, 5, 9), (32, 16, 70, 33), (4, 8, 4, 8), (16, 16, 1, 1)])
def test_pack_matches_spec_and_round_trips(lanes, kpc, rows, cols):
    rng = np.random.default_rng(rows * cols)
    t = rng.integers(-1, 2, size=(rows, cols), dtype=np.int8)
    packed = pack_weights(t, lanes, kpc)
    assert packed == reference_pack(t, lanes, kpc)
    np.testing.assert_array_equal(unpack_weights(packed, rows, cols, lanes, kpc), t)


def test_trit_codes_by_hand():
    # lanes=2, kpc=2: one word of 4 trits = 1 byte; trit i = lane * 2 + j
    t = np.array([[1, -1], [0, 1]], dtype=np.int8)
    assert pack_weights(t, 2, 2) == bytes([0b01_00_11_01])


def test_reserved_code_reads_as_zero():
    assert words_to_trits(bytes([0b10_11_01_10]), 4).tolist() == [[0, 1, -1, 0]]


def test_activations_layout_and_round_trip():
    q = np.array([[1, -128, 127], [5, 6, 7]], dtype=np.int8)
    data = pack_activations(q, 2)
    assert data == bytes([1, 0x80, 127, 0, 5, 6, 7, 0])
    np.testing.assert_array_equal(unpack_activations(data, 2, 3, 2), q)
    assert pack_activations(np.array([[-1]], dtype=np.int64), 4) == bytes([0xFF, 0, 0, 0])


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    t = torch.tensor([[1, 0, -1, 1]], dtype=torch.int8)
    assert pack_weights(t, 1, 4) == pack_weights(t.numpy(), 1, 4)


@pytest.mark.parametrize("bad,match", [
    (np.array([[2, 0]]), r"layer\.q: weights must be ternary .* element \(0, 0\) is 2"),
    (np.array([0, 1]), "expected a 2-D array"),
    (np.array([[0.5]]), "expected an integer array"),
    (np.zeros((0, 3), dtype=np.int8), "empty matrix"),
])
def test_bad_weights_are_named(bad, match):
    with pytest.raises(PackingError, match=match):
        pack_weights(bad, 4, 4, name="layer.q")


def test_bad_activations():
    with pytest.raises(PackingError, match=r"x: activations must be int8 .* is 128"):
        pack_activations(np.array([[0, 128]]), 4, name="x")
    with pytest.raises(PackingError, match="bytes"):
        unpack_weights(b"\x00", 4, 4, 4, 4)
