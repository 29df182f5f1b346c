"""Undecodable and mutated protobuf on every RPC: INVALID_ARGUMENT (or the handler's own answer), never
UNKNOWN/INTERNAL, no traceback in the log, no crash, bounded RSS (issue 10 items 7 and 10).

Every method of every service the daemon serves, on its mTLS port (Personalizer, QueueAdmin,
Registrations, StationAdmin, CardAdmin, Fleet, FleetAdmin, health, reflection) and its enrollment port
(StationEnrollment, HolderRenewal), with ``[enrollment]``, ``[card_admin]`` and the fleet on
(``tests.fuzz.targets``, ``tests.fuzz.campaign``): answered with an expected code and one clear line,
refused for the wrong identity, refusals leaving the stores as they were, no secret in the log or the
stores. The personalizer is a daemon subprocess; the agent's local API runs in process on its Unix
socket. The sample is bounded for CI; ``scripts/bench fuzz`` runs the long version.
"""
from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.api.server import start_server
from tests.fuzz import campaign, protofuzz
from tests.fuzz.targets import (ADMIN, AGENT, ENROLL, HEALTH, MAIN, PERSONALIZER, PORTS, agent_service,
                                declared_services, seeds_for)

MALFORMED = [b"\xff\xff\xff", b"\x0a\x05ab", b"\x08", b"\x0b" * 300, b"\x0a\xff\xff\xff\xff\x0f"]
PER_METHOD = 28          # 4 of each case kind
RSS_SLACK_KIB = 24 * 1024



def assert_clean(tally: protofuzz.Tally, log_text: str) -> None:
    assert tally.bad == 0, "UNKNOWN/INTERNAL answers:\n" + "\n".join(tally.findings)
    assert "Traceback" not in log_text and "Unexpected [" not in log_text, log_text[-3000:]


async def _malformed(channel, methods, sync_channel=None):
    """``channel``: one channel, or a function of the method giving (aio channel, sync channel or None)."""
    answers = []
    for m in methods:
        for payload in MALFORMED:
            ch, sync = channel(m) if callable(channel) else (channel, sync_channel)
            code, details = await protofuzz._one(ch, m, payload, 5, sync)
            answers.append((m.path, payload, code, details))
    return answers


def _check_malformed(answers) -> None:
    for path, payload, code, details in answers:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (path, payload, code, details)
        assert "is not a valid cns.v1." in details or "is not a valid grpc." in details, details
        assert "\n" not in details and "DecodeError" not in details, details


def test_personalizer_answers_malformed_protobuf_with_invalid_argument(fuzz_daemon):
    async def scenario():
        clients = campaign.Clients(fuzz_daemon)
        try:
            return await _malformed(clients.pick, MAIN + ENROLL)
        finally:
            await clients.close()
    already = len(fuzz_daemon.log())
    answers = asyncio.run(scenario())
    _check_malformed(answers)
    assert {a[0] for a in answers} == {m.path for m in MAIN + ENROLL}
    assert any("SubmitIssueRequest" in a[3] for a in answers)
    assert any("FleetAgentMessage" in a[3] for a in answers) and any("EnrollRequest" in a[3] for a in answers)
    log_text = fuzz_daemon.log()[already:]
    assert "Traceback" not in log_text and "Unexpected [" not in log_text, log_text[-3000:]
    # one line per method for the five malformed requests (rate-limited), none for the ones before this test
    line = "refused an undecodable cns.v1.SubmitIssueRequest on /cns.v1.Personalizer/SubmitIssue"
    assert log_text.count(line) <= 1 and line in fuzz_daemon.log()


