"""bitlane host driver: `sw.connect(url)` opens a device (model://, sim://, serial://)."""
from __future__ import annotations

__all__ = ["connect", "Accelerator", "BitlaneError", "DeviceError", "ProtocolError", "TransportError",
           "DeviceTimeout"]


def __getattr__(name: str):
    # Lazy, so that `import sw.protocol` (used by the gateware) stays free of numpy and pyserial.
    if name in ("connect", "Accelerator"):
        from bitlane.sw import runtime
        return getattr(runtime, name)
    if name in ("BitlaneError", "DeviceError", "ProtocolError"):
        from bitlane.contract import protocol
        return getattr(protocol, name)
    if name in ("TransportError", "DeviceTimeout"):
        from bitlane.sw import transport
        return getattr(transport, name)
    raise AttributeError(f"module 'sw' has no attribute {name!r}")
