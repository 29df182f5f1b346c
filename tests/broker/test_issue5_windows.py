"""Issue 5, service windows: the tender's calendar is the default; issuance outside the window waits
and the *running* relay drains it when the window opens (its own loop, not ``run_once``); suspension
and revocation go through the 24x7 priority lane while the window is closed — in process with a
controllable clock, and in the daemon with a calendar that never opens."""
from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import time
import uuid

from personalizer import config
from personalizer.outbox.broker import ChangeInput
from personalizer.ca.base import CertRef
from personalizer.server import build_ca
from personalizer.outbox.windows import DEFAULT_HOURS, ServiceCalendar
from proto.cns.v1 import common_pb2, personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.broker.conftest import ROME, issue_input
from tests.ca import support
from tests.personalizer import helpers

TIMEOUT = 20
HANG_GUARD_SECONDS = 30


class RunningClock:
    """Wall-clock time shifted to a chosen moment: it keeps running, so the relay's own timers fire."""

    def __init__(self, when: dt.datetime):
        self.set(when)

    def set(self, when: dt.datetime) -> None:
        self.offset = when.timestamp() - time.time()

    def __call__(self) -> float:
        return time.time() + self.offset


def test_default_calendar_is_the_tenders(deployment, tmp_path):
    text = deployment.server_config.read_text()
    start = text.index("[service_window]")
    cfg = tmp_path / "default-window.toml"
    cfg.write_text((text[:start] + text[text.index("[metrics]"):])
                   .replace('"tls/', f'"{deployment.root}/tls/').replace('"ca/', f'"{deployment.root}/ca/'))
    cal = config.load(cfg).calendar
    assert cal == ServiceCalendar()
    assert (cal.timezone, cal.national_holidays, cal.always_open) == ("Europe/Rome", True, False)
    assert cal.hours == DEFAULT_HOURS == {0: (8, 21), 1: (8, 21), 2: (8, 21), 3: (8, 21), 4: (8, 21),
                                          5: (8, 14), 6: None}
    # national holidays that fall on weekdays are closed all day; Saturday closes at 14 (Rome time)
    for closed in (dt.datetime(2026, 6, 2, 10, tzinfo=ROME), dt.datetime(2026, 4, 6, 10, tzinfo=ROME),
                   dt.datetime(2026, 12, 8, 10, tzinfo=ROME), dt.datetime(2026, 11, 29, 10, tzinfo=ROME),
                   dt.datetime(2026, 11, 28, 14, 30, tzinfo=ROME), dt.datetime(2026, 11, 27, 7, 59, tzinfo=ROME)):
        assert not cal.is_open(closed), closed
    assert cal.is_open(dt.datetime(2026, 11, 27, 8, 0, tzinfo=ROME))
    # the holiday is skipped when computing the next opening
    assert cal.next_change(dt.datetime(2026, 12, 8, 10, tzinfo=ROME)) == dt.datetime(2026, 12, 9, 8, tzinfo=ROME)


def test_running_relay_drains_when_the_window_opens_and_serves_the_priority_lane_while_closed(make_env):
    friday = dt.datetime(2026, 12, 4, 12, 0, tzinfo=ROME)
    holiday = dt.datetime(2026, 12, 8, 10, 0, tzinfo=ROME)           # Immacolata, a Tuesday: closed
    opening = dt.datetime(2026, 12, 9, 8, 0, tzinfo=ROME)
    clock = RunningClock(friday)

    async def go():
        async with make_env(clock) as env:                                # answer_wait 0: answers when durable
            first = await env.broker.submit_issue(issue_input(0))
            await env.relay.run_once()                                    # Friday: issued
            cert = await env.store.get_request(first.request_id)
            assert cert.state == "ISSUED"
            ref = CertRef(cert.issuer_dn, cert.serial_hex)

            clock.set(holiday)
            await env.relay.start()                                       # from here on only the relay's own loop
            waiting = await env.broker.submit_issue(issue_input(1))
            sus = await env.broker.submit_change(ChangeInput("hold-" + uuid.uuid4().hex, "suspend", ref, "",
                                                             "RM-STATION-01", "RM", "op"))
            done = await asyncio.wait_for(_until(env, sus.request_id, "DONE"), HANG_GUARD_SECONDS)
            assert done.updated_at < opening.timestamp()                  # 24x7 lane: done on the holiday
            assert (await env.ca.status(ref)).state.value == "suspended"
            w = await env.store.get_request(waiting.request_id)
            assert w.state == "RECEIVED" and w.attempts == 0 and env.ca.issue_calls == 1
            reason = env.relay.waiting_reason(w)
            assert reason == f"outside the CA service window; opens {opening.astimezone(dt.timezone.utc).isoformat()}"

            # shortly before Wednesday 08:00; wake() only makes the relay re-read the (jumped) clock
            clock.set(opening - dt.timedelta(seconds=2.5))
            env.relay.wake()
            await asyncio.sleep(0.2)
            assert (await env.store.get_request(waiting.request_id)).state == "RECEIVED"   # still closed
            issued = await asyncio.wait_for(_until(env, waiting.request_id, "ISSUED"), HANG_GUARD_SECONDS)
            assert issued.updated_at >= opening.timestamp()              # drained by the window opening itself
            assert env.ca.issue_calls == 2
    asyncio.run(go())


