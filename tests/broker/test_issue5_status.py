"""Acceptance (issue 5, EM.2 and operations): the running daemon's GetCAStatus and its Prometheus
endpoint show the same figures — operational or not, maintenance and expected reactivation,
planned maintenance declared ahead (in the configuration and over QueueAdmin), p50/p95 per request
type over the sliding window, load over the last 10 minutes, queue depth per lane — and
``cnsctl queue list|show|retry|cancel --json`` acts on the queue with the admin certificate while a
station certificate is refused."""
from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import time
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proto.cns.v1 import admin_pb2 as apb, admin_pb2_grpc as apb_grpc
from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.personalizer import helpers

TIMEOUT = 20
AHEAD_ID = "config-ahead"


@pytest.fixture(scope="module")
def status_daemon(deployment, tmp_path_factory):
    ahead = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(days=3)
    cfg = deployment.server_config.with_name("status.toml")
    cfg.write_text(deployment.server_config.read_text().replace(
        "[metrics]\nenabled = false", "[metrics]\nenabled = true").replace(
        "answer_wait_seconds = 2.0", "answer_wait_seconds = 2.0\nretry_initial_seconds = 0.2")
        .replace('data_dir = "data"', 'data_dir = "data-status"') + f"""
[[maintenance]]
id = "{AHEAD_ID}"
starts_at = "{ahead.isoformat()}"
ends_at = "{(ahead + dt.timedelta(hours=4)).isoformat()}"
reason = "CA software upgrade (declared ahead)"
""")
    d = helpers.DaemonProcess(cfg)
    m = re.search(r"metrics on port (\d+)", d.proc.stdout.readline())
    assert m, "the daemon did not report its metrics port"
    d.metrics_port = int(m.group(1))
    d.ahead = ahead
    tls = deployment.root / "tls"
    chs = {}
    for who, conf in (("admin", deployment.admin_config), ("station", deployment.station_config)):
        chs[who] = helpers.channel(d.port, tls, helpers.ClientCert((conf.parent / "client.pem").read_bytes(),
                                                                   (conf.parent / "client.key.pem").read_bytes()))
    d.station = pb_grpc.PersonalizerStub(chs["station"])
    d.admin = pb_grpc.PersonalizerStub(chs["admin"])
    d.queue = apb_grpc.QueueAdminStub(chs["admin"])
    yield d
    for ch in chs.values():
        ch.close()
    assert d.stop() == 0


def _scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _change(call, ref, reason=""):
    rid = str(uuid.uuid4())
    return rid, call(pb.ChangeStatusRequest(request_id=rid, certificate=ref, reason=reason), timeout=TIMEOUT)


