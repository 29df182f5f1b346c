"""``agent.ops.revoke_orphans``: certificates issued for an operation are revoked with reason
cessationOfOperation, a second run counts them as done, and a request that issued nothing is settled
without a call to the CA.

Ops logic, so no daemon process (issue 11 item 2): the in-memory uplink over the real broker, relay,
store and embedded CA; card administration through the emulator's software authenticator."""
from __future__ import annotations

import asyncio
import time

import pytest
from cryptography import x509

from agent.ops.journal import Journal
from agent.ops.personalize import Personalizer
from agent.ops.revoke_orphans import ALREADY, NONE, REVOKED, Orphan, revoke_orphans
from firmware_profiles.emulator import EmulatedCard
from firmware_profiles.emulator.admin import SoftwareAuthenticator
from personalizer.outbox.windows import ServiceCalendar
from tests.broker.conftest import Env
from tests.ops.test_personalize import HOLDER, MODELS, REQUESTER, codes_for, connect_to
from tests.support.uplink import InMemoryUplink

MODEL = MODELS["infocamere-cns-2048"]


@pytest.fixture
def deployment(inmemory_deployment):
    return inmemory_deployment


def test_revoke_issued_certificates_idempotently(deployment, tmp_path):
    card = EmulatedCard(MODEL)

    async def go():
        async with Env(deployment, tmp_path, time.time, ServiceCalendar(always_open=True), answer_wait=10.0) as p:
            await p.relay.start()
            uplink = InMemoryUplink(p.broker, relay=p.relay)
            journal = await Journal.open(tmp_path / "j.db")
            try:
                out = await Personalizer(journal=journal, uplink=uplink, requester=REQUESTER,
                                         card_admin=SoftwareAuthenticator(MODEL), watch_timeout_s=20).start(
                    connect=connect_to(card), reader="in-process", model=MODEL, holder=HOLDER, codes=codes_for(MODEL))
            finally:
                await journal.close()
            assert out.state == "done", out.message
            cert1 = x509.load_der_x509_certificate(out.certificates["CNS1"])
            by_rid = Orphan(request_id=f"pers-{out.op_id}-CNS0")
            by_serial = Orphan(issuer_dn=cert1.issuer.rfc4514_string(), serial_hex=format(cert1.serial_number, "X"))
            first = await revoke_orphans(uplink, [by_rid, by_serial, Orphan(request_id="pers-never-seen-CNS0")],
                                         requester=REQUESTER)
            second = await revoke_orphans(uplink, [by_rid, by_serial], requester=REQUESTER)
            statuses = [await uplink.certificate_status(issuer_dn=r.issuer_dn, serial_hex=r.serial_hex)
                        for r in first[:2]]
            return cert1, first, second, statuses

    cert1, first, second, statuses = asyncio.run(go())
    assert [r.outcome for r in first] == [REVOKED, REVOKED, NONE], [r.as_dict() for r in first]
    assert all(r.settled for r in first)
    assert [r.outcome for r in second] == [ALREADY, ALREADY]
    assert [s.status for s in statuses] == [3, 3]                      # REVOKED at the CA
    assert {s.revocation_reason for s in statuses} == {"cessationOfOperation"}
    assert first[1].serial_hex == format(cert1.serial_number, "X")
