"""Fleet streams: N agents on one personalizer process vs a bare grpc.aio server (RSS, idle CPU, command, reconnect).

N agents (the real ``agent.fleet.FleetAgent``, one TLS connection and client certificate each) run in
P separate client processes (``benchmarks._fleet_agents``) and connect to one server process, first
the bare reference (``benchmarks._fleet_bare``: same TLS, same messages, nothing else), then the real
``cns-personalizer serve`` (mTLS identity, store, hub). Per server: the time to connect all (from the
clients' start, certificates already made), its RSS and idle CPU over ``--idle-seconds`` with every
agent connected and heartbeating, the time for a command to reach all (bare: SIGUSR1 broadcasts;
personalizer: FleetAdmin.BroadcastCommand, which also writes one command row per station) measured
``--broadcasts`` times (default 2, the worst counts; each after the server went quiet), and the time to
reconnect all after the server process is restarted on the same port. The personalizer freezes its
collector after a ramp-up by itself (``fleet.gc_freeze``); the bare server gets the same ``gc.freeze()``
(SIGUSR2) after one broadcast measured without it (``command_reach_before_gc_freeze_s``), so the ratio
compares like with like and the unfrozen figure is there too. ``rss_per_agent_bytes``: RSS gained per agent
since the server started.

Targets (issue 15 item 6, on this machine at 20,000 agents): personalizer RSS < 2 GiB, command reach
≤ 1.2 × the bare server's, reconnect ≤ 1.5 × its own connect time. ``targets_met`` says which held;
a small N (CI) reports them without judging speed. At a large N the open-file limit is raised for the
server and the clients (``_raise_fd_limit``: the hard limit too when run as root; otherwise a one-line
error names the limit to raise), client processes default to one per ``AGENTS_PER_PROCESS`` agents, and
the clients' logs (every agent's reconnect warnings) go to a file, not the terminal.

The reconnect is the same for both servers: each ends its streams normally with the reconnect spread the
daemon names (``cns-reconnect-spread-ms``: streams / 200 a second) and stops with the daemon's grace,
every agent reopens at a random point of that window, and a failed attempt (the server not back yet)
waits one whole window again, keeping its point of it (``agent.fleet.client``; ``_fleet_agents.OPTIONS``: no
poll fallback, only streams); ``--clients-log FILE`` keeps the agents' failed attempts with their times;
``reconnect.agents_given_the_spread`` counts the agents that got the window. Both servers use the daemon's
keepalive and ping options (``personalizer.server.keepalive_options``). Client processes hold at most
``AGENTS_PER_PROCESS`` agents and end themselves past ``client_rss_bound_mib``.

Each phase also reports its instruments (``connect`` / ``reconnect``): per-agent times to the welcome
(percentiles and a histogram), the agents' failed attempts by reason, and for the personalizer the
daemon's own hello timing (``cns_fleet_hello_seconds``: waiting for the hello, recording it). With
``--instances K`` the fleet also runs on 1 and then K instances over one PostgreSQL store behind haproxy
(``benchmarks._fleet_cluster``): agents per instance, each instance's RSS and idle CPU. Usage:
scripts/bench fleet [--agents N] [--processes P] [--idle-seconds S] [--instances K] [--broadcasts B]
[--connect-rate R]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from personalizer import deploy
from proto.cns.v1 import fleet_pb2 as pb, fleet_pb2_grpc

TARGET_RSS_BYTES = 2 << 30
TARGET_REACH_RATIO = 1.2
TARGET_RECONNECT_RATIO = 1.5
# 2,500 agents per client process, each bounded in memory (``client_rss_bound_mib``): at 19,950 agents in 20 processes
# of 1,000 the clients ran ~110 grpc threads each (load average 460) and the bare server never connected all
AGENTS_PER_PROCESS = 2500
# the server's own files beyond one socket per agent (database, listeners, grpc's pipes, the admin's broadcast
# and the metrics scrape): counted 28 for the daemon and 13 for the bare server with 30 agents connected; 48
# lets N reach 19,952 under this machine's hard limit of 20,000 (REFERENCE §8: N + ~14)
FD_MARGIN = 48
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BenchError(Exception):
    """A set-up this machine cannot give (one line, said as is)."""


def _raise_fd_limit(agents: int) -> int:
    """Open-file limit for this process and its children (server: one socket per agent): the new soft limit."""
    need = agents + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if need <= soft:
        return soft
    if need > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need
        except (ValueError, OSError):
            raise BenchError(f"--agents {agents} needs {need} open files per process; the hard limit is {hard} "
                             "(raising it needs CAP_SYS_RESOURCE: ulimit -Hn as root; "
                             f"or ask for --agents {hard - FD_MARGIN})") from None
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return need


def _allow_connections(server_config: Path, n: int) -> None:
    """The daemon's ``server.max_connections`` (default 4096, its fd budget) raised to the bench's N, and the
    daemon held to one process (``[server] processes`` defaults to the cores): item 6 measures N agents on
    one personalizer process; ``--instances`` measures several."""
    text = server_config.read_text()
    head = text.split("[store]", 1)[0]
    if "max_connections" in head or "processes" in head:
        raise BenchError(f"{server_config} already sets server.max_connections or server.processes")
    server_config.write_text(text.replace("[server]\n", f"[server]\nmax_connections = {n}\nprocesses = 1\n", 1))


def _enable_metrics(server_config: Path, port: int) -> None:
    """The daemon's Prometheus endpoint on ``port`` (the bench reads ``cns_fleet_hello_seconds`` from it), and
    no enrollment port: the deployment puts it on the port after ``listen``, which one of the N agents' own
    ephemeral ports may hold when the daemon restarts (seen at 5,000: "cannot listen on …: in use")."""
    text = server_config.read_text()
    text, n = re.subn(r"\[metrics\]\nenabled = \w+\nhttp_host = (\S+)\nhttp_port = \d+\n",
                      lambda m: f"[metrics]\nenabled = true\nhttp_host = {m.group(1)}\nhttp_port = {port}\n", text)
    text, e = re.subn(r"\[enrollment\]\nenabled = \w+\n", "[enrollment]\nenabled = false\n", text)
    if n != 1 or e != 1:
        raise BenchError(f"{server_config} has no [metrics] or [enrollment] section as the deployment writes them")
    server_config.write_text(text)


class Server:
    def __init__(self, argv: list[str]):
        self.argv = argv
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "listening on port" not in line:
            raise RuntimeError(f"server did not start: {line!r}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()   # drain later lines
        return time.time()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def client_rss_bound_mib(agents: int) -> float:
    """The RSS a client process of ``agents`` agents may reach before it ends itself: 256 MiB plus 256 KiB an
    agent, about twice what one uses (~115 KiB an agent with TLS, REFERENCE §8), so a runaway client (one grew
    past 7.5 GB in a reconnect storm) stops the run instead of exhausting the shared machine."""
    return 256 + agents / 4


class Clients:
    def __init__(self, target: str, tls: Path, agents: int, processes: int, log, commands: int = 1,
                 connect_rate: float = 0.0):
        per = -(-agents // processes)
        self.procs = []
        for k in range(processes):
            n = min(per, agents - k * per)
            if n <= 0:
                break
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks._fleet_agents", "--target", target, "--tls", str(tls),
                 "--start", str(k * per), "--count", str(n), "--commands", str(commands),
                 "--rate", str(connect_rate * n / agents), "--max-rss-mib", str(client_rss_bound_mib(n))],
                stdout=subprocess.PIPE, stderr=log, text=True))

    def wait(self, event: str, timeout: float) -> list[dict]:
        out, deadline = [], time.monotonic() + timeout
        for p in self.procs:
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"clients did not report {event!r} in {timeout:g} s")
                line = p.stdout.readline()
                if not line:
                    raise RuntimeError(f"a client process exited before {event!r}")
                msg = json.loads(line)
                if msg["event"] == "error":
                    raise BenchError(f"a client process stopped: {msg['reason']}")
                if msg["event"] == event:
                    out.append(msg)
                    break
        return out

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


SPREAD_BOUNDS = (1, 2, 5, 10, 20, 30, 60, 120)   # seconds: the per-agent histograms' upper bounds


def _spread(seconds: list[float]) -> dict:
    """Percentiles and a histogram ([upper bound in s, agents within it] pairs) of per-agent times."""
    xs = sorted(seconds)
    if not xs:
        return {}
    pick = lambda q: round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)   # noqa: E731
    hist = [[b, sum(1 for x in xs if x <= b)] for b in SPREAD_BOUNDS]
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": round(xs[-1], 3), "agents_within_s": hist}


def _failures(reports: list[dict]) -> dict:
    out: dict[str, int] = {}
    for r in reports:
        for reason, n in r["failures"].items():
            out[reason] = out.get(reason, 0) + n
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _hello_histogram(metrics_port: int | None) -> dict:
    """The daemon's ``cns_fleet_hello_seconds`` (per stage: count, mean, agents per upper bound)."""
    if not metrics_port:
        return {}
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).read().decode()
    out: dict[str, dict] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != "cns_fleet_hello_seconds":
            continue
        for smp in fam.samples:
            st = out.setdefault(smp.labels["stage"], {"le": {}})
            if smp.name.endswith("_bucket"):
                st["le"][smp.labels["le"]] = int(smp.value)
            elif smp.name.endswith("_count"):
                st["count"] = int(smp.value)
            elif smp.name.endswith("_sum"):
                st["sum_s"] = round(smp.value, 3)
    for st in out.values():
        st["mean_s"] = round(st.get("sum_s", 0) / st["count"], 4) if st.get("count") else None
    return out


