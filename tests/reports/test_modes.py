"""Issue 19 items 3-4: the archive and the monthly report tell the modes apart. One day in Rome: an
immediate issuance, a deferred one (completing an IR's registration), an operator's renewal and a
holder's self-renewal (the requester station the self-renewal edge sets), all through the real broker,
relay, store and embedded CA."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from personalizer.outbox.broker import RenewalRules, RenewInput
from personalizer.records import SELF_RENEWAL_STATION
from personalizer.reports import archive, bundle, monthly
from personalizer.rules import registrations
from personalizer.store import AuditEntry
from personalizer.outbox.windows import ServiceCalendar
from tests.broker.conftest import Env, FakeClock, issue_input
from tests.personalizer import helpers
from tests.reports.conftest import ROME

DAY = dt.date(2026, 11, 23)
PDF = b"%PDF-1.4 signed request form"


def _renewal(cert_der: bytes, *, station: str, operator: str) -> RenewInput:
    rid = str(uuid.uuid4())
    csr = helpers.csr_der()
    proof = helpers.key_of(cert_der).sign(rid.encode() + csr, padding.PKCS1v15(), hashes.SHA256())
    return RenewInput(request_id=rid, profile="cns-auth", csr_der=csr, current_certificate_der=cert_der,
                      proof_of_possession=proof, station_id=station, chamber_code="RM", operator_id=operator)


@pytest.fixture(scope="module")
def store(deployment, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("modes-store")
    clock = FakeClock(dt.datetime.combine(DAY, dt.time(9, 0), ROME))

    async def go():
        async with Env(deployment, tmp, clock, ServiceCalendar(always_open=True)) as env:
            env.broker._renewal = RenewalRules(window_days=100_000)   # renew on the day of issue
            ids = {}
            first = issue_input(1)
            await env.broker.submit_issue(first)
            ids["immediate"] = first.request_id
            reg = registrations.new_registration(chamber_code="RM", created_by="urn:cns:ir:RM:IR-1", cf=helpers.CF,
                                                 given_name="Mario", surname="Rossi", birth_date="1980-01-01",
                                                 form=PDF, expires_days=30, now=clock())
            assert await env.broker.add_registration(reg, PDF, AuditEntry("urn:cns:ir:RM:IR-1", "", "register",
                                                                          None, "RM", "done"))
            clock.advance(60)
            deferred = dataclasses.replace(issue_input(2), registration_id=reg.registration_id)
            await env.broker.submit_issue(deferred)
            ids["deferred"] = deferred.request_id
            await env.relay.run_once()
            issued = [await env.store.get_request(i) for i in (first.request_id, deferred.request_id)]
            assert [r.state for r in issued] == ["ISSUED", "ISSUED"]
            clock.advance(3600)
            op = await env.broker.submit_renew(_renewal(issued[0].certificate_der, station="RM-STATION-01",
                                                        operator="op-1"))
            holder = await env.broker.submit_renew(_renewal(issued[1].certificate_der, station=SELF_RENEWAL_STATION,
                                                            operator="holder:" + helpers.CF), mode="self-renewal")
            await env.relay.run_once()
            ids["renewal"], ids["self-renewal"] = op.request_id, holder.request_id
            return ids
    ids = asyncio.run(go())
    return tmp / "requests.sqlite", ids


def test_the_archive_names_each_operation_s_mode(store):
    path, ids = store
    conn = bundle.open_store(path)
    try:
        a = archive.build(conn, DAY, now=dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(12), ROME).timestamp())
    finally:
        conn.close()
    mode = {o["request_id"]: (o["operation"], o["mode"]) for o in a["operations"]}
    assert mode == {ids["immediate"]: ("issuance", "immediate"), ids["deferred"]: ("issuance", "deferred"),
                    ids["renewal"]: ("renewal", "immediate"), ids["self-renewal"]: ("renewal", "self-renewal")}


def test_the_monthly_report_counts_issuances_and_renewals_per_mode(store):
    path, _ = store
    conn = bundle.open_store(path)
    try:
        r = monthly.build(conn, 2026, 11, now=dt.datetime(2026, 11, 26, 12, tzinfo=ROME).timestamp())
    finally:
        conn.close()
    assert r["issuance_modes"] == {"immediate": 1, "deferred": 1, "self-renewal": 0}
    assert r["renewals"]["by_mode"] == {"immediate": 1, "deferred": 0, "self-renewal": 1}
    assert r["renewals"]["total"] == 2
