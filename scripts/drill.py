"""The continuity drill (issue 17): two personalizer sites on a Patroni cluster, a fault, measured figures.

Brings up ``personalizer.continuity.cluster`` (etcd + PostgreSQL 15 primary and synchronous standby), a
test deployment, and two ``cns-personalizer serve`` processes ("primary site" A, "DR site" B) on the same
database (``[store] backend = "postgresql"``), each with its CRL/OCSP publisher and its own copy of the
SoftHSM2 token that holds the one CA key (``personalizer.continuity.sites``). Emulated stations (gRPC
clients with the station's mTLS identity, endpoints A then B, failing over on UNAVAILABLE as the agent
does, retrying with the same request id) send a stream of issuances, suspensions and revocations. At a
random moment the fault is injected with SIGKILL:

    site        site A whole: its personalizer and its PostgreSQL node with Patroni (the primary)
    postgres    the primary PostgreSQL alone (Patroni lives and fails over)
    personalizer  site A's personalizer alone
    standby     the synchronous standby whole (policy: the primary keeps accepting, replication degraded)

Then it checks, on the surviving database, every acknowledged request (lost = acknowledged and absent),
the requests a client saw fail that did commit (found by request id), duplicate issuances, CRL and OCSP
continuity at the DR site, and the time until the killed node is a synchronous standby again. The last
line printed is one JSON object; ``--report DIR`` also writes it and a Markdown table per service class.
Every process it started is stopped at the end, also on Ctrl-C.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.x509 import ocsp  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from personalizer import codice_fiscale, dati_personali, deploy  # noqa: E402
from personalizer.continuity import pitr, sites as sites_mod  # noqa: E402
from personalizer.continuity.cluster import SITES, Cluster, ClusterError, free_port_base  # noqa: E402
from proto.cns.v1 import common_pb2, personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc  # noqa: E402

CRL_REFRESH_S = 5
AFTER_KILL_S = 40.0     # the stream goes on at least this long after the kill (RTO <= 25 s + traffic after it)
GIVE_UP_AFTER_S = 90.0   # after the stream's end, a request no site accepts is given up (and reported)
KILLS = ("site", "postgres", "personalizer", "standby")
RTO_TARGET_S = {"site": 25.0, "postgres": 5.0, "personalizer": 25.0, "standby": 25.0}   # issue 17
CALL_TIMEOUT = 10.0
FAILOVER_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
                  grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}


def log(msg: str) -> None:
    print(f"drill: {msg}", file=sys.stderr, flush=True)


# -- the deployment and the two sites ----------------------------------------------------------

def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Site:
    """One ``cns-personalizer serve`` of a ``sites.SiteConfig`` (its own port and CA token copy)."""
    LISTEN_RE = re.compile(r"listening on port (\d+)")

    def __init__(self, sc: "sites.SiteConfig", log_dir: Path):
        self.name, self.config, self.pki_port, self.token_dir = sc.name, sc.config, sc.pki_port, sc.token_dir
        self.stderr = open(log_dir / f"personalizer-{sc.name}.log", "ab")
        self.proc = subprocess.Popen([str(ROOT / ".venv/bin/cns-personalizer"), "--log-level", "WARNING", "serve",
                                      "--config", str(sc.config)], stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, start_new_session=True, env={**os.environ, **sc.env})
        line = self.proc.stdout.readline()
        m = self.LISTEN_RE.search(line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"site {sc.name} did not start ({line.strip()!r}); see {self.stderr.name}")
        self.port = int(m.group(1))

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.stderr.close()


# -- the emulated stations ----------------------------------------------------------------------

@dataclass
class Outcome:
    request_id: str
    kind: str                      # issue | suspend | revoke
    sent_at: float                 # wall clock of the first attempt
    acked_at: float | None = None  # the daemon answered: the request is durable
    acked_by: str = ""
    state: str = ""
    serial_hex: str = ""
    failures: list[float] = field(default_factory=list)   # wall clock of attempts that failed in transport
    retried_at: float | None = None
    change_state: str = ""
    attempt_at: float = 0.0        # when the attempt that got the answer started


class Station:
    """One station: its own holders and cards, two endpoints, failover on UNAVAILABLE, same id on retry."""

    def __init__(self, n: int, dep, sites: list[Site], outcomes: list[Outcome], rng: random.Random):
        d = dep.station_config.parent
        creds = grpc.ssl_channel_credentials(root_certificates=(dep.root / "tls" / "tls-ca.pem").read_bytes(),
                                             private_key=(d / "client.key.pem").read_bytes(),
                                             certificate_chain=(d / "client.pem").read_bytes())
        self.channels = [grpc.aio.secure_channel(f"localhost:{s.port}", creds) for s in sites]
        self.stubs = [pb_grpc.PersonalizerStub(ch) for ch in self.channels]
        self.names = [s.name for s in sites]
        self.current = 0
        self.n, self.outcomes, self.rng = n, outcomes, rng
        self.issued: list[common_pb2.CertificateRef] = []
        self.count = 0
        self.give_up_at = float("inf")
        self.requester = common_pb2.Requester(station_id="RM-STATION-01", chamber_code="RM",
                                              operator_id=f"op-{n:03d}")

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()

    async def _call(self, out: Outcome, method: str, request):
        while True:
            stub = self.stubs[self.current]
            out.attempt_at = time.time()
            try:
                resp = await getattr(stub, method)(request, timeout=CALL_TIMEOUT)
                out.acked_at, out.acked_by = time.time(), self.names[self.current]
                return resp
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in FAILOVER_CODES:
                    out.state = f"refused:{exc.code().name}"
                    return None
                out.failures.append(time.time())
                if time.time() > self.give_up_at:   # neither site answers: report it, never wait forever
                    out.state = "refused:NO_SITE_ANSWERED"
                    return None
                self.current = (self.current + 1) % len(self.stubs)   # the other site (station config `dr`)
                await asyncio.sleep(0.2)
                if out.retried_at is None:
                    out.retried_at = time.time()

    async def issue(self) -> None:
        self.count += 1
        cf = codice_fiscale.make(f"RSSMRA80A01H{(self.n * 97 + self.count) % 1000:03d}"[:15])
        card = f"74{self.n:04d}{self.count:010d}"
        key = await asyncio.to_thread(rsa.generate_private_key, 65537, 2048)
        name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "IT"),
                          x509.NameAttribute(NameOID.GIVEN_NAME, "Mario"),
                          x509.NameAttribute(NameOID.SURNAME, "Rossi"),
                          x509.NameAttribute(NameOID.SERIAL_NUMBER, "TINIT-" + cf)])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        ef = dati_personali.encode(dati_personali.DatiPersonali(
            issuer="CCIAA di Roma", issue_date="01012026", expiry_date="01012032", surname="Rossi",
            given_name="Mario", birth_date="01011980", sex="M", codice_fiscale=cf))
        req = pb.SubmitIssueRequest(
            request_id=str(uuid.uuid4()), profile=pb.CA_PROFILE_CNS_AUTH,
            csr_der=csr.public_bytes(serialization.Encoding.DER),
            holder=common_pb2.Holder(codice_fiscale=cf, given_name="Mario", surname="Rossi", birth_date="1980-01-01"),
            card=common_pb2.Card(card_id=card, model="drill-card"), requester=self.requester, ef_dati_personali=ef)
        out = Outcome(req.request_id, "issue", time.time())
        self.outcomes.append(out)
        resp = await self._call(out, "SubmitIssue", req)
        if resp is not None:
            out.state = pb.RequestState.Name(resp.state)
            if resp.state == pb.REQUEST_STATE_ISSUED:
                out.serial_hex = resp.certificate.serial_hex
                self.issued.append(resp.certificate)

    async def change(self, kind: str) -> None:
        ref = self.issued.pop(self.rng.randrange(len(self.issued)))
        req = pb.ChangeStatusRequest(request_id=str(uuid.uuid4()), certificate=ref, requester=self.requester,
                                     reason="keyCompromise" if kind == "revoke" else "")
        out = Outcome(req.request_id, kind, time.time(), serial_hex=ref.serial_hex)
        self.outcomes.append(out)
        resp = await self._call(out, "Revoke" if kind == "revoke" else "Suspend", req)
        if resp is not None:
            out.state = pb.CertificateStatus.Name(resp.status)
            out.change_state = pb.RequestState.Name(resp.change_state)

    async def run(self, until: list[float]) -> None:
        """Until ``until[0]`` (the stream may be lengthened while it runs)."""
        while time.time() < until[0]:
            self.give_up_at = until[0] + GIVE_UP_AFTER_S
            r = self.rng.random()
            if self.issued and r < 0.25:
                await self.change("revoke")
            elif self.issued and r < 0.4:
                await self.change("suspend")
            else:
                await self.issue()


# -- CRL and OCSP at a site -----------------------------------------------------------------------

def fetch_crl(site: Site) -> x509.CertificateRevocationList | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{site.pki_port}/crl/cns-issuing-ca.crl", timeout=2) as r:
            return x509.load_der_x509_crl(r.read())
    except OSError:
        return None


def crl_number(crl) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def ocsp_status(site: Site, issuing: x509.Certificate, cert_der: bytes) -> str:
    cert = x509.load_der_x509_certificate(cert_der)
    req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuing, hashes.SHA256()).build()
    body = req.public_bytes(serialization.Encoding.DER)
    r = urllib.request.Request(f"http://127.0.0.1:{site.pki_port}/ocsp", data=body,
                               headers={"Content-Type": "application/ocsp-request"})
    with urllib.request.urlopen(r, timeout=3) as resp:
        answer = ocsp.load_der_ocsp_response(resp.read())
    return answer.certificate_status.name if answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL else \
        answer.response_status.name


# -- one drill -----------------------------------------------------------------------------------------

async def _stream(stations: list[Station], seconds: float, kill_at: float, do_kill) -> float:
    """The stream runs ``seconds``, and at least ``AFTER_KILL_S`` after the kill, so that every service
    class has requests accepted after the recovery (its own RTO figure)."""
    until = [time.time() + seconds]
    tasks = [asyncio.create_task(s.run(until)) for s in stations]
    await asyncio.sleep(max(0.0, kill_at - time.time()))
    t_kill = do_kill()
    until[0] = max(until[0], t_kill + AFTER_KILL_S)
    await asyncio.gather(*tasks)
    return t_kill


def run_drill(args, work: Path) -> dict:
    rng = random.Random(args.seed)
    cluster = Cluster(work / "cluster", port_base=free_port_base(start=rng.randrange(28000, 32000, 10)))
    sites: list[Site] = []
    t0 = time.monotonic()
    try:
        log(f"cluster up in {cluster.run_dir}")
        cluster.up(timeout=120)
        if args.restore_check:
            pitr.backup(cluster)   # the full online backup the restore check starts from
        dep = deploy.init_deployment(work / "deployment", chamber="RM", station_id="RM-STATION-01",
                                     listen="127.0.0.1:0")
        sites_mod.put_ca_key_in_token(dep)   # one CA key in a token, copied to each site as an HSM cluster does
        for name, enroll in (("a", True), ("b", False)):
            sc = sites_mod.site_config(dep, cluster, name, port=_free_port(), pki_port=_free_port(),
                                       crl_refresh_s=CRL_REFRESH_S, enrollment=enroll)
            sites.append(Site(sc, work))
        log(f"sites up: A port {sites[0].port}, B port {sites[1].port} ({time.monotonic() - t0:.1f} s)")
        issuing = x509.load_pem_x509_certificate((dep.root / "ca" / "issuing.pem").read_bytes())
        outcomes: list[Outcome] = []
        before = {"rebuilt": {}}

        def watch_rebuild(cluster, old_leader, t_kill):
            import threading

            def watch():
                deadline = time.time() + 120
                while time.time() < deadline:
                    view = cluster.cluster_json() or {}
                    if view.get("leader") not in (None, old_leader) and cluster.synchronous():
                        before["rebuilt"]["s"] = round(time.time() - t_kill, 2)
                        return
                    time.sleep(0.2)
            th = threading.Thread(target=watch, daemon=True)
            th.start()
            return th

        def do_kill() -> float:
            # what was acknowledged and published before the fault
            before["crl_a"] = fetch_crl(sites[0])
            before["acked"] = [o for o in outcomes if o.acked_at]
            view = cluster.cluster_json() or {}
            leader = view.get("leader") or SITES[0]
            standby = next(s for s in SITES if s != leader)
            t = time.time()
            if args.kill == "site":
                sites[0].kill()
                cluster.kill(leader, "site")
                before["killed_node"] = leader
            elif args.kill == "postgres":
                cluster.kill(leader, "postgres")
                before["killed_node"] = leader
                before["watch"] = watch_rebuild(cluster, leader, t)   # Patroni restarts it itself
            elif args.kill == "personalizer":
                sites[0].kill()
            elif args.kill == "standby":
                cluster.kill(standby, "site")
                before["killed_node"] = standby
            log(f"killed {args.kill} at +{t - start:.1f} s (leader was {leader})")
            before["dr_crl_watch"] = watch_dr_crl(sites[1], t, before["crl_a"])
            return t

        def watch_dr_crl(dr: Site, t_kill: float, crl_a):
            """The first CRL the DR site publishes after the kill (polled every 0.25 s; it republishes every
            CRL_REFRESH_S): the one the continuity check reads, and when a relying party could fetch it."""
            import threading

            def watch():
                deadline = time.time() + 180
                while time.time() < deadline:
                    crl = fetch_crl(dr)
                    if crl is not None and crl.last_update_utc.timestamp() >= t_kill and \
                            (crl_a is None or crl_number(crl) > crl_number(crl_a)):
                        before["dr_crl"], before["dr_crl_seen_at"] = crl, time.time()
                        return
                    time.sleep(0.25)
            th = threading.Thread(target=watch, daemon=True)
            th.start()
            return th

        async def main():
            stations = [Station(i, dep, sites, outcomes, random.Random(rng.random())) for i in range(args.stations)]
            try:
                return await _stream(stations, args.seconds, start + rng.uniform(args.seconds * 0.3,
                                                                                 args.seconds * 0.6), do_kill)
            finally:
                for s in stations:
                    await s.close()
        start = time.time()
        t_kill = asyncio.run(main())
        result = verify(args, cluster, sites, issuing, outcomes, before, t_kill)
        node = before.get("killed_node")
        if node and "watch" in before:
            before["watch"].join(120)
            result["rebuild_s"], result["rebuild_from"] = before["rebuilt"].get("s"), "kill"
        elif node:   # a node killed whole is started again (pg_rewind or a fresh clone, Patroni's choice)
            t = time.monotonic()
            cluster.start(node)
            deadline = t + 120
            while not cluster.synchronous() and time.monotonic() < deadline:
                time.sleep(0.2)
            result["rebuild_s"] = round(time.monotonic() - t, 2) if cluster.synchronous() else None
            result["rebuild_from"] = "restart"
        if node:
            log(f"{node} rebuilt as synchronous standby in {result['rebuild_s']} s (from {result['rebuild_from']})")
        if args.restore_check:
            result["restore"] = restore_check(cluster, work, outcomes, result)
        return result
    finally:
        for s in sites:
            s.stop()
        cluster.down(purge=True)


def _first_logged(path: Path, needles: tuple[str, ...], after: float) -> float | None:
    """Wall-clock time of the first line of ``path`` (Python logging's ``%Y-%m-%d %H:%M:%S,%f`` local time,
    Patroni's too) at or after ``after`` containing one of ``needles``; None when there is none."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if any(n in line for n in needles):
            try:
                t = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            if t >= after - 0.001:
                return t
    return None


PROMOTED = ("promoted self to leader",)             # Patroni (ha.py): it took the leader lock and promotes
DR_FOUND = ("PostgreSQL primary found again",)      # personalizer.pg: the site's pool is on the new primary


def rto_breakdown(cluster: Cluster, sites: list[Site], t_kill: float, rto: float | None) -> dict:
    """Where the RTO went (issue 17 item 3: a run off target says which step was slow): Patroni's promotion
    (leader lock TTL + its loop), the DR site's database pool finding the new primary, the first accepted
    request. Seconds after the kill; None for a step whose log line is absent."""
    promoted = [t for t in (_first_logged(cluster.run_dir / site / "patroni.log", PROMOTED, t_kill) for site in SITES)
                if t is not None]
    found = _first_logged(Path(sites[-1].stderr.name), DR_FOUND, t_kill)
    out = {"promoted_s": round(min(promoted) - t_kill, 3) if promoted else None,
           "dr_found_primary_s": round(found - t_kill, 3) if found else None, "first_accepted_s": rto}
    out["dr_found_after_promotion_s"] = (round(out["dr_found_primary_s"] - out["promoted_s"], 3)
                                         if out["promoted_s"] is not None and found else None)
    return out


def verify(args, cluster: Cluster, sites: list[Site], issuing, outcomes: list[Outcome], before: dict,
           t_kill: float) -> dict:
    import psycopg

    acked = [o for o in outcomes if o.acked_at and not o.state.startswith("refused")]
    # RTO: kill -> the first request accepted whose accepted attempt started after the kill (an answer
    # to an attempt made before the kill says nothing about recovery)
    after_kill = sorted(o.acked_at for o in acked if o.attempt_at >= t_kill)
    rto = round(after_kill[0] - t_kill, 3) if after_kill else None

    def first_after_kill(kinds) -> float | None:
        t = sorted(o.acked_at for o in acked if o.attempt_at >= t_kill and o.kind in kinds)
        return round(t[0] - t_kill, 3) if t else None
    with psycopg.connect(cluster.dsn(connect_timeout=5), autocommit=True) as conn:
        rows = {r[0]: r for r in conn.execute(
            "SELECT request_id, kind, state, serial_hex, created_at FROM requests").fetchall()}
        ca_rows = {r[0]: r for r in conn.execute(
            "SELECT request_id, serial_hex, status, certificate_der FROM ca_certificates").fetchall()}
        dup_requests = conn.execute("SELECT count(*) FROM (SELECT request_id FROM ca_certificates GROUP BY 1 "
                                    "HAVING count(*) > 1) d").fetchone()[0]
        dup_cards = conn.execute("SELECT count(*) FROM (SELECT card_id FROM certificates WHERE card_id IS NOT NULL "
                                 "GROUP BY 1 HAVING count(*) > 1) d").fetchone()[0]
        status_by_serial = {r[1]: r[2] for r in ca_rows.values()}
    lost = []
    for o in acked:
        row = rows.get(o.request_id)
        if row is None:
            lost.append(o.request_id)
        elif o.kind == "issue" and o.state == "REQUEST_STATE_ISSUED" and o.request_id not in ca_rows:
            lost.append(o.request_id)
        elif o.kind == "revoke" and o.state == "CERTIFICATE_STATUS_REVOKED" and status_by_serial.get(o.serial_hex) != "revoked":
            lost.append(o.request_id)
    failed_committed = [o.request_id for o in outcomes if o.failures and o.request_id in rows
                        and rows[o.request_id][4] < (o.retried_at or o.failures[0])]
    # CRL continuity at the DR site: a revocation acknowledged (done) before the kill is in the DR site's CRL
    revoked_before = {o.serial_hex for o in before.get("acked", []) if o.kind == "revoke"
                      and o.state == "CERTIFICATE_STATUS_REVOKED"}
    crl_a = before.get("crl_a")
    dr = sites[1]
    before["dr_crl_watch"].join(180)
    crl_b = before.get("dr_crl")   # the DR site's first CRL after the kill (None: none within 180 s)
    crl_ok = crl_b is not None
    listed = {f"{e.serial_number:X}" for e in crl_b} if crl_b is not None else set()
    missing = sorted(revoked_before - listed)
    sample = sorted(revoked_before)[:5]
    ocsp_states = [ocsp_status(dr, issuing, bytes(next(r[3] for r in ca_rows.values() if r[1] == s))) for s in sample]
    # one CA key at both sites: every certificate either site acknowledged is signed by the issuing key,
    # which exists only inside each site's copy of the token (no key file in the deployment)
    signed_by = {s.name: 0 for s in sites}
    bad_signatures = 0
    for o in acked:
        if o.kind == "issue" and o.request_id in ca_rows:
            try:
                x509.load_der_x509_certificate(bytes(ca_rows[o.request_id][3])).verify_directly_issued_by(issuing)
                signed_by[o.acked_by] = signed_by.get(o.acked_by, 0) + 1
            except (ValueError, TypeError, InvalidSignature):
                bad_signatures += 1
    key_file = (sites[0].config.parent / "ca" / "issuing.key.pem").exists()
    return {
        "kill": args.kill, "stations": args.stations, "seconds": args.seconds, "seed": args.seed,
        "ca_key": {"store": "pkcs11: SoftHSM2 token copied to each site", "issued_by_site": signed_by,
                   "bad_signatures": bad_signatures, "key_file_present": key_file,
                   "token_copies_distinct": len({str(s.token_dir) for s in sites}) == len(sites),
                   "shared": bad_signatures == 0 and not key_file and all(signed_by.values())
                   if args.kill in ("site", "personalizer") else bad_signatures == 0 and not key_file},
        "rto_s": rto,
        "rto_breakdown": rto_breakdown(cluster, sites, t_kill, rto) if args.kill in ("site", "postgres") else None,
        # per service class of the continuity study: issuance; suspension and revocation; CRL (the DR
        # site's first CRL published after the kill, when it could be fetched; OCSP answers from the same
        # database)
        "rto_s_by_class": {"issuance": first_after_kill({"issue"}),
                           "suspension_revocation": first_after_kill({"suspend", "revoke"}),
                           "crl_ocsp": round(before["dr_crl_seen_at"] - t_kill, 3) if crl_ok else None},
        "requests_sent": len(outcomes), "acknowledged": len(acked),
        "acknowledged_by_kind": {k: sum(1 for o in acked if o.kind == k) for k in ("issue", "suspend", "revoke")},
        "acknowledged_lost": len(lost), "lost_ids": lost[:10],
        "seen_failed_but_committed": len(failed_committed),
        "seen_failed_total": sum(1 for o in outcomes if o.failures),
        "duplicates": dup_requests + dup_cards,
        "crl": {"before_kill_number": crl_number(crl_a) if crl_a else None,
                "first_after_kill_number": crl_number(crl_b) if crl_b is not None else None,
                "published_after_kill": crl_ok, "revoked_before_kill": len(revoked_before),
                "missing_from_dr_crl": missing[:10],
                "continuous": bool(crl_ok and not missing and (crl_a is None or crl_number(crl_b) > crl_number(crl_a)))},
        "ocsp": {"checked": len(sample), "revoked_at_dr": sum(1 for s in ocsp_states if s == "REVOKED"),
                 "continuous": all(s == "REVOKED" for s in ocsp_states)},
    }


def restore_check(cluster: Cluster, work: Path, outcomes: list[Outcome], result: dict) -> dict:
    """Restore the backup + archived WAL to a fresh node: every acknowledged request and certificate is
    there, and its CRL number is at least the last one published (the sequence continues from it)."""
    t = time.monotonic()
    wal = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())", database="postgres").strip()
    deadline = time.monotonic() + 60
    while cluster.psql("SELECT COALESCE(last_archived_wal, '') FROM pg_stat_archiver",
                       database="postgres").strip() < wal and time.monotonic() < deadline:
        time.sleep(0.3)
    node = pitr.restore(cluster, work / "restored", _free_port())
    try:
        ids = set(node.psql("SELECT request_id FROM requests").split())
        serials = set(node.psql("SELECT serial_hex FROM ca_certificates").split())
        crl = int(node.psql("SELECT COALESCE(max(last_number), 0) FROM ca_crl_numbers") or 0)
    finally:
        node.stop()
    acked = [o for o in outcomes if o.acked_at and not o.state.startswith("refused")]
    missing = [o.request_id for o in acked if o.request_id not in ids]
    missing_certs = [o.serial_hex for o in acked if o.kind == "issue" and o.serial_hex and o.serial_hex not in serials]
    last_crl = result["crl"]["first_after_kill_number"] or 0
    return {"restore_s": round(time.monotonic() - t, 2), "requests_missing": len(missing),
            "certificates_missing": len(missing_certs), "crl_number": crl,
            "crl_continues": crl >= last_crl, "ok": not missing and not missing_certs and crl >= last_crl}


