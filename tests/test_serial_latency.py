"""The serial transport sets an FTDI bridge's latency timer to 1 ms where it may, and says how otherwise."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bitlane.sw import transport
from bitlane.sw.transport import SerialTransport, tune_ftdi_latency


@pytest.fixture
def tty(tmp_path, monkeypatch):
    """A pty standing in for /dev/ttyUSBn, and a fake ftdi_sio sysfs directory for it."""
    master, slave = os.openpty()
    device = os.ttyname(slave)
    monkeypatch.setattr(transport, "USB_SERIAL_SYSFS", tmp_path)
    timer = tmp_path / Path(os.path.realpath(device)).name / "latency_timer"
    timer.parent.mkdir()
    yield device, timer
    os.close(master)
    os.close(slave)


def test_opening_an_ftdi_tty_sets_its_latency_timer_to_1_ms(tty):
    device, timer = tty
    timer.write_text("16\n")
    link = SerialTransport(device)
    try:
        assert link.latency_timer_ms == 1 and timer.read_text().strip() == "1"
    finally:
        link.close()


def test_a_timer_we_may_not_set_is_reported_with_the_command_that_sets_it(tty, monkeypatch):
    device, timer = tty
    timer.write_text("16\n")

    def refuse(self, *args, **kwargs):  # sysfs as a user without the permission (chmod would not stop root)
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", refuse)
    lines: list[str] = []
    assert tune_ftdi_latency(device, warn=lines.append) == 16
    assert timer.read_text().strip() == "16"
    assert len(lines) == 1 and "latency timer is 16 ms" in lines[0] and f"sudo tee {timer}" in lines[0]


def test_other_devices_are_left_alone(tty, tmp_path):
    device, timer = tty
    timer.parent.rename(tmp_path / "elsewhere")
    assert tune_ftdi_latency(device) is None
    assert SerialTransport("loop://").latency_timer_ms is None
