"""A rollout of a token release through Fleet, end to end (issue 15 item 3 with issue 14): real station agents
(``Agent.build`` with the USB backend on an emulated bus, each running its fleet stream over real mTLS) get
``install_release`` from the rollout engine, download the release from a TUF repository served by nginx,
install it with the journaled release plan and return the token's own attestation (the emulated token signs
its installed-release manifest with its device key, issued by its model's TEST attestation CA). The
personalizer counts an attested install as a success; a host that reports success without installing
(it relays the token's true attestation of the release it still runs, or forges one with a key of its own)
is counted failed."""
from __future__ import annotations

import asyncio

from agent.app import AgentConfig
from agent.devices.usb import UsbBackend
from agent.fleet.client import Outcome
from agent.fleet.releases import ReleaseInstaller
from agent.fleet.station import run_station
from agent.updates.client import trust_root
from firmware_profiles.usbemu import EmulatedUsbBus
from firmware_profiles.usbemu.attestation import model_ca
from firmware_profiles.usbtoken import load_token_models
from personalizer.fleet.attestation import ModelRoots
from proto.cns.v1 import fleet_pb2 as pb
from tests.agent.test_app import TestBackend
from tests.fleet import support
from tests.fleet.test_rollouts import FAST, _final
from tests.fleet.test_stream import _admin, _is, run
from tests.releases.conftest import make_release, served  # noqa: F401 - fixtures
from tests.releases.tokenrel import RULE, changed, contents, payloads, provision, signed_release, small_model, token_set
from tests.wiring.conftest import RunningAgent, wait_for

V1 = {"firmware": "1.2.0", "cdrom": "2.5.0", "disk": "1.0.0"}
V2 = {"firmware": "2.1.0", "cdrom": "3.0.0", "disk": "1.1.0"}


class LyingInstaller(ReleaseInstaller):
    """A host that reports success without installing: it relays what its token truly attests (the release
    the token still runs) under the command it was given."""

    async def install(self, command, progress):
        from agent.updates.client import known_releases
        rel = next(r for r in known_releases(self.state_dir, self._row(command.device_serial)["model"])
                   if r.version == "1.0.0")
        return Outcome(True, "installed (not really)", await self._attest(command, rel))


class ForgingInstaller(ReleaseInstaller):
    """A host that forges the attestation: the right manifest for this command, signed by a key of its own
    (certified by a CA that is not the model's)."""

    async def install(self, command, progress):
        from agent.fleet.attest import attestation
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        key, cert = support.ModelCA(self._row(command.device_serial)["model"]).device(command.device_serial)
        return Outcome(True, "installed (forged)", attestation(
            command, serial=command.device_serial, model=self._row(command.device_serial)["model"],
            release=command.release, sign=lambda m: key.sign(m, ec.ECDSA(hashes.SHA256())), device_certificate=cert))


def _station_agent(tmp_path, name, model, d1, served):
    bus = EmulatedUsbBus()
    _, token = provision(model, tmp_path / f"{name}-flash.bin", V1, d1, bus=bus)
    updates = tmp_path / f"{name}-upd"
    trust_root(updates / "updates", served.first_root())
    usb = (lambda registry, catalog: UsbBackend(registry, catalog, usb_backend=bus, models={model.id: model}))
    running = RunningAgent(AgentConfig(socket=tmp_path / f"{name}-run" / "agent.sock", version="1.0",
                                       token_journal=tmp_path / f"{name}-tokens.db", updates_dir=updates),
                           (TestBackend, usb)).start()
    wait_for(lambda: running.agent.tokens(), "the token")
    return running, token, updates