BROADCAST_KINDS = (pb.FLEET_COMMAND_REFRESH_INVENTORY, pb.FLEET_COMMAND_RENEW_DUE, pb.FLEET_COMMAND_COLLECT_LOGS)
SETTLE_CPU = 0.15       # between broadcasts: the server's CPU below this over a second (the last one's acks and
SETTLE_MAX_S = 60.0     # results written), at most this long


def _broadcast(port: int, dep, o, k: int = 0) -> float:
    """FleetAdmin.BroadcastCommand (to chamber RM: every bench agent) with the admin's certificate, of the k-th
    kind (the agents tell the broadcasts apart by kind); the call's own duration (the store's write)."""
    tls, admin = dep.root / "tls", dep.admin_config.parent
    creds = grpc.ssl_channel_credentials(root_certificates=(tls / "tls-ca.pem").read_bytes(),
                                         private_key=(admin / "client.key.pem").read_bytes(),
                                         certificate_chain=(admin / "client.pem").read_bytes())
    with grpc.secure_channel(f"localhost:{port}", creds) as ch:
        t = time.monotonic()
        r = fleet_pb2_grpc.FleetAdminStub(ch).BroadcastCommand(pb.FleetBroadcastRequest(
            query=pb.FleetInventoryQuery(chamber="RM"), kind=BROADCAST_KINDS[k % len(BROADCAST_KINDS)]),
            timeout=o.timeout)
        took = time.monotonic() - t
    if r.commands < o.agents:
        raise RuntimeError(f"broadcast reached {r.commands} stations of {o.agents}")
    return took


