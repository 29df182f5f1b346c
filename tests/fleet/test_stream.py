"""Fleet.Connect end to end over real mTLS (issue 15 item 1): hello and inventory under the certificate's
identity, commands down with ack/progress/result, reconnect after a daemon restart, tinyproxy in between,
and the polling fallback when the proxy breaks streams."""
from __future__ import annotations

import asyncio
import shutil

import pytest

from agent.fleet import FleetAgent, Options
from personalizer.fleet import store as fs
from proto.cns.v1 import fleet_pb2 as pb, fleet_pb2_grpc
from tests.conftest import require
from tests.fleet import support

FAST = Options(initial_backoff=0.2, max_backoff=1.0, jitter=0.2, min_stream_seconds=0, welcome_timeout=5,
               call_timeout=5)
STATION = "urn:cns:station:RM:RM-ST-1"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _admin(deployment, port):
    ch = support.aio_channel(deployment, port, support.admin_cert(deployment))
    return ch, fleet_pb2_grpc.FleetAdminStub(ch)


async def _state(admin, command_id):
    return (await admin.GetCommand(pb.FleetCommandRef(command_id=command_id))).state


def test_hello_files_the_inventory_under_the_certificate_identity_and_commands_run(deployment, tmp_path):
    async def go():
        async with support.fleet_server(deployment, tmp_path / "db.sqlite", heartbeat_seconds=1) as (port, fleet):
            cfg = support.station(deployment, tmp_path / "st", port)
            ex = support.FakeExecutor(gate=asyncio.Event())
            agent = FleetAgent(cfg, support.FakeInventory(), ex, version="1.2.3", options=FAST)
            task = asyncio.create_task(agent.run())
            ch, admin = await _admin(deployment, port)
            try:
                await support.until(lambda: fleet.hub.is_connected(STATION), what="the agent's stream")
                assert agent.stats.station == STATION and agent.stats.mode == "streaming"
                stations = await admin.ListStations(pb.FleetInventoryQuery(chamber="RM"))
                assert [(s.station, s.agent_version, s.connected, s.device_count) for s in stations.stations] == [
                    (STATION, "1.2.3", True, 1)]
                devices = await admin.ListDevices(pb.FleetInventoryQuery(model="infocamere-cns-2048"))
                assert devices.devices[0].device.serial == "7420000000000001"
                soon = await admin.ExpiringCertificates(pb.FleetExpiringQuery(within_days=30))
                late = await admin.ExpiringCertificates(pb.FleetExpiringQuery(within_days=10))
                assert [c.keyset for c in soon.certificates] == ["cns-auth"] and not late.certificates

                st = await admin.SendCommand(pb.FleetSendCommandRequest(
                    station=STATION, kind=pb.FLEET_COMMAND_INSTALL_RELEASE, release="2026.12"))
                await support.until(lambda: _state(admin, st.command_id), what="a state")
                got = await support.until(
                    lambda: _is(admin, st.command_id, pb.FLEET_COMMAND_RUNNING), what="progress")
                assert got.percent == 50 and got.message == "half way"
                ex.gate.set()
                done = await support.until(lambda: _is(admin, st.command_id, pb.FLEET_COMMAND_SUCCEEDED),
                                           what="the result")
                assert done.percent == 100 and ex.ran == [st.command_id]

                # hotplug: the card leaves, a token arrives
                agent.report_delta(present=[support.DeviceInfo(serial="TK-1", kind="token", model="tok")],
                                   removed=["7420000000000001"])
                await support.until(lambda: _serials(admin), what="the delta")
                assert await _serials(admin) == ["TK-1"]
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await ch.close()
    run(go())


async def _is(admin, command_id, state):
    st = await admin.GetCommand(pb.FleetCommandRef(command_id=command_id))
    return st if st.state == state else None


async def _serials(admin):
    got = [d.device.serial for d in (await admin.ListDevices(pb.FleetInventoryQuery())).devices]
    return got if got != ["7420000000000001"] else []


def test_a_refused_command_is_rejected_and_not_run(deployment, tmp_path):
    async def go():
        async with support.fleet_server(deployment, tmp_path / "db.sqlite") as (port, fleet):
            cfg = support.station(deployment, tmp_path / "st", port)
            ex = support.FakeExecutor(refuse={pb.FLEET_COMMAND_COLLECT_LOGS})
            task = asyncio.create_task(FleetAgent(cfg, support.FakeInventory(), ex, version="1", options=FAST).run())
            ch, admin = await _admin(deployment, port)
            try:
                await support.until(lambda: fleet.hub.is_connected(STATION))
                st = await admin.SendCommand(pb.FleetSendCommandRequest(station=STATION,
                                                                        kind=pb.FLEET_COMMAND_COLLECT_LOGS))
                got = await support.until(lambda: _is(admin, st.command_id, pb.FLEET_COMMAND_REJECTED))
                assert got.message == "this agent does not do that" and ex.ran == []
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await ch.close()
    run(go())


