"""Deferred issuance ("decentrata differita", issue 19 items 1 and 6) through the daemon's services over mTLS.

An IR registers a holder with the signed form; a station of the same chamber issues to that holder by
naming the registration; the registration is used once, in the request's own commit. Each refusal (an IR
issuing, a station of another chamber, an expired or reused registration, another holder; an invalid
codice fiscale, a missing, oversized or wrong-type form) is a clear one-line message, writes nothing and
writes one audit row.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid

import grpc
import pytest

from personalizer.rules import registrations
from personalizer.errors import FailedPrecondition
from personalizer.outbox.windows import ServiceCalendar
from proto.cns.v1 import personalizer_pb2 as pb, registrations_pb2 as rpb
from tests.broker.conftest import Env, FakeClock, issue_input
from tests.personalizer import helpers
from tests.registrations.support import IR_URI, JPEG, PDF, PNG, STATION_URI, T, Server, register_request


def _run(deployment, tmp_path, scenario, clock=None):
    clock = clock or FakeClock(dt.datetime.now(dt.timezone.utc))

    async def go():
        async with Env(deployment, tmp_path, clock, ServiceCalendar(always_open=True)) as env, \
                Server(env, deployment) as srv:
            return await scenario(env, srv, clock)
    return asyncio.run(go())


async def _refused(call, request, code) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await call(request, timeout=T)
    assert ei.value.code() == code, (ei.value.code(), ei.value.details())
    details = ei.value.details()
    assert "\n" not in details and "Traceback" not in details, details
    return details


def _issue(reg_id: str, card_id: str = helpers.CARD_ID, **kw) -> pb.SubmitIssueRequest:
    req = helpers.issue_request(**kw)
    req.registration_id = reg_id
    req.card.card_id = card_id
    return req


async def _new_rows(env, after: int):
    rows = await env.store.list_audit(after)
    return rows, (rows[-1].seq if rows else after)


def test_an_ir_registers_and_a_station_of_the_chamber_issues_once(deployment, tmp_path):
    async def scenario(env, srv, clock):
        reg = await srv.registrations("ir").RegisterHolder(register_request(), timeout=T)
        assert registrations.REGISTRATION_ID_RE.fullmatch(reg.registration_id)
        assert reg.chamber_code == "RM" and reg.created_by == IR_URI and reg.state == "open"
        assert reg.form_sha256 == hashlib.sha256(PDF).hexdigest() and reg.form_type == "application/pdf"
        assert reg.expires_at - reg.created_at == registrations.DEFAULT_EXPIRES_DAYS * 86400
        # the station (the agent's uplink) reads the holder data it will issue to
        seen = await srv.registrations("station").GetRegistration(
            rpb.GetRegistrationRequest(registration_id=reg.registration_id), timeout=T)
        assert seen.holder.codice_fiscale == helpers.CF and seen.holder.surname == "Rossi"
        assert (seen.sex, seen.birth_town, seen.state) == ("M", "H501", "open")
        first = _issue(reg.registration_id, operator="rao-anna")
        station = srv.personalizer("station")
        answer = await station.SubmitIssue(first, timeout=T)
        await env.relay.run_once()
        done = await srv.personalizer("station").GetRequest(pb.GetRequestRequest(request_id=answer.request_id),
                                                            timeout=T)
        assert done.state == pb.REQUEST_STATE_ISSUED
        used = await srv.registrations("ir").GetRegistration(
            rpb.GetRegistrationRequest(registration_id=reg.registration_id), timeout=T)
        assert (used.state, used.request_id, used.used_by, used.used_operator_id, used.card_id) == (
            "used", first.request_id, STATION_URI, "rao-anna", helpers.CARD_ID)
        # the card's second certificate (qualified signature keyset) completes the same registration
        second = _issue(reg.registration_id, operator="rao-anna", profile=pb.CA_PROFILE_QUALIFIED_SIGNATURE)
        assert (await station.SubmitIssue(second, timeout=T)).request_id == second.request_id
        # a retry of the same request (lost answer) is the same request, not a reuse
        again = await srv.personalizer("station").SubmitIssue(first, timeout=T)
        assert again.request_id == first.request_id and again.state == pb.REQUEST_STATE_ISSUED
        listed = await srv.registrations("ir").ListRegistrations(rpb.ListRegistrationsRequest(), timeout=T)
        assert [r.registration_id for r in listed.registrations] == []   # open ones only by default
        listed = await srv.registrations("ir").ListRegistrations(
            rpb.ListRegistrationsRequest(include_closed=True), timeout=T)
        assert [r.registration_id for r in listed.registrations] == [reg.registration_id]
        return reg.registration_id, first.request_id, await env.store.list_audit()

    reg_id, rid, rows = _run(deployment, tmp_path, scenario)
    add = [r for r in rows if r.operation == "registration-add"]
    assert len(add) == 1 and add[0].actor == IR_URI and add[0].operator_id == "ir-001"
    assert add[0].target == reg_id and add[0].holder_cf == helpers.CF and add[0].result == "done"
    issue = [r for r in rows if r.operation == "issue" and r.request_id == rid and r.result == "accepted"]
    assert len(issue) == 1 and issue[0].actor == STATION_URI and issue[0].operator_id == "rao-anna"
    assert issue[0].detail == f"registration {reg_id}" and issue[0].holder_cf == helpers.CF


def test_each_refused_use_of_a_registration_is_clear_writes_nothing_and_one_audit_row(deployment, tmp_path):
    async def scenario(env, srv, clock):
        ir, station = srv.registrations("ir"), srv.personalizer("station")
        reg = (await ir.RegisterHolder(register_request(), timeout=T)).registration_id
        seq = (await env.store.list_audit())[-1].seq
        found = {}

        async def refused(name, call, request, code, *, who):
            nonlocal seq
            found[name] = await _refused(call, request, code)
            rows, seq = await _new_rows(env, seq)
            assert [(r.actor, r.result) for r in rows] == [(who, f"refused:{code.name}")], (name, rows)
            assert (await env.store.get_registration(reg)).request_id is None, name

        await refused("ir issues", srv.personalizer("ir").SubmitIssue, _issue(reg), grpc.StatusCode.PERMISSION_DENIED,
                      who=IR_URI)
        await refused("other chamber", srv.personalizer("mi-station").SubmitIssue,
                      _issue(reg, chamber="MI", station="MI-STATION-01"), grpc.StatusCode.PERMISSION_DENIED,
                      who="urn:cns:station:MI:MI-STATION-01")
        await refused("other chamber reads", srv.registrations("mi-station").GetRegistration,
                      rpb.GetRegistrationRequest(registration_id=reg), grpc.StatusCode.NOT_FOUND,
                      who="urn:cns:station:MI:MI-STATION-01")
        other = helpers.random_cf(7)
        await refused("other holder", station.SubmitIssue,
                      _issue(reg, cf=other, csr=helpers.csr_der(cf=other), ef=helpers.ef_dati(other)),
                      grpc.StatusCode.INVALID_ARGUMENT, who=STATION_URI)
        await refused("unknown", station.SubmitIssue, _issue("REG-0000000000000000"), grpc.StatusCode.NOT_FOUND,
                      who=STATION_URI)
        await refused("station registers", srv.registrations("station").RegisterHolder, register_request(),
                      grpc.StatusCode.PERMISSION_DENIED, who=STATION_URI)
        used = _issue(reg)
        await station.SubmitIssue(used, timeout=T)
        seq = (await env.store.list_audit())[-1].seq
        with pytest.raises(grpc.aio.AioRpcError) as ei:   # a second card for the same registration
            await station.SubmitIssue(_issue(reg, card_id="7420000000000002"), timeout=T)
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        found["reused"] = ei.value.details()
        rows, seq = await _new_rows(env, seq)
        assert [r.result for r in rows] == ["refused:FAILED_PRECONDITION"]
        assert (await env.store.get_registration(reg)).request_id == used.request_id
        late = (await ir.RegisterHolder(register_request(), timeout=T)).registration_id
        clock.advance(registrations.DEFAULT_EXPIRES_DAYS * 86400 + 1)
        seq = (await env.store.list_audit())[-1].seq
        before = await env.store.get_registration(late)
        found["expired"] = await _refused(station.SubmitIssue, _issue(late), grpc.StatusCode.FAILED_PRECONDITION)
        rows, seq = await _new_rows(env, seq)
        assert [r.result for r in rows] == ["refused:FAILED_PRECONDITION"]
        assert await env.store.get_registration(late) == before
        return found

    found = _run(deployment, tmp_path, scenario)
    assert "role ir may not call /cns.v1.Personalizer/SubmitIssue" in found["ir issues"]
    assert "belongs to chamber RM" in found["other chamber"]
    assert "holder.codice_fiscale" in found["other holder"] and "differs from registration" in found["other holder"]
    assert "already used for card 7420000000000001" in found["reused"] and "register the holder again" in found["reused"]
    assert "expired at" in found["expired"]


@pytest.mark.parametrize("name, request_kw, field, words", [
    ("invalid codice fiscale", {"cf": "RSSMRA80A01H501X"}, "holder.codice_fiscale", "invalid codice fiscale"),
    ("codice fiscale of another person", {"cf": helpers.CF, "surname": "Bianchi"}, "holder.", ""),
    ("sex against the codice fiscale", {"sex": "F"}, "sex", "contradicts the codice fiscale"),
    ("birth town code against the codice fiscale", {"birth_town": "F205"}, "birth_town", "differs from H501"),
    ("missing form", {"form": b""}, "form", "is required"),
    ("oversized form", {"form": b"%PDF-" + b"0" * registrations.MAX_FORM_BYTES}, "form", "at most 10 MiB"),
    ("wrong type", {"form": b"GIF89a" + b"\0" * 100}, "form", "not a PDF, PNG or JPEG"),
    ("text posing as a form", {"form": b"PDF please\n"}, "form", "not a PDF, PNG or JPEG"),
])
def test_a_bad_registration_is_refused_clearly_and_writes_nothing_half(deployment, tmp_path, name, request_kw,
                                                                        field, words):
    async def scenario(env, srv, clock):
        seq = (await env.store.list_audit() or [None])[-1]
        seq = seq.seq if seq else 0
        details = await _refused(srv.registrations("ir").RegisterHolder, register_request(**request_kw),
                                 grpc.StatusCode.INVALID_ARGUMENT)
        rows, _ = await _new_rows(env, seq)
        assert [(r.operation, r.actor, r.result) for r in rows] == [
            ("registration-add", IR_URI, "refused:INVALID_ARGUMENT")]
        listed = await env.store.list_registrations("", include_closed=True, now=clock(), limit=10)
        return details, listed

    details, listed = _run(deployment, tmp_path, scenario)
    assert details.startswith(field) and words in details, details
    assert listed == []


def test_png_and_jpeg_forms_are_accepted_and_typed(deployment, tmp_path):
    async def scenario(env, srv, clock):
        ir = srv.registrations("ir")
        return [(await ir.RegisterHolder(register_request(form=f, cf=helpers.random_cf(n), birth_town=""),
                                          timeout=T)).form_type for n, f in ((1, PNG), (2, JPEG))]
    assert _run(deployment, tmp_path, scenario) == ["image/png", "image/jpeg"]


def test_two_stations_racing_for_one_registration_issue_one_card(deployment, tmp_path):
    """The check before the commit passes for both; the store's trigger lets one commit use it."""
    async def scenario(env, srv, clock):
        reg = (await srv.registrations("ir").RegisterHolder(register_request(), timeout=T)).registration_id
        inputs = [dict(vars(issue_input(n)), registration_id=reg) for n in (1, 2)]
        from personalizer.outbox.broker import IssueInput
        results = await asyncio.gather(*(env.broker.submit_issue(IssueInput(**i), actor=STATION_URI)
                                         for i in inputs), return_exceptions=True)
        stored = [await env.store.get_request(i["request_id"]) for i in inputs]
        return results, stored, await env.store.get_registration(reg)

    results, stored, reg = _run(deployment, tmp_path, scenario)
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 1 and isinstance(refused[0], FailedPrecondition), results
    assert sum(s is not None for s in stored) == 1
    assert reg.request_id == next(s.request_id for s in stored if s is not None)


