"""The protocol's wire records as Amaranth layouts, generated from their one definition.

Each record of contract/protocol.py is a dataclass whose fields carry their bit widths; its
layout here lists the same fields in the same order, least significant first, which is the
little-endian byte order of the wire. So a record's bytes, received LSB first into a shift
register, read as a `data.View` of its layout, and the gateware can never disagree with the
host on a field's place or width.
"""
from __future__ import annotations

from amaranth.lib import data

from bitlane.contract.protocol import (BankWriteHeader, Counters, DecodeArgs, DecodeSetup, ProgramHeader,
                                       ReadOutRequest, RunArgs, WireRecord)


def layout(record: type[WireRecord]) -> data.StructLayout:
    """The Amaranth layout of a wire record."""
    return data.StructLayout(dict(record.FIELDS))


RunArgsLayout = layout(RunArgs)
ReadOutLayout = layout(ReadOutRequest)
CountersLayout = layout(Counters)
ProgramHeaderLayout = layout(ProgramHeader)
BankWriteHeaderLayout = layout(BankWriteHeader)
DecodeSetupLayout = layout(DecodeSetup)
DecodeArgsLayout = layout(DecodeArgs)
