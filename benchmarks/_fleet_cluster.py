"""``scripts/bench fleet --instances K``: the fleet on K personalizer processes over one PostgreSQL store.

Issue 15 item 8: when the fleet outgrows one daemon process, K ``cns-personalizer serve`` processes share one
PostgreSQL database (``benchmarks._pg``: the Patroni cluster with its synchronous standby; one schema for
all K) behind Debian's haproxy in TCP mode (TLS stays end to end, ``balance leastconn``). The same N
agents connect through haproxy; measured per layout (1 instance, then K, same store, same run): the time
to connect all, how the agents split (each daemon's ``cns_fleet_streams_connected``), each instance's RSS
and idle CPU, and the time for a command broadcast through the first instance to reach all (the others'
agents get it by LISTEN/NOTIFY). Reconnect after a restart is measured by the single-process phases only
(here the agents of an instance that stops move to the others, which is what the multi-instance test
checks). Imported by ``benchmarks.fleet``; uses its server and client processes.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _pg

HAPROXY_CFG = """\
global
    maxconn {maxconn}
defaults
    mode tcp
    maxconn {maxconn}
    timeout connect 2s
    timeout client 1h
    timeout server 1h
frontend fleet
    bind 127.0.0.1:{port}
    default_backend daemons
backend daemons
    balance leastconn
{servers}
"""


def _instance_configs(base: Path, cluster, k: int, free_port, enable_metrics) -> list[tuple[Path, int, int]]:
    """K daemon configs on one fresh schema: (config, gRPC port, metrics port) each, own data folder."""
    first, _schema = _pg.use_postgresql(base, cluster, "i0")
    text = first.read_text()
    out = []
    for i in range(k):
        port, mport = free_port(), free_port()
        t = text.replace('data_dir = "data-i0"', f'data_dir = "data-i{i}"')
        t = t.replace(t.split("listen = ", 1)[1].split("\n", 1)[0], f'"127.0.0.1:{port}"', 1)
        path = base.with_name(f"{base.stem}-k{k}-i{i}.toml")
        path.write_text(t)
        enable_metrics(path, mport)
        out.append((path, port, mport))
    return out


def _streams(mport: int) -> int:
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=30).read().decode()
    for fam in text_string_to_metric_families(text):
        if fam.name == "cns_fleet_streams_connected":
            return int(fam.samples[0].value)
    return -1


def _layout(k: int, cluster, dep, o, log, bench) -> dict:
    """One layout: K instances behind one haproxy; the agents' figures and each instance's."""
    configs = _instance_configs(dep.server_config, cluster, k, bench._free_port, bench._enable_metrics)
    servers = [bench.Server([sys.executable, "-m", "personalizer.cli", "--log-level", "WARNING", "serve",
                             "--config", str(c)]) for c, _p, _m in configs]
    run_dir = tempfile.mkdtemp(prefix="cns-bench-haproxy-")
    hport = bench._free_port()
    cfg = Path(run_dir) / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(maxconn=o.agents + 256, port=hport, servers="\n".join(
        f"    server i{i} 127.0.0.1:{p}" for i, (_c, p, _m) in enumerate(configs))))
    proxy = None
    clients = None
    try:
        for s in servers:
            s.start()
        proxy = subprocess.Popen([shutil.which("haproxy"), "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                                 stderr=log)
        time.sleep(0.5)
        if proxy.poll() is not None:
            raise RuntimeError("haproxy did not start (see the clients' log)")
        tls = dep.root / "tls"
        clients = bench.Clients(f"localhost:{hport}", tls, o.agents, o.processes, log)
        ready = clients.wait("ready", o.timeout)
        connected = clients.wait("connected", o.timeout)
        connect_s = max(c["t"] - r["t"] for r, c in zip(ready, connected))
        pids = [s.proc.pid for s in servers]
        cpu0, t0 = [bench._cpu_seconds(p) for p in pids], time.monotonic()
        time.sleep(o.idle_seconds)
        dt = time.monotonic() - t0
        idle = [(bench._cpu_seconds(p) - c0) / dt for p, c0 in zip(pids, cpu0)]
        rss = [bench._rss(p) for p in pids]
        split = [_streams(m) for _c, _p, m in configs]
        t_trigger = time.time()
        bench._broadcast(configs[0][1], dep, o)
        reach_s = max(c["latest"] for c in clients.wait("command", o.timeout)) - t_trigger
    finally:
        if clients is not None:
            clients.stop()
        if proxy is not None:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(10)
        for s in servers:
            s.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"bench fleet: {k} instance(s) on PostgreSQL: connect {connect_s:.2f} s, agents {split}, rss "
          f"{[round(r / 2**20) for r in rss]} MiB, idle cpu {[round(100 * c, 1) for c in idle]} %, command reach "
          f"{reach_s:.3f} s", file=sys.stderr)
    return {"instances": k, "connect_s": round(connect_s, 3), "command_reach_s": round(reach_s, 4),
            "per_instance": [{"agents": a, "rss_bytes": r, "idle_cpu_fraction": round(c, 4)}
                             for a, r, c in zip(split, rss, idle)]}


def run(k: int, dep, o, log, bench) -> dict:
    """1 instance, then K, on one Patroni cluster (its start is not measured)."""
    if not shutil.which("haproxy"):
        raise bench.BenchError("--instances needs haproxy (apt-get install haproxy)")
    with _pg.cluster() as c:
        layouts = [_layout(1, c, dep, o, log, bench)]
        if k > 1:
            layouts.append(_layout(k, c, dep, o, log, bench))
        return {"store": "postgresql (Patroni, synchronous standby)", "balancer": "haproxy tcp leastconn",
                "sync_state": _pg.sync_state(c), "layouts": layouts}
