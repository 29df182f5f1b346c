"""Issue 9 items 4 and 6 as an operator meets them: a real ``cns-agent run`` on a private pcscd + vpcd,
cards from the emulator, the personalizer (real daemon code, in a thread) with its CA window closed
or open, and the ``cns-agent`` CLI as a subprocess.

* Ctrl-C (SIGINT to ``cns-agent personalize``) stops at the next safe point and says what became of
  the card; meanwhile a PIN status on another reader answers at once (locks are per device).
* A closed CA does not hold the card: the command ends with when the CA reopens; ``cns-agent
  operations`` lists the open personalization and ``operations discard ID`` makes the card blank.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware_profiles import load_models
from firmware_profiles.emulator import EmulatedCard
from firmware_profiles.emulator.vpcd import VpcdClient, parse_address
from tests.integration.test_renew_faults import _agent_env, _cli, _open_in_journal, _start_agent, _wait
from tests.ops import renewal_env as env

pytestmark = [pytest.mark.pcscd]

MODEL = load_models()["infocamere-cns-2048"]
READERS = ("Virtual PCD 00 00", "Virtual PCD 00 01")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    dep = env.make_deployment(tmp_path_factory.mktemp("operator") / "cns", env.free_port())
    p = env.ThreadedPersonalizer(dep)
    yield p, env.station_for(dep), dep
    p.close()


@pytest.fixture
def agent_env(world, pcscd, tmp_path):
    _, station, dep = world
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    aenv = _agent_env(pcscd.env, runtime, None)
    log = tmp_path / "agent.log"
    # the station's own data_dir: these tests read its journal there (station.station.data_dir)
    agent = _start_agent(dep.station_config, aenv, log, data_dir=station.station.data_dir, recovery_retry_s=2)
    aenv["_LOG"] = str(log)
    yield aenv
    agent.terminate()
    agent.wait(15)


def _insert(pcscd, index: int, card) -> VpcdClient:
    host, port = parse_address(pcscd.vpcd_address(index))
    client = VpcdClient(card, host, port).start()
    assert client.inserted.wait(10)
    return client


def _seen(aenv, reader: str) -> bool:
    out = _cli({k: v for k, v in aenv.items() if not k.startswith("_")}, "devices", "--json").stdout
    return any(r["name"] == reader and (r.get("card") or {}).get("model_id") == MODEL.id
               for r in json.loads(out or '{"readers": []}')["readers"])


def _holder(tmp_path) -> Path:
    path = tmp_path / "holder.toml"
    path.write_text("[holder]\n" + "".join(f'{k} = {json.dumps(v)}\n' for k, v in env.HOLDER.as_dict().items()))
    return path


def _blank(card) -> bool:
    from agent.card.cns import CnsSession
    from agent.card.issuer import IssuerSession
    from tests.support.emulated import EmulatedTransport
    card.power_off()
    card.power_on()
    cns = CnsSession(EmulatedTransport(card), MODEL)
    issuer = IssuerSession(cns, MODEL)
    return (all(issuer.read_ef(ks.cert_path) is None and issuer.read_public_key(ks.key_ref) is None
                for ks in MODEL.keysets) and not any(cns.read_file(MODEL.paths.dati_personali)))


def _status(station, request_id: str):
    import asyncio

    async def go():
        async with env.PersonalizerClient(station) as uplink:
            return await uplink.certificate_status(request_id=request_id)
    return asyncio.run(go())


def test_ctrl_c_stops_at_a_safe_point_and_other_readers_answer_meanwhile(world, pcscd, agent_env, tmp_path):
    _, station, _ = world
    aenv = {k: v for k, v in agent_env.items() if not k.startswith("_")}
    slow = EmulatedCard(MODEL, faults=["delay:ins=46,nth=every,seconds=2"])   # slow key generation
    other = EmulatedCard(MODEL)
    clients = [_insert(pcscd, 0, slow), _insert(pcscd, 1, other)]
    try:
        _wait(lambda: _seen(aenv, READERS[0]) and _seen(aenv, READERS[1]), 20,
              lambda: f"the agent never saw both cards: {Path(agent_env['_LOG']).read_text()[-2000:]}")
        t0 = time.monotonic()   # the same call with nothing running: the CLI's own start on this machine
        assert _cli(aenv, "pin", "status", "--reader", READERS[1], "--json").returncode == 0
        idle = time.monotonic() - t0
        cli = subprocess.Popen([str(BIN / "cns-agent"), "personalize", "--reader", READERS[0], "--holder",
                                str(_holder(tmp_path)), "--codes-stdin", "--json"], env=aenv, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        cli.stdin.write(env.codes_for(MODEL).pin + "\n")
        cli.stdin.close()
        lines = []
        while True:   # until the card is generating its first key (2 s a key)
            line = cli.stdout.readline()
            assert line, cli.stderr.read()
            lines.append(json.loads(line))
            if lines[-1].get("step") == "generate-key:CNS0":
                break
        t0 = time.monotonic()
        status = _cli(aenv, "pin", "status", "--reader", READERS[1], "--json")
        took = time.monotonic() - t0
        assert status.returncode == 0, status.stderr
        # waiting for the personalization's lock would take its remaining key generations (2 s each)
        assert took < idle + 1.5, f"PIN status on another reader took {took:.1f} s ({idle:.1f} s idle): it " \
                                  "waited for the personalization"
        cli.send_signal(signal.SIGINT)
        out, err = cli.stdout.read(), cli.stderr.read()   # until the command ends
        cli.wait(60)
        lines += [json.loads(x) for x in out.splitlines() if x.strip()]
    finally:
        for c in clients:
            c.stop()
        time.sleep(0.3)
    assert cli.returncode == 1, err
    assert any(x.get("step") == "interrupt" and "next safe point" in x["message"] for x in lines), lines
    result = lines[-1]["result"]
    assert result["state"] == "undone" and "stopped by the operator" in result["message"], result
    assert not any(x.get("step", "").startswith("submit:") for x in lines)    # nothing reached the CA
    assert _blank(slow) and not _open_in_journal(station.station.data_dir / "journal.db", slow.serial)


def test_closed_ca_releases_the_card_then_operations_lists_and_discards(world, pcscd, agent_env, tmp_path):
    p, station, _ = world
    aenv = {k: v for k, v in agent_env.items() if not k.startswith("_")}
    card = EmulatedCard(MODEL)
    client = _insert(pcscd, 0, card)
    p.close_window()
    try:
        _wait(lambda: _seen(aenv, READERS[0]), 20, lambda: "the agent never saw the card")
        t0 = time.monotonic()
        r = _cli(aenv, "personalize", "--reader", READERS[0], "--holder", str(_holder(tmp_path)), "--codes-stdin",
                 "--json", stdin=env.codes_for(MODEL).pin + "\n")
        assert time.monotonic() - t0 < 20
        result = json.loads(r.stdout.splitlines()[-1])["result"]
        assert r.returncode == 1 and result["state"] == "open", r.stdout + r.stderr
        assert "CA is closed" in result["message"] and "reopens" in result["message"]
        listed = json.loads(_cli(aenv, "operations", "--json").stdout)
        [op] = [o for o in listed if o["op_id"] == result["op_id"]]
        assert op["kind"] == "personalize" and op["card_serial"] == card.serial and "MARIO ROSSI" in op["holder"]
        assert op["journal"] == "device" and op["note"] == "certificate requests at the personalizer"
        d = _cli(aenv, "operations", "discard", result["op_id"], "--json")
        # the card is blank at once; the requests still queued keep the undo open until they are settled
        final = json.loads(d.stdout.splitlines()[-1])["result"]
        assert d.returncode == 1 and final["state"] == "open", d.stdout + d.stderr   # still settling
        assert "blank again" in final["message"] and "still queued" in final["message"], final
        [op] = json.loads(_cli(aenv, "operations", "--json").stdout)
        assert op["note"].startswith("being undone (discarded by the operator")
        p.open_window()   # the CA issues the queued requests; the agent revokes them by itself
        _wait(lambda: not _open_in_journal(station.station.data_dir / "journal.db", card.serial), 60,
              lambda: f"the undo never settled: {Path(agent_env['_LOG']).read_text()[-3000:]}")
        assert json.loads(_cli(aenv, "operations", "--json").stdout) == []

        def shown_blank() -> bool:   # `devices` shows the card as it is now, not as it was inserted
            out = json.loads(_cli(aenv, "devices", "--json").stdout)["readers"]
            view = next(r for r in out if r["name"] == READERS[0]).get("card") or {}
            return view.get("blank") is True and not view.get("holder_label")
        _wait(shown_blank, 10, lambda: "devices does not show the card blank after the undo")
        again = _cli(aenv, "operations", "discard", result["op_id"])
        assert again.returncode == 1 and "no open operation" in again.stderr
    finally:
        p.open_window()
        client.stop()
        time.sleep(0.3)
    assert _blank(card)
    for ks in MODEL.keysets:   # issued after the discard, revoked: no certificate outlives the undone card
        st = _status(station, f"pers-{result['op_id']}-{ks.name}")
        assert st.status == 3 and st.revocation_reason == "cessationOfOperation"


def _pin_change_interrupted(pcscd, aenv, index: int):
    """A card pulled by the card itself after CNS0's PIN changed, before CNS1's (vpcd reinserts it)."""
    card = EmulatedCard(MODEL, faults=["drop:ins=24,nth=2"])
    client = _insert(pcscd, index, card)
    _wait(lambda: _seen(aenv, READERS[index]), 20, lambda: "the agent never saw the card")
    pin, new = env.codes_for(MODEL).pin, "24681357"
    r = _cli(aenv, "pin", "change", "--reader", READERS[index], "--codes-stdin", "--json", stdin=f"{pin}\n{new}\n")
    assert r.returncode != 0 and "card removed" in r.stdout + r.stderr, r.stdout + r.stderr
    _wait(lambda: _seen(aenv, READERS[index]), 20, lambda: "the card was not reinserted")
    [op] = [o for o in json.loads(_cli(aenv, "operations", "--json").stdout) if o["card_serial"] == card.serial]
    assert op["journal"] == "pin" and op["kind"] == "pin-change", op
    return card, client, op, pin, new


def _pins_are(card, value: str) -> None:
    from agent.card.cns import CnsSession
    from tests.support.emulated import EmulatedTransport
    card.power_off()
    card.power_on()
    cns = CnsSession(EmulatedTransport(card), MODEL)
    for ks in MODEL.keysets:
        cns.verify_pin(value, ks.name)


def test_an_interrupted_pin_change_is_listed_then_set_back_by_discard_or_finished(world, pcscd, agent_env):
    """Issue 9 item 6 for PIN operations: `operations` lists the open PIN change; `discard` with the two
    codes sets the old PIN back on the keyset already changed (one PIN on the card, not two); `finish`
    with them completes it. Without the codes each says which it needs, and nothing changes."""
    aenv = {k: v for k, v in agent_env.items() if not k.startswith("_")}
    card, client, op, pin, new = _pin_change_interrupted(pcscd, aenv, 0)
    other, other_client, other_op, _, _ = _pin_change_interrupted(pcscd, aenv, 1)
    try:
        bare = _cli(aenv, "operations", "discard", op["op_id"])
        assert bare.returncode != 0 and "needs codes (pin, new_pin)" in bare.stderr, bare.stderr
        wrong = _cli(aenv, "operations", "discard", op["op_id"], "--codes-stdin", stdin=f"{pin}\n11223344\n")
        assert wrong.returncode != 0 and "2 tries left" in wrong.stderr and "11223344" not in wrong.stderr
        d = _cli(aenv, "operations", "discard", op["op_id"], "--codes-stdin", "--json", stdin=f"{pin}\n{new}\n")
        result = json.loads(d.stdout.splitlines()[-1])["result"]
        assert d.returncode == 0 and result["state"] == "undone", d.stdout + d.stderr
        assert "set again on CNS0" in result["message"] and "one PIN" in result["message"]
        f = _cli(aenv, "operations", "finish", other_op["op_id"], "--codes-stdin", "--json", stdin=f"{pin}\n{new}\n")
        assert f.returncode == 0 and json.loads(f.stdout.splitlines()[-1])["result"]["state"] == "done", f.stderr
        assert json.loads(_cli(aenv, "operations", "--json").stdout) == []
        status = json.loads(_cli(aenv, "pin", "status", "--reader", READERS[0], "--json").stdout)
        assert status["pin_tries_left"] == 3 and "interrupted" not in status["message"], status
    finally:
        client.stop()
        other_client.stop()
        time.sleep(0.3)
    _pins_are(card, pin)     # discarded: the PIN before the change, on both keysets
    _pins_are(other, new)    # finished: the new PIN, on both keysets
