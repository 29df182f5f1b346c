"""Durable outbox: enqueue rate with the CA closed, drain rate after an outage, lost/duplicated incl. a SIGKILL round.

Phase 1 (in process, the real broker + SQLite store + relay + embedded CA; one interpreter, so
``[server] processes = 1`` with its signing threads):
K issuance requests are accepted while the service window is closed (each
one validated and committed: request + outbox + audit rows in one
transaction, group commit) → accepted requests/s (target >= 1,000/s).
Phase 2: the window opens and the relay drains the K queued requests through
the embedded CA, in this one interpreter (``drain_one_process``: its rate and
its ratio to the raw signing rate). Phase 2b, the headline (issue 16): the
drain as the daemon runs it, ``cns-personalizer serve`` with ``[server]
processes`` = ``--processes`` (default: one per core, the daemon's default):
K requests are queued in process while a maintenance window holds the CA, the
daemon starts, all its processes are up before the window ends, and the drain
rate is K / (the last ISSUED row's commit time − the window's end), read from
the store → drained requests/s (target >= 300/s), also reported as
``drain_ratio`` = drain rate / the raw RSA signing rate of the same CA key
measured in the same run, one thread (the mean of a measure before and one
after that drain; target >= 0.8). Phase 3: the real
``cns-personalizer serve`` receives a stream over gRPC + mTLS, is SIGKILLed
halfway and restarted; afterwards every request must be ISSUED exactly once
(the CA's own rows are counted: its tables in the store's file since issue 16, and the store's
certificates). lost and duplicated must both be 0.

The SIGKILL round's daemon runs with ``[server] processes`` = ``--processes``
(default: the number of cores): the primary is killed, its helpers follow it.

``--store postgresql`` (issue 17 item 6): every phase on PostgreSQL under Patroni with its synchronous
standby (``benchmarks._pg``, a fresh schema per phase; the CA's index is there too) instead of SQLite.
The headline is the same phase 2b (the daemon's processes claim with FOR UPDATE SKIP LOCKED; its rate
from the requests' commit times in that schema), target drain rate >= 0.5 x the raw signing rate of the
same run (``pg_target_drain_ratio``); ``postgresql_drain``: the PostgreSQL servers' CPU during it
(``drain_one_process.postgresql``: phase 2's, with the store's own transaction and pool-wait counts).
Measured 2026-12-02 (2 cores, Patroni sync standby, K = 3,000, load 0.9-2.2): the daemon's drain 0.44-0.63 x
the raw signing rate over 5 runs with the default ``[broker] relay_concurrency`` (32 per process): the two
processes use ~1.0-1.25 cores, PostgreSQL ~0.4; ~0.22 transactions and ~11.5 kB WAL per issuance; each
commit waits for the standby's flush, so the drain is bounded by commit latency, not CPU. With
``--relay-concurrency 128``: 0.66 and 0.67 (0.14 transactions per issuance: larger group commits); on
SQLite in the same way 0.92 / 0.99 against 0.81 / 0.79. Since then 128 is the daemon's default with the
embedded CA (``personalizer.config.RELAY_CONCURRENCY``; 32 with a remote CA).

Usage: scripts/bench queue [--queued K] [--kill-requests N] [--synchronous FULL|NORMAL] [--workers N]
                           [--processes N] [--relay-concurrency N] [--store sqlite|postgresql]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from benchmarks import _pg
from benchmarks.issue import raw_sign_rate
from personalizer import codice_fiscale, config, dati_personali, deploy
from personalizer.ca.keys import FileSigner
from personalizer.ca.signing import default_workers
from personalizer.outbox.broker import IssueInput
from personalizer.server import Daemon
from personalizer.outbox.windows import ServiceCalendar
from tests.support import keys as test_keys   # distinct test keys, cheaply (shared primes: tests only)

TARGET_ENQUEUE = 1000.0
TARGET_DRAIN = 300.0
TARGET_DRAIN_RATIO = 0.8
PG_TARGET_DRAIN_RATIO = 0.5
CLOSED = ServiceCalendar(hours={d: None for d in range(7)})
OPEN = ServiceCalendar(always_open=True)
CHUNK = 256


def _holder(i: int) -> tuple[str, bytes]:
    cf = codice_fiscale.make(f"RSSMRA80A01H{i % 1000:03d}")
    ef = dati_personali.encode(dati_personali.DatiPersonali(surname="Rossi", given_name="Mario",
                                                            birth_date="01011980", codice_fiscale=cf))
    return cf, ef


def _csr(cf: str) -> bytes:
    """A CSR on a key of its own: the personalizer certifies a public key once (issue 10 item 6)."""
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "TINIT-" + cf)]))
            .sign(test_keys.fresh_key(), hashes.SHA256()).public_bytes(serialization.Encoding.DER))


def _input(i: int, holder) -> IssueInput:
    cf, ef = holder
    csr = _csr(cf)
    return IssueInput(request_id=str(uuid.uuid4()), profile="cns-auth", csr_der=csr, codice_fiscale=cf,
                      given_name="Mario", surname="Rossi", birth_date="1980-01-01",
                      card_id=f"74200000{i:08d}"[:16], card_model="bench", station_id="RM-STATION-01",
                      chamber_code="RM", operator_id="bench", ef_dati_personali=ef)


async def _in_process(dep: deploy.Deployment, queued: int, synchronous: str, holders, pg=None,
                      workers: int | None = None) -> dict:
    """``pg``: (config on PostgreSQL, its duplicates() count) instead of SQLite. One interpreter, so
    configured as ``[server] processes = 1`` (the default is one process per core, issue 16, whose
    helpers only ``serve`` starts): the CA signs in ``workers`` threads (default one per core)."""
    cfg = config.load(pg[0] if pg else dep.server_config)
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(
        cfg.server, processes=1, workers=workers if workers is not None else default_workers()))
    store = cfg.store if pg else dataclasses.replace(cfg.store, data_dir=dep.root / "bench-data",
                                                     synchronous=synchronous)
    cfg = dataclasses.replace(
        cfg, ca=dataclasses.replace(cfg.ca, issuing_cert=dep.root / "ca" / "issuing.pem"), calendar=CLOSED,
        store=store,
        broker=dataclasses.replace(cfg.broker, answer_wait_seconds=0.0, relay_concurrency=64))
    daemon = await Daemon.build(cfg, serve=False)   # broker + relay + SQLite store + embedded CA, no servers
    daemon.relay.batch = 512
    store, broker, relay = daemon.store, daemon.broker, daemon.relay
    inputs = [_input(i, holders[i % len(holders)]) for i in range(queued)]
    try:
        t0 = time.perf_counter()
        for start in range(0, queued, CHUNK):
            recs = await asyncio.gather(*(broker.submit_issue(x) for x in inputs[start:start + CHUNK]))
            assert all(r.state == "RECEIVED" for r in recs)
        enqueue_s = time.perf_counter() - t0
        depth = (await store.queue_depth())["standard"]
        db = getattr(store, "database", None)     # PostgreSQL: where the drain's database time goes
        counts0 = _db_counts(db)
        pg_cpu0 = pg[2]() if pg else None
        relay.calendar = OPEN                     # the CA's window opens
        t0, c0 = time.perf_counter(), time.process_time()
        while await relay.run_once():
            pass
        drain_s = time.perf_counter() - t0
        drain_cores = (time.process_time() - c0) / drain_s
        pg_drain = None
        if pg:
            cpu = _pg.cpu_delta(pg_cpu0, pg[2]())
            counts = {k: v - counts0[k] for k, v in _db_counts(db).items()}
            pg_drain = {
                "transactions_per_issuance": round(counts["transactions"] / queued, 3),
                "callers_per_group_commit": round(counts["group_callers"] / max(1, counts["group_commits"]), 2),
                "reads_per_issuance": round(counts["reads"] / queued, 3),
                "statements_per_issuance": round(counts["statements"] / queued, 3),   # one-statement writes (claims)
                "pool_wait_ms_per_issuance": round(counts["pool_wait_s"] * 1000 / queued, 3),
                "postgres_cpu_ms_per_issuance": {k: round(v * 1000 / queued, 3) for k, v in cpu.items()},
                "postgres_cores_used": round(sum(cpu.values()) / drain_s, 2)}
        states = [(await store.get_request(x.request_id)).state for x in inputs]
    finally:
        await daemon.stop()
    dup = pg[1]() if pg else _duplicates(cfg.store.database)
    return {"enqueue_rate": queued / enqueue_s, "drain_rate": queued / drain_s, "drain_cores": drain_cores,
            "queued_depth_seen": depth, "lost": sum(s != "ISSUED" for s in states), "duplicated": dup,
            "commits": getattr(store, "commits", None), "pg_drain": pg_drain}


def _db_counts(db) -> dict:
    return {k: getattr(db, k, 0) for k in ("transactions", "statements", "group_commits", "group_callers", "reads",
                                           "pool_wait_s")}


def _duplicates(store_db: Path) -> int:
    """Certificates beyond the first per request id: in the CA's tables (in the store's file since issue 16)
    and in the store's own certificate rows."""
    db = sqlite3.connect(store_db)
    try:
        return sum(db.execute(f"SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) n FROM {table} "
                              "GROUP BY request_id)").fetchone()[0] for table in ("ca_certificates", "certificates"))
    finally:
        db.close()


