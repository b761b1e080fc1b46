"""bitlane's top level: the command processor in front of the compute core (hw/core.py), or in front of
the core with the decoder engine (hw/decoder.py's DecoderCore) where the configuration has a decoder.

One clock domain, `sync`, for a configuration without SDRAM. The generated Verilog
(hw/verilog.py) has exactly these ports, which the sim transport's C++ harness drives:

    clk, rst                              clock, synchronous active-high reset
    rx__payload[7:0], rx__valid, rx__ready    host -> device bytes (rx__ready is an output)
    tx__payload[7:0], tx__valid, tx__ready    device -> host bytes (tx__ready is an input)

A byte moves on a rising clock edge where valid and ready are both high.

A configuration with SDRAM (`sdram_words`) adds the SDRAM port (hw/sdram_port.py), which the
command processor's MEM_* commands use (and, with a decoder, the engine's WFETCH through the
port's read-only `fetch`, hw/weight_fetch.py): its controller runs in a second domain, `sdram`, at
`sdram_clock_hz`, with the ports

    sdram_clk, sdram_rst                  the controller's clock and reset
    sdram__cke, sdram__cs_n, sdram__ras_n, sdram__cas_n, sdram__we_n, sdram__ba, sdram__a,
    sdram__dqm, sdram__dq_o, sdram__dq_oe (outputs), sdram__dq_i (input)
                                          the SDRAM pins (hw/sdram.py), registered in `sdram`
"""

from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from bitlane.contract.config import CoreConfig
from bitlane.contract.weight_stream import fetch_ratio

from .cmdproc import CommandProcessor
from .core import TernaryCore
from .decoder import DecoderCore
from .sdram import sdram_pins_signature
from .sdram_port import sdram_setup, share_port


class BitlaneTop(wiring.Component):
    """Command processor, compute core and, with `config.sdram_words`, the SDRAM port
    (`sdram_setup(config)`: the ULX3S's part and read delay, so that the simulators run the
    board's gateware)."""

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self.sdram_setup = sdram_setup(config)
        members = {"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))}
        if self.sdram_setup is not None:
            members["sdram"] = Out(sdram_pins_signature(self.sdram_setup.geometry))
        super().__init__(members)

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
        if self.sdram_setup is not None:
            # with the decoder, the engine's WFETCH reads through the port's wide `fetch` (hw/weight_fetch.py)
            wide = {} if self.config.decoder is None else {"fetch_ratio": fetch_ratio(self.config)}
            m.submodules.sdram_port = port = self.sdram_setup.port(**wide)
            if self.config.decoder is not None and self.config.decoder.kv_sdram:
                # KVAPPEND's stores write through `mem` while the engine runs (the command processor
                # waits for its DECODE then and has nothing in flight); its reads always go back to it
                share_port(m, port.mem, core.engine_busy, core.kv_wr, cmdproc.mem, first_reads=False)
            else:
                wiring.connect(m, cmdproc.mem, port.mem)
            if wide:
                wiring.connect(m, core.mem, port.fetch)
            wiring.connect(m, port.pins, wiring.flipped(self.sdram))
        return m
