"""A renewal never leaves a certificate valid that no card uses (issue 9 items 2 and 3, renewal side).

Against the real daemon (mTLS, store, outbox, embedded CA), card in process:

* central IT cancels a queued request of a renewal (``cnsctl queue cancel``): the agent treats it
  as a refusal, undoes the renewal (old certificates kept) and has the certificate already issued
  for the other keyset revoked with reason cessationOfOperation;
* the CA refuses the second request: the same;
* the personalizer is unreachable when the undo revokes: the undo is journaled and finished by the
  next recovery (no PIN), the certificate revoked then;
* after the atomic switch the replaced certificates are revoked (superseded), journaled; a card
  never has more than its two current certificates active.
* a personalization undone while the personalizer (which holds the card's issuer key, issue 12)
  is unreachable: the undo stays begun and the next resume makes the card blank.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from agent.ops.journal import Journal
from firmware_profiles import load_models
from firmware_profiles.emulator import EmulatedCard
from personalizer.ca.base import CertRef
from personalizer.store import AuditEntry
from tests.ops import renewal_env as env

MODEL = load_models()["infocamere-cns-2048"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    dep = env.make_deployment(tmp_path_factory.mktemp("renew-revoke") / "cns", env.free_port())
    p = env.ThreadedPersonalizer(dep)
    yield p, env.station_for(dep)
    p.close()


def _run(tmp_path, coro_fn):
    async def go():
        j = await Journal.open(tmp_path / "journal.db")
        try:
            return await coro_fn(j)
        finally:
            await j.close()
    return asyncio.run(go())


def _fresh(world, tmp_path) -> EmulatedCard:
    p, station = world
    p.ca.reset()
    p.open_window()
    card = EmulatedCard(MODEL)
    assert _run(tmp_path, lambda j: env.personalize(station, j, card, MODEL)).state == "done"
    return card


def _ref(der: bytes) -> CertRef:
    c = x509.load_der_x509_certificate(der)
    return CertRef(c.issuer.rfc4514_string(), f"{c.serial_number:X}")


def _status(p, der: bytes):
    return p._run(p.daemon.ca.status(_ref(der)))


def _wait_revoked(p, der: bytes, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while True:
        info = _status(p, der)
        if info.state.value == "revoked" or time.monotonic() > end:
            return info
        time.sleep(0.1)


def _cancel(p, request_id: str) -> None:
    """What `cnsctl queue cancel ID` does at the daemon (QueueAdminService._cancel)."""
    async def go():
        d = p.daemon
        assert await d.store.cancel(request_id, AuditEntry("urn:cns:admin:test", "", "queue-cancel",
                                                           request_id, "", "done", ""))
        d.relay._notify(await d.store.get_request(request_id))   # the broker's notify: watchers see it
    p._run(go())


def _active_for_card(p, card_serial: str) -> list[str]:
    found = p._run(p.daemon.store.find_certificates(card_id=card_serial))
    return sorted(f.info.ref.serial_hex for f in found if f.info.state.value == "active")


def test_cancelled_request_undoes_and_revokes_what_was_issued(world, tmp_path):
    """CNS0 issued, then the CA's window closes; central IT cancels the queued CNS1 request."""
    p, station = world
    card = _fresh(world, tmp_path)
    before = env.card_view(card, MODEL)
    seen: dict[str, str] = {}

    def on_step(step, phase):
        if step == "renew:CNS0" and phase == "done":
            p.close_window()

    async def go(j):
        task = asyncio.create_task(env.renew(station, j, card, MODEL, watch_timeout_s=60.0, on_step=on_step,
                                             progress=lambda s, m: seen.setdefault(s, m) if "queued" in m else None))
        while "renew:CNS1" not in seen:
            assert not task.done(), task.result()
            await asyncio.sleep(0.05)
        ops = await j.open_operations(card.serial)
        rid = ops[0].data["request_ids"]["CNS1"]
        await asyncio.to_thread(_cancel, p, rid)
        return await task
    try:
        out = _run(tmp_path, go)
    finally:
        p.open_window()
    assert out.state == "undone", out.message
    assert "cancel" in out.message
    after = env.card_view(card, MODEL, env.codes_for(MODEL).pin)
    for ks in MODEL.keysets:
        assert after[ks.name]["der"] == before[ks.name]["der"]          # the old certificates stay in use
        assert not after[ks.name]["spare_key"] and not after[ks.name]["spare_cert"]
        assert _status(p, before[ks.name]["der"]).state.value == "active"
    assert after["marker_clear"]
    issued = p.issued()
    orphan = issued[f"renew-{out.op_id}-CNS0"]
    info = _wait_revoked(p, orphan)
    assert (info.state.value, info.revocation_reason) == ("revoked", "cessationOfOperation")
    assert f"renew-{out.op_id}-CNS1" not in issued
    assert _run(tmp_path, lambda j: j.open_operations()) == []
    hist = _run(tmp_path, lambda j: j.history(out.op_id))
    assert ("revoke-orphans", "done") in [(s, ph) for s, ph, _ in hist]
    assert _active_for_card(p, card.serial) == sorted(_ref(before[ks.name]["der"]).serial_hex
                                                      for ks in MODEL.keysets)


