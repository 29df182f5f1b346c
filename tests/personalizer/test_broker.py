"""In-process broker + relay (Daemon.build, serve=False) over the SQLite and the in-memory store + embedded
CA: crash resume, legacy key policy."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from personalizer import config

from personalizer.rules import validation
from personalizer.outbox.broker import IssueInput
from personalizer.errors import InvalidRequest
from personalizer.server import Daemon, build_ca
from personalizer.outbox.windows import ServiceCalendar
from personalizer.store import STATE_ISSUED, MemoryRequestStore, RequestRecord, SqliteRequestStore
from tests.personalizer import helpers


def _input(csr: bytes, request_id: str = "resume-1") -> IssueInput:
    return IssueInput(request_id=request_id, profile="cns-auth", csr_der=csr, codice_fiscale=helpers.CF,
                      given_name="Mario", surname="Rossi", birth_date="1980-01-01", card_id=helpers.CARD_ID,
                      card_model="", station_id="RM-STATION-01", chamber_code="RM", operator_id="op",
                      ef_dati_personali=helpers.ef_dati())


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_received_row_left_by_a_crash_is_resumed(deployment, tmp_path, kind):
    async def run():
        cfg = config.load(deployment.server_config)
        cfg = dataclasses.replace(cfg, calendar=ServiceCalendar(always_open=True),
                                  broker=dataclasses.replace(cfg.broker, answer_wait_seconds=10))
        store = (await SqliteRequestStore.open(tmp_path / "r.sqlite") if kind == "sqlite"
                 else MemoryRequestStore())
        inp = _input(helpers.csr_der())
        # the state a crash between "row written" and "CA called" leaves behind
        await store.create_request(RequestRecord(request_id=inp.request_id, kind="issue", profile=inp.profile,
                                                 payload_sha256=inp.fingerprint(), chamber_code="RM",
                                                 station_id="RM-STATION-01", operator_id="op"))
        # the row has no outbox row (written by a version without one): resubmitting gives it one
        d = await Daemon.build(cfg, ca=build_ca(cfg), store=store, serve=False)
        await d.start()
        try:
            rec = await d.broker.submit_issue(inp)
            stored = await store.get_request(inp.request_id)
        finally:
            await d.stop()
        return rec, stored

    rec, stored = asyncio.run(run())
    assert rec.state == STATE_ISSUED and stored.state == STATE_ISSUED
    assert stored.certificate_der == rec.certificate_der


def test_rsa_1024_only_where_the_profile_allows_it():
    csr = helpers.csr_der(helpers.rsa_key(1024))
    assert validation.check_csr(csr, "cns-auth", 1024).public_key().key_size == 1024
    with pytest.raises(InvalidRequest, match="below the 2048-bit minimum of profile qualified-signature"):
        validation.check_csr(csr, "qualified-signature", 2048)
