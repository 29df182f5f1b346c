"""The audit trail says who (issue 9, item 8) and stays bounded (issue 10, item 8).

Every row names the operator (the requester's operator id) beside the station certificate; one
refused call writes one row naming the right operation; a status read writes one row, naming the
operator the station sends (the optional ``requester`` of a read, checked like a write's); refusals
are rate-limited per identity; ``cns-personalizer audit`` reads the store read-only (as another
user) and filters by operator, station, card, codice fiscale and time.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import grpc
import pytest

import station_config
from agent.uplink.client import PersonalizerClient
from personalizer.outbox.windows import ServiceCalendar
from proto.cns.v1 import common_pb2, personalizer_pb2 as pb
from tests.broker.conftest import Env, FakeClock
from tests.personalizer import helpers
from tests.personalizer.test_rules_audit import Server, _refused, _renew

T = 10
STATION_URI = "urn:cns:station:RM:RM-STATION-01"
MI_URI = "urn:cns:station:MI:MI-STATION-01"


def _rows_for(rows, rid):
    return [r for r in rows if r.request_id == rid]


@pytest.fixture(scope="module")
def trail(deployment, tmp_path_factory):
    """One scripted session of calls against the in-process daemon; its audit rows and store path."""
    tmp = tmp_path_factory.mktemp("audit-who")
    clock = FakeClock(dt.datetime.now(dt.timezone.utc))

    async def go():
        async with Env(deployment, tmp, clock, ServiceCalendar(always_open=True)) as env, \
                Server(env, deployment, extra={"mi": MI_URI}) as srv:
            station = srv.stub("station")
            t0 = clock()
            first = helpers.issue_request(operator="op-anna")
            issued = await station.SubmitIssue(first, timeout=T)
            await env.relay.run_once()
            issued = await station.GetRequest(pb.GetRequestRequest(request_id=issued.request_id), timeout=T)
            assert issued.state == pb.REQUEST_STATE_ISSUED
            clock.advance(3600)
            t1 = clock()
            marks = {"t0": t0, "t1": t1, "issue": issued.request_id}

            # the same id with other data, by another operator: ALREADY_EXISTS, one row naming "issue"
            other = helpers.issue_request(request_id=issued.request_id, operator="op-bruno")
            await _refused(station.SubmitIssue, other, grpc.StatusCode.ALREADY_EXISTS)
            # a suspension that reuses the issue's request id: one row, naming "suspend"
            reuse = pb.ChangeStatusRequest(request_id=issued.request_id, certificate=issued.certificate,
                                           requester=common_pb2.Requester(station_id="RM-STATION-01",
                                                                          chamber_code="RM", operator_id="op-carla"))
            await _refused(station.Suspend, reuse, grpc.StatusCode.ALREADY_EXISTS)
            # a renewal outside the window (FAILED_PRECONDITION) names the renewing operator
            renew = _renew(issued.certificate_der)
            renew.requester.operator_id = "op-dario"
            await _refused(station.Renew, renew)
            marks["renew"] = renew.request_id
            # another chamber reading RM's request: refused by the service, one row
            await _refused(srv.stub("mi").GetRequest, pb.GetRequestRequest(request_id=issued.request_id),
                           grpc.StatusCode.PERMISSION_DENIED)
            # a status read writes exactly one row; so does a refused one
            before = len(await env.store.list_audit())
            await station.GetCertificateStatus(pb.GetCertificateStatusRequest(certificate=issued.certificate),
                                               timeout=T)
            marks["one_status"] = len(await env.store.list_audit()) - before
            before = len(await env.store.list_audit())
            await _refused(station.GetCertificateStatus, pb.GetCertificateStatusRequest(request_id="no-such-request"),
                           grpc.StatusCode.NOT_FOUND)
            marks["one_refused_status"] = len(await env.store.list_audit()) - before
            # reads naming the station's operator: one row each, naming that operator
            fabio = common_pb2.Requester(station_id="RM-STATION-01", chamber_code="RM", operator_id="op-fabio")
            before = len(await env.store.list_audit())
            await station.GetCertificateStatus(pb.GetCertificateStatusRequest(certificate=issued.certificate,
                                                                              requester=fabio), timeout=T)
            marks["status_by_fabio"] = (await env.store.list_audit())[before:]
            before = len(await env.store.list_audit())
            await _refused(station.GetCertificateStatus,
                           pb.GetCertificateStatusRequest(request_id="no-such-request", requester=fabio),
                           grpc.StatusCode.NOT_FOUND)
            await _refused(station.GetRequest, pb.GetRequestRequest(request_id="missing-2", requester=fabio),
                           grpc.StatusCode.NOT_FOUND)
            marks["refused_reads_by_fabio"] = (await env.store.list_audit())[before:]
            read = await station.GetRequest(pb.GetRequestRequest(request_id=issued.request_id, requester=fabio),
                                            timeout=T)
            watched = [u.state async for u in station.WatchRequest(
                pb.GetRequestRequest(request_id=issued.request_id, requester=fabio), timeout=T)]
            marks["reads_with_requester"] = (read.state, watched)
            # a read naming another station (or chamber) is refused as a write would be: one row
            before = len(await env.store.list_audit())
            for who in (common_pb2.Requester(station_id="RM-STATION-09", chamber_code="RM", operator_id="op-gina"),
                        common_pb2.Requester(station_id="RM-STATION-01", chamber_code="MI", operator_id="op-gina")):
                await _refused(station.GetCertificateStatus,
                               pb.GetCertificateStatusRequest(certificate=issued.certificate, requester=who),
                               grpc.StatusCode.PERMISSION_DENIED)
            await _refused(station.GetRequest, pb.GetRequestRequest(
                request_id=issued.request_id, requester=common_pb2.Requester(
                    station_id="RM-STATION-09", chamber_code="RM", operator_id="op-gina")),
                grpc.StatusCode.PERMISSION_DENIED)
            marks["foreign_requester_reads"] = (await env.store.list_audit())[before:]
            # the agent's uplink client sends its station and operator on every read
            live = deployment.station_config.with_name("station-audit-who.toml")   # its paths are relative
            live.write_text(re.sub(r'primary = "([^":]+):\d+"', rf'primary = "\1:{srv.port}"',
                                   deployment.station_config.read_text()))
            before = len(await env.store.list_audit())
            async with PersonalizerClient(station_config.load(live), operator_id="op-giulia") as agent:
                ref = issued.certificate
                await agent.certificate_status(issuer_dn=ref.issuer_dn, serial_hex=ref.serial_hex)
                await agent.get_request(issued.request_id)
                async for _ in agent.watch_request(issued.request_id):
                    pass
            marks["agent_reads"] = (await env.store.list_audit())[before:]
            # a suspension accepted and done
            sus = pb.ChangeStatusRequest(request_id=str(uuid.uuid4()), certificate=issued.certificate,
                                         requester=common_pb2.Requester(station_id="RM-STATION-01",
                                                                        chamber_code="RM", operator_id="op-elena"))
            await station.Suspend(sus, timeout=T)
            await env.relay.run_once()
            marks["suspend"] = sus.request_id
            # a flood of refused calls from one identity is rate-limited
            before = len(await env.store.list_audit())
            flood_err = None
            for _ in range(300):
                try:
                    await srv.stub("mi").GetRequest(pb.GetRequestRequest(request_id=issued.request_id), timeout=T)
                except grpc.aio.AioRpcError as exc:
                    flood_err = exc
            marks["flood_rows"] = len(await env.store.list_audit()) - before
            marks["flood_code"] = flood_err.code()
            # the RM station is not silenced by MI's flood
            before = len(await env.store.list_audit())
            await _refused(station.GetRequest, pb.GetRequestRequest(request_id="missing-1"), grpc.StatusCode.NOT_FOUND)
            marks["other_identity_rows"] = len(await env.store.list_audit()) - before
            return await env.store.list_audit(), marks

    rows, marks = asyncio.run(go())
    return rows, marks, tmp


def test_every_row_names_the_operator(trail):
    rows, marks, _ = trail
    issue_rows = _rows_for(rows, marks["issue"])
    accepted = [r for r in issue_rows if r.result == "accepted"]
    done = [r for r in issue_rows if r.result == "done"]
    assert [(r.actor, r.operator_id) for r in accepted] == [(STATION_URI, "op-anna")]
    assert [(r.actor, r.operator_id) for r in done] == [("relay", "op-anna")]
    sus = _rows_for(rows, marks["suspend"])
    assert {(r.result, r.operator_id) for r in sus} == {("accepted", "op-elena"), ("done", "op-elena")}
    renew = _rows_for(rows, marks["renew"])
    assert [(r.operation, r.result, r.operator_id) for r in renew] == [("renew", "refused:FAILED_PRECONDITION",
                                                                       "op-dario")]
    assert accepted[0].card_id == helpers.CARD_ID and accepted[0].holder_cf == helpers.CF


def test_one_refused_call_writes_one_row_naming_its_operation(trail):
    rows, marks, _ = trail
    conflicts = [r for r in _rows_for(rows, marks["issue"]) if r.result == "refused:ALREADY_EXISTS"]
    assert sorted((r.operation, r.operator_id) for r in conflicts) == [("issue", "op-bruno"), ("suspend", "op-carla")]
    foreign = [r for r in _rows_for(rows, marks["issue"]) if r.actor == MI_URI]
    assert foreign and all(r.operation == "get-request" and r.result == "refused:PERMISSION_DENIED" for r in foreign)
    assert foreign[0].station_id == "MI-STATION-01"


def test_a_status_read_writes_one_row(trail):
    _, marks, _ = trail
    assert marks["one_status"] == 1
    assert marks["one_refused_status"] == 1


def test_a_status_read_names_the_operator_the_station_gives(trail):
    """A station that sends its requester on a read gets one row naming its operator; a read without
    one is still answered and its row names no operator ("": not given)."""
    rows, marks, _ = trail
    by_fabio = marks["status_by_fabio"]
    assert [(r.operation, r.result, r.actor, r.station_id, r.operator_id) for r in by_fabio] == [
        ("status", "done", STATION_URI, "RM-STATION-01", "op-fabio")]
    refused = marks["refused_reads_by_fabio"]
    assert [(r.operation, r.result, r.operator_id) for r in refused] == [
        ("status", "refused:NOT_FOUND", "op-fabio"), ("get-request", "refused:NOT_FOUND", "op-fabio")]
    assert marks["reads_with_requester"] == (pb.REQUEST_STATE_ISSUED, [pb.REQUEST_STATE_ISSUED])
    anonymous = [r for r in rows if r.operation == "status" and r.result == "done" and r.operator_id == ""]
    assert anonymous, "the status read without a requester is answered and audited with no operator"


def test_the_agent_names_its_operator_on_reads(trail):
    """PersonalizerClient(cfg, operator_id=...) reads as its station: a status read, a request read
    and a watch leave one row, the status read's, naming the operator."""
    _, marks, _ = trail
    assert [(r.operation, r.result, r.station_id, r.operator_id) for r in marks["agent_reads"]] == [
        ("status", "done", "RM-STATION-01", "op-giulia")]


