"""Client process of ``scripts/bench fleet``: COUNT simulated agents, one TLS connection each.

Each agent is the real ``agent.fleet.FleetAgent`` (hello, heartbeats, reconnect with backoff and
jitter) with its own client certificate (station ``BENCH-<i>``, issued here from the test deployment's
TLS CA key with the personalizer's certificate profile) and its own channel (``grpc.use_local_subchannel_pool``: channels with equal arguments
would otherwise share one TCP connection). The inventory and the executor are stand-ins that record when
a command arrived. Prints JSON lines: ``connected`` (all welcomed once), ``command`` (all got one, with
the latest arrival time), ``reconnected`` (all welcomed again); ``connected`` and ``reconnected`` carry each
agent's welcome time and hello-to-welcome latency and the failed attempts by reason (station URIs masked);
with ``--commands K``, one ``command`` line for each of K broadcasts; ``reconnected`` also counts the agents
whose stream ended with the server's reconnect spread (``hinted``: the rest were cut off and reconnected
within ``jitter``). A failed attempt backs off (``OPTIONS``: no poll fallback, so both servers see only
streams); the process keeps no per-agent buffers beyond the agents themselves and ends itself, with an
``error`` line, when its RSS passes ``--max-rss-mib`` (a client process once grew past 7.5 GB in a storm).
Runs until killed.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import logging
import os
import re
import time
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.fleet import DeviceInfo, FleetAgent, Options, Outcome
from personalizer.ca import profiles
from proto.cns.v1 import fleet_pb2 as pb

_STATION = re.compile(r"urn:cns:station:\S+")
# the agent's own behaviour, faster: a stream that ended cleanly is reopened within the spread the server named
# (at least ``jitter``); a failed attempt backs off from 1 s, capped at 20 s (production: 120 s), no polling
OPTIONS = Options(initial_backoff=1.0, max_backoff=20.0, jitter=2.0, min_stream_seconds=0, welcome_timeout=60,
                  call_timeout=30, poll_fallback=False)
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def client_cert(ca_key, ca_cert, sid: str) -> tuple[bytes, bytes]:
    """A station certificate as the deployment issues them (``profiles.build_tls_leaf``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = profiles.build_tls_leaf(sid, key.public_key(), issuer=ca_cert, now=now,
                                   identity_uri=f"urn:cns:station:RM:{sid}").sign(ca_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    return cert.public_bytes(pem), key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())


class Inventory:
    def __init__(self, sid):
        self.devices = [DeviceInfo(serial=f"{sid}-TK", kind="token", model="bench", token_release="r1")]

    async def snapshot(self):
        return [], self.devices


def _broadcast_key(command: pb.FleetCommand) -> str:
    """Which broadcast a command belongs to: the bare server numbers its broadcasts (``bare-3``); the
    personalizer gives every station's command its own id, so the bench sends each of its broadcasts with
    another command kind (``benchmarks.fleet.BROADCAST_KINDS``)."""
    return command.command_id if command.command_id.startswith("bare-") else f"kind-{command.kind}"


class Recorder:
    def __init__(self):
        self.got: dict[str, dict[int, float]] = {}   # broadcast (``_broadcast_key``) -> agent -> arrival
        self.order: list[str] = []                   # broadcasts in the order their first command arrived

    def executor(self, i):
        rec = self

        class Ex:
            def accept(self, command):
                key = _broadcast_key(command)
                if key not in rec.got:
                    rec.got[key] = {}
                    rec.order.append(key)
                rec.got[key].setdefault(i, time.time())
                return None

            async def run(self, command, progress):
                return Outcome(True, "ok")
        return Ex()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--tls", type=Path, required=True)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--commands", type=int, default=1, help="broadcasts the bench sends (one at a time)")
    ap.add_argument("--rate", type=float, default=0.0, help="agents this process starts per second (0: all at once)")
    ap.add_argument("--max-rss-mib", type=float, default=0.0, help="end this process past this RSS (0: no bound)")
    o = ap.parse_args()
    # the agents' warnings (failed attempts) with their time, to the bench's clients' log (stderr)
    logging.basicConfig(level=logging.WARNING, format="%(created).3f %(levelname)s %(name)s: %(message)s")
    ca_key = serialization.load_pem_private_key((o.tls / "tls-ca.key.pem").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((o.tls / "tls-ca.pem").read_bytes())
    anchors = (o.tls / "tls-ca.pem").read_bytes()
    rec = Recorder()
    agents = []
    for i in range(o.start, o.start + o.count):
        sid = f"BENCH-{i}"
        cert, key = client_cert(ca_key, ca_cert, sid)
        creds = grpc.ssl_channel_credentials(root_certificates=anchors, private_key=key, certificate_chain=cert)

        def factory(creds=creds):
            return grpc.aio.secure_channel(o.target, creds, options=[
                ("grpc.use_local_subchannel_pool", 1), ("grpc.keepalive_time_ms", 300_000),
                ("grpc.keepalive_permit_without_calls", 0)])
        agents.append(FleetAgent(None, Inventory(sid), rec.executor(i), version="bench", options=OPTIONS,
                                 channel_factory=factory))
    def emit(event, **kw):
        print(json.dumps({"event": event, "t": time.time(), "n": o.count, **kw}), flush=True)

    async def guard():   # bounded memory: a runaway client ends the run with one line, not the machine's memory
        while True:
            await asyncio.sleep(1.0)
            if rss_bytes() > o.max_rss_mib * 2**20:
                emit("error", reason=f"client process RSS {rss_bytes() / 2**20:.0f} MiB passed "
                                     f"--max-rss-mib {o.max_rss_mib:g} with {o.count} agents")
                os._exit(3)
    if o.max_rss_mib > 0:
        watchdog = asyncio.create_task(guard())   # noqa: F841 (held for the process's life)

    emit("ready")   # certificates made: connect time starts here
    tasks = []
    gap = 1 / o.rate if o.rate > 0 else 0.0   # --rate: agents started per second by this process (0: all now)
    t0 = time.monotonic()
    for k, a in enumerate(agents):
        tasks.append(asyncio.create_task(a.run()))
        await asyncio.sleep(max(0.0, t0 + k * gap - time.monotonic()) if gap else 0)

    def failures() -> collections.Counter:
        out = collections.Counter()
        for a in agents:
            for reason, n in a.stats.failures.items():
                out[_STATION.sub("<station>", reason)[:120]] += n
        return out

    welcomed: list[float] = [0.0] * len(agents)   # time.time() of each agent's welcome on the current server
    while not all(a.stats.welcomes >= 1 for a in agents):
        await asyncio.sleep(0.1)
    emit("connected", welcomed=[a.stats.welcomed_at for a in agents],
         welcome_latency=[a.stats.welcome_seconds for a in agents], failures=failures())
    before = failures()
    for k in range(o.commands):   # one "command" line per broadcast that reached every agent
        while True:
            done = [key for key in rec.order if len(rec.got[key]) >= o.count]
            if done:
                break
            await asyncio.sleep(0.05)
        key = done[0]
        emit("command", latest=max(rec.got.pop(key).values()), broadcast=k)
        rec.order.remove(key)
    while not all(a.stats.welcomes >= 2 for a in agents):
        for k, a in enumerate(agents):   # the first welcome of the restarted server (a third may follow)
            if a.stats.welcomes >= 2 and not welcomed[k]:
                welcomed[k] = a.stats.welcomed_at
        await asyncio.sleep(0.05)
    for k, a in enumerate(agents):
        welcomed[k] = welcomed[k] or a.stats.welcomed_at
    emit("reconnected", welcomed=welcomed, welcome_latency=[a.stats.welcome_seconds for a in agents],
         failures=failures() - before, hinted=sum(1 for a in agents if a.stats.reconnect_spread > 0))
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
