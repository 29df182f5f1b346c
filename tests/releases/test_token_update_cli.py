"""Holders' token release update from the command line (issue 14 item 4): ``cns-agent update check | download |
apply --token [--json]`` against a TUF repository served by nginx, and the same from the repository copied to a
folder (offline). The running agent (``Agent.build``, USB backend on the emulated bus) installs the release."""
from __future__ import annotations

import json
import shutil

from agent import cli
from agent.app import AgentConfig
from agent.devices.usb import UsbBackend
from firmware_profiles.usbemu import EmulatedUsbBus
from firmware_profiles.usbtoken import load_token_models
from tests.agent.test_app import TestBackend
from tests.releases.tokenrel import RULE, changed, contents, payloads, provision, signed_release, small_model, token_set
from tests.wiring.conftest import RunningAgent, wait_for

V1 = {"firmware": "1.2.0", "cdrom": "2.5.0", "disk": "1.0.0"}
V2 = {"firmware": "2.1.0", "cdrom": "3.0.0", "disk": "1.1.0"}


def _results(out: str) -> list[dict]:
    return [d for d in map(json.loads, out.splitlines()) if d.get("event") == "result"]


def test_check_download_apply_a_token_release_online_then_offline(served, make_release, tmp_path, capsys):
    model = small_model(load_token_models()["cns-token-ccid"])
    d1 = payloads(model, 1)
    d2 = changed(d1, 2)
    _, blobs1 = signed_release(model, "1.0.0", V1, d1, constraints=())
    _, blobs2 = signed_release(model, "2.0.0", V2, d2)
    make_release("1.0.0", {n: (V1[n], b) for n, b in blobs1.items()}, model=model.id)
    make_release("2.0.0", {n: (V2[n], b) for n, b in blobs2.items()}, model=model.id, constraints=(RULE,))
    bus = EmulatedUsbBus()
    _, token = provision(model, tmp_path / "flash.bin", V1, d1, bus=bus)
    sock, updates = tmp_path / "run" / "agent.sock", tmp_path / "upd"
    usb = (lambda registry, catalog: UsbBackend(registry, catalog, usb_backend=bus, models={model.id: model}))
    running = RunningAgent(AgentConfig(socket=sock, token_journal=tmp_path / "tokens.db", updates_dir=updates,
                                       version="1.0"),
                           (TestBackend, usb)).start()
    common = ["--url", served.url, "--state-dir", str(updates / "updates"), "--socket", str(sock), "--json"]
    try:
        wait_for(lambda: running.agent.tokens(), "the token")
        root = tmp_path / "root.json"
        root.write_bytes(served.first_root())
        assert cli.main(["update", "trust", str(root), "--state-dir", str(updates / "updates")]) == 0
        capsys.readouterr()
        assert cli.main(["update", "check", "--token", *common]) == 0
        [r] = _results(capsys.readouterr().out)
        assert (r["serial"], r["newer_release"]) == (token.serial, "2.0.0")
        # in a pipe without --yes the holder cannot be asked: refused in one line, nothing installed
        assert cli.main(["update", "apply", "--token", *common]) == 1
        err = capsys.readouterr().err
        assert "asks the holder first" in err and "--yes" in err and "Traceback" not in err
        assert token_set(token) == V1
        assert cli.main(["update", "apply", "--token", "--yes", *common]) == 0
        out = capsys.readouterr().out
        [r] = _results(out)
        assert r["state"] == "done" and r["installed"] == "2.0.0", r
        assert any(json.loads(x).get("event") == "progress" for x in out.splitlines())
        assert token_set(token) == V2 and contents(token)["cdrom"] == d2["cdrom"]
        assert r["sent_bytes"] <= 2 * 4 * 4096
        assert cli.main(["devices", "--json", "--socket", str(sock)]) == 0
        assert json.loads(capsys.readouterr().out)["tokens"][0]["release"] == "2.0.0"
        # offline: the repository copied to a folder (a USB stick) gives the same answer, with the same checks
        stick = tmp_path / "stick"
        shutil.copytree(served.repo.served, stick)
        offline = [a if a != served.url else str(stick) for a in common]
        assert cli.main(["update", "check", "--token", *offline]) == 0
        [r] = _results(capsys.readouterr().out)
        assert r["release"] == "2.0.0" and r["newer_release"] is None
        (stick / "metadata" / "timestamp.json").write_bytes(b"{}")          # a tampered stick
        assert cli.main(["update", "check", "--token", *offline]) == 1
        err = capsys.readouterr().err.strip()
        assert "update check failed" in err and "\n" not in err and "Traceback" not in err
    finally:
        running.stop()