def test_a_read_naming_another_station_is_refused_with_one_row(trail):
    _, marks, _ = trail
    rows = marks["foreign_requester_reads"]
    assert [(r.operation, r.result, r.operator_id) for r in rows] == [
        ("status", "refused:PERMISSION_DENIED", "op-gina")] * 2 + [("get-request", "refused:PERMISSION_DENIED",
                                                                   "op-gina")]
    assert "may not act as station RM-STATION-09" in rows[0].detail
    assert "may not act for chamber MI" in rows[1].detail


def test_refusals_are_rate_limited_per_identity(trail):
    """300 refused calls from one station leave a bounded number of rows, the last saying how many
    were not written; the calls themselves are still refused, and other identities are still recorded."""
    rows, marks, _ = trail
    from personalizer.outbox.audit import REFUSAL_BURST
    assert marks["flood_code"] == grpc.StatusCode.PERMISSION_DENIED
    assert marks["flood_rows"] <= REFUSAL_BURST + 2, marks["flood_rows"]
    assert marks["other_identity_rows"] == 1


def _config_for(deployment, data_dir: Path, where: Path) -> Path:
    text = deployment.server_config.read_text()
    text = text.replace('data_dir = "data"', f'data_dir = "{data_dir}"')
    for rel in ("tls/", "ca/"):
        text = text.replace(f'"{rel}', f'"{deployment.root}/{rel}')
    cfg = where / "personalizer.toml"
    cfg.write_text(text)
    return cfg


