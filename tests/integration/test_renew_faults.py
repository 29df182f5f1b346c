"""The renewal fault matrix: every step × every fault kind, then recovery, then the card as a user finds it.

Kinds (armed when the step is journaled begun):

* ``tear``    power cut during the step's write (UPDATE BINARY: only the first bytes land;
              GENERATE/SWITCH/ERASE: the change is lost); steps that write nothing: power cut at once
* ``drop``    card pulled: after the step's write ran but before its answer (the nastiest case:
              the card changed and the agent does not know), else before the step's first command
* ``sw``      the card answers 6581 (memory failure) to the step's main command
* ``down``    the personalizer stops at that step (back before recovery); the card's issuer key
              being central (issue 12), a step that needs it waits too
* ``ca-error``   the CA refuses the next issuance (terminal) → FAILED
* ``ca-timeout`` the CA keeps timing out; the agent stops waiting (operation left open)
* ``ca-lost``    the CA issues but the answer is lost (the relay retries and finds it); at a
                 ``renew:*`` step the agent also loses the personalizer's answer (abandoned as
                 a SIGKILL would leave it, right after the answer arrived)
* ``sigkill``    a real ``cns-agent run`` process SIGKILLs itself at the step (the test entry
                 point ``tests/support/kill_at.py`` on the step engine's callback), is restarted,
                 and recovers on start

CA kinds armed at a step after the last ``renew:*`` have nothing left to break: those runs
check that a late CA fault does not disturb the rest.

After the fault: the card is reinserted, the personalizer and CA repaired, recovery runs
exactly as on agent start / card insert (no PIN), then:

* in process: no open operation; every keyset all old or all new (never a mix); live key =
  certificate key; spare slots and renewal marker empty; PIN tries full; at most one
  certificate per keyset for this renewal at the CA's own index, and if the card is new,
  exactly those certificates;
* through pcscd + vpcd with OpenSC's PKCS#11 module (python-pkcs11 on opensc-pkcs11.so): login
  with the unchanged PIN, sign with each keyset, the signature verifies against the
  certificate OpenSC reads from the card, which is the card's live certificate.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from agent.card.errors import CardError
from agent.ops.journal import Journal
from agent.ops.renew import plan
from firmware_profiles import load_models
from firmware_profiles.emulator import EmulatedCard
from firmware_profiles.emulator.vpcd import VpcdClient, parse_address
from tests.support.station import with_settings
from tests.conftest import OPENSC_PKCS11
from tests.ops import renewal_env as env
from tests.support import kill_at as kill_entry
from tests.support.faults import arm_card_fault

pytestmark = [pytest.mark.pcscd, pytest.mark.opensc]

MODEL = load_models()["infocamere-cns-2048"]
STEPS = plan(MODEL)
KINDS = ("tear", "drop", "sw", "down", "ca-error", "ca-timeout", "ca-lost")
READER = "Virtual PCD 00 00"
DATA = b"renewal fault matrix: signed through OpenSC\n"

# revoke-superseded, the last step, sends no command to the card: a card fault armed there has nothing
# left to break (the card is already renewed); those runs check the card is still the renewed one.
CARDLESS_LAST = {"revoke-superseded"}

PKCS11_SCRIPT = r"""
import json, sys, pkcs11
from pkcs11 import Attribute, Mechanism, ObjectClass
lib = pkcs11.lib(sys.argv[1])
out = {}
for slot in lib.get_slots(token_present=True):
    token = slot.get_token()
    name = "CNS0" if token.label.endswith("(PIN CNS0)") else "CNS1" if token.label.endswith("(PIN CNS1)") else None
    if name is None:
        continue
    with token.open(user_pin=sys.argv[2]) as session:
        cert = next(session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE}))
        key = next(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
        out[name] = {"cert": bytes(cert[Attribute.VALUE]).hex(),
                     "sig": key.sign(sys.argv[3].encode(), mechanism=Mechanism.SHA256_RSA_PKCS).hex()}
print(json.dumps(out))
"""
OPENSC_CONF = """app default {
    debug = 0;
    framework pkcs15 { use_file_caching = false; use_pin_caching = false; }
}
"""


class Abandon(BaseException):
    """The in-process stand-in for a SIGKILL: nothing after it runs, nothing is cleaned up."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    dep = env.make_deployment(tmp_path_factory.mktemp("renew-faults") / "cns", env.free_port())
    p = env.ThreadedPersonalizer(dep)
    yield p, env.station_for(dep), dep
    p.close()


@pytest.fixture(scope="module")
def user_env(pcscd, opensc_tools, tmp_path_factory):
    conf = tmp_path_factory.mktemp("opensc") / "opensc.conf"
    conf.write_text(OPENSC_CONF)
    return dict(pcscd.env, OPENSC_CONF=str(conf))


def _journal_run(path: Path, fn):
    async def go():
        j = await Journal.open(path)
        try:
            return await fn(j)
        finally:
            await j.close()
    return asyncio.run(go())


def _personalized(world, journal: Path) -> EmulatedCard:
    p, station, _ = world
    p.ca.reset()
    card = EmulatedCard(MODEL)
    out = _journal_run(journal, lambda j: env.personalize(station, j, card, MODEL))
    assert out.state == "done", out.message
    return card


def _arm(kind: str, step: str, card: EmulatedCard, p: env.ThreadedPersonalizer) -> None:
    if arm_card_fault(kind, step, card):
        return
    if kind == "down":
        p.stop()
    elif kind == "ca-error":
        p.ca.refuse = 1
    elif kind == "ca-timeout":
        p.ca.slow = 1000
    elif kind == "ca-lost":
        p.ca.lose_answers = 1


def _repair(card: EmulatedCard, p: env.ThreadedPersonalizer) -> None:
    card.faults.clear()
    if not card.powered:
        card.power_on()   # reinserted
    p.ca.reset()
    if not p.running:
        p.start()


def _recover_until_settled(world, journal: Path, card) -> list:
    p, station, _ = world
    outs = []
    for _ in range(3):
        out = _journal_run(journal, lambda j: env.recover(station, j, card, MODEL, watch_timeout_s=20.0))
        if out is None:
            break
        outs.append(out)
    return outs


def check_as_user(world, user_env, card: EmulatedCard, before: dict, journal: Path, op_id: str | None,
                  tmp_path: Path) -> str:
    """All the checks; returns "old" or "new"."""
    p = world[0]
    pin = env.codes_for(MODEL).pin
    assert _journal_run(journal, lambda j: j.open_operations()) == [], "an operation is still open"
    view = env.card_view(card, MODEL, pin)
    which = set()
    for ks in MODEL.keysets:
        v = view[ks.name]
        assert v["key_matches"], f"{ks.name}: live key does not match the live certificate"
        assert not v["spare_key"] and not v["spare_cert"], f"{ks.name}: spare slot not cleaned"
        assert view[f"pin_tries_{ks.name}"] == MODEL.pin_policy.pin_tries, "PIN counter changed"
        which.add("old" if v["der"] == before[ks.name]["der"] else "new")
    assert len(which) == 1, f"a mix of old and new certificates: {which}"
    assert view["marker_clear"], "renewal marker left on the card"
    state = which.pop()
    issued = {rid: der for rid, der in p.issued().items() if op_id and rid.startswith(f"renew-{op_id}-")}
    assert set(issued) <= {f"renew-{op_id}-{ks.name}" for ks in MODEL.keysets}
    if state == "new":
        for ks in MODEL.keysets:
            assert issued[f"renew-{op_id}-{ks.name}"] == view[ks.name]["der"]
    opensc_signs(user_env, card, pin, {ks.name: view[ks.name]["der"] for ks in MODEL.keysets})
    return state


def opensc_signs(user_env, card: EmulatedCard, pin: str, expect_certs: dict[str, bytes]) -> None:
    """The user's view: OpenSC's PKCS#11 module through pcscd + vpcd logs in with ``pin``, signs with
    each keyset, and each signature verifies against the certificate OpenSC reads from the card."""
    host, port = parse_address(_pcscd_address(user_env))
    client = VpcdClient(card, host, port).start()
    try:
        assert client.inserted.wait(10), "the card never connected to vpcd"
        r = None
        for _ in range(40):
            r = subprocess.run([sys.executable, "-c", PKCS11_SCRIPT, str(OPENSC_PKCS11), pin, DATA.decode()],
                               env=user_env, capture_output=True, text=True, timeout=60)
            if r.returncode == 0 and len(json.loads(r.stdout.strip().splitlines()[-1])) == 2:
                break
            time.sleep(0.25)   # pcscd has not powered the card up yet
        assert r is not None and r.returncode == 0, f"OpenSC could not use the card: {r.stderr[-2000:]}"
        seen = json.loads(r.stdout.strip().splitlines()[-1])
        assert set(seen) == {"CNS0", "CNS1"}, seen
        for name, want in expect_certs.items():
            der = bytes.fromhex(seen[name]["cert"])
            assert der == want, f"{name}: OpenSC presents another certificate"
            x509.load_der_x509_certificate(der).public_key().verify(
                bytes.fromhex(seen[name]["sig"]), DATA, padding.PKCS1v15(), hashes.SHA256())
    finally:
        client.stop()
        time.sleep(0.3)   # let vpcd see the removal before the next card


def _pcscd_address(user_env) -> str:
    return user_env["_VPCD"]


@pytest.fixture(scope="module")
def served_env(user_env, pcscd):
    return dict(user_env, _VPCD=pcscd.vpcd_address(0))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("step", STEPS)
def test_fault_then_recovery_leaves_a_usable_card(step, kind, world, served_env, tmp_path):
    p, station, _ = world
    journal = tmp_path / "journal.db"
    card = _personalized(world, journal)
    before = env.card_view(card, MODEL)
    seen = {"op": None}

    def on_step(s, phase):
        if s == step and phase == "begun":
            _arm(kind, step, card, p)
        if kind == "ca-lost" and s == step and phase == "answered":
            raise Abandon()

    async def attempt(j):
        async with env.PersonalizerClient(station) as uplink:
            r = env.renewer(j, uplink, on_step=on_step, watch_timeout_s=1.5)
            return await r.start(connect=env.connect_to(card), reader="in-process", model=MODEL,
                                 codes=env.codes_for(MODEL))

    attempt_state = "raised"
    try:
        out = _journal_run(journal, attempt)
        seen["op"], attempt_state = out.op_id, out.state
    except (Abandon, CardError, Exception) as exc:   # noqa: B014 - a fault may surface as any of these
        if isinstance(exc, AssertionError):
            raise
    if kind in ("tear", "drop", "sw") and step not in CARDLESS_LAST:
        assert attempt_state != "done", "the card fault never fired"
    _repair(card, p)
    ops = _journal_run(journal, lambda j: j.open_operations())
    _recover_until_settled(world, journal, card)
    op_id = seen["op"] or (ops[0].op_id if ops else None)
    if op_id is None:   # the fault fired before the operation was recorded? then nothing may have changed
        hist = _journal_run(journal, lambda j: j._fetch("SELECT op_id FROM operations WHERE kind = 'renew'", ()))
        op_id = hist[-1][0] if hist else None
    final = check_as_user(world, served_env, card, before, journal, op_id, tmp_path)
    assert final == expected(step, kind), f"ended {final}, expected {expected(step, kind)}"
    assert_only_live_certificates_active(p, card)


def assert_only_live_certificates_active(p: env.ThreadedPersonalizer, card: EmulatedCard, timeout: float = 15.0):
    """No orphaned or superseded certificate stays valid: at the CA the card has exactly its two live
    certificates active (revocations go through the outbox's priority lane: waited for)."""
    view = env.card_view(card, MODEL)
    live = sorted(f"{x509.load_der_x509_certificate(view[ks.name]['der']).serial_number:X}" for ks in MODEL.keysets)
    deadline = time.monotonic() + timeout
    while True:
        found = p._run(p.daemon.store.find_certificates(card_id=card.serial))
        active = sorted(f.info.ref.serial_hex for f in found if f.info.state.value == "active")
        if active == live or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert active == live, f"active at the CA {active}, on the card {live}"


def expected(step: str, kind: str) -> str:
    """Which certificates the card must end with: back to the old ones only when nothing was issued
    and the PIN is gone (card faults before the requests were signed) or the CA refused; forward
    once the CSRs exist, and always once the switch began."""
    i = STEPS.index(step)
    if i >= STEPS.index("switch"):
        return "new"
    if kind == "ca-error" and i <= STEPS.index("renew:CNS1"):
        return "old"
    if kind in ("tear", "drop", "sw") and i < STEPS.index("renew:CNS0"):
        return "old"
    if kind == "down" and i < STEPS.index("csr:CNS0"):
        # issue 12: the card's issuer key is central: with the personalizer gone these admin steps cannot
        # run, the operation waits without any CSR, and recovery without the PIN goes back to the old keys
        return "old"
    return "new"


# -- real SIGKILLs of a real agent process -------------------------------------------------------

def _agent_env(base: dict, runtime: Path, kill_at: str | None) -> dict:
    e = {k: v for k, v in base.items() if not k.startswith("_")}
    e.update(XDG_RUNTIME_DIR=str(runtime), PYTHONUNBUFFERED="1")
    e.pop(kill_entry.ENV, None)
    if kill_at:
        e[kill_entry.ENV] = kill_at
    return e


def _agent_journal(tmp_path: Path) -> Path:
    """The journal of this test's agent: each test its own (``_start_agent(data_dir=...)``), so an operation
    one failed test leaves open is never seen by the next test's "no operation still open" check."""
    return tmp_path / "agent-data" / "journal.db"


def _start_agent(config: Path, agent_env: dict, log: Path, *, data_dir: Path, window_days: int = 3650,
                 recovery_retry_s: float = 1) -> subprocess.Popen:
    """``cns-agent run`` on a copy of ``config`` with the test's settings (renewal at any time, fast retries)
    and its journal and state in ``data_dir`` (the test's own, not the deployment's shared one)."""
    config = with_settings(config, renewal={"window_days": window_days},
                           operations={"recovery_retry_seconds": float(recovery_retry_s),
                                       "watch_timeout_seconds": 20.0})
    text = config.read_text()
    lines = [x for x in text.splitlines() if x.startswith("data_dir = ")]
    assert len(lines) == 1, f"{config}: expected one data_dir line, found {lines}"
    config.write_text(text.replace(lines[0], f"data_dir = {str(data_dir)!r}"))
    sock = Path(agent_env["XDG_RUNTIME_DIR"]) / "cns-agent" / "agent.sock"
    with open(log, "ab") as fh:
        program = [sys.executable, kill_entry.__file__] if agent_env.get(kill_entry.ENV) \
            else [str(Path(sys.executable).parent / "cns-agent")]
        proc = subprocess.Popen([*program, "run", "--config", str(config)],
                                env=agent_env, stdout=fh, stderr=subprocess.STDOUT, cwd="/")
    _wait(lambda: sock.exists() or proc.poll() is not None, 20, lambda: f"agent did not start: {log.read_text()}")
    assert proc.poll() is None, log.read_text()
    return proc


def _cli(agent_env: dict, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "cns-agent"), *args], env=agent_env, input=stdin,
                          capture_output=True, text=True, timeout=120)


