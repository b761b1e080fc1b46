"""Found by the protocol fuzzer (sim_tests/test_protocol_fuzz.py): bytes dropped after a RESET in
the same write were erased by that RESET in the functional model, but counted by the gateware."""
from hw.config import preset
from sw import protocol as p
from sw.model_device import ModelDevice
from sw.protocol import Cmd


def test_bytes_dropped_after_a_reset_in_the_same_write_are_counted():
    device = ModelDevice(preset("tiny"))
    garbage = b"\x01\x02\x7d\x03"
    answers = device.process(p.encode_frame(Cmd.RESET, 1) + garbage + p.encode_frame(Cmd.COUNTERS, 2))
    events = p.FrameDecoder().feed(answers)
    counters = p.Counters.unpack(events[-1].payload)
    assert (counters.dropped_bytes, counters.frames_ok) == (len(garbage), 1)
