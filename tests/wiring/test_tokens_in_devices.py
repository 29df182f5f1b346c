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


def test_watch_shows_token_arrivals_and_removals_within_100_ms_and_tokens_carry_their_chip_holder(
        tmp_path, bus, token):
    """Issue 13 item 3: ``watch`` shows tokens (the snapshot lists them; insert and remove are events within
    100 ms of the hotplug), and a token is paired with its PC/SC reader (by the USB serial pcsc-lite puts in
    a CCID reader's name, else by the chip serial the token reports) so the chip's holder is shown."""
    import queue
    import threading
    import time

    from agent.commands.devices import _describe, event_dict
    sock = tmp_path / "run" / "agent.sock"
    running = RunningAgent(AgentConfig(socket=sock, token_journal=tmp_path / "tokens.db"),
                           (TestBackend, usb_on(bus))).start()
    got: queue.Queue = queue.Queue()
    try:
        wait_for(lambda: _list(sock).tokens, "the token in the device list")
        registry = running.agent.registry
        vpcd = "Virtual PCD 00 00"                        # the chip as pcscd sees it through vpcd: no USB serial
        registry.reader_added(vpcd)
        registry.card_inserted(vpcd, b"\x3b\x00", supported=True, model_id="m")
        registry.card_read(vpcd, serial=token.card.serial, holder_label="MARIO ROSSI", blank=False)
        [t] = wait_for(lambda: (r := _list(sock).tokens) and r[0].chip_holder and r, "the chip's holder")
        assert (t.chip_holder, t.reader) == ("MARIO ROSSI", vpcd)
        ccid = f"CNS Token CCID [CNS reader] ({token.serial}) 00 00"   # pcsc-lite's name for the token's reader
        registry.reader_added(ccid)
        registry.card_inserted(ccid, b"\x3b\x00", supported=True, model_id="m")
        registry.card_read(ccid, serial="", holder_label="LUCIA BIANCHI", blank=False)
        [t] = wait_for(lambda: (r := _list(sock).tokens) and r[0].reader == ccid and r, "pairing by USB serial")
        assert t.chip_holder == "LUCIA BIANCHI"

        channel = grpc.insecure_channel(f"unix:{sock}")
        stream = pb_grpc.AgentLocalStub(channel).WatchDevices(pb.WatchDevicesRequest(), timeout=20)

        def read():
            try:
                for event in stream:
                    got.put((event, time.monotonic()))
            except grpc.RpcError:
                pass
        threading.Thread(target=read, daemon=True).start()
        snapshot, _ = got.get(timeout=5)
        assert snapshot.kind == pb.DEVICE_EVENT_KIND_SNAPSHOT and [x.serial for x in snapshot.tokens] == [token.serial]
        for action, kind in ((bus.unplug, pb.DEVICE_EVENT_KIND_TOKEN_LEFT),
                             (bus.plug, pb.DEVICE_EVENT_KIND_TOKEN_ARRIVED)):
            t0 = time.monotonic()
            action(token)
            while True:
                event, at = got.get(timeout=2)
                if event.kind == kind:
                    break
            assert event.token.serial == token.serial and at - t0 < 0.1, (kind, at - t0)
        d = event_dict(event)
        assert d["kind"] == "token_arrived" and d["token"]["serial"] == token.serial
        assert d["token"]["chip_holder"] == "LUCIA BIANCHI"
        line = _describe(d)
        assert "token_arrived" in line and token.serial in line and "LUCIA BIANCHI" in line
        stream.cancel()
        channel.close()
    finally:
        running.stop()
