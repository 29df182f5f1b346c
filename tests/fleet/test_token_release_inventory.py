"""A token reports its release as a whole (issue 14 item 1, last sentence): ``cns-agent devices [--json]``
shows it, and the fleet inventory (the hello and the deltas of the agent's fleet stream, over real mTLS)
files it as the device's ``token_release``. The agent is ``Agent.build`` with its USB backend on the
emulated bus; the release manifests are those its update client keeps (verified targets)."""
from __future__ import annotations

import asyncio
import json

from agent import cli
from agent.app import AgentConfig
from agent.devices.usb import UsbBackend
from agent.fleet.station import run_station
from cns_spec import releases as spec
from firmware_profiles.usbemu import EmulatedUsbBus
from firmware_profiles.usbtoken import load_token_models
from proto.cns.v1 import fleet_pb2 as pb
from tests.agent.test_app import TestBackend
from tests.fleet import support
from tests.fleet.test_stream import FAST, STATION, _admin, run
from tests.releases.tokenrel import changed, payloads, provision, signed_release, small_model
from tests.wiring.conftest import RunningAgent, wait_for

V1 = {"firmware": "1.2.0", "cdrom": "2.5.0", "disk": "1.0.0"}
V2 = {"firmware": "2.1.0", "cdrom": "3.0.0", "disk": "1.1.0"}


def test_a_token_reports_its_release_in_devices_and_in_the_fleet_inventory(deployment, tmp_path, capsys):
    model = small_model(load_token_models()["cns-token-ccid"])
    d1 = payloads(model, 1)
    d2 = changed(d1, 2)
    rel1, _ = signed_release(model, "1.0.0", V1, d1, constraints=())
    rel2, _ = signed_release(model, "2.0.0", V2, d2)
    known = tmp_path / "upd" / "updates" / "targets" / "releases" / model.id
    known.mkdir(parents=True)
    for rel in (rel1, rel2):
        (known / f"{rel.version}.json").write_bytes(spec.manifest_json(rel))
    bus = EmulatedUsbBus()
    _, on1 = provision(model, tmp_path / "f1.bin", V1, d1, bus=bus)
    _, mixed = provision(model, tmp_path / "f2.bin", {**V2, "disk": "1.0.0"}, {**d2, "disk": d1["disk"]}, bus=bus)
    assert on1.serial != mixed.serial
    sock = tmp_path / "run" / "agent.sock"
    usb = (lambda registry, catalog: UsbBackend(registry, catalog, usb_backend=bus, models={model.id: model}))
    running = RunningAgent(AgentConfig(socket=sock, token_journal=tmp_path / "tokens.db",
                                       updates_dir=tmp_path / "upd"), (TestBackend, usb)).start()
    try:
        wait_for(lambda: len(running.agent.tokens()) == 2, "both tokens")
        assert cli.main(["devices", "--json", "--socket", str(sock)]) == 0
        rows = {r["serial"]: r for r in json.loads(capsys.readouterr().out)["tokens"]}
        assert rows[on1.serial]["release"] == "1.0.0"
        assert rows[mixed.serial]["release"] == ""          # a mix: no release names that set
        assert cli.main(["devices", "--socket", str(sock)]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if on1.serial in x)
        assert "1.0.0" in line.split("cdrom")[-1]           # the release column, after the partitions

        async def go():
            async with support.fleet_server(deployment, tmp_path / "db.sqlite") as (port, fleet):
                cfg = support.station(deployment, tmp_path / "st", port)
                task = asyncio.create_task(run_station(cfg, running.agent.registry, version="4.0", options=FAST,
                                                       tokens=running.agent))
                ch, admin = await _admin(deployment, port)

                async def releases():
                    got = await admin.ListDevices(pb.FleetInventoryQuery())
                    return {d.device.serial: (d.device.kind, d.device.token_release) for d in got.devices}
                try:
                    await support.until(lambda: fleet.hub.is_connected(STATION))
                    hello = await support.until(lambda: _when(releases, 2), what="the hello")
                    assert hello == {on1.serial: ("token", "1.0.0"), mixed.serial: ("token", "")}
                    [row] = [d for d in (await admin.ListDevices(pb.FleetInventoryQuery(token_release="1.0.0"))).devices]
                    assert row.device.firmware_version == "1.2.0" and "cdrom 2.5.0" in row.device.partition_version
                    # hotplug: the mixed token leaves, a token on release 2 arrives: deltas carry the release
                    bus.unplug(mixed)
                    _, on2 = provision(model, tmp_path / "f3.bin", V2, d2, bus=bus)
                    later = await support.until(lambda: _when(releases, 2, exclude=mixed.serial), what="the deltas")
                    assert later == {on1.serial: ("token", "1.0.0"), on2.serial: ("token", "2.0.0")}
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    await ch.close()
        run(go())
    finally:
        running.stop()


async def _when(fn, n, exclude=None):
    got = await fn()
    return got if len(got) == n and exclude not in got else None
