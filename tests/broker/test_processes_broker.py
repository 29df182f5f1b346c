"""Two processes of one daemon over one SQLite store (issue 16, ``[server] processes`` > 1), in this test's
process so that the test decides which process does what: the primary (``helper=0``, relay running)
and a helper (``helper=1``) whose relay is not running, so every request it accepts is delivered by
the primary's relay.

What callers rely on, whichever process their connection reached: a request accepted by one process and
delivered by another still answers ISSUED to its waiting caller (and to WatchRequest), not RECEIVED at
the end of the answer wait; GetCAStatus shows the CA calls of every process (the primary's Prometheus
endpoint reads the same); a maintenance window added through one process holds in every process by
the time AddMaintenance answers.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

from personalizer import config
from personalizer.outbox.windows import ServiceCalendar
from personalizer.records import STATE_ISSUED, AuditEntry
from personalizer.server import Daemon
from tests.personalizer import helpers
from tests.personalizer.test_broker import _input
from tests.personalizer.test_processes import _with_processes


def test_requests_watchers_status_and_maintenance_cross_processes(tmp_path):
    from personalizer import deploy
    dep = deploy.init_deployment(tmp_path / "d", listen="127.0.0.1:0", ca_key_bits=2048)
    _with_processes(dep, 2)
    cfg = config.load(dep.server_config)
    cfg = dataclasses.replace(cfg, calendar=ServiceCalendar(always_open=True),
                              broker=dataclasses.replace(cfg.broker, answer_wait_seconds=8))

    async def go():
        primary = await Daemon.build(cfg, serve=False)
        helper = await Daemon.build(cfg, serve=False, helper=1)
        await primary.start()
        helper.broker.follow_store()   # as Daemon.start does; its relay stays stopped
        try:
            t0 = time.monotonic()
            rec = await helper.broker.submit_issue(_input(helpers.csr_der(), request_id=str(uuid.uuid4())))
            took = time.monotonic() - t0
            assert rec.state == STATE_ISSUED, rec   # delivered by the primary, answered by the helper
            assert took < 4, took                   # well before the 8 s answer wait ran out
            # WatchRequest through the helper of a request the primary delivers: accepted without waiting
            # (as when the answer wait ran out), then followed to its end
            helper.broker._answer_wait = 0.0
            rec = await helper.broker.submit_issue(_input(helpers.csr_der(), request_id=str(uuid.uuid4())))
            assert rec.state != STATE_ISSUED
            states = [r.state async for r in helper.broker.watch(rec.request_id)]
            assert states[0] != STATE_ISSUED and states[-1] == STATE_ISSUED, states

            # both processes show both issuances, though only the primary's relay called the CA
            a, b = await primary.broker.ca_status(), await helper.broker.ca_status()
            assert [(k.kind, k.samples) for k in a.per_kind] == [(k.kind, k.samples) for k in b.per_kind] == \
                [("issue", 2)]
            assert primary.relay.metrics.totals_now() == helper.relay.metrics.totals_now() == {("issue", "ok"): 2}

            # a maintenance window added through the helper holds in the primary once the call returns
            now = time.time()
            await helper.broker.add_maintenance(
                "m-cross", now - 1, now + 600, "cross-process", "admin",
                audit=AuditEntry("urn:test", "", "maintenance-add", None, "", "done"))
            assert primary.relay.active_maintenance() is not None
            assert "standard" not in primary.relay.lanes_open()
            assert (await primary.broker.ca_status()).in_maintenance
        finally:
            await helper.broker.stop_following()
            await helper.stop(0)
            await primary.stop(0)
    asyncio.run(asyncio.wait_for(go(), 120))