def test_streaming_input_is_decoded_in_the_call_too(fuzz_daemon):
    """Reflection (client-streaming input) still works behind the decoder, and a malformed message in
    its stream gets INVALID_ARGUMENT."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async def scenario():
        async with fuzz_daemon.channel("station") as ch:
            async def one():
                yield reflection_pb2.ServerReflectionRequest(list_services="")
            answers = [r async for r in reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(one())]

            async def junk():
                yield b"\xff\xff"
            try:
                [r async for r in ch.stream_stream(
                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")(junk())]
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details()
            return answers, code, details
    answers, code, details = asyncio.run(scenario())
    assert "cns.v1.Personalizer" in [s.name for s in answers[0].list_services_response.service]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ServerReflectionRequest" in details, (code, details)


def test_personalizer_protobuf_fuzz(fuzz_daemon):
    async def scenario():
        async with fuzz_daemon.channel("station") as st, fuzz_daemon.channel("admin") as ad:
            warm = await protofuzz.fuzz(st, PERSONALIZER, per_method=7, seed=1, seeds=seeds_for(PERSONALIZER),
                                        timeout=3)
            rss_before = fuzz_daemon.rss_kib()
            tally = await protofuzz.fuzz(st, PERSONALIZER + HEALTH, per_method=PER_METHOD, seed=2,
                                         seeds=seeds_for(PERSONALIZER), timeout=3)
            tally.merge(await protofuzz.fuzz(ad, ADMIN + PERSONALIZER, per_method=PER_METHOD // 2, seed=3,
                                             seeds=seeds_for(PERSONALIZER), timeout=3))
            tally.merge(warm)
            return tally, rss_before, fuzz_daemon.rss_kib()
    tally, before, after = asyncio.run(scenario())
    assert fuzz_daemon.proc.poll() is None, "the daemon died under the fuzz"
    assert_clean(tally, fuzz_daemon.log())
    assert tally.codes["INVALID_ARGUMENT"] > tally.requests // 3, tally.codes
    assert after - before < RSS_SLACK_KIB, f"RSS grew {after - before} KiB over {tally.requests} requests"


def test_agent_local_api_answers_malformed_protobuf_and_survives_a_fuzz(tmp_path, caplog):
    sock = tmp_path / "run" / "agent.sock"
    caplog.set_level(logging.INFO)

    async def scenario():
        server = await start_server(sock, agent_service(sock))
        try:
            async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
                answers = await _malformed(ch, AGENT)
                tally = await protofuzz.fuzz(ch, AGENT, per_method=PER_METHOD, seed=4, timeout=3)
        finally:
            await server.stop(1)
        return answers, tally
    answers, tally = asyncio.run(scenario())
    _check_malformed(answers)
    tracebacks = [r for r in caplog.records if r.exc_info or r.name.startswith("grpc")]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    assert_clean(tally, caplog.text)
    assert tally.requests == len(AGENT) * PER_METHOD


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_personalizer_protobuf_fuzz_long_run(fuzz_daemon):
    """Every method of both ports, 20 times the CI sample (``scripts/bench fuzz`` runs more)."""
    async def scenario():
        clients = campaign.Clients(fuzz_daemon, fleet_stations=32)
        try:
            return await campaign.fuzz_all(clients, per_method=SERVED_PER_METHOD * 20, seed=12, timeout=3)
        finally:
            await clients.close()
    tally = asyncio.run(scenario())
    assert fuzz_daemon.proc.poll() is None
    assert tally.unexpected == 0 and tally.unclear == 0, "\n".join(tally.findings)
    assert_clean(tally, fuzz_daemon.log())


# --- every service of the daemon (issue 10 item 10) -------------------------------------------------

SERVED_PER_METHOD = 28   # 4 of each case kind, on each of the 57 methods of both ports
# Handlers the well-formed seeds reach (an OK answer), so the fuzz laid over them is not all decoder refusals.
REACHED = ("/cns.v1.Personalizer/GetCAStatus", "/cns.v1.Registrations/RegisterHolder",
           "/cns.v1.StationAdmin/AddStation", "/cns.v1.CardAdmin/LoadBatch", "/cns.v1.Fleet/Connect",
           "/cns.v1.Fleet/Poll", "/cns.v1.FleetAdmin/ListStations",
           "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")


def test_every_declared_service_is_a_fuzz_target():
    """A service added to a .proto must be placed on a port in ``targets.PORTS`` (and so is fuzzed)."""
    placed = [name for names in PORTS.values() for name in names]
    assert len(placed) == len(set(placed)), placed
    assert set(placed) == set(declared_services()), (set(declared_services()) ^ set(placed))
    assert len(MAIN) == sum(len(declared_services()[n].methods) for n in PORTS["main"])


def test_each_port_serves_exactly_its_targets(fuzz_daemon, tmp_path):
    """Probed over the wire with every method the generated code declares: what a port serves is what
    the fuzz covers for it, and every method of a served service is there (no "Method not found")."""
    everything = [m for svc in declared_services().values() for m in protofuzz.methods_of(svc.file, svc.name)]

    async def scenario():
        clients = campaign.Clients(fuzz_daemon)
        try:
            answers = {port: await campaign.probe(clients, port, everything) for port in ("main", "enroll")}
        finally:
            await clients.close()
        sock = tmp_path / "run" / "agent.sock"
        server = await start_server(sock, agent_service(sock))
        try:
            async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
                answers["agent"] = {}
                for m in everything:
                    code, details = await protofuzz._one(ch, m, b"", 5)
                    answers["agent"][m.path] = f"{code.name} {details}"
        finally:
            await server.stop(1)
        return answers
    answers = asyncio.run(scenario())
    for port, by_path in answers.items():
        served = {p.split("/")[1] for p, a in by_path.items() if "Method not found" not in a}
        assert served == set(PORTS[port]), (port, served ^ set(PORTS[port]))
        for name in served:
            missing = [p for p, a in by_path.items() if p.split("/")[1] == name and "Method not found" in a]
            assert not missing, (port, missing)
        unimplemented = {p: a for p, a in by_path.items() if a.startswith("UNIMPLEMENTED")
                         and "Method not found" not in a}
        assert not unimplemented, (port, unimplemented)


def test_every_rpc_of_the_daemon_survives_a_fuzz(fuzz_daemon):
    """Each method of both ports as an identity allowed to call it: expected codes only (never UNKNOWN,
    INTERNAL, UNIMPLEMENTED, UNAVAILABLE or a deadline), one clear line per refusal, no traceback, the
    daemon alive, RSS bounded after a warm-up."""
    async def scenario():
        clients = campaign.Clients(fuzz_daemon)
        try:
            as_is = await campaign.send_seeds(clients, [m for m in MAIN + ENROLL if m.path in REACHED])
            warm = await campaign.fuzz_all(clients, per_method=7, seed=21, timeout=3)
            before = fuzz_daemon.rss_kib()
            tally = await campaign.fuzz_all(clients, per_method=SERVED_PER_METHOD, seed=22, timeout=3)
            return as_is, warm, tally, before, fuzz_daemon.rss_kib()
        finally:
            await clients.close()
    already = len(fuzz_daemon.log())
    as_is, warm, tally, before, after = asyncio.run(scenario())
    assert {p: a for p, a in as_is.items() if a[0] != "OK"} == {}
    assert fuzz_daemon.proc.poll() is None, "the daemon died under the fuzz"
    tally.merge(warm)
    assert tally.unexpected == 0 and tally.unclear == 0, "\n".join(tally.findings)
    assert_clean(tally, fuzz_daemon.log()[already:])
    assert set(tally.by_method) == {m.path for m in MAIN + ENROLL}
    assert tally.requests == len(MAIN + ENROLL) * (SERVED_PER_METHOD + 7)
    assert after - before < RSS_SLACK_KIB, f"RSS grew {after - before} KiB over {tally.requests} requests"


def test_restricted_rpcs_refuse_every_other_identity(fuzz_daemon):
    """Fuzzed requests to a method from an identity it does not allow are refused (PERMISSION_DENIED, or
    INVALID_ARGUMENT for bytes that do not decode), whatever they carry."""
    methods = campaign.wrong_role_methods()

    async def scenario():
        clients = campaign.Clients(fuzz_daemon)
        try:
            return await campaign.fuzz_wrong_roles(clients, per_method=14, seed=23)
        finally:
            await clients.close()
    tally = asyncio.run(scenario())
    assert len(methods) >= 40, len(methods)
    assert set(tally.codes) <= {"PERMISSION_DENIED", "INVALID_ARGUMENT"}, tally.codes
    assert tally.unclear == 0, "\n".join(tally.findings)
    denied = [m.path for m in methods if not tally.by_method[m.path]["PERMISSION_DENIED"]]
    assert not denied, denied


def test_refused_requests_leave_the_stores_as_they_were(fuzz_daemon):
    """One at a time, every method of both ports: a wrong identity, undecodable bytes and fuzzed
    well-formed requests; whatever is refused leaves every table but the audit trail unchanged."""
    async def scenario():
        clients = campaign.Clients(fuzz_daemon, fleet_stations=2)
        try:
            return await campaign.refusals_leave_the_store(fuzz_daemon, clients, per_method=1, seed=24)
        finally:
            await clients.close()
    tally, findings = asyncio.run(scenario())
    assert not findings, "\n".join(findings)
    assert tally.unexpected == 0 and tally.unclear == 0, "\n".join(tally.findings)
    refused = tally.requests - tally.codes["OK"]
    assert refused >= 2 * len(MAIN + ENROLL), tally.codes


def test_no_secret_of_a_fuzzed_request_reaches_the_log_or_the_stores(fuzz_daemon):
    """The seeds carry a one-time enrollment code and a card batch's transport key (targets.SECRET_*);
    after fuzzing the methods that take them, neither is in the daemon's log, database or WAL."""
    secret_methods = [m for m in MAIN + ENROLL if m.path in ("/cns.v1.StationEnrollment/Enroll",
                                                            "/cns.v1.CardAdmin/LoadBatch")]

    async def scenario():
        clients = campaign.Clients(fuzz_daemon)
        try:
            tally = await campaign._fuzz(clients, [m for m in secret_methods if m in MAIN], per_method=21,
                                         seed=25)
            tally.merge(await campaign._fuzz(clients, [m for m in secret_methods if m in ENROLL],
                                             per_method=21, seed=26, concurrency=campaign.ENROLL_CONCURRENCY))
            wrong = await campaign._fuzz(clients, [m for m in secret_methods if m in MAIN], per_method=7,
                                         seed=27, wrong=True)
            return tally, wrong
        finally:
            await clients.close()
    tally, wrong = asyncio.run(scenario())
    assert tally.unexpected == 0 and wrong.codes["PERMISSION_DENIED"], (tally.codes, wrong.codes)
    assert campaign.secrets_seen(fuzz_daemon) == []


