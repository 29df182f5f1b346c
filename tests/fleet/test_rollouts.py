"""Rollouts that halt themselves (issue 15 item 3), end to end: real agents on real mTLS streams, the
rollout engine in the server, attestations signed by (TEST) device keys under a model CA."""
from __future__ import annotations

import asyncio
import contextlib

from agent.fleet import DeviceInfo, FleetAgent, Options
from personalizer.fleet.attestation import ModelRoots
from proto.cns.v1 import fleet_pb2 as pb, fleet_pb2_grpc
from tests.fleet import support

FAST = Options(initial_backoff=0.2, max_backoff=1.0, jitter=0.2, min_stream_seconds=0, welcome_timeout=5,
               call_timeout=5)
MODEL = "tok-a"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


def inventory(i: int) -> support.FakeInventory:
    return support.FakeInventory(readers=[], devices=[DeviceInfo(serial=f"TK-{i}", kind="token", model=MODEL,
                                                                 token_release="r1")])


def spec(**kw) -> pb.FleetRolloutSpec:
    base = dict(name="r2 to tok-a", release="r2", model=MODEL, rate_per_minute=1000, timeout_seconds=600)
    base.update(kw)
    return pb.FleetRolloutSpec(**base)


@contextlib.asynccontextmanager
async def fleet(deployment, tmp_path, executors, *, port=0, connect=True):
    ca = executors[0].ca if executors else support.ModelCA(MODEL)
    async with support.fleet_server(deployment, tmp_path / "db.sqlite", port=port, heartbeat_seconds=1,
                                    tick_seconds=0.2, model_roots=ModelRoots({MODEL: ca.cert})) as (p, f):
        tasks = []
        if connect:
            for i, ex in enumerate(executors):
                cfg = support.station(deployment, tmp_path / f"st{i}", p, sid=f"ST-{i}")
                tasks.append(asyncio.create_task(FleetAgent(cfg, inventory(i), ex, version="1", options=FAST).run()))
            await support.until(lambda: len(f.hub) == len(executors), what="all agents connected")
        ch = support.aio_channel(deployment, p, support.admin_cert(deployment))
        try:
            yield fleet_pb2_grpc.FleetAdminStub(ch), f, p
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ch.close()


async def _final(admin, rid, *states):
    async def check():
        st = await admin.GetRollout(pb.FleetRolloutRef(rollout_id=rid))
        return st if st.state in states else None
    return await support.until(check, timeout=30, what=f"rollout in {states}")


def test_attested_successes_complete_a_rollout_group_by_group(deployment, tmp_path):
    ca = support.ModelCA(MODEL)
    exs = [support.TokenExecutor(ca) for _ in range(4)]

    async def go():
        async with fleet(deployment, tmp_path, exs) as (admin, f, _):
            st = await admin.CreateRollout(spec(group_size=2))
            assert st.total == 4 and st.state == pb.FLEET_ROLLOUT_RUNNING
            done = await _final(admin, st.rollout_id, pb.FLEET_ROLLOUT_COMPLETED)
            assert dict(done.counts) == {"succeeded": 4}
            assert sorted(t.group for t in done.targets) == [0, 0, 1, 1]
            # group 1 was sent only after group 0 finished
            cmds = {t.device_serial: await f.store.get_command(t.command_id) for t in done.targets}
            first = max(c.updated for s, c in cmds.items() if s in ("TK-0", "TK-1"))
            second = min(c.created for s, c in cmds.items() if s in ("TK-2", "TK-3"))
            assert second >= first
    run(go())


def test_a_host_reporting_success_without_installing_counts_as_failed_and_trips_the_abort(deployment, tmp_path):
    ca = support.ModelCA(MODEL)
    exs = [support.TokenExecutor(ca, honest=False) for _ in range(3)] + [support.TokenExecutor(ca)
                                                                          for _ in range(3)]

    async def go():
        async with fleet(deployment, tmp_path, exs) as (admin, f, _):
            st = await admin.CreateRollout(spec(group_size=3, abort=[pb.FleetAbortCriterion(
                kind=pb.FLEET_FAILURE_FAILED, threshold_percent=50, min_executed=2)]))
            done = await _final(admin, st.rollout_id, pb.FLEET_ROLLOUT_ABORTED)
            assert "failed ≥ 50% tripped" in done.reason
            assert done.counts["failed"] >= 2 and "succeeded" not in done.counts
            failed = [t for t in done.targets if t.state == "failed"]
            assert all("without a valid attestation: no attestation" in t.message for t in failed)
            # nothing more was sent: the honest stations of group 1 never ran anything
            await asyncio.sleep(1.0)
            assert all(not ex.ran for ex in exs[3:])
            assert {t.state for t in done.targets if t.group == 1} == {"cancelled"}
    run(go())