def test_ca_status_and_prometheus_show_the_same_figures(status_daemon):
    d = status_daemon
    st = d.admin.GetCAStatus(pb.GetCAStatusRequest(), timeout=TIMEOUT)
    assert st.operational and not st.in_maintenance and st.reactivation_at == 0
    # planned maintenance declared ahead in the configuration: listed, not active
    ahead = [w for w in st.planned_maintenance if w.id == AHEAD_ID]
    assert len(ahead) == 1 and ahead[0].starts_at == int(d.ahead.timestamp()) and "upgrade" in ahead[0].reason
    assert st.service_window_open                        # test deployment: always_open

    certs = [d.station.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT) for _ in range(2)]
    assert all(c.state == pb.REQUEST_STATE_ISSUED for c in certs)
    _, s = _change(d.admin.Suspend, certs[0].certificate)
    assert s.change_state == pb.REQUEST_STATE_DONE

    # a maintenance window that is on now: every lane waits, the status says when the CA comes back
    now = int(time.time())
    w = d.queue.AddMaintenance(pb.MaintenanceWindow(starts_at=now - 1, ends_at=now + 600, reason="emergency patch"),
                               timeout=TIMEOUT)
    revoke_id, r = _change(d.admin.Revoke, certs[1].certificate, "superseded")
    assert r.change_state == pb.REQUEST_STATE_RECEIVED
    waiting = d.station.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
    assert waiting.state == pb.REQUEST_STATE_RECEIVED and "maintenance" in waiting.waiting_reason

    st = d.admin.GetCAStatus(pb.GetCAStatusRequest(), timeout=TIMEOUT)
    assert not st.operational and st.in_maintenance and st.reactivation_at == now + 600
    assert "emergency patch" in st.detail
    assert {p.id for p in st.planned_maintenance} >= {AHEAD_ID, w.id}
    assert {q.lane: q.depth for q in st.queue_depth} == {"priority": 1, "standard": 1}
    times = {t.kind: t for t in st.response_times}
    assert set(times) == {"issue", "suspend"} and times["issue"].samples == 2 and times["suspend"].samples == 1
    assert all(0 < t.p50_ms <= t.p95_ms for t in times.values())
    assert st.requests_last_10_min == 3                 # two issuances and one suspension reached the CA

    m = _scrape(d.metrics_port)
    assert m[("cns_ca_operational", ())] == 0 and m[("cns_ca_maintenance", ())] == 1
    assert m[("cns_ca_reactivation_timestamp_seconds", ())] == st.reactivation_at
    for p in st.planned_maintenance:
        assert m[("cns_ca_planned_maintenance_start_timestamp_seconds", (("id", p.id),))] == p.starts_at
        assert m[("cns_ca_planned_maintenance_end_timestamp_seconds", (("id", p.id),))] == p.ends_at
    for kind, t in times.items():
        assert m[("cns_ca_response_ms", (("kind", kind), ("quantile", "0.5")))] == t.p50_ms
        assert m[("cns_ca_response_ms", (("kind", kind), ("quantile", "0.95")))] == t.p95_ms
        assert m[("cns_ca_response_samples", (("kind", kind),))] == t.samples
    assert m[("cns_ca_requests_window", ())] == st.requests_last_10_min
    for q in st.queue_depth:
        assert m[("cns_queue_depth", (("lane", q.lane),))] == q.depth
    assert m[("cns_ca_breaker_open", (("state", st.breaker_state),))] == 0
    assert m[("cns_service_window_open", ())] == int(st.service_window_open)
    assert m[("cns_ca_calls_total", (("kind", "issue"), ("result", "ok")))] == 2

    # the queued revocation is still in the queue for central IT to see
    listed = {i.request_id: i for i in d.queue.ListQueue(apb.ListQueueRequest(), timeout=TIMEOUT).items}
    assert listed[revoke_id].lane == "priority" and listed[waiting.request_id].lane == "standard"


def _cnsctl(conf, port: int, *args):
    cfg = conf.with_name(conf.stem + "-status.toml")
    cfg.write_text(conf.read_text().replace(':0"', f':{port}"'))
    return subprocess.run([str(helpers.VENV_BIN / "cnsctl"), "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=60)


def test_cnsctl_queue_commands_admin_only(status_daemon, deployment):
    d = status_daemon
    now = int(time.time())
    d.queue.AddMaintenance(pb.MaintenanceWindow(starts_at=now - 1, ends_at=now + 600, reason="keep it queued"),
                           timeout=TIMEOUT)
    queued = d.station.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
    rid = queued.request_id
    assert queued.state == pb.REQUEST_STATE_RECEIVED

    out = _cnsctl(deployment.admin_config, d.port, "--json", "queue", "list")
    assert out.returncode == 0, out.stderr
    items = {i["request_id"]: i for i in json.loads(out.stdout)["items"]}
    assert items[rid]["lane"] == "standard" and items[rid]["kind"] == "issue"
    assert items[rid]["state"] == "REQUEST_STATE_RECEIVED"

    out = _cnsctl(deployment.admin_config, d.port, "--json", "queue", "show", rid)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["request_id"] == rid

    out = _cnsctl(deployment.admin_config, d.port, "--json", "queue", "retry", rid)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "REQUEST_STATE_RECEIVED"   # still waiting: maintenance

    out = _cnsctl(deployment.admin_config, d.port, "--json", "queue", "cancel", rid)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "REQUEST_STATE_CANCELLED"
    assert d.station.GetRequest(pb.GetRequestRequest(request_id=rid), timeout=TIMEOUT).state == \
        pb.REQUEST_STATE_CANCELLED
    out = _cnsctl(deployment.admin_config, d.port, "--json", "queue", "list")
    assert rid not in {i["request_id"] for i in json.loads(out.stdout)["items"]}

    # human-readable output too
    out = _cnsctl(deployment.admin_config, d.port, "queue", "show", rid)
    assert out.returncode == 0 and rid in out.stdout

    # a station certificate is refused, for every queue command
    for args in (("queue", "list"), ("queue", "show", rid), ("queue", "retry", rid), ("queue", "cancel", rid)):
        out = _cnsctl(deployment.station_config, d.port, "--json", *args)
        assert out.returncode == 1 and "PERMISSION_DENIED" in out.stderr, (args, out.stdout, out.stderr)
        assert out.stdout == ""
