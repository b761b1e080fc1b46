"""Byte transports to a bitlane device. All of them carry the same protocol bytes.

* `ModelTransport`: the in-process functional model (sw/model_device.py).
* `SerialTransport`: pyserial, for a board's UART or any pyserial URL
  (`socket://host:port`, `loop://`).
* `SimTransport`: starts a simulator executable (the Verilated board that
  bitlane.hw.sim builds) as a subprocess and talks to it through pyserial's
  `socket://127.0.0.1:PORT`.

A transport only moves bytes; framing, sequence numbers and timeouts for
answers belong to sw/link.py. `pipeline_depth` tells the runtime how many
request frames may be in flight: links with buffering on the device side (TCP
to the simulator, the in-process model) take many, a UART without flow control
takes one at a time.
"""
from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from bitlane.contract.config import DEFAULT_BAUD, FTDI_MIN_LATENCY_S, CoreConfig
from bitlane.contract.protocol import BitlaneError


class TransportError(BitlaneError):
    """The link to the device failed (cannot open, closed, process died)."""


class DeviceTimeout(TransportError):
    """The device did not answer in time."""


class Transport:
    """Interface: write bytes, read what has arrived, close."""

    description = "transport"
    pipeline_depth = 1

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def read(self, timeout: float) -> bytes:
        """Bytes that arrived, waiting up to `timeout` s for the first one; b"" on timeout."""
        raise NotImplementedError

    def check_alive(self) -> None:
        """Raise TransportError if the other end is known to be gone."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ModelTransport(Transport):
    """The functional model, answering in-process."""

    pipeline_depth = 64

    def __init__(self, config: CoreConfig) -> None:
        from .model_device import ModelDevice

        self.device = ModelDevice(config)
        self.description = f"model://{config.name}"
        self._pending = bytearray()
        self._closed = False

    def write(self, data: bytes) -> None:
        if self._closed:
            raise TransportError(f"{self.description}: write after close")
        self._pending += self.device.process(data)

    def read(self, timeout: float) -> bytes:
        data, self._pending = bytes(self._pending), bytearray()
        return data

    def close(self) -> None:
        self._closed = True


# Linux's ftdi_sio: one directory per USB serial tty, with the bridge's latency timer in milliseconds
USB_SERIAL_SYSFS = Path("/sys/bus/usb-serial/devices")


def tune_ftdi_latency(device: str, warn=None) -> int | None:
    """Set the latency timer of an FTDI bridge behind tty `device` to its 1 ms minimum, where the OS lets
    us (contract/config.py says why it matters: a response's last packet waits for it). Returns the timer
    in ms now in effect, or None where the device is no ftdi_sio tty; `warn` (default: stderr) gets one
    line saying how to set it when we may not."""
    path = USB_SERIAL_SYSFS / Path(os.path.realpath(device)).name / "latency_timer"
    try:
        ms = int(path.read_text())
    except (OSError, ValueError):
        return None
    want = round(FTDI_MIN_LATENCY_S * 1e3)
    if ms <= want:
        return ms
    try:
        path.write_text(f"{want}\n")
        return want
    except OSError:
        (warn or (lambda line: print(line, file=sys.stderr)))(
            f"{device}: the USB-UART's latency timer is {ms} ms, so each response may wait {ms} ms; "
            f"`echo {want} | sudo tee {path}` sets it to {want} ms")
        return ms


class SerialTransport(Transport):
    """pyserial: a UART device path or any pyserial URL. For a local FTDI tty, opening sets the bridge's
    latency timer to 1 ms where permitted (`tune_ftdi_latency`; `latency_timer_ms` says what holds)."""

    def __init__(self, url: str, baud: int = DEFAULT_BAUD, pipeline_depth: int = 1, write_timeout: float = 30.0) -> None:
        import serial

        self.description = url if "://" in url else f"serial://{url}?baud={baud}"
        self.pipeline_depth = pipeline_depth
        try:
            self.port = serial.serial_for_url(url, baudrate=baud, timeout=0, write_timeout=write_timeout)
        except (serial.SerialException, ValueError, OSError) as e:
            raise TransportError(f"cannot open {self.description}: {e}") from None
        self._serial_exception = serial.SerialException
        self.latency_timer_ms = None if "://" in url else tune_ftdi_latency(url)

    def write(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except (self._serial_exception, OSError) as e:
            raise self._failed("write failed", e) from None

    def read(self, timeout: float) -> bytes:
        try:
            self.port.timeout = max(timeout, 0.0)
            first = self.port.read(1)
            if not first:
                return b""
            # then whatever else is there: with timeout 0, read(n) returns the bytes available now
            # (in_waiting would not do: for socket:// it only says 0 or 1)
            self.port.timeout = 0
            return first + self.port.read(1 << 16)
        except (self._serial_exception, OSError) as e:
            raise self._failed("read failed", e) from None

    def _failed(self, what: str, error: Exception) -> TransportError:
        text = str(error)  # pyserial's own messages already start with "read failed" / "write failed"
        return TransportError(f"{self.description}: {text if text.startswith(what) else f'{what}: {text}'}")

    def close(self) -> None:
        self.port.close()


class SimTransport(Transport):
    """A simulator executable in a subprocess, over loopback TCP.

    The executable (bitlane.hw.sim.build_harness) prints `bitlane-sim listening PORT` and serves
    one connection; `trace_path` asks it to dump a waveform there."""

    pipeline_depth = 32
    START_TIMEOUT = 30.0

    def __init__(self, executable: Path, description: str, max_payload: int,
                 trace_path: Path | None = None) -> None:
        self.description = description
        cmd = [str(executable), "--port", "0", "--max-payload", str(max_payload)]
        self.trace_path = trace_path
        if trace_path is not None:
            cmd += ["--trace", str(trace_path)]
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr)
        self._link: SerialTransport | None = None
        try:
            port = self._read_port()
            self._link = SerialTransport(f"socket://127.0.0.1:{port}")
            # Requests are small writes that each wait for an answer: without TCP_NODELAY, Nagle's
            # algorithm holds them back until the previous segment is acknowledged (tens of ms).
            self._link.port._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            self.close()
            raise

    def _read_port(self) -> int:
        ready, _, _ = select.select([self.process.stdout], [], [], self.START_TIMEOUT)
        line = self.process.stdout.readline().decode(errors="replace") if ready else ""
        if not line.startswith("bitlane-sim listening"):
            self.check_alive()
            raise TransportError(f"{self.description}: simulator did not start listening "
                                 f"within {self.START_TIMEOUT:.0f} s (got {line!r})")
        return int(line.split()[-1])

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-2000:].decode(errors="replace").strip()

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            tail = self.stderr_tail()
            raise TransportError(f"{self.description}: simulator process {self.process.pid} exited with "
                                 f"code {code}" + (f": {tail}" if tail else ""))

    def _link_failed(self, error: TransportError) -> TransportError:
        """The error to raise when the socket fails: the simulator's exit, if that is the cause."""
        try:  # a dying process closes its socket before it can be reaped: give it a moment to finish exiting
            self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        self.check_alive()
        return TransportError(f"{self.description}: {error}")

    def write(self, data: bytes) -> None:
        try:
            self._link.write(data)
        except TransportError as e:
            raise self._link_failed(e) from None

    def read(self, timeout: float) -> bytes:
        try:
            return self._link.read(timeout)
        except TransportError as e:
            raise self._link_failed(e) from None

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
        if self.process.poll() is None:
            try:  # closing the socket makes the harness exit by itself
                self.process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self._stderr.close()



class FaultyTransport(Transport):
    """Wraps a transport and injects faults on request, to exercise error recovery on any link.

    `corrupt_next`: flip a bit of the LEN field of the next answer that arrives (its frame then
    ends in the wrong place and fails), `mute`: swallow everything the device sends.
    """

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.description = f"faulty {inner.description}"
        self.pipeline_depth = inner.pipeline_depth
        self.corrupt_next = False
        self.mute = False

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    def read(self, timeout: float) -> bytes:
        if self.mute:
            self.inner.read(min(timeout, 0.05))
            return b""
        data = bytearray(self.inner.read(timeout))
        if self.corrupt_next and len(data) > 3:
            data[3] ^= 0x01  # LEN_LO of an answer without stuffed header bytes
            self.corrupt_next = False
        return bytes(data)

    def check_alive(self) -> None:
        self.inner.check_alive()

    def close(self) -> None:
        self.inner.close()