def _audit_cli(cfg: Path, *args: str, as_other_user: bool = False,
               database: Path | None = None) -> subprocess.CompletedProcess:
    code = ("import sys; sys.argv[0] = 'cns-personalizer'; from personalizer.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    where = ["--database", str(database)] if database else ["--config", str(cfg)]
    cmd = [sys.executable, "-c", code, "audit", *where, *args]
    env = dict(os.environ)
    if as_other_user:   # root reads anything: run as nobody, with the system interpreter and our packages
        site = [p for p in sys.path if p.endswith("site-packages")]
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), *site])
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3.11", *cmd[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd="/")


@pytest.fixture(scope="module")
def readonly_store(trail, deployment):
    """A copy of the trail's store that the auditor may read and not write (files 0444, folder 0555)."""
    _, _, tmp = trail
    base = Path(tempfile.mkdtemp(prefix="cns-audit-ro-"))
    data = base / "data"
    data.mkdir()
    shutil.copy(tmp / "requests.sqlite", data / "requests.sqlite")
    cfg = _config_for(deployment, data, base)
    # the auditor needs the config's certificate paths to exist, not to be readable
    os.chmod(data / "requests.sqlite", 0o444)
    os.chmod(data, 0o555)
    os.chmod(base, 0o755)
    os.chmod(cfg, 0o644)
    yield cfg, data
    os.chmod(data, 0o755)
    shutil.rmtree(base)


