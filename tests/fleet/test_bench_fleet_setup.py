"""The set-up ``scripts/bench fleet`` needs at a large N: open-file limits and the daemon's connection cap.

At 20,000 agents the server holds one socket per agent: above the process's hard open-file limit the
bench either raises it (CAP_SYS_RESOURCE) or stops with one line naming the limit and the largest N it
allows, before any server starts; and the daemon's ``server.max_connections`` (default 4096) is raised
to N so that the agents past 4096 are not refused.
"""
from __future__ import annotations

import json
import subprocess
import sys

from personalizer import config
from benchmarks.fleet import FD_MARGIN as M
from tests.conftest import ROOT

_PROBE = r"""
import json, resource, sys
from benchmarks import fleet
resource.setrlimit(resource.RLIMIT_NOFILE, (500, 1000))   # lowering needs no privilege; raising does
try:
    got = fleet._raise_fd_limit(5000)
    print(json.dumps({"raised": got, "limit": resource.getrlimit(resource.RLIMIT_NOFILE)}))
except fleet.BenchError as exc:
    print(json.dumps({"error": str(exc), "limit": resource.getrlimit(resource.RLIMIT_NOFILE)}))
"""


def test_fd_limit_is_raised_or_refused_in_one_line():
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    if "raised" in r:   # allowed to raise the hard limit: both limits now cover the server's sockets
        assert r["raised"] == 5000 + M and r["limit"] == [5000 + M, 5000 + M]
    else:               # not allowed: nothing changed, and the line says what to do
        assert r["limit"] == [500, 1000]
        assert f"{5000 + M} open files" in r["error"] and "hard limit is 1000" in r["error"]
        assert f"--agents {1000 - M}" in r["error"] and "\n" not in r["error"]


def test_fd_limit_within_hard_limit_raises_soft_only():
    probe = ("import resource\nfrom benchmarks import fleet\nresource.setrlimit(resource.RLIMIT_NOFILE, (300, 4000))\n"
             "print(fleet._raise_fd_limit(1000), *resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(1000 + M), str(1000 + M), "4000"]


def test_bench_raises_the_daemons_connection_cap(tmp_path):
    from benchmarks import fleet
    from personalizer import deploy
    dep = deploy.init_deployment(tmp_path / "cns", listen="127.0.0.1:50999", ca_key_bits=2048)
    assert config.load(dep.server_config).server.max_connections == 4096   # what would refuse agent 4097
    fleet._allow_connections(dep.server_config, 20_064)
    assert config.load(dep.server_config).server.max_connections == 20_064
    # item 6 measures one personalizer process, whatever the machine's cores make the default
    assert config.load(dep.server_config).server.processes == 1


def test_the_bare_reference_pings_and_accepts_pings_as_the_daemon_does():
    """Both servers of bench fleet get the same HTTP/2 keepalive and ping policy (issue 15 item 6: the bare
    server's reconnect stormed with ping timeouts; its options had drifted from the daemon's)."""
    from benchmarks import _fleet_bare
    from personalizer.server import server_options
    from pathlib import Path
    daemon = config.ServerConfig(listen="127.0.0.1:1", tls_cert=Path("c"), tls_key=Path("k"),
                                 client_trust_anchors=Path("a"), keepalive_min_ping_seconds=7.0)
    ping = {k: v for k, v in server_options(daemon) if k.startswith(("grpc.keepalive", "grpc.http2."))}
    bare = dict(_fleet_bare.server_options(7.0))
    assert ping and {k: bare.get(k) for k in ping} == ping, (ping, bare)
    assert bare["grpc.so_reuseport"] == 0 and len(ping) == 6


def test_a_client_process_past_its_memory_bound_stops_with_one_line(deployment):
    """A runaway client process (one grew past 7.5 GB in a reconnect storm) ends itself with an ``error`` line
    that the bench reports, instead of taking the shared machine's memory."""
    out = subprocess.run([sys.executable, "-m", "benchmarks._fleet_agents", "--target", "127.0.0.1:1", "--tls",
                          str(deployment.root / "tls"), "--count", "1", "--max-rss-mib", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 3 and events[-1]["event"] == "error", (out.returncode, out.stdout, out.stderr[-2000:])
    assert "passed --max-rss-mib 1" in events[-1]["reason"] and "Traceback" not in out.stderr