def test_a_replayed_attestation_is_refused(deployment, tmp_path):
    ca = support.ModelCA(MODEL)
    ex = support.TokenExecutor(ca, replay=True)

    async def go():
        async with fleet(deployment, tmp_path, [ex]) as (admin, f, _):
            first = await _final(admin, (await admin.CreateRollout(spec())).rollout_id, pb.FLEET_ROLLOUT_COMPLETED)
            assert dict(first.counts) == {"succeeded": 1}
            # the next release's command gets the r2 attestation again: signed by the device, but not for this
            second = await admin.CreateRollout(spec(release="r3"))
            done = await _final(admin, second.rollout_id, pb.FLEET_ROLLOUT_COMPLETED)
            assert dict(done.counts) == {"failed": 1}
            assert "another command (a replayed attestation)" in done.targets[0].message
    run(go())


def test_rate_pause_resume_cancel_and_a_restart_resumes_the_rollout(deployment, tmp_path):
    """Stations offline: commands stay pending (undelivered). Rate 2/min sends 2 of 5; pause withdraws
    them; resume sends again; a daemon restart keeps it all; cancel stops it."""
    ca = support.ModelCA(MODEL)
    exs = [support.TokenExecutor(ca) for _ in range(5)]

    async def go():
        port = support.free_port()
        async with fleet(deployment, tmp_path, exs, port=port) as (admin, f, _):
            pass   # inventory recorded; agents gone
        async with fleet(deployment, tmp_path, exs, port=port, connect=False) as (admin, f, _):
            st = await admin.CreateRollout(spec(rate_per_minute=2))
            rid = st.rollout_id
            assert dict(st.counts) == {"sent": 2, "waiting": 3}
            await asyncio.sleep(0.5)   # ticks: the rate holds
            assert dict((await admin.GetRollout(pb.FleetRolloutRef(rollout_id=rid))).counts) == {"sent": 2,
                                                                                                 "waiting": 3}
            paused = await admin.PauseRollout(pb.FleetRolloutRef(rollout_id=rid))
            assert paused.state == pb.FLEET_ROLLOUT_PAUSED and dict(paused.counts) == {"waiting": 5}
            cancelled = [c for c in await f.store.open_commands("urn:cns:station:RM:ST-0")]
            assert cancelled == []   # the withdrawn command is not delivered later
            resumed = await admin.ResumeRollout(pb.FleetRolloutRef(rollout_id=rid))
            assert resumed.state == pb.FLEET_ROLLOUT_RUNNING
        async with fleet(deployment, tmp_path, exs, port=port, connect=False) as (admin, f, _):
            st = await admin.GetRollout(pb.FleetRolloutRef(rollout_id=rid))
            assert st.state == pb.FLEET_ROLLOUT_RUNNING and st.total == 5
            gone = await admin.CancelRollout(pb.FleetRolloutRef(rollout_id=rid))
            assert gone.state == pb.FLEET_ROLLOUT_CANCELLED and set(gone.counts) == {"cancelled"}
            assert [r.rollout_id for r in (await admin.ListRollouts(pb.FleetListRolloutsRequest(
                active_only=True))).rollouts] == []
    run(go())


def test_a_rollout_that_matches_nothing_or_asks_nonsense_is_refused(deployment, tmp_path):
    import grpc
    import pytest

    async def go():
        async with fleet(deployment, tmp_path, [], connect=False) as (admin, f, _):
            for bad, code, words in (
                    (spec(model="nope"), grpc.StatusCode.FAILED_PRECONDITION, "no device"),
                    (spec(model=""), grpc.StatusCode.INVALID_ARGUMENT, "at least one filter"),
                    (spec(rate_per_minute=5000), grpc.StatusCode.INVALID_ARGUMENT, "rate_per_minute"),
                    (spec(rate_factor=2), grpc.StatusCode.INVALID_ARGUMENT, "grow_after_successes"),
                    (spec(abort=[pb.FleetAbortCriterion(kind=1, threshold_percent=10)]),
                     grpc.StatusCode.INVALID_ARGUMENT, "min_executed")):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await admin.CreateRollout(bad)
                assert e.value.code() == code and words in e.value.details(), e.value.details()
            assert (await admin.ListRollouts(pb.FleetListRolloutsRequest())).rollouts == []
    run(go())