def _setup_agent(served, make_release, tmp_path):
    from agent.updates.client import trust_root
    model = small_model(load_token_models()["cns-token-ccid"])
    d1 = payloads(model, 1)
    d2 = changed(d1, 2)
    _, blobs1 = signed_release(model, "1.0.0", V1, d1, constraints=())
    _, blobs2 = signed_release(model, "2.0.0", V2, d2)
    make_release("1.0.0", {n: (V1[n], b) for n, b in blobs1.items()}, model=model.id)
    make_release("2.0.0", {n: (V2[n], b) for n, b in blobs2.items()}, model=model.id, constraints=(RULE,))
    bus = EmulatedUsbBus()
    _, token = provision(model, tmp_path / "flash.bin", V1, d1, bus=bus)
    updates = tmp_path / "upd"
    trust_root(updates / "updates", served.first_root())
    usb = (lambda registry, catalog: UsbBackend(registry, catalog, usb_backend=bus, models={model.id: model}))
    running = RunningAgent(AgentConfig(socket=tmp_path / "run" / "agent.sock", token_journal=tmp_path / "tokens.db",
                                       updates_dir=updates, version="1.0"), (TestBackend, usb)).start()
    wait_for(lambda: running.agent.tokens(), "the token")
    return running, token, updates, d2


def _start(running, served, updates, policy):
    import asyncio
    from agent.app import token_updates
    return asyncio.run_coroutine_threadsafe(token_updates(
        running.agent, url=served.url, proxy=None, state_dir=updates / "updates", policy=policy,
        interval_s=3600, jitter_s=0, retry_s=0.1), running.loop)


def test_the_agent_downloads_at_start_and_with_ask_waits_for_the_holder(served, make_release, tmp_path):
    running, token, updates, _ = _setup_agent(served, make_release, tmp_path)
    task = _start(running, served, updates, "ask")
    try:
        version, manifest = wait_for(lambda: running.agent.token_offers.get(token.serial), "the offer", 30)
        assert version == "2.0.0" and manifest.is_file()
        from agent.updates.token_releases import files
        rel, comps, _ = files(manifest)
        assert rel.version == "2.0.0" and all(p.is_file() for p in comps.values())     # downloaded in the background
        import time
        time.sleep(0.5)                                   # several retry ticks: nothing is installed unasked
        assert token_set(token) == V1
    finally:
        running.loop.call_soon_threadsafe(task.cancel)
        running.stop()


def test_with_auto_the_release_is_installed_once_the_token_is_idle(served, make_release, tmp_path):
    running, token, updates, d2 = _setup_agent(served, make_release, tmp_path)
    holder_signing = {"now": True}
    running.agent.token_busy = lambda serial: "its chip is in use" if holder_signing["now"] else None
    task = _start(running, served, updates, "auto")
    try:
        wait_for(lambda: running.agent.token_offers.get(token.serial), "the offer", 30)
        import time
        time.sleep(0.5)
        assert token_set(token) == V1                     # busy: it waits
        holder_signing["now"] = False
        wait_for(lambda: token_set(token) == V2, "the install once idle", 30)
        assert contents(token)["cdrom"] == d2["cdrom"]
        wait_for(lambda: running.agent.tokens()[0]["release"] == "2.0.0", "the release shown")
        assert token.serial not in running.agent.token_offers
    finally:
        running.loop.call_soon_threadsafe(task.cancel)
        running.stop()
