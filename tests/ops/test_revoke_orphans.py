"""``agent.ops.revoke_orphans`` against the real daemon: certificates issued for an operation are revoked
with reason cessationOfOperation, a second run counts them as done, and a request that issued nothing is
settled without a call to the CA."""
from __future__ import annotations

import asyncio

from agent.ops.revoke_orphans import ALREADY, NONE, REVOKED, Orphan, revoke_orphans
from agent.uplink.client import PersonalizerClient
from firmware_profiles.emulator import EmulatedCard
from tests.ops.test_personalize import MODELS, REQUESTER, codes_for, personalize


def test_revoke_issued_certificates_idempotently(station, tmp_path):
    model = MODELS["infocamere-cns-2048"]
    card = EmulatedCard(model)
    out = asyncio.run(personalize(station, tmp_path / "j.db", card, model, codes_for(model)))
    assert out.state == "done", out.message
    by_rid = Orphan(request_id=f"pers-{out.op_id}-CNS0")
    from cryptography import x509
    cert1 = x509.load_der_x509_certificate(out.certificates["CNS1"])
    by_serial = Orphan(issuer_dn=cert1.issuer.rfc4514_string(), serial_hex=format(cert1.serial_number, "X"))

    async def go():
        async with PersonalizerClient(station) as uplink:
            first = await revoke_orphans(uplink, [by_rid, by_serial, Orphan(request_id="pers-never-seen-CNS0")],
                                         requester=REQUESTER)
            second = await revoke_orphans(uplink, [by_rid, by_serial], requester=REQUESTER)
            statuses = [await uplink.certificate_status(issuer_dn=r.issuer_dn, serial_hex=r.serial_hex)
                        for r in first[:2]]
            return first, second, statuses

    first, second, statuses = asyncio.run(go())
    assert [r.outcome for r in first] == [REVOKED, REVOKED, NONE], [r.as_dict() for r in first]
    assert all(r.settled for r in first)
    assert [r.outcome for r in second] == [ALREADY, ALREADY]
    assert [s.status for s in statuses] == [3, 3]                      # REVOKED at the CA
    assert {s.revocation_reason for s in statuses} == {"cessationOfOperation"}
    assert first[1].serial_hex == format(cert1.serial_number, "X")
