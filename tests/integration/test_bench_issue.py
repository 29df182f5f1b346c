"""``scripts/bench issue`` runs both sides (the personalizer and CFSSL) on a tiny sample and reports them.

No speed is asserted (speed lives in the benchmark's own JSON): this keeps the
comparison honest and working. Both sides issue every request of every round,
CFSSL's certificate database records each certificate it signed, and CFSSL's
mutual TLS refuses a client without a certificate. Needs ``cfssl`` (Debian
``golang-cfssl``; the benchmark installs it when root): fails under CI, skips
elsewhere, when it cannot be had.
"""
from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from benchmarks import _cfssl as cfssl
from personalizer import deploy
from tests.conftest import ROOT, require

REQUESTS, WARMUP, LEVELS, PER_LEVEL = 40, 5, (1, 4), 20
SIDE_KEYS = {"rate", "p50_latency_ms", "p99_latency_ms", "cpu_ms_per_certificate", "cores_used",
             "client_cpu_ms_per_certificate", "issued", "errors", "timeouts"}


@pytest.fixture(scope="module")
def cfssl_binary():
    try:
        return cfssl.ensure_installed()
    except cfssl.Missing as exc:
        require([str(exc)])


def test_bench_issue_reports_both_sides(cfssl_binary):
    out = subprocess.run([sys.executable, "-m", "benchmarks", "issue", "--requests", str(REQUESTS),
                          "--warmup", str(WARMUP), "--scaling", ",".join(map(str, LEVELS)),
                          "--scaling-requests", str(PER_LEVEL), "--processes", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"], result["first_error"]
    for side in ("personalizer", "cfssl"):
        figures = result[side]
        assert SIDE_KEYS <= set(figures), side
        assert figures["issued"] == REQUESTS and figures["errors"] == figures["timeouts"] == 0, side
        assert figures["rate"] > 0 and 0 < figures["p50_latency_ms"] <= figures["p99_latency_ms"], side
        assert figures["cpu_ms_per_certificate"] > 0 and figures["cores_used"] > 0, side
        assert sorted(result["scaling"][side], key=int) == [str(c) for c in LEVELS], side
        for level in result["scaling"][side].values():
            assert level["issued"] == PER_LEVEL and level["errors"] == level["timeouts"] == 0, side
    assert result["vs_cfssl"] == pytest.approx(result["personalizer"]["rate"] / result["cfssl"]["rate"], rel=0.01)
    assert result["raw_sign_rate"] > 0 and result["raw_sign_rate_all_cores"] > 0
    assert result["raw_sign_rate_unit"].startswith("RSA-3072")
    # CFSSL really ran with its certificate database: every certificate it signed has a row
    assert result["cfssl_certdb_rows"] == WARMUP + REQUESTS + PER_LEVEL * len(LEVELS)
    assert isinstance(result["meets_target"], bool)
    assert result["processes"] == 2 and result["daemon_processes"] == 2   # [server] processes: primary + helper


def test_cfssl_peer_requires_a_client_certificate(cfssl_binary, tmp_path):
    dep = deploy.init_deployment(tmp_path / "d", listen="127.0.0.1:0")
    from benchmarks.issue import _ca_key_pem

    tls = dep.root / "tls"
    with cfssl.cfssl_serve(tmp_path / "cfssl", ca_cert=dep.issuing_cert, ca_key_pem=_ca_key_pem(dep),
                           tls_cert=tls / "server.pem", tls_key=tls / "server.key.pem",
                           client_ca=tls / "tls-ca.pem") as peer:
        url = f"https://localhost:{peer.port}{cfssl.SIGN_PATH}"
        anonymous = ssl.create_default_context(cafile=str(tls / "tls-ca.pem"))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)) as refused:
            urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), context=anonymous, timeout=10).read()
        assert not isinstance(refused.value, urllib.error.HTTPError), "reached CFSSL without a client certificate"
        station = dep.station_config.parent
        with_cert = ssl.create_default_context(cafile=str(tls / "tls-ca.pem"))
        with_cert.load_cert_chain(str(station / "client.pem"), str(station / "client.key.pem"))
        with pytest.raises(urllib.error.HTTPError) as answered:   # through TLS; an empty request is refused
            urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), context=with_cert, timeout=10).read()
        assert answered.value.code == 400
        assert cfssl.certdb_rows(peer.certdb) == 0
    assert not (tmp_path / "cfssl" / "ca-key.pem").exists()      # the plain CA key copy is removed
