"""The sans-IO codec: CRC, stuffing, framing, every receiver error path, records."""
import random

import numpy as np
import pytest

from bitlane.contract import protocol as p
from bitlane.contract.protocol import ESC, SYNC, BadFrame, Cmd, ErrorCode, Frame, FrameDecoder


def bitwise_crc16(data: bytes) -> int:
    """Reference CRC-16/CCITT-FALSE, bit by bit, independent of binascii."""
    crc = 0xFFFF
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def test_crc16_check_value_and_reference():
    assert p.crc16(b"123456789") == 0x29B1
    rng = random.Random(1)
    for n in (0, 1, 2, 17, 300):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert p.crc16(data) == bitwise_crc16(data)
    assert p.crc16(b"6789", p.crc16(b"12345")) == 0x29B1


def test_frame_layout_by_hand():
    frame = p.encode_frame(Cmd.RUN, 9, b"\x01\x02")
    crc = bitwise_crc16(bytes([4, 9, 2, 0, 1, 2]))
    assert frame == bytes([SYNC, 4, 9, 2, 0, 1, 2, crc & 0xFF, crc >> 8])


def test_stuffing_of_sync_and_esc():
    frame = p.encode_frame(0x7E, 0x7D, bytes([0x7E, 0x7D, 0x5E, 0x5D]))
    assert frame.count(SYNC) == 1 and frame[0] == SYNC
    assert frame[1:5] == bytes([ESC, 0x5E, ESC, 0x5D])  # CMD 0x7E, SEQ 0x7D
    assert bytes([ESC, 0x5E, ESC, 0x5D, 0x5E, 0x5D]) in frame  # payload
    (event,) = FrameDecoder().feed(frame)
    assert event == Frame(0x7E, 0x7D, bytes([0x7E, 0x7D, 0x5E, 0x5D]))


@pytest.mark.parametrize("chunk", [1, 2, 7, 1 << 20])
def test_round_trip_random_frames_any_chunking(chunk):
    rng = random.Random(chunk)
    frames = []
    for _ in range(60):
        n = rng.choice([0, 1, 5, 64, 1000])
        # bias toward SYNC/ESC so stuffing is exercised at every position
        payload = bytes(rng.choice([SYNC, ESC, rng.randrange(256)]) for _ in range(n))
        frames.append(Frame(rng.randrange(256), rng.randrange(256), payload))
    stream = b"".join(p.encode_frame(f.cmd, f.seq, f.payload) for f in frames)
    dec = FrameDecoder()
    events = []
    for i in range(0, len(stream), chunk):
        events += dec.feed(stream[i:i + chunk])
    assert events == frames
    assert dec.dropped_bytes == 0 and dec.hunting


def test_hunting_drops_and_counts_garbage_then_resyncs():
    dec = FrameDecoder()
    garbage = bytes([0x00, 0x7D, 0x42, 0xFF])
    events = dec.feed(garbage + p.encode_frame(Cmd.INFO, 3) + garbage + p.encode_frame(Cmd.COUNTERS, 4))
    assert events == [Frame(Cmd.INFO, 3, b""), Frame(Cmd.COUNTERS, 4, b"")]
    assert dec.dropped_bytes == 2 * len(garbage)


def test_bad_crc_then_next_frame_works():
    good = bytearray(p.encode_frame(Cmd.RUN, 5, bytes(18)))
    bad = bytearray(good)
    bad[7] ^= 0x01  # a payload byte (not SYNC/ESC either way)
    events = FrameDecoder().feed(bytes(bad) + bytes(good))
    assert events == [BadFrame(ErrorCode.BAD_CRC, Cmd.RUN, 5), Frame(Cmd.RUN, 5, bytes(18))]


