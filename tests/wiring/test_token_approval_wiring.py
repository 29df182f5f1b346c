"""The composition root wires the holder's question (issue 14 item 4): with a USB backend and ``[updates]``,
``Agent.build`` registers ``token-updates`` and, with ``token_install = "ask"`` (the default), the desktop
notifier ``token-notify``; with "auto" no one is asked. A bad ``token_postpone_hours`` is one line naming it."""
from __future__ import annotations

import asyncio

import pytest

import station_config
from agent.app import Agent, AgentConfig
from agent.devices.usb import UsbBackend
from firmware_profiles.usbemu import EmulatedUsbBus
from tests.agent.test_app import RecordingUplink, TestBackend
from tests.wiring.test_self_update_task import _config


def _tasks(tmp_path, extra: str = "") -> list[str]:
    cfg = _config(tmp_path, "http://127.0.0.1:9/repo")
    if extra:
        path = cfg.source
        path.write_text(path.read_text() + extra)
        cfg = station_config.load(path)
    usb = (lambda registry, catalog: UsbBackend(registry, catalog, usb_backend=EmulatedUsbBus()))

    async def go():
        agent = await Agent.build(AgentConfig(socket=tmp_path / "a.sock", station=cfg, token_journal=tmp_path / "t.db",
                                              updates_dir=tmp_path / "upd"),
                                  backends=(TestBackend, usb), uplink=lambda station, operator: RecordingUplink())
        await agent.close()
        return agent.task_names, agent.approvals.postpone_s
    return asyncio.run(go())


def test_ask_registers_the_desktop_notifier_and_auto_does_not(tmp_path):
    names, postpone = _tasks(tmp_path / "ask", 'token_postpone_hours = 2\n')
    assert "token-updates" in names and "token-notify" in names and postpone == 7200
    names, _ = _tasks(tmp_path / "auto", 'token_install = "auto"\n')
    assert "token-updates" in names and "token-notify" not in names


def test_a_mistyped_postponement_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(station_config.StationConfigError) as err:
        _tasks(tmp_path, 'token_postpone_hours = -3\n')
    text = str(err.value)
    assert "updates.token_postpone_hours" in text and "positive number of hours" in text and "\n" not in text
