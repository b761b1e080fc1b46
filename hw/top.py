"""bitlane's top level: the command processor in front of the compute core (hw/core.py), or in front of
the core with the decoder engine (hw/decoder.py's DecoderCore) where the configuration has a decoder.

One clock domain, `sync`. The generated Verilog (hw/verilog.py) has exactly
these ports, which the sim transport's C++ harness drives:

    clk, rst                              clock, synchronous active-high reset
    rx__payload[7:0], rx__valid, rx__ready    host -> device bytes (rx__ready is an output)
    tx__payload[7:0], tx__valid, tx__ready    device -> host bytes (tx__ready is an input)

A byte moves on a rising clock edge where valid and ready are both high.
"""

from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from bitlane.contract.config import CoreConfig

from .cmdproc import CommandProcessor
from .core import TernaryCore
from .decoder import DecoderCore


class BitlaneTop(wiring.Component):
    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        super().__init__()

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.cmdproc = cmdproc = CommandProcessor(self.config)
        wiring.connect(m, wiring.flipped(self.rx), cmdproc.rx)
        wiring.connect(m, cmdproc.tx, wiring.flipped(self.tx))
        if self.config.decoder is None:
            m.submodules.core = core = TernaryCore(self.config)
            wiring.connect(m, cmdproc.core, core)
        else:  # the decoder engine beside the core, sharing its memories (protocol v2's decoder mode)
            m.submodules.core = core = DecoderCore(self.config)
            wiring.connect(m, cmdproc.core, core.core_port)
            wiring.connect(m, cmdproc.engine, core.engine_port)
        return m
