"""Holder self-renewal end to end: the real daemon (its enrollment port, TLS without a client certificate,
store, outbox, embedded CA), a card emulated in process, the agent's own ``Renewer`` with ``HolderUplink``.

The holder's renewal is the operator's renewal (same steps, journal, switch and superseded revocations), only
authorised by the card: the personalizer records it as the holder's (operator holder:<CF>, station
self-renewal, audit detail "mode self-renewal", chamber of the certificate). One fault sample here: the
personalizer goes down mid-renewal, the operation stays open, and the holder's next run finishes it with the
same request ids (one issuance per keyset); the whole fault matrix is tests/self_renewal/test_self_renewal_faults.py."""
from __future__ import annotations

import asyncio
import base64
import sqlite3

import pytest
from cryptography import x509

from agent.ops.errors import UplinkUnavailable
from agent.ops.journal import Journal
from agent.ops.renew import Renewer
from agent.uplink.self_renewal import HOLDER_STATION, HolderUplink
from agent.uplink.card_admin import HolderCardAdmin
from firmware_profiles import load_models
from firmware_profiles.emulator import EmulatedCard
from tests.ops import renewal_env as env

MODEL = load_models()["infocamere-cns-2048"]
HOLDER_REQUESTER = {"station_id": HOLDER_STATION, "chamber_code": "", "operator_id": "holder"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    dep = env.make_deployment(tmp_path_factory.mktemp("self-renew") / "cns", env.free_port())
    p = env.ThreadedPersonalizer(dep)
    enroll_port = p.daemon.enroll_port
    assert enroll_port
    yield p, env.station_for(dep), enroll_port
    p.close()


def _holder_uplink(station, port, certs=()) -> HolderUplink:
    return HolderUplink(f"127.0.0.1:{port}", station.personalizer.trust_anchors.read_bytes(),
                        server_name=station.personalizer.server_name, holder_certificates=list(certs),
                        timeout_s=3.0)


def _renewer(j, uplink, **kw) -> Renewer:
    """The holder's Renewer; the card's issuer challenges answered by the personalizer with the card's proof
    of its holder (the PIN)."""
    admin = HolderCardAdmin(uplink, env.codes_for(MODEL)).for_operation("renew", HOLDER_REQUESTER)
    return Renewer(journal=j, uplink=uplink, requester=HOLDER_REQUESTER, card_admin=admin, policy=env.WIDE,
                   watch_timeout_s=5.0, **kw)


def _journal(tmp_path, fn):
    async def go():
        j = await Journal.open(tmp_path / "journal.db")
        try:
            return await fn(j)
        finally:
            await j.close()
    return asyncio.run(go())


def _personalized(world, tmp_path) -> EmulatedCard:
    p, station, _ = world
    p.ca.reset()
    card = EmulatedCard(MODEL)
    assert _journal(tmp_path, lambda j: env.personalize(station, j, card, MODEL)).state == "done"
    return card


def _requests(p, op_id: str) -> dict[str, tuple]:
    db = p.cfg.store.database
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return {r[0]: r[1:] for r in c.execute(
            "SELECT request_id, station_id, operator_id, chamber_code, state FROM requests WHERE request_id LIKE ?",
            (f"renew-{op_id}-%",))}


def _audit(p, op_id: str) -> list[tuple]:
    db = p.cfg.store.database
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return list(c.execute("SELECT actor, operation, result, detail FROM audit WHERE request_id LIKE ?",
                              (f"renew-{op_id}-%",)))


def test_holder_renews_their_card_without_a_station_certificate(world, tmp_path):
    p, station, port = world
    card = _personalized(world, tmp_path)
    before = env.card_view(card, MODEL)

    async def run(j):
        async with _holder_uplink(station, port) as uplink:
            return await _renewer(j, uplink).start(
                connect=env.connect_to(card), reader="holder-pc", model=MODEL, codes=env.codes_for(MODEL))
    out = _journal(tmp_path, run)
    assert out.state == "done" and out.test_signatures, out.message
    after = env.card_view(card, MODEL, env.codes_for(MODEL).pin)
    issued = p.issued()
    cf = env.HOLDER.codice_fiscale
    for ks in MODEL.keysets:
        assert after[ks.name]["der"] == issued[f"renew-{out.op_id}-{ks.name}"]
        assert after[ks.name]["key_matches"] and after[ks.name]["serial"] != before[ks.name]["serial"]
    reqs = _requests(p, out.op_id)
    assert {r[:3] for r in reqs.values()} == {("self-renewal", f"holder:{cf}", "RM")} and len(reqs) == 2
    accepted = [a for a in _audit(p, out.op_id) if a[2] == "accepted"]
    assert len(accepted) == 2 and all(a[0] == f"holder:{cf}" and a[3] == "mode self-renewal" for a in accepted)
    # the replaced certificates are revoked (superseded) through the same port
    db = p.cfg.store.database
    for ks in MODEL.keysets:
        old = x509.load_der_x509_certificate(before[ks.name]["der"])
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            (status,) = c.execute("SELECT status FROM certificates WHERE serial_hex = ?",
                                  (f"{old.serial_number:X}",)).fetchone()
        assert status == "revoked", (ks.name, out.message)


def test_personalizer_down_mid_self_renewal_is_finished_by_the_next_run(world, tmp_path):
    p, station, port = world
    card = _personalized(world, tmp_path)
    before = env.card_view(card, MODEL)

    stopped = []

    def on_step(step, phase):
        if step == "renew:CNS1" and phase == "begun" and not stopped:
            stopped.append(step)
            p.stop()                      # the personalizer goes away between the two renewals

    async def first(j):
        async with _holder_uplink(station, port) as uplink:
            try:
                return await _renewer(j, uplink, on_step=on_step).start(
                    connect=env.connect_to(card), reader="holder-pc", model=MODEL, codes=env.codes_for(MODEL))
            except UplinkUnavailable as exc:
                return exc
    out = _journal(tmp_path, first)
    assert stopped and (isinstance(out, UplinkUnavailable) or out.state == "open"), out
    assert env.card_view(card, MODEL)["CNS0"]["der"] == before["CNS0"]["der"]   # still the old keys
    p.start()

    async def again(j):   # the holder runs the command again: resume the open operation, PIN at hand
        [op] = await j.open_operations(card.serial)
        current = base64.b64decode(op.data["current_CNS0"])
        async with _holder_uplink(station, port, [current]) as uplink:
            return await _renewer(j, uplink).resume(op, connect=env.connect_to(card), model=MODEL,
                                                    codes=env.codes_for(MODEL))
    done = _journal(tmp_path, again)
    assert done.state == "done", done.message
    issued = p.issued()
    after = env.card_view(card, MODEL, env.codes_for(MODEL).pin)
    for ks in MODEL.keysets:
        assert after[ks.name]["der"] == issued[f"renew-{done.op_id}-{ks.name}"]
    assert len([r for r in issued if r.startswith(f"renew-{done.op_id}")]) == 2   # one issuance per keyset



def test_refusals_over_the_port_are_one_clear_line(world, tmp_path):
    """Through the real port: a bad proof and a suspended certificate are refused with the status and the rule
    (no traceback, no raw gRPC text in the agent's error), one audit row each; the port serves nothing else."""
    import grpc
    import uuid
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from agent.ops.errors import UplinkError
    from agent.uplink.client import PersonalizerClient
    from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
    from tests.personalizer import helpers

    p, station, port = world
    card = _personalized(world, tmp_path)
    current = env.card_view(card, MODEL)["CNS0"]["der"]
    wrong = rsa.generate_private_key(65537, 2048)

    async def go():
        async with _holder_uplink(station, port) as uplink:
            rid = f"renew-{uuid.uuid4()}-CNS0"
            csr = helpers.csr_der()
            with pytest.raises(UplinkError) as bad:
                await uplink.renew(request_id=rid, profile="cns-auth", csr_der=csr, current_certificate_der=current,
                                   proof_of_possession=wrong.sign(rid.encode() + csr, padding.PKCS1v15(),
                                                                  hashes.SHA256()))
            assert bad.value.code == "INVALID_ARGUMENT" and "proof_of_possession" in str(bad.value)
            # central IT suspends the certificate: the holder cannot renew it
            cert = x509.load_der_x509_certificate(current)
            async with PersonalizerClient(station) as ops:
                await ops.change_status("suspend", request_id=f"susp-{uuid.uuid4()}",
                                        issuer_dn=cert.issuer.rfc4514_string(), serial_hex=f"{cert.serial_number:X}",
                                        requester=env.REQUESTER)
            rid2 = f"renew-{uuid.uuid4()}-CNS0"
            with pytest.raises(UplinkError) as susp:
                await uplink.renew(request_id=rid2, profile="cns-auth", csr_der=csr, current_certificate_der=current,
                                   proof_of_possession=b"\0" * 256)
            assert susp.value.code == "FAILED_PRECONDITION" and "suspended" in str(susp.value)
            return rid, rid2
    rid, rid2 = asyncio.run(go())
    with sqlite3.connect(f"file:{p.cfg.store.database}?mode=ro", uri=True) as c:
        for r in (rid, rid2):
            rows = list(c.execute("SELECT actor, result FROM audit WHERE request_id = ?", (r,)))
            assert len(rows) == 1 and rows[0][1].startswith("refused:"), rows
    # the port has no client certificate: nothing but enrollment and self-renewal is served there
    creds = grpc.ssl_channel_credentials(root_certificates=station.personalizer.trust_anchors.read_bytes())
    opts = [("grpc.ssl_target_name_override", station.personalizer.server_name)] if station.personalizer.server_name \
        else []
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=opts) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            pb_grpc.PersonalizerStub(ch).GetCAStatus(pb.GetCAStatusRequest(), timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_holder_gets_card_administration_only_for_the_card_their_certificate_was_issued_for(world, tmp_path):
    """HolderRenewal.AuthenticateCard (issue 12): the certificate must be on record for that very card."""
    from agent.ops.errors import UplinkError
    from firmware_profiles.emulator import admin

    p, station, port = world
    card, other = _personalized(world, tmp_path / "a"), _personalized(world, tmp_path / "b")
    mine = env.card_view(card, MODEL)["CNS0"]["der"]

    async def ask(serial):
        async with _holder_uplink(station, port) as uplink:
            nonce = await _nonce(uplink, mine, card.serial)
            return await _auth(uplink, mine, serial, nonce=nonce, proof=_card_proof(card, nonce, serial, "t"))
    assert asyncio.run(ask(card.serial)) == admin.cryptogram(admin.card_key(MODEL, card.serial), bytes(16))
    with pytest.raises(UplinkError) as err:
        asyncio.run(ask(other.serial))
    assert err.value.code == "PERMISSION_DENIED" and f"not issued for card {other.serial}" in str(err.value)


# -- card administration needs proof of holding the card (issue 12, HolderRenewal.AuthenticateCard) ---------
def _card_proof(card, nonce: bytes, serial: str, op_id: str = "") -> bytes:
    """What the card makes for the agent: its CNS authentication key (PIN verified) signs the proof message."""
    from agent.ops.csr import pkcs1_v15_sha256_block
    from cns_spec.card_admin_proof import proof_message

    card.power_off()
    card.power_on()
    cns = env.CnsSession(env.EmulatedTransport(card), MODEL)
    issuer = env.IssuerSession(cns, MODEL)
    ks = MODEL.keyset("CNS0")
    cns.verify_pin(env.codes_for(MODEL).pin, ks.name)
    bits = x509.load_der_x509_certificate(issuer.read_ef(ks.cert_path)).public_key().key_size
    return issuer.raw_sign(ks, ks.key_ref, pkcs1_v15_sha256_block(proof_message(nonce, serial, op_id),
                                                                  (bits + 7) // 8))


async def _nonce(uplink, cert: bytes, serial: str) -> bytes:
    from proto.cns.v1 import self_renewal_pb2 as spb
    return bytes((await uplink._call("CardAuthNonce", spb.SelfCardNonceRequest(
        current_certificate_der=cert, card_serial=serial), "nonce")).nonce)


async def _auth(uplink, cert: bytes, serial: str, *, nonce=b"", proof=b"", op_id="t", challenge=bytes(16)) -> bytes:
    from proto.cns.v1 import self_renewal_pb2 as spb
    return bytes((await uplink._call("AuthenticateCard", spb.SelfCardAuthRequest(
        current_certificate_der=cert, card_serial=serial, card_model=MODEL.id, challenge=challenge,
        operation_id=op_id, nonce=nonce, proof=proof), "card administration")).cryptogram)


def test_the_public_certificate_alone_gets_no_card_administration(world, tmp_path):
    """Anyone can have a holder's certificate (it is public: signed mail, TLS logins); it must not buy a
    cryptogram that erases or rewrites the card's keys. Refused without a proof, and with a proof made by
    another card; one audit row each."""
    from agent.ops.errors import UplinkError

    p, station, port = world
    card, other = _personalized(world, tmp_path / "a"), _personalized(world, tmp_path / "b")
    mine = env.card_view(card, MODEL)["CNS0"]["der"]

    async def go():
        async with _holder_uplink(station, port) as uplink:
            with pytest.raises(UplinkError) as bare:
                await _auth(uplink, mine, card.serial)
            nonce = await _nonce(uplink, mine, card.serial)
            with pytest.raises(UplinkError) as foreign:   # the other card signs: not the holder of this card
                await _auth(uplink, mine, card.serial, nonce=nonce, proof=_card_proof(other, nonce, card.serial, "t"))
            return bare.value, foreign.value
    bare, foreign = asyncio.run(go())
    assert bare.code == "PERMISSION_DENIED" and "proof" in str(bare) and "\n" not in str(bare), bare
    assert foreign.code == "PERMISSION_DENIED" and "does not verify" in str(foreign), foreign
    with sqlite3.connect(f"file:{p.cfg.store.database}?mode=ro", uri=True) as c:
        rows = list(c.execute("SELECT result FROM audit WHERE operation = 'self-renew' AND result LIKE 'refused:%'"
                              " AND detail LIKE ?", ("%proof%",)))
    assert len(rows) >= 2, rows


def test_a_proof_made_by_the_card_is_answered_once(world, tmp_path):
    """The card's own proof over a fresh nonce gets the cryptogram; the same proof again (a replay) is refused,
    and so is a proof made for another operation id."""
    from agent.ops.errors import UplinkError
    from firmware_profiles.emulator import admin

    p, station, port = world
    card = _personalized(world, tmp_path)
    mine = env.card_view(card, MODEL)["CNS0"]["der"]

    async def go():
        async with _holder_uplink(station, port) as uplink:
            nonce = await _nonce(uplink, mine, card.serial)
            proof = _card_proof(card, nonce, card.serial, "op-1")
            answer = await _auth(uplink, mine, card.serial, nonce=nonce, proof=proof, op_id="op-1")
            with pytest.raises(UplinkError) as replay:
                await _auth(uplink, mine, card.serial, nonce=nonce, proof=proof, op_id="op-1")
            fresh = await _nonce(uplink, mine, card.serial)
            with pytest.raises(UplinkError) as other_op:
                await _auth(uplink, mine, card.serial, nonce=fresh, op_id="op-2",
                            proof=_card_proof(card, fresh, card.serial, "op-1"))
            return answer, replay.value, other_op.value
    answer, replay, other_op = asyncio.run(go())
    assert answer == admin.cryptogram(admin.card_key(MODEL, card.serial), bytes(16))
    assert replay.code == "PERMISSION_DENIED" and "nonce" in str(replay) and "fresh" in str(replay), replay
    assert other_op.code == "PERMISSION_DENIED" and "does not verify" in str(other_op), other_op


def test_a_suspended_certificate_proves_nothing(world, tmp_path):
    """Central IT suspended the card's certificate (a lost card): no nonce, no answer, even with the PIN."""
    import uuid

    from agent.ops.errors import UplinkError
    from agent.uplink.client import PersonalizerClient

    p, station, port = world
    card = _personalized(world, tmp_path)
    mine = env.card_view(card, MODEL)["CNS0"]["der"]
    cert = x509.load_der_x509_certificate(mine)

    async def go():
        async with _holder_uplink(station, port) as uplink:
            nonce = await _nonce(uplink, mine, card.serial)
            async with PersonalizerClient(station) as ops:
                await ops.change_status("suspend", request_id=f"susp-{uuid.uuid4()}",
                                        issuer_dn=cert.issuer.rfc4514_string(), serial_hex=f"{cert.serial_number:X}",
                                        requester=env.REQUESTER)
            with pytest.raises(UplinkError) as answer:
                await _auth(uplink, mine, card.serial, nonce=nonce, proof=_card_proof(card, nonce, card.serial, "t"))
            with pytest.raises(UplinkError) as again:
                await _nonce(uplink, mine, card.serial)
            return answer.value, again.value
    answer, again = asyncio.run(go())
    for err in (answer, again):
        assert err.code == "FAILED_PRECONDITION" and "suspended" in str(err), err
