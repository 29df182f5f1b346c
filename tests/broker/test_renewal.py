"""Renewal through the outbox: proof of possession, renewal window, the device's 6-year life."""
from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from personalizer.outbox.broker import ChangeInput, RenewalRules, RenewInput
from personalizer.ca.base import CertRef
from personalizer.errors import FailedPrecondition, InvalidRequest
from personalizer.outbox.windows import ServiceCalendar
from tests.broker.conftest import FakeClock, issue_input
from tests.personalizer import helpers


def _renew(cert_der: bytes, *, request_id: str | None = None, key=None) -> RenewInput:
    rid = request_id or str(uuid.uuid4())
    csr = helpers.csr_der()
    proof = (key or helpers.key_of(cert_der)).sign(rid.encode() + csr, padding.PKCS1v15(), hashes.SHA256())
    return RenewInput(request_id=rid, profile="cns-auth", csr_der=csr, current_certificate_der=cert_der,
                      proof_of_possession=proof, station_id="RM-STATION-01", chamber_code="RM", operator_id="op")


def test_renewal_rules(make_env):
    clock = FakeClock(dt.datetime.now(dt.timezone.utc))

    async def go():
        async with make_env(clock, calendar=ServiceCalendar(always_open=True)) as env:
            first = await env.broker.submit_issue(issue_input(7))
            await env.relay.run_once()
            first = await env.store.get_request(first.request_id)
            cert = x509.load_der_x509_certificate(first.certificate_der)
            with pytest.raises(FailedPrecondition, match="renewal opens"):
                await env.broker.submit_renew(_renew(first.certificate_der))
            clock.set(cert.not_valid_after_utc - dt.timedelta(days=30))
            with pytest.raises(InvalidRequest, match="proof_of_possession"):
                await env.broker.submit_renew(_renew(first.certificate_der, key=helpers.rsa_key(1024)))
            # device life (configurable; 6 years by default): with 3 years, a renewal that would give a
            # certificate until now + 3 years outlives the card whose first certificate is from today
            env.broker._renewal = RenewalRules(window_days=90, device_life_years=3)
            with pytest.raises(FailedPrecondition, match="beyond the device's 3-year life"):
                await env.broker.submit_renew(_renew(first.certificate_der))
            env.broker._renewal = RenewalRules()
            renewed = await env.broker.submit_renew(_renew(first.certificate_der))
            await env.relay.run_once()
            renewed = await env.store.get_request(renewed.request_id)
            assert renewed.state == "ISSUED" and renewed.kind == "renew"
            new = x509.load_der_x509_certificate(renewed.certificate_der)
            assert new.subject == cert.subject and new.serial_number != cert.serial_number
            # a revoked certificate cannot be renewed
            ref = CertRef(renewed.issuer_dn, renewed.serial_hex)
            await env.broker.submit_change(ChangeInput("rv-r", "revoke", ref, "superseded", "S", "RM", "op"))
            await env.relay.run_once()
            with pytest.raises(FailedPrecondition, match="revoked"):
                await env.broker.submit_renew(_renew(renewed.certificate_der))
    asyncio.run(go())