def test_health_check_of_an_unknown_service_says_what_to_ask_for(fuzz_daemon):
    """grpcio-health-checking answers NOT_FOUND with no message at all; ours names the service asked
    for and the ones it knows (found by the fuzz)."""
    async def check(service: str):
        async with fuzz_daemon.channel("station") as ch:
            try:
                await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details()
            return grpc.StatusCode.OK, ""
    code, details = asyncio.run(check("RM"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "'RM'" in details and "cns.v1.Personalizer" in details and "\n" not in details, details
    # found by the long bench: 64 unprintable characters came back escaped as 420 characters
    for odd in ("\U00090c36" * 64, "\n" * 200, "x" * 5000):
        code, details = asyncio.run(check(odd))
        assert code == grpc.StatusCode.NOT_FOUND and protofuzz.unclear(code, details) is None, details[:120]


def test_a_refusal_echoing_a_huge_or_multiline_value_stays_one_short_line(fuzz_daemon):
    """Found by the fuzz: a requester chamber of 1,000 characters came back whole in the PERMISSION_DENIED
    message (1,060 characters), 128 unprintable characters of a maintenance window id as 1,280 in
    NOT_FOUND; a newline in it split the message. Every refusal is one line of at most
    protofuzz.MAX_DETAILS characters."""
    from proto.cns.v1 import admin_pb2, common_pb2, personalizer_pb2

    async def scenario():
        out = []
        async with fuzz_daemon.channel("station") as st, fuzz_daemon.channel("admin") as ad:
            for chamber in ("X" * 1000, "R\nM", "RM\r\nforged: yes"):
                try:
                    await st.unary_unary("/cns.v1.Personalizer/Suspend")(personalizer_pb2.ChangeStatusRequest(
                        requester=common_pb2.Requester(station_id="RM-STATION-01", chamber_code=chamber,
                                                       operator_id="op-001")).SerializeToString(), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    out.append((exc.code(), exc.details()))
            try:
                await ad.unary_unary("/cns.v1.QueueAdmin/RemoveMaintenance")(
                    admin_pb2.MaintenanceWindowRequest(id="\U00090c36" * 128).SerializeToString(), timeout=5)
            except grpc.aio.AioRpcError as exc:
                out.append((exc.code(), exc.details()))
        return out
    answers = asyncio.run(scenario())
    assert [c for c, _ in answers] == [grpc.StatusCode.PERMISSION_DENIED] * 3 + [grpc.StatusCode.NOT_FOUND], answers
    for code, details in answers:
        assert protofuzz.unclear(code, details) is None, (protofuzz.unclear(code, details), details[:200])
    assert "may not act for chamber XXX" in answers[0][1] and answers[0][1].endswith("…"), answers[0][1]


def test_a_refused_fleet_poll_records_nothing(fuzz_daemon):
    """Found by the fuzz: a Poll of a hello and an acknowledgement of a command never sent was refused
    (NOT_FOUND) after its hello had been recorded (the station listed, its devices stored). Each of these
    refused polls leaves the fleet tables as they were."""
    from proto.cns.v1 import fleet_pb2

    hello = fleet_pb2.FleetAgentMessage(hello=fleet_pb2.FleetHello(
        agent_version="2.0", readers=["R9"], devices=[fleet_pb2.FleetDevice(kind="card", model="m", serial="S9")]))
    polls = {
        "NOT_FOUND": [hello, fleet_pb2.FleetAgentMessage(ack=fleet_pb2.FleetCommandAck(command_id="never-sent"))],
        "INVALID_ARGUMENT": [hello, fleet_pb2.FleetAgentMessage(inventory=fleet_pb2.FleetInventoryDelta(
            present=[fleet_pb2.FleetDevice(kind="card", serial="S\n1")]))],
        "FAILED_PRECONDITION": [hello, hello],
    }

    async def scenario():
        out = {}
        for i, (expected, messages) in enumerate(polls.items()):
            async with fuzz_daemon.channel(f"station-{90 + i}") as ch:
                before = fuzz_daemon.store_digest()
                try:
                    await ch.unary_unary("/cns.v1.Fleet/Poll")(
                        fleet_pb2.FleetPollRequest(messages=messages).SerializeToString(), timeout=5)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                await asyncio.sleep(0.2)
                after = fuzz_daemon.store_digest()
                out[expected] = (code, sorted(k for k in after if after[k] != before.get(k)))
        return out
    answers = asyncio.run(scenario())
    assert answers == {code: (code, []) for code in polls}, answers