@pytest.mark.parametrize("cut_after", range(0, 9))
def test_sync_mid_frame_is_truncated_and_next_frame_works(cut_after):
    good = p.encode_frame(Cmd.READ_OUT, 0x33, bytes([1, 0, 0, 0, 2, 0]))  # 13 bytes, no stuffing
    assert len(good) == 13
    cut = good[:1 + cut_after]
    events = FrameDecoder().feed(cut + good)
    cmd = Cmd.READ_OUT if cut_after >= 1 else 0
    seq = 0x33 if cut_after >= 2 else 0
    assert events == [BadFrame(ErrorCode.TRUNCATED, cmd, seq), Frame(Cmd.READ_OUT, 0x33, good[5:11])]


def test_sync_after_esc_truncates():
    events = FrameDecoder().feed(bytes([SYNC, 1, 2, ESC]) + p.encode_frame(Cmd.INFO, 1))
    assert events == [BadFrame(ErrorCode.TRUNCATED, 1, 2), Frame(Cmd.INFO, 1, b"")]


def test_bad_length_at_header_discards_rest_of_frame():
    dec = FrameDecoder(max_payload=64)
    too_long = p.encode_frame(Cmd.WRITE_WEIGHTS, 8, bytes(65))
    ok = p.encode_frame(Cmd.WRITE_WEIGHTS, 9, bytes(64))
    events = dec.feed(too_long[:5])  # the event comes as soon as LEN is in
    assert events == [BadFrame(ErrorCode.BAD_LENGTH, Cmd.WRITE_WEIGHTS, 8)]
    assert dec.feed(too_long[5:] + ok) == [Frame(Cmd.WRITE_WEIGHTS, 9, bytes(64))]
    assert dec.dropped_bytes == len(too_long) - 5


def test_escaped_length_bytes():
    payload = bytes(0x7E)  # LEN_LO = 0x7E must be stuffed
    (event,) = FrameDecoder().feed(p.encode_frame(Cmd.WRITE_ACT, 1, payload))
    assert event == Frame(Cmd.WRITE_ACT, 1, payload)


def test_random_garbage_never_crashes_and_decoder_recovers():
    rng = random.Random(7)
    dec = FrameDecoder(max_payload=256)
    for _ in range(200):
        dec.feed(bytes(rng.randrange(256) for _ in range(rng.randrange(50))))
    # whatever state garbage left, SYNC + a good frame yields at most one cut frame and then the frame
    events = dec.feed(p.encode_frame(Cmd.INFO, 77))
    assert events[-1] == Frame(Cmd.INFO, 77, b"")
    assert all(isinstance(e, BadFrame) for e in events[:-1]) and len(events) <= 2


def test_encode_rejects_out_of_range_fields():
    with pytest.raises(ValueError, match="CMD"):
        p.encode_frame(256, 0)
    with pytest.raises(ValueError, match="SEQ"):
        p.encode_frame(1, -1)
    with pytest.raises(ValueError, match="LEN"):
        p.encode_frame(1, 0, bytes(0x10000))


def test_error_frame_and_device_error():
    bad = BadFrame(ErrorCode.BAD_CRC, Cmd.RUN, 12)
    (event,) = FrameDecoder().feed(bad.error_frame())
    assert event == Frame(Cmd.ERROR, 12, bytes([ErrorCode.BAD_CRC, Cmd.RUN]))
    err = p.DeviceError(*p.unpack_error(event.payload), seq=event.seq)
    assert err.code is ErrorCode.BAD_CRC and err.request == Cmd.RUN
    assert "RUN" in str(err) and "BAD_CRC" in str(err)
    assert "0x99" in str(p.DeviceError(0x99, 0x42))


def test_response_codes():
    assert [c.response for c in sorted(p.REQUESTS)] == [0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A,
                                                         0xA0, 0xA1, 0xA2, 0xA3]
    assert sorted(p.DECODER_REQUESTS) == [0x20, 0x21, 0x22, 0x23]
    assert sorted(p.MEM_LENGTH_RULES) == [0x08, 0x09, 0x0A]
    assert Cmd.ERROR == 0xFF and ErrorCode.TRUNCATED == 6 and ErrorCode.FAULT == 9


