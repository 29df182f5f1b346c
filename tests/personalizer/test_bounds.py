"""Bounded everything (issue 10, item 8): every string and repeated field the daemon stores has a limit,
refused with INVALID_ARGUMENT naming the field, nothing stored, and the refusal's audit row bounded too."""
from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

import grpc
import pytest

from personalizer.edge import limits
from personalizer.errors import InvalidRequest
from personalizer.outbox.windows import ServiceCalendar
from proto.cns.v1 import admin_pb2 as apb, common_pb2, personalizer_pb2 as pb
from tests.broker.conftest import Env, FakeClock
from tests.personalizer import helpers
from tests.personalizer.test_rules_audit import Server

T = 10
HUGE = 10_000


def test_limits_walk_nested_and_repeated_fields():
    req = helpers.issue_request()
    limits.check_message(req)
    req.requester.operator_id = "x" * 65
    with pytest.raises(InvalidRequest) as ei:
        limits.check_message(req)
    assert ei.value.field == "requester.operator_id" and "at most 64" in ei.value.message
    many = pb.CAStatusResponse(chain_der=[b"x"] * (limits.DEFAULT_REPEATED + 1))
    with pytest.raises(InvalidRequest, match="chain_der: at most"):
        limits.check_message(many)


def test_oversized_fields_are_refused_and_nothing_is_stored(deployment, tmp_path):
    clock = FakeClock(dt.datetime.now(dt.timezone.utc))

    async def go():
        async with Env(deployment, tmp_path, clock, ServiceCalendar(always_open=True)) as env, \
                Server(env, deployment) as srv:
            station, admin = srv.stub("station"), srv.admin("admin")
            out = {}

            async def refused(name, call, request):
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await call(request, timeout=T)
                out[name] = (ei.value.code(), ei.value.details(), getattr(request, "request_id", ""))

            big_op = helpers.issue_request(operator="o" * HUGE)
            await refused("operator", station.SubmitIssue, big_op)
            big_model = helpers.issue_request()
            big_model.card.model = "m" * HUGE
            await refused("model", station.SubmitIssue, big_model)
            await refused("newline", station.SubmitIssue, helpers.issue_request(request_id="req-1\n"))
            await refused("issuer", station.Suspend, pb.ChangeStatusRequest(
                request_id=str(uuid.uuid4()), certificate=common_pb2.CertificateRef(issuer_dn="C" * 100_000,
                                                                                   serial_hex="01"),
                requester=common_pb2.Requester(station_id="RM-STATION-01", chamber_code="RM", operator_id="op")))
            now = int(time.time())
            await refused("maintenance", admin.AddMaintenance, pb.MaintenanceWindow(
                id="m-1", starts_at=now + 3600, ends_at=now + 7200, reason="r" * HUGE))
            stored = {name: await env.store.get_request(rid) for name, (_, _, rid) in out.items() if rid}
            stored["req-1"] = await env.store.get_request("req-1")
            windows = await admin.ListMaintenance(apb.ListMaintenanceRequest(), timeout=T)
            return out, stored, list(windows.windows), await env.store.list_audit()

    out, stored, windows, rows = asyncio.run(go())
    fields = {"operator": "requester.operator_id", "model": "card.model", "newline": "request_id",
              "issuer": "certificate.issuer_dn", "maintenance": "reason"}
    for name, field in fields.items():
        code, details, _ = out[name]
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, details)
        assert details.startswith(field + ":"), (name, details)
        assert len(details) < 200, name   # the value is not echoed back
    assert all(v is None for v in stored.values()), stored
    assert windows == []
    refusals = [r for r in rows if r.result == "refused:INVALID_ARGUMENT"]
    assert len(refusals) == len(fields)
    for r in rows:
        size = sum(len(str(getattr(r, f) or "")) for f in ("actor", "station_id", "operation", "request_id",
                                                            "target", "result", "detail", "operator_id"))
        assert size < 2000, r


def test_error_texts_from_the_ca_are_stored_bounded(deployment, tmp_path):
    """A CA (EJBCA's REST error body, say) may answer a megabyte of text: the request's error and the
    outbox's last error keep a bounded prefix."""
    from personalizer.store import MAX_ERROR_TEXT
    from tests.broker.conftest import issue_input
    clock = FakeClock(dt.datetime.now(dt.timezone.utc))

    async def go():
        async with Env(deployment, tmp_path, clock, ServiceCalendar(always_open=False)) as env:
            a, b = issue_input(1), issue_input(2)
            await env.broker.submit_issue(a)
            await env.broker.submit_issue(b)
            await env.store.schedule_retry(a.request_id, clock() + 60, "e" * 1_000_000)
            await env.store.defer([b.request_id], clock() + 60, "d" * 1_000_000)
            await env.store.fail_request(a.request_id, "INVALID_ARGUMENT", "f" * 10_000, "m" * 1_000_000)
            return await env.store.get_request(a.request_id), await env.store.get_request(b.request_id)

    a, b = asyncio.run(go())
    assert a.state == "FAILED"
    assert len(a.error_message) <= MAX_ERROR_TEXT and len(a.error_field) <= 128
    assert len(a.last_error) <= MAX_ERROR_TEXT and len(b.last_error) <= MAX_ERROR_TEXT