def test_after_a_daemon_restart_the_agent_reconnects_and_gets_what_is_pending(deployment, tmp_path):
    """The command is created while the agent is cut off; it is in the store, not in the dead stream."""
    async def go():
        port = support.free_port()
        db = tmp_path / "db.sqlite"
        cfg = support.station(deployment, tmp_path / "st", port)
        ex = support.FakeExecutor()
        agent = FleetAgent(cfg, support.FakeInventory(), ex, version="1", options=FAST)
        task = asyncio.create_task(agent.run())
        try:
            async with support.fleet_server(deployment, db, port=port) as (_, fleet):
                await support.until(lambda: fleet.hub.is_connected(STATION))
            assert agent.stats.welcomes == 1
            await asyncio.sleep(0.5)   # the agent is now backing off against a closed port
            async with support.fleet_server(deployment, db, port=port) as (_, fleet):
                ch, admin = await _admin(deployment, port)
                st = await admin.SendCommand(pb.FleetSendCommandRequest(station=STATION,
                                                                        kind=pb.FLEET_COMMAND_RENEW_DUE))
                await support.until(lambda: _is(admin, st.command_id, pb.FLEET_COMMAND_SUCCEEDED), what="delivery")
                assert agent.stats.welcomes >= 2 and ex.ran == [st.command_id]
                await ch.close()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    run(go())


@pytest.fixture
def tinyproxy_ok():
    require([] if shutil.which("tinyproxy") else ["tinyproxy (apt-get install tinyproxy)"])


def test_the_stream_goes_through_an_http_connect_proxy_with_mtls_end_to_end(deployment, tmp_path, tinyproxy_ok):
    proxy = support.start_tinyproxy(tmp_path)
    try:
        async def go():
            async with support.fleet_server(deployment, tmp_path / "db.sqlite") as (port, fleet):
                cfg = support.station(deployment, tmp_path / "st", port, proxy=proxy.url)
                agent = FleetAgent(cfg, support.FakeInventory(), support.FakeExecutor(), version="1", options=FAST)
                task = asyncio.create_task(agent.run())
                try:
                    await support.until(lambda: agent.stats.mode == "streaming")
                    # the server read the station's identity from its certificate: TLS ran end to end
                    assert agent.stats.station == STATION and agent.stats.mode == "streaming"
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                return port
        port = run(go())
        assert f"localhost:{port}" in proxy.log.read_text(), "the connection did not go through tinyproxy"
    finally:
        proxy.stop()


def test_when_the_proxy_breaks_streams_the_agent_polls_and_commands_still_complete(deployment, tmp_path,
                                                                                   tinyproxy_ok):
    """tinyproxy closes a tunnel idle for 2 s; heartbeats every 5 s cannot keep a stream alive through it."""
    proxy = support.start_tinyproxy(tmp_path, idle_timeout=2)
    try:
        async def go():
            async with support.fleet_server(deployment, tmp_path / "db.sqlite", heartbeat_seconds=5,
                                            poll_seconds=1) as (port, fleet):
                cfg = support.station(deployment, tmp_path / "st", port, proxy=proxy.url)
                ex = support.FakeExecutor()
                agent = FleetAgent(cfg, support.FakeInventory(), ex, version="1",
                                   options=Options(initial_backoff=0.2, max_backoff=1, jitter=0.2,
                                                   min_stream_seconds=4, welcome_timeout=5, call_timeout=5))
                task = asyncio.create_task(agent.run())
                ch, admin = await _admin(deployment, port)
                try:
                    await support.until(lambda: agent.stats.mode == "polling", timeout=30, what="polling")
                    st = await admin.SendCommand(pb.FleetSendCommandRequest(station=STATION,
                                                                            kind=pb.FLEET_COMMAND_REFRESH_INVENTORY))
                    await support.until(lambda: _is(admin, st.command_id, pb.FLEET_COMMAND_SUCCEEDED),
                                        timeout=20, what="the polled command's result")
                    assert ex.ran == [st.command_id] and agent.stats.polls >= 2 and agent.stats.streams >= 1
                    stations = await admin.ListStations(pb.FleetInventoryQuery())
                    assert stations.stations[0].station == STATION
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    await ch.close()
        run(go())
        assert "Idle Timeout" in proxy.log.read_text(), "tinyproxy did not break the stream; the test proves nothing"
    finally:
        proxy.stop()