def _wait(pred, timeout: float, why) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(why())


def _open_in_journal(path: Path, serial: str) -> list[tuple]:
    import sqlite3
    if not path.exists():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as c:
        return list(c.execute("SELECT op_id, kind, step FROM operations WHERE card_serial = ? AND state = 'running'",
                              (serial,)))


def _journal_report(path: Path, serial: str, log: Path) -> str:
    """What the test read, for an assertion message: this card's operations (state, step, phase, when), the
    journal's open operations, its files, the same query again 0.5 s later, the agent's last log lines."""
    import sqlite3

    def card_rows() -> list[tuple]:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as c:
            return list(c.execute("SELECT substr(op_id, 1, 8), kind, state, step, step_phase, updated_at "
                                  "FROM operations WHERE card_serial = ? ORDER BY created_at", (serial,)))

    if not path.exists():
        return f"no journal at {path}; agent log:\n" + "\n".join(log.read_text().splitlines()[-15:])
    files = {f.name: f.stat().st_size for f in path.parent.glob(path.name + "*")}
    first = card_rows()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as c:
        running = list(c.execute("SELECT substr(op_id, 1, 8), kind, card_serial, step, step_phase "
                                 "FROM operations WHERE state = 'running'"))
    time.sleep(0.5)
    again = card_rows()
    return (f"card {serial}: operations {first}; 0.5 s later {again}; open in the journal {running}; "
            f"files {files}; read at {time.time():.3f}; agent log:\n" + "\n".join(log.read_text().splitlines()[-15:]))


