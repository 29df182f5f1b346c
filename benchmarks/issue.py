"""Issuance through gRPC + mTLS + request store + embedded CA (RSA-3072), side by side with CFSSL.

Starts ``cns-personalizer serve`` on a fresh test deployment and, in the same
run, CFSSL's ``cfssl serve`` (``benchmarks._cfssl``: same CA key and
certificate, mutual TLS, SQLite certdb in WAL with synchronous=FULL). Both are
driven by the same closed-loop load generator (``benchmarks._load``: one
blocking client per thread in this process; gRPC SubmitIssue over one channel
(one TCP connection) per thread for ours, one keep-alive HTTPS connection per thread with
``POST /api/v1/cfssl/sign`` for CFSSL), with the same CSRs (RSA-2048 subject
keys) and the same concurrency; measurements alternate between the two so
a change of machine load hits both. For each side: rate, p50, p99, server CPU
per certificate, cores used (server CPU time / wall time), client CPU per
certificate, errors and timeouts; at CONCURRENCY (headline, default 16) and at
1, 4, 16, 64 clients (scaling). Reference: the raw RSA-3072 PKCS#1 v1.5
SHA-256 signing rate of the same CA key, one thread and all cores.
Headline: our rate / CFSSL's rate (target >= 1.1) and our p99 <= CFSSL's p99.
``--store postgresql`` (issue 17 item 6) adds, in the same run and alternating with the others, a second
daemon on the same deployment whose store and CA index are PostgreSQL under Patroni with its synchronous
standby (``benchmarks._pg``): its figures beside SQLite's (targets: rate >= 0.8 x, p99 <= 1.2 x SQLite's).

Usage: scripts/bench issue [--requests N] [--concurrency C] [--scaling 1,4,16,64] [--scaling-requests N]
                           [--workers N] [--processes N] [--synchronous FULL|NORMAL]
                           [--store sqlite|postgresql] [--phases]
``--phases``: each daemon notes its store calls per request (``personalizer.store.phases``) and the result has,
per side, histograms of each phase of the headline run's requests (``benchmarks._phases``).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from benchmarks import _cfssl as cfssl, _pg, _phases
from benchmarks._daemon import personalizer_process
from benchmarks._load import Run, descendants, drive
from personalizer import codice_fiscale, dati_personali, deploy
from personalizer.ca.keys import FileSigner
from personalizer.store import phases
from proto.cns.v1 import common_pb2, personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.support import keys as test_keys   # distinct test keys, cheaply (shared primes: tests only)

TARGET_RATIO = 0.30
TARGET_P99_MS = 100.0
TARGET_VS_CFSSL = 1.1
CALL_TIMEOUT_S = 30.0
RAW_SIGN_SECONDS = 2.0
DISTINCT_HOLDERS = 32
PG_TARGET_RATE = 0.8   # PostgreSQL (synchronous standby) rate / SQLite's, same run
PG_TARGET_P99 = 1.2    # PostgreSQL p99 / SQLite's


def raw_sign_rate(signer: FileSigner, seconds: float = RAW_SIGN_SECONDS, threads: int = 1) -> float:
    """Signatures/s of ``signer`` from ``threads`` threads (cryptography releases the GIL while signing)."""
    data = os.urandom(512)
    counts = [0] * threads
    start = time.perf_counter()

    def loop(i: int) -> None:
        while time.perf_counter() - start < seconds:
            signer.raw_sign(data)
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,), name=f"bench-raw-{i}") for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def _holders() -> list[tuple[str, bytes]]:
    out = []
    for i in range(DISTINCT_HOLDERS):
        cf = codice_fiscale.make(f"RSSMRA80A01H{i:03d}")
        ef = dati_personali.encode(dati_personali.DatiPersonali(
            surname="Rossi", given_name="Mario", birth_date="01011980", codice_fiscale=cf))
        out.append((cf, ef))
    return out


def _csr(cf: str) -> bytes:
    """A CSR on a key of its own: the personalizer certifies a public key once (issue 10 item 6)."""
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "TINIT-" + cf)]))
            .sign(test_keys.fresh_key(), hashes.SHA256()).public_bytes(serialization.Encoding.DER))


def _request(i: int, holder, profile) -> pb.SubmitIssueRequest:
    cf, ef = holder
    csr = _csr(cf)
    return pb.SubmitIssueRequest(
        request_id=str(uuid.uuid4()), profile=profile, csr_der=csr,
        holder=common_pb2.Holder(codice_fiscale=cf, given_name="Mario", surname="Rossi", birth_date="1980-01-01"),
        card=common_pb2.Card(card_id=f"74200000{i:08d}"[:16]),
        requester=common_pb2.Requester(station_id="RM-STATION-01", chamber_code="RM", operator_id="bench"),
        ef_dati_personali=ef)



def _grpc_client(port: int, tls: Path, station: Path):
    """A blocking ``call(request)`` for the load generator: one gRPC + mTLS channel (one TCP connection,
    a local subchannel pool) per client thread, as CFSSL's side has one HTTPS connection per thread and
    every station its own connection; and ``close()`` for all of them."""
    creds = grpc.ssl_channel_credentials((tls / "tls-ca.pem").read_bytes(), (station / "client.key.pem").read_bytes(),
                                         (station / "client.pem").read_bytes())
    local, channels, lock = threading.local(), [], threading.Lock()

    def stub() -> pb_grpc.PersonalizerStub:
        s = getattr(local, "stub", None)
        if s is None:
            channel = grpc.secure_channel(f"localhost:{port}", creds, options=[("grpc.use_local_subchannel_pool", 1)])
            with lock:
                channels.append(channel)
            s = local.stub = pb_grpc.PersonalizerStub(channel)
        return s

    def call(req: pb.SubmitIssueRequest) -> None:
        try:
            resp = stub().SubmitIssue(req, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError(exc.details()) from exc
            raise RuntimeError(f"{exc.code().name}: {exc.details()}") from exc
        if resp.state in (pb.REQUEST_STATE_RECEIVED, pb.REQUEST_STATE_PENDING):
            # past [broker] answer_wait the answer is the durable state: a station follows it to the
            # certificate (the agent's uplink does), and so does the load generator, inside the same deadline
            try:
                for resp in stub().WatchRequest(pb.GetRequestRequest(request_id=req.request_id),
                                                timeout=CALL_TIMEOUT_S):
                    if resp.state not in (pb.REQUEST_STATE_RECEIVED, pb.REQUEST_STATE_PENDING):
                        break
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError(exc.details()) from exc
                raise RuntimeError(f"WatchRequest {exc.code().name}: {exc.details()}") from exc
        if resp.state != pb.REQUEST_STATE_ISSUED:
            raise RuntimeError(f"answered {pb.RequestState.Name(resp.state)}, not ISSUED")

    def close() -> None:
        with lock:
            for channel in channels:
                channel.close()

    stub().GetCAStatus(pb.GetCAStatusRequest(), timeout=CALL_TIMEOUT_S, wait_for_ready=True)   # it is up
    return call, close


class _Side:
    """One server under test: its call, its pid, and a supply of fresh requests."""

    def __init__(self, name: str, call, pid: int, make):
        self.name, self.call, self.pid, self._make, self._next = name, call, pid, make, 0

    def requests(self, n: int) -> list:
        out = [self._make(self._next + i) for i in range(n)]
        self._next += n
        return out

    def run(self, n: int, concurrency: int) -> Run:
        return drive(self.call, self.requests(n), concurrency, server_pid=self.pid, name=f"bench-{self.name}")


def _ca_key_pem(dep: deploy.Deployment) -> bytes:
    passphrase = (dep.root / "ca" / "passphrase").read_bytes().strip()
    key = serialization.load_pem_private_key((dep.root / "ca" / "issuing.key.pem").read_bytes(), passphrase)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _serve_processes(pid: int) -> int:
    """How many ``cns-personalizer serve`` processes (the daemon and its helpers) the tree of ``pid`` has."""
    n = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                n += b"\0serve\0" in f.read()
        except OSError:
            continue
    return n


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"bench issue: --scaling wants comma-separated client counts, got {text!r}") from None
    if not levels or any(c < 1 or c > 256 for c in levels):
        raise SystemExit(f"bench issue: --scaling counts must be 1..256, got {text!r}")
    return levels


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench issue", description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="headline sample per side")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--scaling", default="1,4,16,64", help="client counts of the scaling figure")
    ap.add_argument("--scaling-requests", type=int, default=400, help="sample per side and client count")
    ap.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    ap.add_argument("--workers", type=int, default=None,
                    help="[server] workers of the daemon (signing threads); default: the daemon's default")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                    help="[server] processes of the daemon (default: the number of cores)")
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                    help="postgresql: also a daemon on PostgreSQL + synchronous standby, beside SQLite")
    ap.add_argument("--phases", action="store_true",
                    help="per-request phase histograms of the headline run (benchmarks._phases)")
    opts = ap.parse_args(argv)
    if not 1 <= opts.processes <= 64:
        raise SystemExit(f"bench issue: --processes must be 1..64, got {opts.processes}")
    levels = _levels(opts.scaling)
    try:
        cfssl.ensure_installed()
    except cfssl.Missing as exc:
        raise SystemExit(f"bench issue: {exc}") from None
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-issue-") as tmp:
        dep = deploy.init_deployment(Path(tmp) / "d", listen="127.0.0.1:0")
        cfg = dep.server_config
        text = cfg.read_text().replace('synchronous = "FULL"', f'synchronous = "{opts.synchronous}"')
        if opts.workers is not None:
            text = text.replace("[server]\n", f"[server]\nworkers = {opts.workers}\n", 1)
        text = text.replace("[server]\n", f"[server]\nprocesses = {opts.processes}\n", 1)
        cfg.write_text(text)
        signer = FileSigner.load(dep.root / "ca" / "issuing.key.pem", dep.root / "ca" / "passphrase")
        key_bits = signer.public_key().key_size
        raw = raw_sign_rate(signer)
        raw_all = raw_sign_rate(signer, threads=os.cpu_count() or 1)
        holders = _holders()
        profiles = (pb.CA_PROFILE_CNS_AUTH, pb.CA_PROFILE_QUALIFIED_SIGNATURE)
        # CFSSL gets CSRs built the same way (same subject, RSA-2048 keys from the same pool), one per request
        csr_pems = [x509.load_der_x509_csr(_csr(cf)).public_bytes(serialization.Encoding.PEM).decode()
                    for cf, _ in holders]
        station = dep.station_config.parent
        tls = dep.root / "tls"
        pg_cluster = _pg.cluster() if opts.store == "postgresql" else contextlib.nullcontext()
        traces = {side: Path(tmp) / f"phases-{side}" for side in ("personalizer", "personalizer-postgresql")}
        env = {side: {phases.ENV: str(folder)} if opts.phases else None for side, folder in traces.items()}
        with pg_cluster as pgc, personalizer_process(cfg, env=env["personalizer"]) as (port, pid), \
                (personalizer_process(_pg.use_postgresql(cfg, pgc, "pg")[0], env=env["personalizer-postgresql"])
                 if pgc else
                 contextlib.nullcontext((None, None))) as (pg_port, pg_pid), \
                cfssl.cfssl_serve(Path(tmp) / "cfssl", ca_cert=dep.root / "ca" / "issuing.pem",
                                  ca_key_pem=_ca_key_pem(dep), tls_cert=tls / "server.pem",
                                  tls_key=tls / "server.key.pem", client_ca=tls / "tls-ca.pem") as peer:
            ours_call, close_channels = _grpc_client(port, tls, station)
            clients = {}
            if opts.phases:
                ours_call = clients["personalizer"] = _phases.Clients(ours_call)
            sides = [
                _Side("personalizer", ours_call, pid,
                      lambda i: _request(i, holders[i % len(holders)], profiles[i % 2])),
                _Side("cfssl", cfssl.client(peer.port, trust=tls / "tls-ca.pem", cert=station / "client.pem",
                                            key=station / "client.key.pem"), peer.pid,
                      lambda i: csr_pems[i % len(csr_pems)]),
            ]
            if pgc:
                pg_call, close_pg_channels = _grpc_client(pg_port, tls, station)
                if opts.phases:
                    pg_call = clients["personalizer-postgresql"] = _phases.Clients(pg_call)
                sides.insert(1, _Side("personalizer-postgresql", pg_call, pg_pid,
                                      lambda i: _request(i, holders[i % len(holders)], profiles[i % 2])))
            try:
                for side in sides:
                    side.run(opts.warmup, opts.concurrency)
                for c in clients.values():
                    c.on = True
                headline = {s.name: s.run(opts.requests, opts.concurrency) for s in sides}
                for c in clients.values():
                    c.on = False
                scaling: dict[str, dict[str, dict]] = {s.name: {} for s in sides}
                for c in levels:                      # alternate sides so a change of machine load hits both
                    for s in sides:
                        run = s.run(opts.scaling_requests, c)
                        scaling[s.name][str(c)] = dict(run.figures(), **({"first_error": run.first_error}
                                                                         if run.first_error else {}))
                daemon_processes = _serve_processes(pid)   # the primary and its helpers, still serving
            finally:
                close_channels()
                if pgc:
                    close_pg_channels()
            pg_sync = _pg.sync_state(pgc) if pgc else None
            certdb_rows = cfssl.certdb_rows(peer.certdb)
        # the daemons have stopped: their traces are written
        phase_figures = {name: _phases.summary(c, traces[name]) for name, c in clients.items()}
    ours, theirs = headline["personalizer"], headline["cfssl"]
    fo, ft = ours.figures(), theirs.figures()
    vs = fo["rate"] / ft["rate"] if ft["rate"] else float("inf")
    ratio = fo["rate"] / raw
    failures = sum(r["errors"] + r["timeouts"] for side in scaling.values() for r in side.values()) \
        + fo["errors"] + fo["timeouts"] + ft["errors"] + ft["timeouts"]
    pg = {}
    if "personalizer-postgresql" in headline:
        fp = headline["personalizer-postgresql"].figures()
        rate_x = fp["rate"] / fo["rate"] if fo["rate"] else 0.0
        p99_x = fp["p99_latency_ms"] / fo["p99_latency_ms"] if fo["p99_latency_ms"] else float("inf")
        failures += fp["errors"] + fp["timeouts"]
        pg = {"postgresql": fp, "postgresql_standby": pg_sync,
              "postgresql_vs_sqlite": {"rate": round(rate_x, 3), "p99": round(p99_x, 3),
                                       "target_rate": PG_TARGET_RATE, "target_p99": PG_TARGET_P99,
                                       "meets_target": rate_x >= PG_TARGET_RATE and p99_x <= PG_TARGET_P99
                                       and pg_sync == "sync",
                                       "unit": "PostgreSQL (Patroni, synchronous standby) / SQLite, same run"}}
    return {
        **pg,
        **({"phases": phase_figures} if phase_figures else {}),
        "ok": failures == 0,
        "issuance_rate": fo["rate"], "issuance_rate_unit": "certificates/s",
        "p50_latency_ms": fo["p50_latency_ms"], "p99_latency_ms": fo["p99_latency_ms"],
        "vs_cfssl": round(vs, 3), "vs_cfssl_unit": "our rate / CFSSL's rate, same run, same clients",
        "personalizer": fo, "cfssl": ft,
        "first_error": {"personalizer": ours.first_error, "cfssl": theirs.first_error},
        "scaling": scaling,
        "raw_sign_rate": round(raw, 1), "raw_sign_rate_unit": f"RSA-{key_bits} signatures/s, one thread (reference)",
        "raw_sign_rate_all_cores": round(raw_all, 1),
        "raw_sign_rate_all_cores_unit": f"RSA-{key_bits} signatures/s, {os.cpu_count()} threads, same key",
        "ratio": round(ratio, 3), "target_ratio": TARGET_RATIO, "target_p99_ms": TARGET_P99_MS,
        "target_vs_cfssl": TARGET_VS_CFSSL,
        "meets_target": (ratio >= TARGET_RATIO and fo["p99_latency_ms"] < TARGET_P99_MS and vs >= TARGET_VS_CFSSL
                         and fo["p99_latency_ms"] <= ft["p99_latency_ms"] and failures == 0),
        "cfssl_certdb_rows": certdb_rows,
        "load_generator": "this process, one blocking client per thread (gRPC: one channel per thread; CFSSL: one keep-alive "
                          "HTTPS connection per thread); server CPU from /proc of each server's process tree",
        "requests": opts.requests, "concurrency": opts.concurrency, "scaling_requests": opts.scaling_requests,
        "synchronous": opts.synchronous, "workers": opts.workers if opts.workers is not None else "default",
        "processes": opts.processes, "daemon_processes": daemon_processes,
        "store": opts.store, "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