def test_a_broadcast_reaches_every_matching_station_and_no_other(deployment, tmp_path):
    async def go():
        async with support.fleet_server(deployment, tmp_path / "db.sqlite") as (port, fleet):
            exs, tasks = {}, []
            for sid, chamber in (("A", "RM"), ("B", "RM"), ("C", "MI")):
                cfg = support.station(deployment, tmp_path / sid, port, sid=sid, chamber=chamber)
                exs[sid] = support.FakeExecutor()
                tasks.append(asyncio.create_task(FleetAgent(cfg, support.FakeInventory(), exs[sid], version="1",
                                                            options=FAST).run()))
            ch, admin = await _admin(deployment, port)
            try:
                await support.until(lambda: len(fleet.hub) == 3)
                r = await admin.BroadcastCommand(pb.FleetBroadcastRequest(
                    query=pb.FleetInventoryQuery(chamber="RM"), kind=pb.FLEET_COMMAND_REFRESH_INVENTORY))
                assert r.commands == 2
                await support.until(lambda: exs["A"].ran and exs["B"].ran, what="both RM stations")
                await asyncio.sleep(0.3)
                assert exs["C"].ran == []
                import grpc
                with pytest.raises(grpc.aio.AioRpcError) as e:   # a release goes out by a rollout only
                    await admin.BroadcastCommand(pb.FleetBroadcastRequest(kind=pb.FLEET_COMMAND_INSTALL_RELEASE,
                                                                          release="r9"))
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await ch.close()
    run(go())


def test_a_station_agent_reports_its_registry_and_follows_hotplug(deployment, tmp_path):
    """agent.fleet.station over the real DeviceRegistry, fed as the PC/SC monitor feeds it."""
    import threading

    from agent.devices.registry import DeviceRegistry
    from agent.fleet.station import run_station

    async def go():
        reg = DeviceRegistry()
        reg.card_inserted("Virtual PCD 00 00", b"\x3b\x00", supported=True, model_id="infocamere-cns-2048")
        reg.card_read("Virtual PCD 00 00", serial="7420000000000009", holder_label="ROSSI MARIO", blank=False)
        async with support.fleet_server(deployment, tmp_path / "db.sqlite") as (port, fleet):
            cfg = support.station(deployment, tmp_path / "st", port)
            task = asyncio.create_task(run_station(cfg, reg, version="4.0", options=FAST))
            ch, admin = await _admin(deployment, port)

            async def serials():
                return sorted(d.device.serial for d in (await admin.ListDevices(pb.FleetInventoryQuery())).devices)
            try:
                await support.until(lambda: fleet.hub.is_connected(STATION))
                assert await serials() == ["7420000000000009"]
                st = (await admin.ListStations(pb.FleetInventoryQuery())).stations[0]
                assert list(st.readers) == ["Virtual PCD 00 00"]
                # hotplug from the monitor's thread: the card leaves, a second reader with a card arrives
                def monitor():
                    reg.card_removed("Virtual PCD 00 00")
                    reg.card_inserted("Virtual PCD 01 00", b"\x3b\x01", supported=True, model_id="m2")
                    reg.card_read("Virtual PCD 01 00", serial="7420000000000010", holder_label="X", blank=False)
                t = threading.Thread(target=monitor)
                t.start()
                t.join()
                await support.until(lambda: _eq(serials, ["7420000000000010"]), what="the hotplug deltas")
                st = (await admin.ListStations(pb.FleetInventoryQuery())).stations[0]
                assert sorted(st.readers) == ["Virtual PCD 00 00", "Virtual PCD 01 00"]
                ok = await admin.SendCommand(pb.FleetSendCommandRequest(station=STATION,
                                                                        kind=pb.FLEET_COMMAND_REFRESH_INVENTORY))
                no = await admin.SendCommand(pb.FleetSendCommandRequest(station=STATION,
                                                                        kind=pb.FLEET_COMMAND_COLLECT_LOGS))
                await support.until(lambda: _is(admin, ok.command_id, pb.FLEET_COMMAND_SUCCEEDED))
                got = await support.until(lambda: _is(admin, no.command_id, pb.FLEET_COMMAND_REJECTED))
                assert "not supported by this agent version yet" in got.message
                rows = await fleet.store.list_devices(fs.Query())
                assert all("ROSSI" not in repr(r) for r in rows.rows)   # no holder data left the station
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await ch.close()
    run(go())


async def _eq(fn, want):
    return (await fn()) == want


def test_heartbeats_move_last_seen_written_in_batches(deployment, tmp_path):
    async def go():
        async with support.fleet_server(deployment, tmp_path / "db.sqlite", heartbeat_seconds=1,
                                        seen_flush_seconds=0.3) as (port, fleet):
            cfg = support.station(deployment, tmp_path / "st", port)
            task = asyncio.create_task(FleetAgent(cfg, support.FakeInventory(), support.FakeExecutor(), version="1",
                                                  options=FAST).run())
            try:
                await support.until(lambda: fleet.hub.is_connected(STATION))
                first = (await fleet.store.get_station(STATION)).last_seen
                later = await support.until(lambda: _later(fleet, first + 1.5), what="a later heartbeat recorded")
                assert later.last_seen >= first + 1.5
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    run(go())


