"""bitlane host driver: the link to a device, weight placement, products, device sessions.

    link.py         requests and checked responses over a transport, in bounded time (Link)
    accelerator.py  BitLinear products: placement, activation batches, exact results (Accelerator)
    placement.py    how a layer is split into pieces that fit device memory
    session.py      a golden model's BitLinears on a device for one generation, and its report
    transport.py    byte transports: functional model, serial port, simulator process
    model_device.py the functional model of the device

It imports bitlane.contract and bitlane.golden, never bitlane.hw: `bitlane.connect(url)`
(bitlane/devices.py) is what joins a URL to a simulator build.
"""
from __future__ import annotations

from bitlane.contract.protocol import BitlaneError, DeviceError, ProtocolError

from .accelerator import Accelerator
from .transport import DeviceTimeout, TransportError

__all__ = ["Accelerator", "BitlaneError", "DeviceError", "ProtocolError", "TransportError", "DeviceTimeout"]