def _last_renewal(path: Path, serial: str) -> str | None:
    import sqlite3
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as c:
        rows = list(c.execute("SELECT op_id FROM operations WHERE card_serial = ? AND kind = 'renew' "
                              "ORDER BY created_at", (serial,)))
    return rows[-1][0] if rows else None


KILL_POINTS = [f"{s}:begun" for s in STEPS] + [f"{s}:answered" for s in STEPS if s.startswith("renew:")]


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_sigkilled_agent_recovers_on_restart(kill_at, world, served_env, tmp_path):
    p, station, dep = world
    card = _personalized(world, tmp_path / "prep.db")
    before = env.card_view(card, MODEL)
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    agent_journal = _agent_journal(tmp_path)
    data_dir = agent_journal.parent
    log = tmp_path / "agent.log"
    host, port = parse_address(served_env["_VPCD"])
    client = VpcdClient(card, host, port).start()
    try:
        assert client.inserted.wait(10)
        killing = _agent_env(served_env, runtime, f"renew:{kill_at}")
        agent = _start_agent(dep.station_config, killing, log, data_dir=data_dir)

        def card_listed() -> bool:
            r = _cli(killing, "devices", "--json")
            return r.returncode == 0 and any((rd.get("card") or {}).get("model_id") == MODEL.id
                                             for rd in json.loads(r.stdout)["readers"] if rd["name"] == READER)
        _wait(card_listed, 20, lambda: f"the agent never saw the card: {log.read_text()}")
        r = _cli(killing, "renew", "--reader", READER, "--codes-stdin", "--json", stdin=env.codes_for(MODEL).pin)
        agent.wait(30)
        assert agent.returncode == -9, f"agent was not SIGKILLed at {kill_at}: rc {agent.returncode}\n" \
                                       f"{r.stdout}{r.stderr}\n{log.read_text()}"
        assert r.returncode != 0
        left_open = _open_in_journal(agent_journal, card.serial)
        assert left_open and left_open[0][1] == "renew", \
            f"the kill left no open renewal behind: read {left_open}; " + _journal_report(agent_journal, card.serial, log)
        # restart: the agent finds the card at start and finishes or undoes the renewal
        agent = _start_agent(dep.station_config, _agent_env(served_env, runtime, None), log, data_dir=data_dir)
        try:
            _wait(lambda: not _open_in_journal(agent_journal, card.serial), 60,
                  lambda: f"recovery did not finish: {_open_in_journal(agent_journal, card.serial)}\n"
                          f"{log.read_text()[-4000:]}")
        finally:
            agent.terminate()
            agent.wait(15)
    finally:
        client.stop()
        time.sleep(0.3)
    op_id = _last_renewal(agent_journal, card.serial)
    final = check_as_user(world, served_env, card, before, agent_journal, op_id, tmp_path)
    step = kill_at.rsplit(":", 1)[0]
    assert final == ("old" if STEPS.index(step) < STEPS.index("renew:CNS0") else "new"), final