def test_ca_refusing_the_second_request_revokes_the_first(world, tmp_path):
    p, station = world
    card = _fresh(world, tmp_path)
    before = env.card_view(card, MODEL)

    def on_step(step, phase):
        if step == "renew:CNS0" and phase == "done":
            p.ca.refuse = 1

    out = _run(tmp_path, lambda j: env.renew(station, j, card, MODEL, on_step=on_step))
    assert out.state == "undone" and "refused" in out.message
    after = env.card_view(card, MODEL)
    assert all(after[ks.name]["der"] == before[ks.name]["der"] for ks in MODEL.keysets)
    info = _wait_revoked(p, p.issued()[f"renew-{out.op_id}-CNS0"])
    assert (info.state.value, info.revocation_reason) == ("revoked", "cessationOfOperation")


def test_undo_interrupted_before_revoking_is_finished_by_recovery(world, tmp_path):
    """The personalizer goes away right when the undo begins: the old certificates stay live, emptying the
    spare slots (the card's issuer key is central, issue 12) and the revocation wait in the journal
    (operation open), and the next recovery (no PIN) finishes both."""
    p, station = world
    card = _fresh(world, tmp_path)
    before = env.card_view(card, MODEL)

    def on_step(step, phase):
        if step == "renew:CNS0" and phase == "done":
            p.ca.refuse = 1
        if step == "undo" and phase == "begun":
            p.stop()

    try:
        out = _run(tmp_path, lambda j: env.renew(station, j, card, MODEL, on_step=on_step))
        assert out.state == "open", out.message
        assert "revok" in out.message.lower()
        assert all(env.card_view(card, MODEL)[ks.name]["der"] == before[ks.name]["der"] for ks in MODEL.keysets)
        assert [o.op_id for o in _run(tmp_path, lambda j: j.open_operations(card.serial))] == [out.op_id]
    finally:
        if not p.running:
            p.start()
    again = _run(tmp_path, lambda j: env.recover(station, j, card, MODEL))
    assert again.state == "undone" and again.op_id == out.op_id, again.message
    info = _wait_revoked(p, p.issued()[f"renew-{out.op_id}-CNS0"])
    assert (info.state.value, info.revocation_reason) == ("revoked", "cessationOfOperation")
    assert _run(tmp_path, lambda j: j.open_operations()) == []
    after = env.card_view(card, MODEL, env.codes_for(MODEL).pin)
    assert all(after[ks.name]["der"] == before[ks.name]["der"] for ks in MODEL.keysets)


