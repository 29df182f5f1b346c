"""Undecodable and mutated protobuf on every RPC: INVALID_ARGUMENT (or the handler's own answer), never
UNKNOWN/INTERNAL, no traceback in the log, no crash, bounded RSS (issue 10 items 7 and 10).

The personalizer is a daemon subprocess reached over mTLS; the agent's local API runs in process on its
Unix socket. The sample is bounded for CI; ``scripts/bench fuzz`` runs the long version.
"""
from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from agent.api.server import start_server
from tests.fuzz import protofuzz
from tests.fuzz.targets import ADMIN, AGENT, HEALTH, PERSONALIZER, agent_service, seeds_for

MALFORMED = [b"\xff\xff\xff", b"\x0a\x05ab", b"\x08", b"\x0b" * 300, b"\x0a\xff\xff\xff\xff\x0f"]
PER_METHOD = 28          # 4 of each case kind
RSS_SLACK_KIB = 24 * 1024



def assert_clean(tally: protofuzz.Tally, log_text: str) -> None:
    assert tally.bad == 0, "UNKNOWN/INTERNAL answers:\n" + "\n".join(tally.findings)
    assert "Traceback" not in log_text and "Unexpected [" not in log_text, log_text[-3000:]


async def _malformed(channel, methods):
    answers = []
    for m in methods:
        for payload in MALFORMED:
            code, details = await protofuzz._one(channel, m, payload, timeout=5)
            answers.append((m.path, payload, code, details))
    return answers


def _check_malformed(answers) -> None:
    for path, payload, code, details in answers:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (path, payload, code, details)
        assert "is not a valid cns.v1." in details or "is not a valid grpc." in details, details
        assert "\n" not in details and "DecodeError" not in details, details


def test_personalizer_answers_malformed_protobuf_with_invalid_argument(fuzz_daemon):
    async def scenario():
        async with fuzz_daemon.channel("station") as st, fuzz_daemon.channel("admin") as ad:
            return await _malformed(st, PERSONALIZER + HEALTH) + await _malformed(ad, ADMIN)
    already = len(fuzz_daemon.log())
    answers = asyncio.run(scenario())
    _check_malformed(answers)
    assert any("SubmitIssueRequest" in a[3] for a in answers)
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
    async def scenario():
        async with fuzz_daemon.channel("station") as st:
            return await protofuzz.fuzz(st, PERSONALIZER + HEALTH, per_method=PER_METHOD * 20, seed=12,
                                        seeds=seeds_for(PERSONALIZER), timeout=3)
    tally = asyncio.run(scenario())
    assert fuzz_daemon.proc.poll() is None
    assert_clean(tally, fuzz_daemon.log())