def _settle(pid: int) -> float:
    """Wait for the server to go quiet after a broadcast; the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < SETTLE_MAX_S:
        c0, w0 = _cpu_seconds(pid), time.monotonic()
        time.sleep(1.0)
        if (_cpu_seconds(pid) - c0) / (time.monotonic() - w0) < SETTLE_CPU:
            break
    return round(time.monotonic() - t0, 1)


def _reach(server, clients, trigger, k: int) -> tuple[float, float | None]:
    """One broadcast: (seconds until every agent had it, the trigger's own figure), after the server settled."""
    _settle(server.proc.pid)
    t = time.time()
    call_s = trigger(server.proc.pid, k)
    return max(c["latest"] for c in clients.wait("command", 600)) - t, call_s


def _phase(name: str, server: Server, trigger, target: str, tls: Path, o, log, metrics_port=None,
           freeze_first: bool = False) -> dict:
    """``freeze_first``: the bare server: one broadcast as it is, then ``gc.freeze()`` (SIGUSR2: what the
    personalizer does by itself after a ramp-up, ``fleet.gc_freeze``), then the ``o.broadcasts`` measured."""
    server.start()
    rss_start = _rss(server.proc.pid)
    clients = Clients(target, tls, o.agents, o.processes, log, o.broadcasts + freeze_first, o.connect_rate)
    try:
        ready = clients.wait("ready", o.timeout)
        connected = clients.wait("connected", o.timeout)
        connect_s = max(c["t"] - r["t"] for r, c in zip(ready, connected))
        connect_detail = {"per_agent_s": _spread([t - r["t"] for r, c in zip(ready, connected) for t in c["welcomed"]]),
                          "hello_to_welcome_s": _spread([x for c in connected for x in c["welcome_latency"]]),
                          "failures": _failures(connected), "server_hello": _hello_histogram(metrics_port)}
        pid = server.proc.pid
        cpu0, t0 = _cpu_seconds(pid), time.monotonic()
        time.sleep(o.idle_seconds)
        idle_cpu = (_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        rss = _rss(pid)
        unfrozen = None
        if freeze_first:
            unfrozen = _reach(server, clients, trigger, 0)[0]
            os.kill(pid, signal.SIGUSR2)
        runs = [_reach(server, clients, trigger, k + freeze_first) for k in range(o.broadcasts)]
        reach_s = max(r for r, _ in runs)
        t_stop = time.time()
        server.stop()
        t_stopped = time.time()
        t_restart = server.start()
        reconnected = clients.wait("reconnected", o.timeout)
        reconnect_s = max(c["t"] for c in reconnected) - t_restart
        reconnect_detail = {"down_s": round(t_restart - t_stop, 3), "stop_s": round(t_stopped - t_stop, 3),
                            "per_agent_s": _spread([t - t_restart for c in reconnected for t in c["welcomed"]]),
                            "hello_to_welcome_s": _spread([x for c in reconnected for x in c["welcome_latency"]]),
                            "failures": _failures(reconnected), "server_hello": _hello_histogram(metrics_port),
                            "agents_given_the_spread": sum(c["hinted"] for c in reconnected)}
    finally:
        clients.stop()
        server.stop()
    print(f"bench fleet: {name}: connect {connect_s:.2f} s, rss {rss / 2**20:.0f} MiB, idle cpu "
          f"{100 * idle_cpu:.1f} %, command reach {', '.join(f'{r:.3f}' for r, _ in runs)} s"
          + (f" (before gc.freeze {unfrozen:.3f} s)" if unfrozen is not None else "")
          + f", reconnect {reconnect_s:.2f} s", file=sys.stderr)
    out = {"connect_s": round(connect_s, 3), "rss_bytes": rss, "idle_cpu_fraction": round(idle_cpu, 4),
           "rss_per_agent_bytes": round((rss - rss_start) / o.agents),
           "command_reach_s": round(reach_s, 4), "command_reach_runs_s": [round(r, 4) for r, _ in runs],
           "reconnect_s": round(reconnect_s, 3), "connect": connect_detail, "reconnect": reconnect_detail}
    if unfrozen is not None:
        out["command_reach_before_gc_freeze_s"] = round(unfrozen, 4)
    if runs[0][1] is not None:
        out["broadcast_call_s"] = [round(c, 4) for _, c in runs]
    return out


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="scripts/bench fleet")
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--processes", type=int, default=0,
                    help=f"client processes (default: one per {AGENTS_PER_PROCESS} agents)")
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--connect-rate", type=float, default=0.0,
                    help="agents started per second over all client processes (default 0: all at once). At "
                         "19,950 agents all at once, the bare server on this 2-core machine never converged "
                         "(HTTP/2 settings and ping timeouts, its open-file limit reached by half-dead "
                         "connections, a client process past 7 GB RSS)")
    ap.add_argument("--broadcasts", type=int, default=2, help="commands to reach all, one after the other "
                    "(the worst counts); the bare server sends one more before its gc.freeze()")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--clients-log", type=Path, default=None,
                    help="keep the client processes' log (every failed attempt, with its time) in this file")
    ap.add_argument("--instances", type=int, default=1,
                    help="also measure K personalizer instances on PostgreSQL behind haproxy (and 1 beside them)")
    o = ap.parse_args(argv)
    if o.agents < 1:
        ap.error("--agents must be at least 1")
    if not 1 <= o.broadcasts <= len(BROADCAST_KINDS):
        ap.error(f"--broadcasts must be 1 to {len(BROADCAST_KINDS)} (one command kind each)")
    o.processes = o.processes or -(-o.agents // AGENTS_PER_PROCESS)
    # stopped (SIGTERM, e.g. by timeout): unwind, so the servers and client processes are stopped, not orphaned
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        fd_limit = _raise_fd_limit(o.agents)
    except BenchError as exc:
        print(f"bench fleet: {exc}", file=sys.stderr)
        return {"benchmark": "fleet", "agents": o.agents, "ok": False, "error": str(exc)}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, open(o.clients_log or Path(tmp) / "clients.log", "w") as log:
        port = _free_port()
        dep = deploy.init_deployment(Path(tmp) / "cns", listen=f"127.0.0.1:{port}", ca_key_bits=2048)
        tls = dep.root / "tls"
        target = f"localhost:{port}"
        from personalizer.config import load as load_config
        daemon_server = load_config(dep.server_config).server   # the bare server pings and stops alike
        bare = Server([sys.executable, "-m", "benchmarks._fleet_bare", "--tls", str(tls), "--port", str(port),
                       "--min-ping-seconds", str(daemon_server.keepalive_min_ping_seconds),
                       "--grace", str(daemon_server.grace_seconds)])
        _allow_connections(dep.server_config, o.agents + 64)
        metrics_port = _free_port()
        _enable_metrics(dep.server_config, metrics_port)

        def broadcast(_pid, k):
            return _broadcast(port, dep, o, k)

        def bare_broadcast(pid, _k):
            os.kill(pid, signal.SIGUSR1)
        daemon = Server([sys.executable, "-m", "personalizer.cli", "--log-level", "WARNING", "serve", "--config",
                         str(dep.server_config)])
        try:
            results = {"bare": _phase("bare grpc.aio", bare, bare_broadcast, target, tls, o, log, freeze_first=True)}
            results["personalizer"] = _phase("personalizer", daemon, broadcast, target, tls, o, log, metrics_port)
            if o.instances > 1:
                from benchmarks import _fleet_cluster
                results["cluster"] = _fleet_cluster.run(o.instances, dep, o, log, sys.modules[__name__])
        except BenchError as exc:
            print(f"bench fleet: {exc}", file=sys.stderr)
            return {"benchmark": "fleet", "agents": o.agents, "ok": False, "error": str(exc)}
        except (RuntimeError, TimeoutError):
            log.flush()
            print("bench fleet: the clients' log ends:\n" + Path(log.name).read_text()[-3000:],
                  file=sys.stderr)
            raise
    b, p = results["bare"], results["personalizer"]
    reach_ratio = p["command_reach_s"] / b["command_reach_s"] if b["command_reach_s"] > 0 else None
    unfrozen = b["command_reach_before_gc_freeze_s"]
    reconnect_ratio = p["reconnect_s"] / p["connect_s"] if p["connect_s"] > 0 else None
    return {
        "benchmark": "fleet", "agents": o.agents, "client_processes": o.processes, "agents_per_instance": o.agents,
        **({"cluster": results["cluster"]} if "cluster" in results else {}),
        "fd_limit": fd_limit, "connect_rate_per_s": o.connect_rate or None,
        "units": {"connect_s": "s", "rss_bytes": "bytes", "idle_cpu_fraction": "CPU seconds per second",
                  "command_reach_s": "s", "reconnect_s": "s"},
        "bare": b, "personalizer": p, "reference": "bare grpc.aio server, same TLS and messages, same run",
        "command_reach_ratio": reach_ratio and round(reach_ratio, 3),
        "command_reach_ratio_vs_bare_before_gc_freeze": round(p["command_reach_s"] / unfrozen, 3) if unfrozen else None,
        "reconnect_over_connect": reconnect_ratio and round(reconnect_ratio, 3),
        "targets_met": {"rss_under_2GiB": p["rss_bytes"] < TARGET_RSS_BYTES,
                        "reach_within_1.2x_bare": reach_ratio is not None and reach_ratio <= TARGET_REACH_RATIO,
                        "reconnect_within_1.5x_connect": reconnect_ratio is not None and
                        reconnect_ratio <= TARGET_RECONNECT_RATIO},
        "targets_judged": o.agents >= 20_000, "ok": True,
    }