DRAIN_OPENS_AFTER_S = 20.0  # the daemon's processes start meanwhile, held by a maintenance window
DRAIN_OPEN_MARGIN_S = 0.5   # ... which ends this long after they are all up
PG_STATS_SETTLE_S = 0.5     # a PostgreSQL backend reports its transaction counts as it exits, after its client left


class _DrainDB:
    """The daemon drain's view of the store it drains, from outside the daemon: the SQLite files of the
    deployment (``requests.sqlite``: the request store and, since issue 16, the CA's index) or one
    PostgreSQL schema (the same two together). One write (the outage's end), the rest reads; ``?``
    placeholders."""

    ca_table = "ca_certificates"

    def __init__(self, data: Path, pg=None):
        self.data, self.pg = data, pg       # pg: (cluster, schema)

    @contextlib.contextmanager
    def connect(self, *, writable: bool = False):
        if self.pg:
            with _pg.connect(*self.pg) as conn:
                yield _PgConn(conn)
            return
        path = self.data / "requests.sqlite"   # the CA's tables are in the same file
        db = sqlite3.connect(path, timeout=10) if writable else sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            yield db
            db.commit()
        finally:
            db.close()


class _PgConn:
    """A psycopg connection (autocommit) answering ``execute`` with sqlite3's ``?`` placeholders."""

    def __init__(self, conn):
        self.conn = conn

    def execute(self, sql: str, params=()):
        return self.conn.execute(sql.replace("?", "%s"), params)