def _json_rows(out: subprocess.CompletedProcess) -> list[dict]:
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_audit_reads_the_store_read_only(readonly_store, trail):
    cfg, data = readonly_store
    as_other = os.geteuid() == 0 and shutil.which("setpriv") is not None and Path("/usr/bin/python3.11").exists()
    if os.geteuid() == 0 and not as_other:
        pytest.fail("running as root without setpriv and /usr/bin/python3.11: cannot check a read-only auditor")
    rows = _json_rows(_audit_cli(cfg, "--json", as_other_user=as_other, database=data / "requests.sqlite"))
    assert len(rows) == len(trail[0])
    assert sorted(p.name for p in data.iterdir()) == ["requests.sqlite"]   # nothing created beside it


def test_audit_filters(readonly_store, trail):
    """As the current user (root here): the filters, and no side files left that a daemon running as
    another user could not open."""
    cfg, data = readonly_store
    rows, marks, _ = trail
    by_op = _json_rows(_audit_cli(cfg, "--json", "--operator", "op-anna"))
    assert by_op and all(r["operator_id"] == "op-anna" for r in by_op)
    assert {r["result"] for r in by_op} >= {"accepted", "done"}
    by_station = _json_rows(_audit_cli(cfg, "--json", "--station", "MI-STATION-01"))
    assert by_station and all(r["station_id"] == "MI-STATION-01" for r in by_station)
    by_card = _json_rows(_audit_cli(cfg, "--json", "--card", helpers.CARD_ID))
    ops = {(r["operation"], r["result"]) for r in by_card}
    # the issue (accepted, done), the status read of its certificate, the suspension of it
    assert {("issue", "accepted"), ("issue", "done"), ("status", "done"), ("suspend", "done")} <= ops
    by_cf = _json_rows(_audit_cli(cfg, "--json", "--cf", helpers.CF.lower()))
    assert {r["seq"] for r in by_cf} == {r["seq"] for r in by_card}
    assert _json_rows(_audit_cli(cfg, "--json", "--card", "7420999999999999")) == []
    since = dt.datetime.fromtimestamp(marks["t1"], dt.timezone.utc).isoformat()
    later = _json_rows(_audit_cli(cfg, "--json", "--since", since))
    assert later and all(r["at"] >= since[:19] for r in later)
    assert not any(r["result"] == "accepted" and r["request_id"] == marks["issue"] for r in later)
    until = dt.datetime.fromtimestamp(marks["t0"] + 1, dt.timezone.utc).isoformat()
    early = _json_rows(_audit_cli(cfg, "--json", "--until", until))
    assert any(r["request_id"] == marks["issue"] and r["result"] == "accepted" for r in early)
    assert len(early) + len(later) == len(rows)
    bad = _audit_cli(cfg, "--since", "31/12/2026")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "--since" in bad.stderr and "2026-12-31" in bad.stderr
    text = _audit_cli(cfg, "--operator", "op-anna")
    assert text.returncode == 0 and "op-anna" in text.stdout
    assert sorted(p.name for p in data.iterdir()) == ["requests.sqlite"]


def test_refusal_limiter_counts_what_it_leaves_out():
    from personalizer.outbox.audit import RefusalLimiter
    now = [0.0]
    lim = RefusalLimiter(burst=3, rate=1.0, clock=lambda: now[0], max_identities=2)
    assert [lim.admit("a") for _ in range(5)] == [0, 0, 0, None, None]
    assert lim.admit("b") == 0                     # another identity has its own bucket
    now[0] += 1.0
    assert lim.admit("a") == 2                     # the next row says 2 refusals were not recorded
    assert lim.admit("a") is None
    now[0] += 10.0
    assert [lim.admit("a") for _ in range(4)] == [1, 0, 0, None]   # refilled up to the burst only
    lim.admit("c")                                 # bounded: the least recently used bucket ("b") goes
    assert len(lim._buckets) == 2 and "b" not in lim._buckets
