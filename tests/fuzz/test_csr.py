"""Hostile CSRs into SubmitIssue (issue 10 item 10): every one is refused with INVALID_ARGUMENT or
FAILED_PRECONDITION, or issued without any extension the CSR asked for; none gets UNKNOWN/INTERNAL or
brings the daemon down. Real daemon over mTLS, the embedded CA."""
from __future__ import annotations

import random


from proto.cns.v1 import personalizer_pb2_grpc as pb_grpc
from tests.fuzz import csrfuzz
from tests.personalizer import helpers

MUTATED = 40
CF_BASE = 400     # codici fiscali numbered apart from the other suites' (one key is never for two holders)


def _run(fuzz_daemon, cases):
    d = fuzz_daemon.deployment.station_config.parent
    ch = helpers.channel(fuzz_daemon.port, fuzz_daemon.deployment.root / "tls",
                         helpers.ClientCert((d / "client.pem").read_bytes(), (d / "client.key.pem").read_bytes()))
    try:
        return csrfuzz.run_corpus(pb_grpc.PersonalizerStub(ch), cases)
    finally:
        ch.close()


def test_hostile_csrs_are_refused_or_issued_without_their_extensions(fuzz_daemon):
    rng = random.Random(10)
    cases = csrfuzz.fixed_cases(rng, lambda i: helpers.random_cf(CF_BASE + i))
    cases += csrfuzz.mutated_cases(rng, MUTATED, helpers.random_cf(CF_BASE + 99))
    results, findings = _run(fuzz_daemon, cases)
    assert not findings, "\n".join(findings) + f"\n{results}"
    assert fuzz_daemon.proc.poll() is None
    # what must be refused is refused (these cannot be certified whatever the profile)
    for name in ("wrong-signature", "other-key", "ec-key", "ed25519-key", "dsa-key", "rsa-1024", "sha1",
                 "trailing-garbage", "truncated", "empty", "not-der"):
        assert results[name][0] in {c.name for c in csrfuzz.REFUSED}, (name, results[name])
    assert sum(r[0] == "INVALID_ARGUMENT" for n, r in results.items() if n.startswith("mutated")) >= MUTATED * 0.9
    log_text = fuzz_daemon.log()
    assert "Traceback" not in log_text, log_text[-3000:]


def test_a_csr_with_a_20k_common_name_gets_a_clear_refusal(fuzz_daemon):
    """Found by this fuzz before main bounded requests (e224611): the refusal echoed the whole CN into the
    status details and, past gRPC's 16 KiB metadata limit, the client got RESOURCE_EXHAUSTED."""
    [case] = [c for c in csrfuzz.fixed_cases(random.Random(10), lambda i: helpers.random_cf(CF_BASE + 50 + i))
              if c.name == "huge-cn"]
    results, findings = _run(fuzz_daemon, [case])
    assert results["huge-cn"][0] == "INVALID_ARGUMENT" and not findings, (results, findings)
