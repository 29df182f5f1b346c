"""Item 1 of the wiring task (issue 13 item 3): the USB backend is a backend of ``Agent.build`` by default,
and ``cns-agent devices`` / ``--json`` / the local API's device list show tokens beside the readers."""
from __future__ import annotations

import json

import grpc

from agent import cli
from agent.app import CARD_ONLY_BACKENDS, DEFAULT_BACKENDS, AgentConfig
from agent.devices.backend import DeviceBackend
from agent.devices.registry import DeviceRegistry
from agent.devices.pcsc_backend import PcscBackend
from agent.devices.usb import UsbBackend
from proto.cns.v1 import agent_pb2 as pb
from proto.cns.v1 import agent_pb2_grpc as pb_grpc
from tests.agent.test_app import TestBackend
from tests.wiring.conftest import RunningAgent, usb_on, wait_for


def _list(sock) -> pb.ListDevicesResponse:
    with grpc.insecure_channel(f"unix:{sock}") as ch:
        return pb_grpc.AgentLocalStub(ch).ListDevices(pb.ListDevicesRequest(), timeout=5)


def test_usb_backend_declares_the_device_backend_seam_and_is_a_default():
    assert DeviceBackend in UsbBackend.__mro__          # declared, not only structurally alike
    made = [make(DeviceRegistry(), None) for make in DEFAULT_BACKENDS]
    assert [type(b) for b in made] == [PcscBackend, UsbBackend] and made[1].poll_s < 0.1   # hotplug within 100 ms
    assert [make(DeviceRegistry(), None).name for make in CARD_ONLY_BACKENDS] == ["pcsc"]


def test_tokens_are_listed_by_the_local_api_and_devices(tmp_path, bus, token, capsys):
    sock = tmp_path / "run" / "agent.sock"
    running = RunningAgent(AgentConfig(socket=sock, token_journal=tmp_path / "tokens.db"),
                           (TestBackend, usb_on(bus))).start()
    try:
        assert running.agent.task_names == ["local-api", "monitor:test", "monitor:usb", "token-recovery"]
        resp = wait_for(lambda: (r := _list(sock)).tokens and r, "the token in the device list")
        [t] = resp.tokens
        assert (t.serial, t.model_id, t.mode, t.firmware) == (token.serial, "cns-token-ccid", "runtime", "1.2.0")
        assert t.partitions["cdrom"].version == "1.0.0" and t.chip_serial == token.card.serial
        assert [r.name for r in resp.readers] == ["test reader"]

        assert cli.main(["devices", "--json", "--socket", str(sock)]) == 0
        out = json.loads(capsys.readouterr().out)
        [row] = out["tokens"]
        assert row["serial"] == token.serial and row["firmware"] == "1.2.0" and row["release"] == ""
        assert row["partitions"]["cdrom"]["version"] == "1.0.0" and row["partitions"]["disk"]["version"]
        assert out["readers"][0]["name"] == "test reader"

        assert cli.main(["devices", "--socket", str(sock)]) == 0      # a pipe: plain aligned columns
        lines = capsys.readouterr().out.splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("token"))
        assert "firmware" in lines[header] and "release" in lines[header]
        assert token.serial in lines[header + 1] and "1.2.0" in lines[header + 1] and "cdrom 1.0.0" in lines[header + 1]

        bus.unplug(token)
        wait_for(lambda: not _list(sock).tokens, "the pulled token to leave the list")
    finally:
        running.stop()