def test_a_token_release_rollout_counts_attested_installs_and_fails_a_host_that_did_not_install(
        deployment, served, make_release, tmp_path):  # noqa: F811 - fixtures
    model = small_model(load_token_models()["cns-token-ccid"])
    d1 = payloads(model, 1)
    d2 = changed(d1, 2)
    _, blobs1 = signed_release(model, "1.0.0", V1, d1, constraints=())
    _, blobs2 = signed_release(model, "2.0.0", V2, d2)
    make_release("1.0.0", {n: (V1[n], b) for n, b in blobs1.items()}, model=model.id)
    make_release("2.0.0", {n: (V2[n], b) for n, b in blobs2.items()}, model=model.id, constraints=(RULE,))
    honest, t_honest, up_honest = _station_agent(tmp_path, "a", model, d1, served)
    liar, t_liar, up_liar = _station_agent(tmp_path, "b", model, d1, served)
    forger, t_forger, up_forger = _station_agent(tmp_path, "c", model, d1, served)
    # the lying host downloaded release 1's manifest before (what it names as "installed")
    from agent.updates.client import UpdateClient
    UpdateClient(up_liar / "updates", served.url).token_releases(model.id)

    async def go():
        roots = ModelRoots({model.id: model_ca(model.id).cert})
        async with support.fleet_server(deployment, tmp_path / "db.sqlite", heartbeat_seconds=1, tick_seconds=0.2,
                                        model_roots=roots) as (port, fleet):
            tasks = []
            for sid, running, up, cls in (("ST-A", honest, up_honest, ReleaseInstaller),
                                          ("ST-B", liar, up_liar, LyingInstaller),
                                          ("ST-C", forger, up_forger, ForgingInstaller)):
                cfg = support.station(deployment, tmp_path / sid, port, sid=sid)
                installer = cls(running.agent, url=served.url, proxy=None, state_dir=up / "updates", poll_s=0.1)
                tasks.append(asyncio.run_coroutine_threadsafe(run_station(
                    cfg, running.agent.registry, version="1.0", options=FAST, tokens=running.agent,
                    releases=installer), running.loop))
            ch, admin = await _admin(deployment, port)
            try:
                await support.until(lambda: len(fleet.hub) == 3, what="the stations connected")
                await support.until(lambda: _devices(admin, 3), what="the tokens in the inventory")
                st = await admin.CreateRollout(pb.FleetRolloutSpec(name="2.0.0 to the test model", release="2.0.0",
                                                                   model=model.id, rate_per_minute=1000,
                                                                   timeout_seconds=600))
                assert st.total == 3
                done = await _final(admin, st.rollout_id, pb.FLEET_ROLLOUT_COMPLETED)
                by_serial = {t.device_serial: t for t in done.targets}
                assert dict(done.counts) == {"succeeded": 1, "failed": 2}, done
                assert "not issued by its model's attestation CA" in by_serial[t_forger.serial].message
                assert by_serial[t_honest.serial].state == "succeeded"
                assert by_serial[t_liar.serial].state == "failed"
                assert "without a valid attestation" in by_serial[t_liar.serial].message
                assert "another device, model or release" in by_serial[t_liar.serial].message
                # the stored result carries the token's signature over its own manifest for this command
                cmd = await fleet.store.get_command(by_serial[t_honest.serial].command_id)
                att = pb.FleetAttestation.FromString(cmd.attestation)
                m = pb.FleetInstalledManifest.FromString(att.manifest)
                assert (m.command_id, m.device_serial, m.model, m.release) == \
                    (cmd.command_id, t_honest.serial, model.id, "2.0.0")
                # the inventory follows: the honest station's token now reports release 2.0.0
                await support.until(lambda: _release_of(admin, t_honest.serial, "2.0.0"), what="the new release")
                # central IT mistypes the release: failed in one line, the token stays on 2.0.0
                typo = await admin.SendCommand(pb.FleetSendCommandRequest(
                    station="urn:cns:station:RM:ST-A", kind=pb.FLEET_COMMAND_INSTALL_RELEASE,
                    device_serial=t_honest.serial, release="2.0.1"))
                got = await support.until(lambda: _is(admin, typo.command_id, pb.FLEET_COMMAND_FAILED))
                assert "release 2.0.1 of token model" in got.message and "not published" in got.message
                assert "\n" not in got.message and "Traceback" not in got.message
            finally:
                for running, t in zip((honest, liar, forger), tasks):
                    running.loop.call_soon_threadsafe(lambda t=t: t.cancel())
                await ch.close()
    try:
        run(go())
        assert token_set(t_honest) == V2 and contents(t_honest)["cdrom"] == d2["cdrom"]
        assert token_set(t_liar) == V1 and token_set(t_forger) == V1   # never touched
    finally:
        for running in (honest, liar, forger):
            running.stop()


def test_a_token_refuses_to_attest_a_release_it_does_not_run(tmp_path):
    from firmware_profiles.usbemu.attestation import AttestRefused, attest
    import json
    import pytest
    meta = {"firmware": {"version": "1.2.0", "valid": True}, "previous": {},
            "images": {"cdrom": {"version": "2.5.0"}, "disk": {"version": "1.0.0"}}}
    ask = lambda comps: json.dumps({"nonce": "c1", "release": "2.0.0", "components": comps}).encode()  # noqa: E731
    with pytest.raises(AttestRefused, match="runs firmware 1.2.0, not 2.1.0"):
        attest(ask(V2), model="m", serial="S1", meta=meta)
    manifest, sig, cert = attest(ask(V1), model="m", serial="S1", meta=meta)
    m = pb.FleetInstalledManifest.FromString(manifest)      # the token's own encoding is the proto's
    assert (m.command_id, m.device_serial, m.model, m.release) == ("c1", "S1", "m", "2.0.0") and m.installed_at > 0
    meta["previous"] = {"cdrom": "A"}                         # switched, not committed: no attestation yet
    with pytest.raises(AttestRefused, match="not committed"):
        attest(ask(V1), model="m", serial="S1", meta=meta)


async def _devices(admin, n):
    got = await admin.ListDevices(pb.FleetInventoryQuery())
    return len([d for d in got.devices if d.device.kind == "token"]) == n


async def _release_of(admin, serial, release):
    got = await admin.ListDevices(pb.FleetInventoryQuery())
    return any(d.device.serial == serial and d.device.token_release == release for d in got.devices)