async def _until(env, request_id: str, state: str):
    async for rec in env.broker.watch(request_id):
        if rec.state == state:
            return rec
    rec = await env.store.get_request(request_id)
    assert rec.state == state, rec
    return rec


def test_daemon_with_the_window_closed_queues_issuance_and_suspends_and_revokes(deployment, tmp_path):
    root = tmp_path / "cns"
    shutil.copytree(deployment.root, root, ignore=shutil.ignore_patterns("data*", "ca.db*", "*-status.toml"))
    cfg = root / "personalizer.toml"
    cfg.write_text(cfg.read_text().replace(
        "always_open = true", 'weekdays = "closed"\nsaturday = "closed"\nsunday = "closed"').replace(
        "answer_wait_seconds = 2.0", "answer_wait_seconds = 1.0"))
    loaded = config.load(cfg)
    assert not loaded.calendar.always_open and loaded.calendar.next_change(dt.datetime.now(dt.timezone.utc)) is None

    async def pre_issue():   # certificates issued earlier, while the window was open (straight into ca.db)
        ca = build_ca(loaded)
        await ca.open()
        try:
            return [await ca.issue("cns-auth", support.csr(), support.SUBJECT, f"earlier-{i}") for i in range(2)]
        finally:
            await ca.close()
    earlier = asyncio.run(pre_issue())

    d = helpers.DaemonProcess(cfg)
    tls = root / "tls"
    chans = [helpers.channel(d.port, tls, helpers.ClientCert((p / "client.pem").read_bytes(),
                                                             (p / "client.key.pem").read_bytes()))
             for p in (root / "admin", root / "stations" / "RM-STATION-01")]
    try:
        admin, station = (pb_grpc.PersonalizerStub(c) for c in chans)
        st = admin.GetCAStatus(pb.GetCAStatusRequest(), timeout=TIMEOUT)
        assert not st.service_window_open and st.operational and st.service_window_changes_at == 0
        queued = station.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
        assert queued.state == pb.REQUEST_STATE_RECEIVED and "outside the CA service window" in queued.waiting_reason

        def ref(i):
            return common_pb2.CertificateRef(issuer_dn=earlier[i].ref.issuer_dn,
                                             serial_hex=earlier[i].ref.serial_hex)
        s = admin.Suspend(pb.ChangeStatusRequest(request_id=str(uuid.uuid4()), certificate=ref(0)), timeout=TIMEOUT)
        assert s.change_state == pb.REQUEST_STATE_DONE and s.status == pb.CERTIFICATE_STATUS_SUSPENDED
        r = admin.Revoke(pb.ChangeStatusRequest(request_id=str(uuid.uuid4()), certificate=ref(1),
                                                reason="keyCompromise"), timeout=TIMEOUT)
        assert r.change_state == pb.REQUEST_STATE_DONE and r.status == pb.CERTIFICATE_STATUS_REVOKED
        still = station.GetRequest(pb.GetRequestRequest(request_id=queued.request_id), timeout=TIMEOUT)
        assert still.state == pb.REQUEST_STATE_RECEIVED and still.attempts == 0
        st = admin.GetCAStatus(pb.GetCAStatusRequest(), timeout=TIMEOUT)
        assert {q.lane: q.depth for q in st.queue_depth} == {"priority": 0, "standard": 1}
    finally:
        for c in chans:
            c.close()
        assert d.stop() == 0