def _daemon_drain(dep: deploy.Deployment, queued: int, holders, processes: int, synchronous: str,
                  pg=None, relay_concurrency: int | None = None) -> dict:
    """Phase 2b: the drain as the daemon runs it, ``cns-personalizer serve`` with ``[server] processes``
    = ``processes`` (the default: one per core) over its own store. ``queued`` requests are accepted in
    process while a maintenance window holds the CA; the daemon starts, every process is up before the
    window ends (moved to DRAIN_OPEN_MARGIN_S after they are), and the drain rate is ``queued`` / (the
    last ISSUED row's commit time - the window's end), read from the store itself. ``pg``: (config on
    PostgreSQL, cluster, schema): the same drain over that store (its processes claim with FOR UPDATE
    SKIP LOCKED), plus the PostgreSQL servers' CPU during it."""
    from benchmarks._daemon import personalizer_process
    from benchmarks._load import cpu_seconds, descendants
    from personalizer.records import AuditEntry

    data = dep.root / "bench-drain"
    shutil.rmtree(data, ignore_errors=True)
    if pg:
        text = pg[0].read_text()
        view = _DrainDB(data, pg=pg[1:])
    else:
        text = dep.server_config.read_text().replace('data_dir = "data"', 'data_dir = "bench-drain"', 1) \
            .replace('synchronous = "FULL"', f'synchronous = "{synchronous}"', 1)
        view = _DrainDB(data)
    text = text.replace("[server]\n", f"[server]\nprocesses = {processes}\n", 1)
    if relay_concurrency is not None:   # default: the daemon's ([broker] relay_concurrency)
        text = text.replace("[broker]\n", f"[broker]\nrelay_concurrency = {relay_concurrency}\n", 1)
    path = dep.root / "bench-drain.toml"   # --workers: already in the deployment's config (main)
    path.write_text(text)
    inputs = [_input(i, holders[i % len(holders)]) for i in range(queued)]

    async def fill() -> float:
        cfg = config.load(path)
        cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, processes=1), calendar=CLOSED,
                                  broker=dataclasses.replace(cfg.broker, answer_wait_seconds=0.0))
        daemon = await Daemon.build(cfg, serve=False)
        try:
            for start in range(0, queued, CHUNK):
                await asyncio.gather(*(daemon.broker.submit_issue(x) for x in inputs[start:start + CHUNK]))
            opens = time.time() + DRAIN_OPENS_AFTER_S
            await daemon.store.add_maintenance("bench-outage", time.time() - 1, opens, "bench queue outage",
                                               "bench", audit=AuditEntry("bench", "", "maintenance-add", None, "",
                                                                         "done"))
            return opens
        finally:
            await daemon.stop()

    opens = asyncio.run(fill())
    pg_cpu = None
    if pg:
        time.sleep(PG_STATS_SETTLE_S)
    counters0 = _pg.database_counters(pg[1]) if pg else None   # the filling sessions have closed
    polls = 0
    with personalizer_process(path, log_level="ERROR") as (_port, pid):
        up = sum(1 for p in descendants(pid) if _serving(p))
        while up < processes and time.time() < opens:
            time.sleep(0.1)
            up = sum(1 for p in descendants(pid) if _serving(p))
        started_in_time = up >= processes and time.time() < opens
        if processes > 1 and started_in_time and opens - time.time() > DRAIN_OPEN_MARGIN_S:
            # every process rereads the stored windows every 50 ms (server.MAINTENANCE_REFRESH_SECONDS):
            # the outage ends sooner, at a time stated in the store, and the run is shorter
            opens = time.time() + DRAIN_OPEN_MARGIN_S
            with view.connect(writable=True) as db:
                db.execute("UPDATE maintenance SET ends_at = ? WHERE id = 'bench-outage'", (opens,))
        while time.time() < opens:
            time.sleep(0.01)
        c0 = cpu_seconds(pid)
        pg_cpu0 = _pg.postgres_cpu(pg[1]) if pg else None
        deadline = time.monotonic() + 60 + queued / 50
        with view.connect() as db:
            while True:
                n, last = db.execute("SELECT COUNT(*), MAX(updated_at) FROM requests WHERE state = 'ISSUED'").fetchone()
                polls += 1
                if n >= queued or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            cpu = cpu_seconds(pid) - c0
            if pg:
                pg_cpu = _pg.cpu_delta(pg_cpu0, _pg.postgres_cpu(pg[1]))
            states = dict(db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state").fetchall())
            per_process = sorted(n for _, n in db.execute(   # is a process idle? (claims per relay)
                "SELECT claimed_by, COUNT(*) FROM outbox WHERE status = 'done' GROUP BY claimed_by").fetchall())
    counters = None
    if pg:   # the daemon has exited (its sessions reported their counts); this one's reads are subtracted
        time.sleep(PG_STATS_SETTLE_S)
        after = _pg.database_counters(pg[1])
        counters = {k: after[k] - counters0[k] for k in after}
        counters["transactions"] -= polls + 4     # its polls, the outage's end, two reads, the counters' own
    ids = {x.request_id for x in inputs}
    with view.connect() as ca:
        signed = [r for (r,) in ca.execute(f"SELECT request_id FROM {view.ca_table}") if r in ids]
    span = (last or opens) - opens
    rate = n / span if span > 0 else 0.0
    out = {"daemon_drain_rate": rate, "daemon_drain_cores": cpu / span if span > 0 else 0.0,
           "daemon_drain_cpu_ms_per_certificate": cpu / max(1, n) * 1000,
           "daemon_drain_lost": queued - states.get("ISSUED", 0), "daemon_drain_processes_up": up,
           "daemon_drain_duplicated": len(signed) - len(set(signed)), "daemon_drain_per_process": per_process,
           "daemon_drain_all_processes_up_before_the_window_opened": started_in_time}
    if pg_cpu is not None and span > 0:
        out["daemon_drain_postgresql"] = {
            "postgres_cpu_ms_per_issuance": {k: round(v * 1000 / max(1, n), 3) for k, v in pg_cpu.items()},
            "postgres_cores_used": round(sum(pg_cpu.values()) / span, 2),
            # the daemon's whole run (start, drain, stop): transactions and WAL per issued request
            "transactions_per_issuance": round(counters["transactions"] / max(1, n), 3),
            "wal_bytes_per_issuance": round(counters["wal_bytes"] / max(1, n))}
    return out


def _serving(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"\0serve\0" in f.read()
    except OSError:
        return False


def _kill_round(dep: deploy.Deployment, n: int, holders, processes: int = 1, pg=None) -> dict:
    """``pg``: (config on PostgreSQL, its duplicates() count) instead of SQLite."""
    import grpc

    from proto.cns.v1 import common_pb2, personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shutil.rmtree(dep.root / "data", ignore_errors=True)
    for f in ("ca.db", "ca.db-wal", "ca.db-shm"):
        (dep.root / "ca" / f).unlink(missing_ok=True)
    cfg = pg[0] if pg else dep.server_config
    cfg.write_text(cfg.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
                   .replace("answer_wait_seconds = 2.0", "answer_wait_seconds = 0.2")
                   .replace("[server]\n", f"[server]\nprocesses = {processes}\n", 1))

    def start():
        p = subprocess.Popen([sys.executable, "-m", "personalizer.cli", "--log-level", "ERROR", "serve", "--config",
                              str(cfg)], stdout=subprocess.PIPE, text=True)
        if "listening" not in p.stdout.readline():
            raise RuntimeError("daemon did not start")
        return p

    station = dep.station_config.parent
    creds = grpc.ssl_channel_credentials((dep.root / "tls" / "tls-ca.pem").read_bytes(),
                                         (station / "client.key.pem").read_bytes(), (station / "client.pem").read_bytes())
    reqs = []
    for i in range(n):
        cf, ef = holders[i % len(holders)]
        reqs.append(pb.SubmitIssueRequest(
            request_id=str(uuid.uuid4()), profile=pb.CA_PROFILE_CNS_AUTH, csr_der=_csr(cf),
            holder=common_pb2.Holder(codice_fiscale=cf, given_name="Mario", surname="Rossi", birth_date="1980-01-01"),
            card=common_pb2.Card(card_id=f"74200000{i:08d}"[:16]),
            requester=common_pb2.Requester(station_id="RM-STATION-01", chamber_code="RM", operator_id="bench"),
            ef_dati_personali=ef))
    answered = []
    REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.FAILED_PRECONDITION)

    def send(chunk):
        with grpc.secure_channel(f"localhost:{port}", creds, options=[("grpc.max_reconnect_backoff_ms", 300)]) as ch:
            stub = pb_grpc.PersonalizerStub(ch)
            for r in chunk:
                while True:
                    try:
                        stub.SubmitIssue(r, timeout=5, wait_for_ready=True)
                        answered.append(r.request_id)
                        break
                    except grpc.RpcError as exc:   # the kill: retried; a refusal would loop forever
                        if exc.code() in REFUSALS:
                            raise
                        time.sleep(0.05)

    proc = start()
    threads = [threading.Thread(target=send, args=(reqs[i::4],), name=f"bench-sender-{i}") for i in range(4)]
    for t in threads:
        t.start()
    while len(answered) < n // 2:
        time.sleep(0.01)
    at_kill = len(answered)
    proc.kill()
    proc.wait()
    proc = start()
    for t in threads:
        t.join()
    lost = 0
    with grpc.secure_channel(f"localhost:{port}", creds) as ch:
        stub = pb_grpc.PersonalizerStub(ch)
        deadline = time.monotonic() + 60
        for r in reqs:
            while True:
                st = stub.GetRequest(pb.GetRequestRequest(request_id=r.request_id), timeout=10).state
                if st == pb.REQUEST_STATE_ISSUED or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            lost += st != pb.REQUEST_STATE_ISSUED
    proc.terminate()
    proc.wait(30)
    return {"kill_round_requests": n, "kill_round_answered_at_kill": at_kill, "kill_round_lost": lost,
            "kill_round_duplicated": pg[1]() if pg else _duplicates(dep.root / "data" / "requests.sqlite")}


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench queue", description=__doc__.splitlines()[0])
    ap.add_argument("--queued", type=int, default=3000, help="K requests queued while the CA is closed")
    ap.add_argument("--kill-requests", type=int, default=400)
    ap.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    ap.add_argument("--workers", type=int, default=None,
                    help="[server] workers (CA signing threads) for both phases; default: the daemon's default")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                    help="[server] processes of the SIGKILL round's daemon (default: the number of cores)")
    ap.add_argument("--relay-concurrency", type=int, default=None,
                    help="[broker] relay_concurrency of the headline drain's daemon (default: the daemon's default)")
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                    help="postgresql: every phase on PostgreSQL + synchronous standby (Patroni)")
    opts = ap.parse_args(argv)
    if not 1 <= opts.processes <= 64:
        raise SystemExit(f"bench queue: --processes must be 1..64, got {opts.processes}")
    if opts.relay_concurrency is not None and not 1 <= opts.relay_concurrency <= 1024:
        raise SystemExit(f"bench queue: --relay-concurrency must be 1..1024, got {opts.relay_concurrency}")
    holders = [_holder(i) for i in range(32)]
    pg_sync = None
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp, \
            (_pg.cluster() if opts.store == "postgresql" else contextlib.nullcontext()) as pgc:
        dep = deploy.init_deployment(Path(tmp) / "d", listen="127.0.0.1:0")
        if opts.workers is not None:
            cfg = dep.server_config
            cfg.write_text(cfg.read_text().replace("[server]\n", f"[server]\nworkers = {opts.workers}\n", 1))
        signer = FileSigner.load(dep.root / "ca" / "issuing.key.pem", dep.root / "ca" / "passphrase")
        raw_before = raw_sign_rate(signer)
        pg1 = pg2 = pg_daemon = None
        if pgc:
            for name in ("drain", "kill", "daemon"):
                path, schema = _pg.use_postgresql(dep.server_config, pgc, name)
                pair = (path, lambda schema=schema: _pg.duplicates(pgc, schema), lambda: _pg.postgres_cpu(pgc))
                if name == "drain":
                    pg1 = pair
                elif name == "kill":
                    pg2 = pair
                else:
                    pg_daemon = (path, pgc, schema)
        res = asyncio.run(_in_process(dep, opts.queued, opts.synchronous, holders, pg1, opts.workers))
        # measured right before the queue fills and right after it drained: a machine whose load changes
        # meanwhile (other sessions on a shared host) moves the reference with the drain
        raw_after = raw_sign_rate(signer)
        raw = (raw_before + raw_after) / 2
        # phase 2b, the headline: the daemon's drain, every process, on the same store as phase 2
        daemon = _daemon_drain(dep, opts.queued, holders, opts.processes, opts.synchronous, pg_daemon,
                               opts.relay_concurrency)
        raw_final = raw_sign_rate(signer)
        daemon["raw_sign_rate"] = (raw_after + raw_final) / 2
        if pgc:   # Patroni's view of the standby right after the headline drain
            pg_sync = _pg.sync_state(pgc)
        res.update(_kill_round(dep, opts.kill_requests, holders, opts.processes, pg2))
    lost = res["lost"] + res["kill_round_lost"] + daemon["daemon_drain_lost"]
    one_process = {"drain_rate": round(res["drain_rate"], 1), "drain_ratio": round(res["drain_rate"] / raw, 3),
                   "drain_cores_used": round(res["drain_cores"], 2),
                   "drain_cpu_ms_per_certificate": round(res["drain_cores"] / res["drain_rate"] * 1000, 3),
                   "raw_sign_rate": round(raw, 1), "workers": opts.workers if opts.workers is not None else "default",
                   "unit": "phase 2: in process, [server] processes = 1 (its signing threads)",
                   **({"postgresql": res["pg_drain"]} if res.get("pg_drain") else {})}
    # the headline: the daemon as deployed (processes = the cores by default), on either store
    drain_rate, raw = daemon["daemon_drain_rate"], daemon["raw_sign_rate"]
    drain_cores = daemon["daemon_drain_cores"]
    drain_cpu = daemon["daemon_drain_cpu_ms_per_certificate"]
    raw_pair = [round(raw_after, 1), round(raw_final, 1)]
    dup = res["duplicated"] + res["kill_round_duplicated"] + daemon["daemon_drain_duplicated"]
    pg = {}
    if opts.store == "postgresql":
        pg = {"postgresql_standby": pg_sync, "pg_target_drain_ratio": PG_TARGET_DRAIN_RATIO,
              "pg_meets_target": drain_rate / raw >= PG_TARGET_DRAIN_RATIO and pg_sync == "sync"
              and lost == dup == 0}
    return {
        **pg,
        "store": opts.store,
        "ok": lost == 0 and dup == 0,
        "enqueue_rate": round(res["enqueue_rate"], 1), "enqueue_rate_unit": "accepted requests/s (CA closed, in process)",
        "drain_rate": round(drain_rate, 1), "drain_rate_unit": "requests/s issued by the embedded CA after the outage"
        + f" (cns-personalizer serve, [server] processes = {opts.processes})",
        "drain_ratio": round(drain_rate / raw, 3),
        "drain_ratio_unit": "drain rate / raw signing rate of the same key (one thread), same run",
        "drain_cores_used": round(drain_cores, 2),
        "drain_cores_used_unit": "CPU time / wall time during the drain (this machine: %d cores)" % os.cpu_count(),
        "drain_cpu_ms_per_certificate": round(drain_cpu, 3),
        "raw_sign_rate": round(raw, 1),
        "raw_sign_rate_unit": "RSA signatures/s, one thread (reference: mean of before and after the drain)",
        "raw_sign_rate_before_after": raw_pair,
        "drain_one_process": one_process,
        "drain_processes": opts.processes, "drain_per_process": daemon["daemon_drain_per_process"],
        "drain_all_processes_up": daemon["daemon_drain_all_processes_up_before_the_window_opened"],
        "target_drain_ratio": TARGET_DRAIN_RATIO,
        "queued": opts.queued, "lost": lost, "duplicated": dup,
        "kill_round": {k: v for k, v in res.items() if k.startswith("kill_round")},
        "target_enqueue_rate": TARGET_ENQUEUE, "target_drain_rate": TARGET_DRAIN,
        "meets_target": (res["enqueue_rate"] >= TARGET_ENQUEUE and drain_rate >= TARGET_DRAIN
                         and drain_rate / raw >= TARGET_DRAIN_RATIO and lost == dup == 0),
        "synchronous": opts.synchronous, "workers": opts.workers if opts.workers is not None else "default",
        "relay_concurrency": opts.relay_concurrency if opts.relay_concurrency is not None else "default",
        "kill_round_processes": opts.processes,
        "store_commits_phase1_2": res["commits"], "cpus": os.cpu_count(),
        **({"postgresql_drain": daemon["daemon_drain_postgresql"]} if "daemon_drain_postgresql" in daemon else {}),
    }