async def _later(fleet, t):
    st = await fleet.store.get_station(STATION)
    return st if st.last_seen >= t else None


def test_a_stream_the_server_ends_cleanly_is_reopened_not_replaced_by_polling(deployment, tmp_path):
    """A daemon that stops (or hands its agents over) ends streams with OK: that is no broken proxy, so the
    agent opens a stream again even when the last one was short."""
    async def go():
        async with support.fleet_server(deployment, tmp_path / "db.sqlite") as (port, fleet):
            cfg = support.station(deployment, tmp_path / "st", port)
            opts = Options(initial_backoff=0.2, max_backoff=1.0, jitter=0.2, min_stream_seconds=60)
            agent = FleetAgent(cfg, support.FakeInventory(), support.FakeExecutor(), version="1", options=opts)
            task = asyncio.create_task(agent.run())
            try:
                await support.until(lambda: agent.stats.welcomes == 1)
                assert fleet.hub.close_all() == 1
                await support.until(lambda: agent.stats.welcomes == 2, what="a second welcome")
                assert agent.stats.mode == "streaming" and agent.stats.polls == 0
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    run(go())


def test_a_refused_stream_backs_off_without_polling(deployment, tmp_path):
    """A refusal (here: too many hellos) is not a proxy problem: no poll, exponential backoff."""
    async def go():
        async with support.fleet_server(deployment, tmp_path / "db.sqlite", hellos_per_minute=1) as (port, fleet):
            cfg = support.station(deployment, tmp_path / "st", port)
            agent = FleetAgent(cfg, support.FakeInventory(), support.FakeExecutor(), version="1", options=FAST)
            task = asyncio.create_task(agent.run())
            try:
                await support.until(lambda: agent.stats.welcomes == 1)
                fleet.hub.close_all()
                await support.until(lambda: agent.stats.streams >= 3, what="stream attempts")
                assert agent.stats.polls == 0 and "RESOURCE_EXHAUSTED" in agent.stats.last_error
                # the failed attempts by reason (what scripts/bench fleet reports for a reconnect storm)
                refused = {r: n for r, n in agent.stats.failures.items() if r.startswith("RESOURCE_EXHAUSTED")}
                assert sum(refused.values()) >= 1 and all("hellos a minute" in r for r in refused), refused
                assert 0 < agent.stats.welcome_seconds < 5
                # the server's side: one accepted hello timed per stage, on the metrics endpoint's families
                from prometheus_client import CollectorRegistry, generate_latest
                reg = CollectorRegistry()
                reg.register(fleet.collector())
                text = generate_latest(reg).decode()
                for stage in ("wait", "record"):
                    assert f'cns_fleet_hello_seconds_count{{stage="{stage}"}} 1.0' in text, text
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    run(go())


def test_a_stopping_daemon_spreads_its_fleets_reconnect_over_a_window_scaled_by_its_streams(deployment, tmp_path):
    """Ended by a daemon that stops, every agent used to come back within ``jitter`` (2 s): the whole fleet in
    one burst onto the restarted daemon or the surviving instance. The daemon now says in the stream's
    trailing metadata how long to spread reconnects over (its streams / ``reconnect_admit_per_second``), and
    the agent pauses a random time within that window; a hostile or garbled hint is bounded or ignored."""
    from agent.fleet.client import MAX_RECONNECT_SPREAD, _spread_hint

    async def go():
        async with support.fleet_server(deployment, tmp_path / "db.sqlite", reconnect_admit_per_second=2.0) as (
                port, fleet):
            agents = [FleetAgent(support.station(deployment, tmp_path / f"st{i}", port, sid=f"RM-ST-{i}"),
                                 support.FakeInventory(), support.FakeExecutor(), version="1", options=FAST)
                      for i in range(3)]
            tasks = [asyncio.create_task(a.run()) for a in agents]
            try:
                await support.until(lambda: all(a.stats.welcomes == 1 for a in agents))
                assert fleet.close_streams() == 3
                # 3 streams at 2 per second: reconnects spread over 1.5 s
                await support.until(lambda: all(a.stats.reconnect_spread == 1.5 for a in agents),
                                    what="the spread hint")
                await support.until(lambda: all(a.stats.welcomes == 2 for a in agents), what="reconnected")
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    run(go())
    assert _spread_hint((("cns-reconnect-spread-ms", "1500"),)) == 1.5
    assert _spread_hint((("cns-reconnect-spread-ms", str(10 ** 12)),)) == MAX_RECONNECT_SPREAD
    assert _spread_hint((("cns-reconnect-spread-ms", "-5"),)) == 0.0
    assert _spread_hint((("cns-reconnect-spread-ms", "soon"),)) == 0.0 and _spread_hint(None) == 0.0
