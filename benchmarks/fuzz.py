"""Long fuzz run: protobuf on every RPC (personalizer over mTLS, agent local API), hostile CSRs, card answers.

The same engines as tests/fuzz (``tests.fuzz.protofuzz``, ``csrfuzz``, ``apdufuzz``) with larger samples:

- ``grpc``: N cases per method of every service the daemon serves (``tests.fuzz.targets.PORTS``: the
  mTLS port's Personalizer, QueueAdmin, Registrations, StationAdmin, CardAdmin, Fleet, FleetAdmin,
  health and reflection; the enrollment port's StationEnrollment and HolderRenewal) against a
  ``cns-personalizer serve`` subprocess on a fresh test deployment with ``[enrollment]``,
  ``[card_admin]`` and the fleet on, each as an identity allowed to call it
  (``tests.fuzz.campaign``), then N/2 per restricted method as one that may not, then refusals one at
  a time against a digest of the stores; RSS of the daemon after a warm-up and at the end, its log
  scanned for tracebacks, the seeds' secrets looked for in its log and stores;
- ``agent_api``: N cases per method of AgentLocal on its Unix socket (in this process);
- ``csr``: the named hostile CSRs plus M seeded DER mutations into SubmitIssue;
- ``apdu``: R card sessions with mutated answers.

Counts crashes, UNKNOWN/INTERNAL answers, answers outside the expected codes, refusals without one
clear line, wrong identities not refused, refusals that changed the store, secrets seen and tracebacks
(all must be 0), CSR extensions copied into a certificate (0), and RSS growth after warm-up (``ok``
when under RSS_SLACK_KIB).

Usage: scripts/bench fuzz [--per-method N] [--csr-mutations M] [--apdu-runs R] [--seed S]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import random
import resource
import tempfile
import time
from pathlib import Path

RSS_SLACK_KIB = 32 * 1024
WARMUP_PER_METHOD = 50


def _self_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def _grpc(d, per_method: int, seed: int) -> dict:
    from tests.fuzz import campaign

    clients = campaign.Clients(d, fleet_stations=min(64, max(8, per_method // 10)))
    try:
        await campaign.fuzz_all(clients, per_method=WARMUP_PER_METHOD, seed=seed)
        before = d.rss_kib()
        start = time.perf_counter()
        tally = await campaign.fuzz_all(clients, per_method=per_method, seed=seed + 2)
        seconds = time.perf_counter() - start
        after = d.rss_kib()
        wrong = await campaign.fuzz_wrong_roles(clients, per_method=max(1, per_method // 2), seed=seed + 3)
        refusals, store_changes = await campaign.refusals_leave_the_store(
            d, clients, per_method=max(1, per_method // 100), seed=seed + 4)
    finally:
        await clients.close()
    services: dict[str, dict] = {}
    for path, codes in tally.by_method.items():
        svc = services.setdefault(path.split("/")[1], {})
        for code, n in codes.items():
            svc[code] = svc.get(code, 0) + n
    not_denied = [m.path for m in campaign.wrong_role_methods() if not wrong.by_method[m.path]["PERMISSION_DENIED"]]
    return {"methods": len(tally.by_method), "requests": tally.requests, "codes": dict(tally.codes),
            "by_service": services, "unknown_internal": tally.bad + wrong.bad + refusals.bad,
            "unexpected_codes": tally.unexpected + wrong.unexpected + refusals.unexpected,
            "unclear_messages": tally.unclear + wrong.unclear + refusals.unclear,
            "findings": (tally.findings + wrong.findings + refusals.findings)[:10],
            "wrong_identity": {"requests": wrong.requests, "codes": dict(wrong.codes),
                               "methods_not_denied": not_denied},
            "refusals_one_at_a_time": {"requests": refusals.requests, "codes": dict(refusals.codes),
                                       "store_changed": len(store_changes), "findings": store_changes[:10]},
            "secrets_seen": campaign.secrets_seen(d),
            "rss_kib_before": before, "rss_kib_after": after,
            "rss_growth_kib": after - before, "requests_per_s": round(tally.requests / seconds, 1)}


async def _agent_api(tmp: Path, per_method: int, seed: int) -> dict:
    import grpc

    from agent.api.server import start_server
    from tests.fuzz import protofuzz
    from tests.fuzz.targets import AGENT, agent_service

    sock = tmp / "run" / "agent.sock"
    server = await start_server(sock, agent_service(sock))
    try:
        async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
            await protofuzz.fuzz(ch, AGENT, per_method=WARMUP_PER_METHOD, seed=seed)
            before = _self_rss_kib()
            tally = await protofuzz.fuzz(ch, AGENT, per_method=per_method, seed=seed + 1)
            after = _self_rss_kib()
    finally:
        await server.stop(1)
    return {"requests": tally.requests, "codes": dict(tally.codes), "unknown_internal": tally.bad,
            "findings": tally.findings[:10], "rss_kib_before": before, "rss_kib_after": after,
            "rss_growth_kib": after - before}


def _csr(d, mutations: int, seed: int) -> dict:
    from proto.cns.v1 import personalizer_pb2_grpc as pb_grpc
    from tests.fuzz import csrfuzz
    from tests.personalizer import helpers

    rng = random.Random(seed)
    cases = csrfuzz.fixed_cases(rng, lambda i: helpers.random_cf(600 + i))
    cases += csrfuzz.mutated_cases(rng, mutations, helpers.random_cf(699))
    cdir = d.deployment.station_config.parent
    ch = helpers.channel(d.port, d.deployment.root / "tls",
                         helpers.ClientCert((cdir / "client.pem").read_bytes(), (cdir / "client.key.pem").read_bytes()))
    try:
        results, findings = csrfuzz.run_corpus(pb_grpc.PersonalizerStub(ch), cases)
    finally:
        ch.close()
    codes: dict[str, int] = {}
    for code, _state, _copied in results.values():
        codes[code] = codes.get(code, 0) + 1
    return {"cases": len(cases), "codes": codes, "copied_extensions": sum(bool(r[2]) for r in results.values()),
            "findings": findings[:10], "bad": len(findings)}


def _apdu(runs: int, seed: int) -> dict:
    from firmware_profiles import load_models
    from tests.fuzz import apdufuzz

    start = time.perf_counter()
    tally = apdufuzz.run([m for _, m in sorted(load_models().items())], runs, seed)
    return {"runs": tally.runs, "clean": tally.clean, "card_errors": dict(tally.card_errors),
            "crashes": tally.crashes, "findings": tally.findings[:10],
            "sessions_per_s": round(tally.runs / (time.perf_counter() - start), 1)}


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="scripts/bench fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("--per-method", type=int, default=1000, help="protobuf cases per RPC method (default 1000)")
    ap.add_argument("--csr-mutations", type=int, default=500, help="mutated CSRs (default 500)")
    ap.add_argument("--apdu-runs", type=int, default=10_000, help="card sessions (default 10000)")
    ap.add_argument("--seed", type=int, default=20261201)
    opts = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    from tests.fuzz.daemon import start_daemon, stop_daemon

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cns-fuzz-") as tmp:
        tmp = Path(tmp)
        d = start_daemon(tmp / "daemon", log_level="INFO")
        try:
            grpc_figures = asyncio.run(_grpc(d, opts.per_method, opts.seed))
            csr = _csr(d, opts.csr_mutations, opts.seed)
            alive = d.proc.poll() is None
        finally:
            rc = stop_daemon(d)
            log_text = d.log()
        grpc_figures["daemon_crashes"] = 0 if alive and rc == 0 else 1
        grpc_figures["tracebacks_in_log"] = log_text.count("Traceback")
        agent = asyncio.run(_agent_api(tmp, opts.per_method, opts.seed))
    apdu = _apdu(opts.apdu_runs, opts.seed)
    ok = (grpc_figures["unknown_internal"] == 0 and grpc_figures["daemon_crashes"] == 0
          and grpc_figures["unexpected_codes"] == 0 and grpc_figures["unclear_messages"] == 0
          and not grpc_figures["wrong_identity"]["methods_not_denied"]
          and grpc_figures["refusals_one_at_a_time"]["store_changed"] == 0 and not grpc_figures["secrets_seen"]
          and grpc_figures["tracebacks_in_log"] == 0 and grpc_figures["rss_growth_kib"] < RSS_SLACK_KIB
          and agent["unknown_internal"] == 0 and agent["rss_growth_kib"] < RSS_SLACK_KIB
          and csr["bad"] == 0 and apdu["crashes"] == 0)
    return {"benchmark": "fuzz", "ok": ok, "seed": opts.seed, "seconds": round(time.perf_counter() - started, 1),
            "rss_slack_kib": RSS_SLACK_KIB, "grpc": grpc_figures, "agent_api": agent, "csr": csr, "apdu": apdu,
            "units": {"rss": "KiB", "requests_per_s": "1/s", "sessions_per_s": "1/s", "seconds": "s"}}