def test_switch_then_the_replaced_certificates_are_revoked_superseded(world, tmp_path):
    p, station = world
    card = _fresh(world, tmp_path)
    before = env.card_view(card, MODEL)
    out = _run(tmp_path, lambda j: env.renew(station, j, card, MODEL))
    assert out.state == "done", out.message
    after = env.card_view(card, MODEL)
    for ks in MODEL.keysets:
        info = _wait_revoked(p, before[ks.name]["der"])
        assert (info.state.value, info.revocation_reason) == ("revoked", "superseded")
        assert _status(p, after[ks.name]["der"]).state.value == "active"
    assert _active_for_card(p, card.serial) == sorted(_ref(after[ks.name]["der"]).serial_hex
                                                      for ks in MODEL.keysets)
    hist = _run(tmp_path, lambda j: j.history(out.op_id))
    steps = [(s, ph) for s, ph, _ in hist]
    assert steps.index(("revoke-superseded", "begun")) > steps.index(("switch", "done"))
    assert out.pkcs11.startswith("not available: ")          # in-process card: no PKCS#11 path, and it says so

    # central IT finds the card's certificates by card serial and by codice fiscale (a lost card)
    by_card = _cnsctl(p, "--json", "cert", "find", "--card", card.serial)
    rows = {c["serial"]: c for c in by_card["certificates"]}
    for ks in MODEL.keysets:
        old, new = rows[_ref(before[ks.name]["der"]).serial_hex], rows[_ref(after[ks.name]["der"]).serial_hex]
        assert (old["status"], old["revocation_reason"]) == ("revoked", "superseded")
        assert new["status"] == "active" and new["card"] == card.serial and new["chamber"] == "RM"
    assert by_card["active"] == 2 and by_card["count"] == 4
    by_cf = _cnsctl(p, "--json", "cert", "find", "--cf", env.HOLDER.codice_fiscale.lower())
    assert set(rows) <= {c["serial"] for c in by_cf["certificates"]}
    text = subprocess.run(_cnsctl_argv(p, "cert", "find", "--card", card.serial), capture_output=True, text=True,
                          timeout=60)
    assert text.returncode == 0 and "revoked (superseded)" in text.stdout, text.stderr
    bad = subprocess.run(_cnsctl_argv(p, "cert", "find", "--card", "no such card!"), capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "INVALID_ARGUMENT" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr


def _cnsctl_argv(p, *args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "cnsctl"), "--config", str(p.deployment.admin_config), *args]