# -- a request queued at the personalizer survives the agent's SIGKILL (issue 5 item 1, agent side) --

def _journal_row(path: Path, serial: str) -> tuple | None:
    import sqlite3
    if not path.exists():
        return None
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as c:
        rows = list(c.execute("SELECT op_id, kind, state, data FROM operations WHERE card_serial = ? "
                              "ORDER BY created_at", (serial,)))
    return rows[-1] if rows else None


@pytest.mark.parametrize("operation", ["personalize", "renew"])
def test_queued_request_survives_agent_kill(operation, world, served_env, tmp_path):
    """CA outside its service window → the request waits at the personalizer, the agent watches it →
    the agent is SIGKILLed → restarted, it finds the card and re-watches the SAME request ids → the
    window opens → the card finishes; one certificate per keyset, OpenSC signs with them."""
    p, station, dep = world
    model_pin = env.codes_for(MODEL).pin
    if operation == "renew":
        card = _personalized(world, tmp_path / "prep.db")
        before = env.card_view(card, MODEL)
    else:
        card, before = EmulatedCard(MODEL), None
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    agent_journal = _agent_journal(tmp_path)
    log = tmp_path / "agent.log"
    aenv = _agent_env(served_env, runtime, None)
    host, port = parse_address(served_env["_VPCD"])
    client = VpcdClient(card, host, port).start()
    p.close_window()
    try:
        assert client.inserted.wait(10)
        agent = _start_agent(dep.station_config, aenv, log, data_dir=agent_journal.parent)
        _wait(lambda: any((rd.get("card") or {}).get("model_id") == MODEL.id for rd in
                          json.loads(_cli(aenv, "devices", "--json").stdout or '{"readers": []}')["readers"]),
              20, lambda: f"the agent never saw the card: {log.read_text()}")
        if operation == "renew":
            cmd = ["renew", "--reader", READER, "--codes-stdin", "--json"]
        else:
            holder = tmp_path / "holder.toml"
            holder.write_text("[holder]\n" + "".join(f'{k} = {json.dumps(v)}\n' for k, v in env.HOLDER.as_dict().items()))
            cmd = ["personalize", "--reader", READER, "--holder", str(holder), "--codes-stdin", "--json"]
        cli = subprocess.Popen([str(Path(sys.executable).parent / "cns-agent"), *cmd], env=aenv,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        cli.stdin.write(model_pin + "\n")
        cli.stdin.close()
        key = "renew" if operation == "renew" else "submit"

        def queued() -> bool:
            row = _journal_row(agent_journal, card.serial)
            if row is None:
                return False
            rids = json.loads(row[3]).get("request_ids", {})
            return bool(rids) and p.request_state(rids["CNS0"]) in ("RECEIVED", "PENDING")
        _wait(queued, 30, lambda: f"no queued request: {log.read_text()[-3000:]}")
        first = json.loads(_journal_row(agent_journal, card.serial)[3])
        assert f"{key}:CNS0" in first.get("_begun", [f"{key}:CNS0"])
        os.kill(agent.pid, 9)
        agent.wait(10)
        cli.wait(30)
        assert cli.returncode != 0
        agent = _start_agent(dep.station_config, aenv, log, data_dir=agent_journal.parent)
        try:
            time.sleep(1.0)   # the restarted agent is following the queued request, window still closed
            assert _open_in_journal(agent_journal, card.serial), "finished while the CA was closed?"
            p.open_window()
            _wait(lambda: not _open_in_journal(agent_journal, card.serial), 60,
                  lambda: f"the card did not finish: {log.read_text()[-4000:]}")
        finally:
            agent.terminate()
            agent.wait(15)
    finally:
        p.open_window()
        client.stop()
        time.sleep(0.3)
    row = _journal_row(agent_journal, card.serial)
    assert row[2] == "done", row
    data = json.loads(row[3])
    assert data["request_ids"] == first["request_ids"]      # the same requests, followed after the restart
    issued = p.issued()
    rids = sorted(data["request_ids"].values())
    assert all(r in issued for r in rids)
    prefix = rids[0].rsplit("-", 1)[0]
    assert sorted(r for r in issued if r.startswith(prefix)) == rids   # one certificate per keyset
    view = env.card_view(card, MODEL)
    certs = {ks.name: view[ks.name]["der"] for ks in MODEL.keysets}
    assert certs == {ks: issued[data["request_ids"][ks]] for ks in certs}
    if before is not None:
        assert all(certs[k] != before[k]["der"] for k in certs)
    opensc_signs(served_env, card, model_pin, certs)


def test_cli_renew_through_the_agent(world, served_env, tmp_path):
    """As an operator runs it: outside the window the agent refuses with the date it opens (nothing
    written); inside, `cns-agent renew --json` renews both keysets with test signatures, and OpenSC
    signs with the new certificates under the unchanged PIN."""
    p, station, dep = world
    card = _personalized(world, tmp_path / "prep.db")
    before = env.card_view(card, MODEL)
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    log = tmp_path / "agent.log"
    codes = tmp_path / "codes.toml"
    codes.write_text(f'pin = "{env.codes_for(MODEL).pin}"\n')
    codes.chmod(0o600)
    host, port = parse_address(served_env["_VPCD"])
    client = VpcdClient(card, host, port).start()
    try:
        assert client.inserted.wait(10)
        for window in ("90", "3650"):
            aenv = _agent_env(served_env, runtime, None)
            agent = _start_agent(dep.station_config, aenv, log, data_dir=_agent_journal(tmp_path).parent,
                                 window_days=int(window))
            try:
                _wait(lambda: any((rd.get("card") or {}).get("model_id") == MODEL.id for rd in
                                  json.loads(_cli(aenv, "devices", "--json").stdout or '{"readers": []}')["readers"]),
                      20, lambda: f"the agent never saw the card: {log.read_text()}")
                writes = card.snapshot()["write_count"]
                r = _cli(aenv, "renew", "--reader", READER, "--codes-file", str(codes), "--json")
                if window == "90":
                    assert r.returncode != 0 and "renewal opens" in r.stderr, r.stdout + r.stderr
                    assert card.snapshot()["write_count"] == writes       # refused before touching the card
                    continue
                assert r.returncode == 0, r.stdout + r.stderr + log.read_text()[-3000:]
                lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
                result = lines[-1]["result"]
                assert result["state"] == "done" and result["test_signatures"]
                # the agent itself opened the renewed card through OpenSC's PKCS#11 module and signed with it
                assert result["pkcs11"] == "verified", result
                assert [x["step"] for x in lines[:-1] if x["step"] == "switch"] == ["switch"]
                assert env.codes_for(MODEL).pin not in log.read_text() + r.stdout + r.stderr
            finally:
                agent.terminate()
                agent.wait(15)
    finally:
        client.stop()
        time.sleep(0.3)
    journal = _agent_journal(tmp_path)
    final = check_as_user(world, served_env, card, before, journal, _last_renewal(journal, card.serial), tmp_path)
    assert final == "new"