def test_request_payload_builders():
    assert p.run(1, 2, 3, 4, 5, 6) == bytes([1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 5, 0, 6, 0])
    assert p.RunArgs.unpack(p.run(1, 2, 3, 4, 5, 6)) == p.RunArgs(1, 2, 3, 4, 5, 6)
    assert p.read_out(0x01020304, 0x0506) == bytes([4, 3, 2, 1, 6, 5])
    assert p.unpack_read_out_request(p.read_out(7, 9)) == (7, 9)
    assert p.write_weights(0x100, b"\xAA\xBB") == bytes([0, 1, 0, 0, 0xAA, 0xBB])
    assert p.unpack_addr(p.write_act(5, b"xyz")) == (5, b"xyz")
    assert p.unpack_results(p.pack_results([-1, 2**31 - 1, -2**31]), 3) == (-1, 2**31 - 1, -2**31)
    assert p.unpack_run_response(p.pack_run_response(123456)) == 123456
    with pytest.raises(p.ProtocolError, match="READ_OUT response"):
        p.unpack_results(bytes(8), 3)


def test_capabilities_record():
    from bitlane.contract.config import PRESETS
    cfg = PRESETS["sim"]
    caps = p.Capabilities.from_config(cfg)
    raw = caps.pack()
    assert len(raw) == 53 and raw[0] == 2 and raw[1] == cfg.acc_bits
    assert int.from_bytes(raw[2:4], "little") == cfg.lanes
    assert int.from_bytes(raw[20:24], "little") == cfg.max_k
    assert raw[28] == p.Feature.DECODER and tuple(raw[29:32]) == (8, 8, 64)
    assert int.from_bytes(raw[32:34], "little") == cfg.decoder.context == 256
    assert int.from_bytes(raw[40:44], "little") == cfg.decoder.const_depth
    assert p.Capabilities.unpack(raw) == caps and caps.decoder
    no_decoder = p.Capabilities.from_config(PRESETS["icebreaker"]).pack()
    assert raw[48] == cfg.decoder.vector_lanes == 16
    assert no_decoder[28:49] == bytes(21) and not p.Capabilities.unpack(no_decoder).decoder
    assert int.from_bytes(raw[49:53], "little") == cfg.sdram_words == 0
    ulx3s = p.Capabilities.from_config(PRESETS["ulx3s"])
    assert ulx3s.sdram_words == 1 << 24 and ulx3s.sdram_bytes == 32 << 20
    assert caps.weight_word_bytes == cfg.weight_word_bytes
    with pytest.raises(p.ProtocolError, match="INFO"):
        p.Capabilities.unpack(raw[:-1])


def test_counters_record():
    c = p.Counters(cycles=2**40 + 1, busy_cycles=5, stall_cycles=6, frames_ok=7, frames_bad=8, dropped_bytes=9)
    raw = c.pack()
    assert len(raw) == 36 and int.from_bytes(raw[0:8], "little") == 2**40 + 1
    assert int.from_bytes(raw[32:36], "little") == 9
    assert p.Counters.unpack(raw) == c
    assert c.as_dict()["busy_cycles"] == 5


def test_request_length_rules():
    from bitlane.contract.config import PRESETS
    caps = p.Capabilities.from_config(PRESETS["tiny"])  # 4-byte weight words, 4-byte act words
    assert p.request_length_ok(Cmd.INFO, 0, caps) and not p.request_length_ok(Cmd.INFO, 1, caps)
    assert p.request_length_ok(Cmd.RUN, 18, caps) and not p.request_length_ok(Cmd.RUN, 17, caps)
    assert p.request_length_ok(Cmd.WRITE_WEIGHTS, 8, caps)
    assert not p.request_length_ok(Cmd.WRITE_WEIGHTS, 4, caps)  # no word
    assert not p.request_length_ok(Cmd.WRITE_ACT, 7, caps)  # partial word
    assert p.request_length_ok(Cmd.LOAD_PROGRAM, 2 + 24, caps) and not p.request_length_ok(Cmd.LOAD_PROGRAM, 2, caps)
    assert not p.request_length_ok(Cmd.LOAD_PROGRAM, 2 + 23, caps)
    assert p.request_length_ok(Cmd.WRITE_BANK, 5 + 8, caps) and not p.request_length_ok(Cmd.WRITE_BANK, 5 + 6, caps)
    assert p.request_length_ok(Cmd.DECODE_SETUP, 7, caps) and not p.request_length_ok(Cmd.DECODE_SETUP, 8, caps)
    assert p.decode_request_bytes(3, 128) == 4 + 3 * 256 and p.decode_response_bytes(3, 128) == 4 + 3 * 257