def _cnsctl(p, *args: str) -> dict:
    r = subprocess.run(_cnsctl_argv(p, *args), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_superseded_revocation_waits_for_an_unreachable_personalizer(world, tmp_path):
    """Switched, then the personalizer is gone: the card works with the new keys, the operation
    stays open for the revocation, and recovery finishes it."""
    p, station = world
    card = _fresh(world, tmp_path)
    before = env.card_view(card, MODEL)

    def on_step(step, phase):
        if step == "revoke-superseded" and phase == "begun":
            p.stop()
    try:
        out = _run(tmp_path, lambda j: env.renew(station, j, card, MODEL, on_step=on_step))
        assert out.state == "open" and "revok" in out.message.lower(), out.message
        mid = env.card_view(card, MODEL, env.codes_for(MODEL).pin)
        assert all(mid[ks.name]["der"] != before[ks.name]["der"] for ks in MODEL.keysets)   # renewed on the card
    finally:
        if not p.running:
            p.start()
    again = _run(tmp_path, lambda j: env.recover(station, j, card, MODEL))
    assert again.state == "done" and again.op_id == out.op_id, again.message
    for ks in MODEL.keysets:
        info = _wait_revoked(p, before[ks.name]["der"])
        assert (info.state.value, info.revocation_reason) == ("revoked", "superseded")


def test_request_cancelled_while_the_agent_waited_elsewhere_undoes_on_recovery(world, tmp_path):
    """The CA's window is closed: the agent stops waiting (operation open, old keys in use); overnight
    central IT cancels the queued request; the next recovery (no PIN) undoes the renewal."""
    p, station = world
    card = _fresh(world, tmp_path)
    before = env.card_view(card, MODEL)
    p.close_window()
    try:
        out = _run(tmp_path, lambda j: env.renew(station, j, card, MODEL, watch_timeout_s=1.0))
        assert out.state == "open", out.message
        ops = _run(tmp_path, lambda j: j.open_operations(card.serial))
        _cancel(p, ops[0].data["request_ids"]["CNS0"])
        again = _run(tmp_path, lambda j: env.recover(station, j, card, MODEL))
    finally:
        p.open_window()
    assert again.state == "undone" and again.op_id == out.op_id and "cancel" in again.message, again.message
    after = env.card_view(card, MODEL, env.codes_for(MODEL).pin)
    assert all(after[ks.name]["der"] == before[ks.name]["der"] for ks in MODEL.keysets)
    assert not any(r.startswith(f"renew-{out.op_id}") for r in p.issued())
    assert _run(tmp_path, lambda j: j.open_operations()) == []


def test_find_certificates_is_chamber_scoped_and_audited_once(world, tmp_path):
    """A station of another chamber finds nothing of Rome's cards; each lookup writes one audit row."""
    from proto.cns.v1 import personalizer_pb2 as ppb, personalizer_pb2_grpc as ppb_grpc
    from tests.personalizer import helpers

    p, station = world
    card = _fresh(world, tmp_path)
    tls = p.deployment.root / "tls"
    port = int(station.personalizer.primary.rsplit(":", 1)[1])
    before = len(p._run(p.daemon.store.list_audit()))
    for who, identity in (("RM-STATION-01", "urn:cns:station:RM:RM-STATION-01"), ("MI-1", "urn:cns:station:MI:MI-1")):
        cc = helpers.client_cert(tls, common_name=who, identity=identity)
        with helpers.channel(port, tls, cc) as ch:
            got = ppb_grpc.PersonalizerStub(ch).FindCertificates(ppb.FindCertificatesRequest(card_id=card.serial),
                                                                 timeout=10)
        serials = {c.status.certificate.serial_hex for c in got.certificates}
        if who == "MI-1":
            assert serials == set()
        else:
            assert len(serials) == 2 and {c.card_id for c in got.certificates} == {card.serial}
            assert all(c.chamber_code == "RM" and "ROSSI" in c.subject for c in got.certificates)
    rows = p._run(p.daemon.store.list_audit())[before:]
    finds = [r for r in rows if r.operation == "certificate-find"]
    assert len(finds) == 2 and all(r.target == f"card:{card.serial}" for r in finds)
    assert {r.detail for r in finds} == {"2 certificate(s)", "0 certificate(s)"}


def test_personalization_undo_waits_for_the_personalizer_that_holds_the_card_key(world, tmp_path):
    """Personalization side of the same rule (issue 12): the CA refuses a request, and the personalizer goes
    away when the undo begins. Erasing the generated keys needs the card's issuer key, which only the
    personalizer's token answers for: the undo stays begun (operation open, saying why) instead of failing,
    and the next resume without the PIN finishes it: a blank card, the other keyset's certificate revoked."""
    from agent.ops.personalize import Personalizer
    from agent.uplink.card_admin import CardAdminClient
    from agent.uplink.client import PersonalizerClient
    from tests.support.emulated import connect_to

    p, station = world
    p.ca.reset()
    p.open_window()
    card = EmulatedCard(MODEL)
    blank = card.snapshot()

    def on_step(step, phase):
        if step == "csr:CNS1" and phase == "done":
            p.ca.refuse = 1              # one of the two requests is refused: the personalization is undone
        if step == "undo" and phase == "begun":
            p.stop()

    async def personalize(j, codes, op=None, hook=None):
        async with PersonalizerClient(station) as uplink:
            pers = Personalizer(journal=j, uplink=uplink, requester=env.REQUESTER, on_step=hook,
                                card_admin=CardAdminClient(uplink).for_operation("personalize", env.REQUESTER))
            if op is None:
                return await pers.start(connect=connect_to(card), reader="in-process", model=MODEL,
                                        holder=env.HOLDER, codes=codes)
            return await pers.resume(op, connect=connect_to(card), model=MODEL, codes=codes)

    try:
        out = _run(tmp_path, lambda j: personalize(j, env.codes_for(MODEL), hook=on_step))
        assert out.state == "open", out.message
        assert "needs the personalizer to administer card" in out.message and "refused" in out.message
        assert card.snapshot()["keys"] != blank["keys"]          # nothing erased without the central key
    finally:
        if not p.running:
            p.start()
    [op] = _run(tmp_path, lambda j: j.open_operations(card.serial))
    assert op.op_id == out.op_id and op.data.get("undo_reason")
    again = _run(tmp_path, lambda j: personalize(j, None, op=op))
    assert again.state == "undone" and again.op_id == out.op_id, again.message
    assert card.snapshot()["keys"] == blank["keys"] == {}
    assert _run(tmp_path, lambda j: j.open_operations()) == []