# -- report ----------------------------------------------------------------------------------------

def versions() -> dict:
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"
    return {"postgresql": out(["/usr/lib/postgresql/15/bin/postgres", "--version"]),
            "patroni": out(["patroni", "--version"]), "etcd": out(["etcd", "--version"]),
            "python": platform.python_version()}


def summarize(runs: list[dict]) -> dict:
    def worst(key, f=max):
        vals = [r[key] for r in runs if r.get(key) is not None]
        return f(vals) if vals else None
    return {
        "runs": len(runs), "kill": runs[0]["kill"] if runs else None,
        "rto_target_s": RTO_TARGET_S.get(runs[0]["kill"]) if runs else None,
        "rto_s_max": worst("rto_s"), "rto_s_median": sorted(r["rto_s"] for r in runs if r["rto_s"] is not None)[
            len(runs) // 2] if any(r["rto_s"] is not None for r in runs) else None,
        "acknowledged": sum(r["acknowledged"] for r in runs),
        "acknowledged_lost": sum(r["acknowledged_lost"] for r in runs),
        "seen_failed_but_committed": sum(r["seen_failed_but_committed"] for r in runs),
        "duplicates": sum(r["duplicates"] for r in runs),
        "crl_continuous": all(r["crl"]["continuous"] for r in runs),
        "ocsp_continuous": all(r["ocsp"]["continuous"] for r in runs),
        "rto_s_max_by_class": {c: max((r["rto_s_by_class"][c] for r in runs if r["rto_s_by_class"][c] is not None),
                                      default=None) for c in ("issuance", "suspension_revocation", "crl_ocsp")},
        "runs_without_class_figure": {c: sum(1 for r in runs if r["rto_s_by_class"][c] is None)
                                      for c in ("issuance", "suspension_revocation", "crl_ocsp")},
        "rebuild_s_max": worst("rebuild_s"),
        # the slowest step of the RTO over the runs (None when no run has it): promotion, DR pool, first answer
        "rto_breakdown_max": {k: max((r["rto_breakdown"][k] for r in runs if r.get("rto_breakdown")
                                      and r["rto_breakdown"][k] is not None), default=None)
                              for k in ("promoted_s", "dr_found_primary_s", "dr_found_after_promotion_s")},
        "ca_key_shared": all(r["ca_key"]["shared"] for r in runs),
        "restore_ok": all(r["restore"]["ok"] for r in runs) if all("restore" in r for r in runs) else None,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "versions": versions(),
        "each": runs,
    }


def markdown(s: dict) -> str:
    rpo = "0 (no acknowledged request lost)" if s["acknowledged_lost"] == 0 else f"{s['acknowledged_lost']} LOST"
    by = s["rto_s_max_by_class"]
    rows = [
        ("Issuance (personalization)", f"{by['issuance']} s", rpo, f"{s['acknowledged']} acknowledged requests "
         f"checked by id; {s['duplicates']} duplicate issuances"),
        ("Suspension and revocation 24x7", f"{by['suspension_revocation']} s", rpo, "every acknowledged revocation present "
         "in the surviving database"),
        ("CRL and OCSP", f"{by['crl_ocsp']} s (first DR CRL after the fault)", "CRL sequence continues" if s["crl_continuous"] else "CRL GAP",
         f"DR CRL lists every revocation acknowledged before the fault: {s['crl_continuous']}; "
         f"OCSP at DR answers revoked: {s['ocsp_continuous']}"),
    ]
    v = s["versions"]
    lines = [f"# Continuity drill: {s['kill']} fault, {s['runs']} run(s), {s['date']}", "",
             f"RTO: fault (SIGKILL) to the first request of the class accepted, detection included; worst of "
             f"{s['runs']} run(s); the first request of any class: {s['rto_s_max']} s.", "",
             "| Service class | Measured RTO (worst) | RPO | Data checked |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    if s.get("restore_ok") is not None:
        lines += ["", f"Restore of the online backup + archived WAL to a fresh node: every acknowledged request "
                  f"and certificate present, CRL sequence continues: {s['restore_ok']}."]
    lines += ["", f"CA key: one key in a PKCS#11 token (SoftHSM2) copied to both sites, no key file; every "
              f"acknowledged certificate verifies against the issuing CA: {s['ca_key_shared']}."]
    if s.get("runs_failed"):
        lines += ["", f"Runs that could not be set up or checked (not counted above): {len(s['runs_failed'])}."]
    lines += ["", f"Rebuild of the failed node as synchronous standby (worst): {s['rebuild_s_max']} s. "
              f"Requests a client saw fail that had committed (found by request id, not repeated): "
              f"{s['seen_failed_but_committed']}.", "",
              f"Versions: {v['postgresql']}; {v['patroni']}; {v['etcd']}; Python {v['python']}.",
              "Targets (issue 17): whole-site RTO <= 25 s, PostgreSQL-only RTO <= 5 s, RPO 0 for acknowledged "
              "requests. Study (seeds): RPO 1 h / 4 h / 24 h, RTO 48-56 h."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/drill", description=__doc__.split("\n")[0])
    ap.add_argument("--kill", choices=KILLS, default="site")
    ap.add_argument("--stations", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=40.0, help="length of the request stream (kill inside it)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--report", help="folder to write drill.json and drill.md into")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    ap.add_argument("--restore-check", action="store_true",
                    help="pgBackRest: full backup at the start, restore to a fresh node at the end and check it")
    args = ap.parse_args(argv)
    if not 1 <= args.stations <= 64 or not 10 <= args.seconds <= 3600 or not 1 <= args.runs <= 100:
        print("drill: --stations 1..64, --seconds 10..3600, --runs 1..100", file=sys.stderr)
        return 2
    base_seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    def stop(signum, frame):   # a supervisor's SIGTERM stops the drill as Ctrl-C does: everything it started
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    runs, failed = [], []
    out = Path(args.report) if args.report else None

    def write_report() -> dict:
        summary = {**summarize(runs), "runs_failed": failed} if runs else {"runs": 0, "runs_failed": failed}
        if out is not None and runs:   # after every run: a long soak stopped early still leaves its figures
            out.mkdir(parents=True, exist_ok=True)
            (out / "drill.json").write_text(json.dumps(summary, indent=1))
            (out / "drill.md").write_text(markdown(summary))
        return summary

    try:
        for i in range(args.runs):
            args.seed = base_seed + i
            work = Path(tempfile.mkdtemp(prefix="cns-drill-"))
            os.chmod(work, 0o755)
            log(f"work folder {work}")
            keep = args.keep
            try:
                runs.append(run_drill(args, work))
                rto = runs[-1]["rto_s"]
                if rto is None or rto > RTO_TARGET_S[args.kill] or runs[-1]["acknowledged_lost"]:
                    keep = True   # a run off target keeps its logs (Patroni, PostgreSQL, the sites) to look into
                    runs[-1]["work_folder_kept"] = str(work)
            except (OSError, RuntimeError, ValueError, subprocess.SubprocessError, ClusterError) as exc:
                # a run that could not be set up or checked is reported as such, and the soak goes on
                failed.append({"seed": args.seed, "error": f"{type(exc).__name__}: {exc}"[:400], "work_folder": str(work)})
                log(f"run {i + 1} failed: {failed[-1]['error']}")
                keep = True
            finally:
                if not keep:
                    shutil.rmtree(work, ignore_errors=True)
                else:
                    log(f"work folder kept: {work}")
            write_report()
    except KeyboardInterrupt:
        print("drill: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    summary = write_report()
    if out is not None and runs:
        log(f"report written to {out}/drill.json and drill.md")
    print(json.dumps(summary))
    ok = bool(runs) and not failed and summary["acknowledged_lost"] == 0 and summary["duplicates"] == 0 \
        and summary["restore_ok"] is not False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