def test_one_open_registration_per_holder_a_retry_gets_it_and_cancel_frees_the_holder(deployment, tmp_path):
    """An IR's retry after a lost answer must not make a second registration (a second card); another
    registration for the same holder is refused until the open one is cancelled; a cancelled one issues nothing."""
    async def scenario(env, srv, clock):
        ir, station = srv.registrations("ir"), srv.personalizer("station")
        first = await ir.RegisterHolder(register_request(), timeout=T)
        retry = await ir.RegisterHolder(register_request(), timeout=T)
        other_form = await _refused(ir.RegisterHolder, register_request(form=PNG), grpc.StatusCode.FAILED_PRECONDITION)
        other_chamber = await srv.registrations("mi-ir").RegisterHolder(register_request(), timeout=T)
        refused_cancel = await _refused(srv.registrations("mi-ir").CancelRegistration,
                                        rpb.CancelRegistrationRequest(registration_id=first.registration_id),
                                        grpc.StatusCode.NOT_FOUND)
        station_cancel = await _refused(srv.registrations("station").CancelRegistration,
                                        rpb.CancelRegistrationRequest(registration_id=first.registration_id),
                                        grpc.StatusCode.PERMISSION_DENIED)
        cancelled = await ir.CancelRegistration(rpb.CancelRegistrationRequest(
            registration_id=first.registration_id, reason="birth town mistyped"), timeout=T)
        issue_cancelled = await _refused(station.SubmitIssue, _issue(first.registration_id),
                                         grpc.StatusCode.FAILED_PRECONDITION)
        again = await ir.RegisterHolder(register_request(form=PNG), timeout=T)
        answer = await station.SubmitIssue(_issue(again.registration_id), timeout=T)
        cancel_used = await _refused(ir.CancelRegistration, rpb.CancelRegistrationRequest(
            registration_id=again.registration_id), grpc.StatusCode.FAILED_PRECONDITION)
        rows = await env.store.list_audit()
        return locals()

    r = _run(deployment, tmp_path, scenario)
    assert r["retry"].registration_id == r["first"].registration_id
    assert f"already has an open registration {r['first'].registration_id}" in r["other_form"]
    assert r["other_chamber"].registration_id != r["first"].registration_id   # chambers register on their own
    assert "PERMISSION_DENIED" not in r["refused_cancel"] and "no registration" in r["refused_cancel"]
    assert "role station may not call /cns.v1.Registrations/CancelRegistration" in r["station_cancel"]
    assert (r["cancelled"].state, r["cancelled"].cancelled_by) == ("cancelled", IR_URI)
    assert "was cancelled by" in r["issue_cancelled"]
    assert r["again"].registration_id != r["first"].registration_id and r["answer"].request_id
    assert "is used" in r["cancel_used"]
    adds = [x for x in r["rows"] if x.operation == "registration-add" and x.result == "done"]
    assert len(adds) == 3   # first, MI's, again: the retry wrote no second registration
    [cancel] = [x for x in r["rows"] if x.operation == "registration-cancel" and x.result == "done"]
    assert (cancel.actor, cancel.target, cancel.detail) == (IR_URI, r["first"].registration_id, "birth town mistyped")
