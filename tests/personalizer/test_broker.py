"""In-process broker + relay + SQLite store + embedded CA: crash resume, legacy key policy."""
from __future__ import annotations

import asyncio

import pytest

from personalizer import config

from personalizer.rules import validation
from personalizer.outbox.broker import Broker, IssueInput
from personalizer.errors import InvalidRequest
from personalizer.outbox.relay import Relay
from personalizer.server import build_ca
from personalizer.outbox.windows import ServiceCalendar
from personalizer.store import STATE_ISSUED, RequestRecord, SqliteRequestStore
from tests.personalizer import helpers


def _input(csr: bytes, request_id: str = "resume-1") -> IssueInput:
    return IssueInput(request_id=request_id, profile="cns-auth", csr_der=csr, codice_fiscale=helpers.CF,
                      given_name="Mario", surname="Rossi", birth_date="1980-01-01", card_id=helpers.CARD_ID,
                      card_model="", station_id="RM-STATION-01", chamber_code="RM", operator_id="op",
                      ef_dati_personali=helpers.ef_dati())


def test_received_row_left_by_a_crash_is_resumed(deployment, tmp_path):
    async def run():
        cfg = config.load(deployment.server_config)
        ca = build_ca(cfg)
        store = await SqliteRequestStore.open(tmp_path / "r.sqlite")
        ca.attach_registry(store)
        inp = _input(helpers.csr_der())
        # the state a crash between "row written" and "CA called" leaves behind
        await store.create_request(RequestRecord(request_id=inp.request_id, kind="issue", profile=inp.profile,
                                                 payload_sha256=inp.fingerprint(), chamber_code="RM",
                                                 station_id="RM-STATION-01", operator_id="op"))
        # the row has no outbox row (written by a version without one): resubmitting gives it one
        broker = Broker(store=store, ca=ca, min_rsa_bits=cfg.min_rsa_bits, answer_wait=10)
        relay = Relay(store=store, ca=ca, calendar=ServiceCalendar(always_open=True), notify=broker.notify)
        broker.wake_relay = relay.wake
        await relay.start()
        rec = await broker.submit_issue(inp)
        stored = await store.get_request(inp.request_id)
        await relay.stop()
        await store.close()
        return rec, stored

    rec, stored = asyncio.run(run())
    assert rec.state == STATE_ISSUED and stored.state == STATE_ISSUED
    assert stored.certificate_der == rec.certificate_der


def test_rsa_1024_only_where_the_profile_allows_it():
    csr = helpers.csr_der(helpers.rsa_key(1024))
    assert validation.check_csr(csr, "cns-auth", 1024).public_key().key_size == 1024
    with pytest.raises(InvalidRequest, match="below the 2048-bit minimum of profile qualified-signature"):
        validation.check_csr(csr, "qualified-signature", 2048)