def test_decode_payloads():
    from bitlane.contract.config import PRESETS
    caps = p.Capabilities.from_config(PRESETS["ulx3s"])  # max_payload 1024: 3 hidden states of 128
    rows = np.arange(7 * 128, dtype=np.int64).reshape(7, 128) - 400
    requests = list(p.HostCodec.decode_requests(5, rows, caps))
    assert [(first, count) for first, count, _ in requests] == [(5, 3), (8, 3), (11, 1)]
    cmd, payload = requests[1][2]
    assert cmd == Cmd.DECODE and p.DecodeArgs.unpack(payload[:4]) == p.DecodeArgs(8, 3)
    assert np.array_equal(np.frombuffer(payload[4:], "<i2").reshape(3, 128), rows[3:6])
    y, e = rows[:3] * 7, np.array([-128, 0, 127])
    cycles, y2, e2 = p.unpack_decode_response(p.pack_decode_response(99, y, e), 3, 128)
    assert cycles == 99 and np.array_equal(y2, y) and np.array_equal(e2, e)
    with pytest.raises(ValueError, match="more than the device's max_payload 1024"):
        list(p.HostCodec.decode_requests(0, np.zeros((1, 600)), caps))
    with pytest.raises(ValueError, match="outside int16"):
        list(p.HostCodec.decode_requests(0, np.full((1, 8), 1 << 15), caps))


def test_mem_records_and_requests():
    """MEM_* payloads, LEN rules, frame splitting, and the CRC (zlib's CRC-32)."""
    from bitlane.contract.config import PRESETS
    caps = p.Capabilities.from_config(PRESETS["ulx3s"])
    assert p.mem_write(0x01020304, b"\xAA\xBB") == bytes([4, 3, 2, 1, 0xAA, 0xBB])
    assert p.mem_crc(0x01020304, 0x05060708) == bytes([4, 3, 2, 1, 8, 7, 6, 5])
    assert p.mem_read(0x01020304, 0x0506) == bytes([4, 3, 2, 1, 6, 5])
    assert p.MemCrc.unpack(bytes([1, 2, 3, 4])).crc == 0x04030201
    assert p.crc32(b"123456789") == 0xCBF43926 and p.crc32(b"6789", p.crc32(b"12345")) == 0xCBF43926
    for cmd, good, bad in [(Cmd.MEM_WRITE, [6, 8, 1024], [4, 5, 7, 0]), (Cmd.MEM_CRC, [8], [0, 7, 9]),
                           (Cmd.MEM_READ, [6], [0, 5, 7])]:
        assert all(p.request_length_ok(cmd, n, caps) for n in good), cmd
        assert not any(p.request_length_ok(cmd, n, caps) for n in bad), cmd
    data = bytes(range(256)) * 5  # 640 words: 510 + 130 with a 1024-byte payload
    requests = list(p.HostCodec.mem_write_requests(100, data, caps))
    assert [len(payload) for _, payload in requests] == [1024, 4 + 260]
    assert p.unpack_addr(requests[1][1]) == (100 + 510, data[1020:])
    with pytest.raises(ValueError, match="whole number"):
        list(p.HostCodec.mem_write_requests(0, b"abc", caps))
    reads = [p.MemReadRequest.unpack(payload) for _, payload in p.HostCodec.mem_read_requests(7, 600, caps)]
    assert reads == [p.MemReadRequest(7, 512), p.MemReadRequest(519, 88)]
