"""Renew refuses a CSR naming another holder, as SubmitIssue does (issue 9 item 11).

The broker in this event loop over the real store and embedded CA (tests/broker's
``Env``), its clock moved into the renewal window.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from personalizer.outbox.broker import RenewInput
from personalizer.errors import InvalidRequest
from personalizer.outbox.windows import ServiceCalendar
from tests.broker.conftest import Env, FakeClock, issue_input
from tests.personalizer import helpers


def _renew(cert_der: bytes, csr: bytes) -> RenewInput:
    rid = str(uuid.uuid4())
    proof = helpers.key_of(cert_der).sign(rid.encode() + csr, padding.PKCS1v15(), hashes.SHA256())
    return RenewInput(request_id=rid, profile="cns-auth", csr_der=csr, current_certificate_der=cert_der,
                      proof_of_possession=proof, station_id="RM-STATION-01", chamber_code="RM", operator_id="op")


@pytest.mark.parametrize("csr_kw,field,expect", [
    (dict(cf="VRDGPP80A01H501U", given="Giuseppe", surname="Verdi"), "holder", "does not match codice fiscale"),
    (dict(given="Luigi"), "holder.given_name", "CSR subject givenName 'Luigi'"),
])
def test_renew_with_a_csr_naming_another_holder_is_invalid_argument(deployment, tmp_path, csr_kw, field, expect):
    clock = FakeClock(dt.datetime.now(dt.timezone.utc))

    async def go():
        async with Env(deployment, tmp_path, clock, ServiceCalendar(always_open=True)) as env:
            first = await env.broker.submit_issue(issue_input(3))
            await env.relay.run_once()
            first = await env.store.get_request(first.request_id)
            cert = x509.load_der_x509_certificate(first.certificate_der)
            clock.set(cert.not_valid_after_utc - dt.timedelta(days=30))
            with pytest.raises(InvalidRequest) as ei:
                await env.broker.submit_renew(_renew(first.certificate_der, helpers.csr_der(**csr_kw)))
            assert ei.value.field == field and expect in ei.value.message, str(ei.value)
            # the holder's own CSR still renews
            ok = await env.broker.submit_renew(_renew(first.certificate_der, helpers.csr_der()))
            assert ok.state in ("RECEIVED", "PENDING", "ISSUED"), ok.state
    asyncio.run(go())
