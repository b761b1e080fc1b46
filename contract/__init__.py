"""The contract between gateware and host: the one definition of everything both sides must agree on.

    protocol   wire protocol v2: constants, wire records, CRC, framing codec, the sans-IO host codec
    packing    weight and activation memory-word layouts
    config     device configurations (presets, decoder shapes), derived sizes, pipeline latencies, board facts
    decoder    the decoder engine's instruction set and its bit-exact model
    intmath    the integer arithmetic of docs/arithmetic.md

It imports neither bitlane.hw nor bitlane.sw (tests/test_layers.py keeps it so), and nothing here
reads or writes a port.
"""
