"""What only the PostgreSQL store has to show: two daemons on one database, and a lost connection."""
from __future__ import annotations

import asyncio

from personalizer.records import LANE_PRIORITY, LANE_STANDARD, HolderRecord, KeyAlreadyCertified, KeyBinding
from personalizer.store.postgres import PostgresRequestStore
from tests.store.test_contract import put
from tests.support import pg_cluster

LANES = (LANE_PRIORITY, LANE_STANDARD)


def test_two_daemons_on_one_database_never_claim_one_row(pg_session_cluster):
    dsn = pg_cluster.fresh_dsn(pg_session_cluster)

    async def go():
        a = await PostgresRequestStore.open(dsn, clock=lambda: 1000.0, max_connections=4)
        b = await PostgresRequestStore.open(dsn, clock=lambda: 1000.0, max_connections=4)
        try:
            for i in range(120):
                assert await put(a, f"r{i:03d}", lane=LANES[i % 2])

            async def drain(store, name):
                got = []
                while True:
                    batch = await store.claim_due(2000.0, LANES, 7, name)
                    if not batch:
                        return got
                    got += [c.record.request_id for c in batch]
            claims = await asyncio.gather(*(drain(s, f"relay-{k}") for k in range(3) for s in (a, b)))
        finally:
            await a.close()
            await b.close()
        return claims
    claims = asyncio.run(go())
    flat = [rid for c in claims for rid in c]
    assert len(flat) == len(set(flat)) == 120          # every row claimed exactly once
    assert sum(1 for c in claims if c) >= 2            # and the work was shared (SKIP LOCKED, no waiting)


def test_a_retried_request_id_writes_nothing_twice(pg_session_cluster):
    """A client that saw an error retries with the same id: nothing is written twice, the first is found."""
    dsn = pg_cluster.fresh_dsn(pg_session_cluster)

    async def go():
        s = await PostgresRequestStore.open(dsn, max_connections=2)
        try:
            assert await put(s, "lost-answer")
            assert await put(s, "lost-answer") is False
            return await s.get_request("lost-answer"), await s.list_audit()
        finally:
            await s.close()
    rec, audit = asyncio.run(go())
    assert rec is not None and rec.state == "RECEIVED"
    assert [a.request_id for a in audit] == ["lost-answer"]


def test_claiming_a_batch_is_one_statement(pg_session_cluster, monkeypatch):
    """The relay claims a batch (outbox row, request PENDING, what to deliver) in ONE statement: the drain
    after an outage was bound by 3 statements per claimed row, one round trip each (issue 17 item 6). It runs
    in autocommit (one statement is its own transaction): the relay claims after every delivery, mostly
    finding nothing, and BEGIN + COMMIT made that three round trips."""
    import psycopg

    dsn = pg_cluster.fresh_dsn(pg_session_cluster)
    statements = []
    real = psycopg.AsyncConnection.execute

    async def counted(self, query, params=None, **kw):
        statements.append(str(query))
        return await real(self, query, params, **kw)

    async def go():
        s = await PostgresRequestStore.open(dsn, clock=lambda: 1000.0, max_connections=2)
        try:
            for i in range(20):
                assert await put(s, f"b{i:02d}")
            monkeypatch.setattr(psycopg.AsyncConnection, "execute", counted)
            transactions = s.database.transactions
            claimed = await s.claim_due(2000.0, LANES, 50, "relay")
            monkeypatch.undo()
            transactions = s.database.transactions - transactions
            return claimed, await s.get_request("b07"), transactions
        finally:
            await s.close()
    claimed, stored, transactions = asyncio.run(go())
    assert len(statements) == 1
    assert transactions == 0   # no BEGIN/COMMIT around it (autocommit): one round trip, not three
    assert sorted(c.record.request_id for c in claimed) == [f"b{i:02d}" for i in range(20)]
    assert {(c.record.state, c.record.outbox_status, c.record.attempts, c.payload.status, c.payload.attempts)
            for c in claimed} == {("PENDING", "sending", 1, "sending", 1)}
    assert all(c.payload.payload == b'{"card_model": "M1"}' and c.payload.kind == "issue" for c in claimed)
    assert (stored.state, stored.outbox_status, stored.updated_at) == ("PENDING", "sending", 2000.0)


def test_concurrent_writes_share_commits_and_keep_their_own_errors(pg_session_cluster):
    """Deliveries finishing together share one transaction (one standby flush for many); a caller whose
    statements fail gets its own error, and every other caller's writes are committed."""
    from personalizer.errors import StoreError

    dsn = pg_cluster.fresh_dsn(pg_session_cluster)

    async def go():
        s = await PostgresRequestStore.open(dsn, clock=lambda: 1000.0, max_connections=4)
        try:
            for i in range(40):
                assert await put(s, f"g{i:02d}")
            before = s.database.group_commits
            bad = s.database.write([("UPDATE no_such_table SET x = 1", ())], what="the request store")
            results = await asyncio.gather(bad, *(s.fail_request(f"g{i:02d}", "INVALID_ARGUMENT", "csr_der", "bad")
                                                  for i in range(40)), return_exceptions=True)
            stored = [await s.get_request(f"g{i:02d}") for i in range(40)]
            return results, stored, s.database.group_commits - before
        finally:
            await s.close()
    results, stored, commits = asyncio.run(go())
    assert isinstance(results[0], StoreError) and "no_such_table" in str(results[0])
    assert results[1:] == [None] * 40
    assert {(r.state, r.error_code, r.outbox_status) for r in stored} == {("FAILED", "INVALID_ARGUMENT", "failed")}
    assert commits < 40   # shared: fewer transactions than callers


def test_an_issuance_commits_once_with_the_cas_record_in_its_own_transaction(pg_session_cluster, tmp_path):
    """Issue 17 item 6: the daemon's embedded CA keeps its index in the store's database, and the CA's record
    of a certificate is written in the request's own transaction (``complete_issue``): a delivery commits
    (waits for the synchronous standby) once, not twice, and a request is ISSUED exactly when the CA has its
    record. A second certificate for the same request is refused and changes nothing."""
    import dataclasses
    import uuid

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    from personalizer import codice_fiscale, config, dati_personali, deploy
    from personalizer.errors import StoreError
    from personalizer.outbox.broker import IssueInput
    from personalizer.outbox.windows import ServiceCalendar
    from personalizer.records import AuditEntry
    from personalizer.server import Daemon
    from tests.support import keys as test_keys

    dep = deploy.init_deployment(tmp_path / "d", listen="127.0.0.1:0")
    cfg = config.load(dep.server_config)
    cfg = dataclasses.replace(
        cfg, server=dataclasses.replace(cfg.server, processes=1),
        store=dataclasses.replace(cfg.store, backend="postgresql", dsn=pg_cluster.fresh_dsn(pg_session_cluster),
                                  password_file=None),
        ca=dataclasses.replace(cfg.ca, issuing_cert=dep.root / "ca" / "issuing.pem"),
        calendar=ServiceCalendar(hours={d: None for d in range(7)}))   # closed: the request is queued
    cf = codice_fiscale.make("RSSMRA80A01H501")
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "TINIT-" + cf)]))
           .sign(test_keys.fresh_key(), hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    csr2 = (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "TINIT-" + cf)]))
            .sign(test_keys.fresh_key(), hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    rid = str(uuid.uuid4())
    ef = dati_personali.encode(dati_personali.DatiPersonali(surname="Rossi", given_name="Mario",
                                                            birth_date="01011980", codice_fiscale=cf))

    async def go():
        daemon = await Daemon.build(cfg, serve=False)
        store, relay, ca = daemon.store, daemon.relay, daemon.ca
        try:
            rec = await daemon.broker.submit_issue(IssueInput(
                request_id=rid, profile="cns-auth", csr_der=csr, codice_fiscale=cf, given_name="Mario",
                surname="Rossi", birth_date="1980-01-01", card_id="7420000000000001", card_model="t",
                station_id="RM-STATION-01", chamber_code="RM", operator_id="op", ef_dati_personali=ef))
            assert rec.state == "RECEIVED"
            relay.calendar = ServiceCalendar(always_open=True)
            while await relay.run_once():
                pass
            done = await store.get_request(rid)
            # the delivery's own commits, for another request: the CA signs (no commit), the store completes
            rid2 = str(uuid.uuid4())
            await daemon.broker.submit_issue(IssueInput(
                request_id=rid2, profile="cns-auth", csr_der=csr2, codice_fiscale=cf, given_name="Mario",
                surname="Rossi", birth_date="1980-01-01", card_id="7420000000000002", card_model="t",
                station_id="RM-STATION-01", chamber_code="RM", operator_id="op", ef_dati_personali=ef))
            before, reads = store.database.transactions, store.database.reads
            issued2 = await ca.issue("cns-auth", x509.load_der_x509_csr(csr2), _subject(cf), rid2)
            assert store.database.reads == reads   # signing reads nothing (the relay looked before a retry)
            await store.complete_issue(rid2, issued2, "cns-auth", card_id="7420000000000002", holder_cf=cf,
                                       audit=AuditEntry("t", "RM-STATION-01", "issue", rid2, "", "done"))
            delivery_commits = store.database.transactions - before
            assert (await ca.find_issued(rid2)).ref.serial_hex == issued2.ref.serial_hex
            ca_row = await ca.find_issued(rid)
            # another certificate for the same request (a double delivery): refused, nothing changes
            first = (await store.find_issued(rid))[0]
            other = await asyncio.to_thread(ca.issue_sync, "cns-auth", x509.load_der_x509_csr(csr),
                                            _subject(cf), rid)
            try:
                await store.complete_issue(rid, other, "cns-auth", card_id="7420000000000001", holder_cf=cf,
                                           audit=AuditEntry("t", "RM-STATION-01", "issue", rid, "", "done"))
                refused = False
            except StoreError:
                refused = True
            after = await store.get_request(rid), await ca.find_issued(rid), await store.find_issued(rid)
        finally:
            await daemon.stop()
        return delivery_commits, done, ca_row, first, other, refused, after
    commits, done, ca_row, first, other, refused, (rec2, ca_row2, found2) = asyncio.run(go())
    assert done.state == "ISSUED"
    assert ca_row is not None and ca_row.ref.serial_hex == done.serial_hex == first.ref.serial_hex
    assert commits == 1          # the request, outbox, audit AND the CA's record of the certificate: one commit
    assert other.ref.serial_hex != first.ref.serial_hex and refused
    assert rec2.serial_hex == first.ref.serial_hex and ca_row2.ref.serial_hex == first.ref.serial_hex
    assert [c.ref.serial_hex for c in found2] == [first.ref.serial_hex]


def _subject(cf: str):
    import datetime as dt

    from personalizer.ca.base import CertificateSubject
    from personalizer.rules.validation import Holder
    return CertificateSubject(Holder(cf, "Mario", "Rossi", dt.date(1980, 1, 1)), "7420000000000001", "AB" * 8)


class _Outage:
    """A TCP forwarder in front of the primary: ``down()`` drops every connection and refuses new ones (the
    primary's host is gone), ``up()`` answers again at the same address (the promoted primary). A network
    fault, not a database double: behind it is the session cluster's real primary."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = 0
        self._server = None
        self._links: set = set()

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _client(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._links.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._links.difference_update((writer, up_writer))

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        self._server.close()
        for w in list(self._links):
            w.transport.abort()
        await self._server.wait_closed()


def test_a_primary_back_after_a_long_outage_is_used_within_a_pause(pg_session_cluster):
    """Issue 17 item 3 (the drill's RTO): while no primary answers, callers probe for one (at most every
    0.2 s) instead of waiting out the old pool's 5 s checkout and its reconnect backoff (1, 2, 4 s ...),
    so a request waiting at the DR site is served as soon as the promoted primary answers, and committed
    once."""
    import time

    c = pg_session_cluster
    leader = c.cluster_json()["leader"]
    schema_dsn = pg_cluster.fresh_dsn(c)
    options = schema_dsn[schema_dsn.index(" options="):]
    outage_s = 8.0

    async def go():
        proxy = _Outage("127.0.0.1", c.ports.pg(leader))
        await proxy.up()
        dsn = (f"host=127.0.0.1 port={proxy.port} dbname=cns user=cns password={c.secrets()['app']} "
               f"target_session_attrs=read-write connect_timeout=2{options}")
        s = await PostgresRequestStore.open(dsn, max_connections=4, failover_timeout=30)
        try:
            assert await put(s, "before-the-outage")
            await proxy.down()
            waiting = asyncio.create_task(put(s, "during-the-outage"))
            await asyncio.sleep(outage_s)
            assert not waiting.done()          # no primary: the request waits (it is not refused)
            await proxy.up()
            back = time.monotonic()
            assert await waiting
            served_after = time.monotonic() - back
            assert await put(s, "during-the-outage") is False   # committed once: a retry finds it
            found = [await s.get_request(r) for r in ("before-the-outage", "during-the-outage")]
        finally:
            await s.close()
            await proxy.down()
        return served_after, found
    served_after, found = asyncio.run(go())
    assert all(r is not None for r in found)
    assert served_after < 1.0, f"served {served_after:.2f} s after the primary came back"


def test_intakes_share_commits_with_each_other(pg_session_cluster):
    """Issue 17 item 6: ``enqueue`` joins the group commit (one statement per request): requests accepted
    together share one transaction, i.e. one wait for the synchronous standby, instead of one each."""
    from tests.store.test_contract import audit, rec

    dsn = pg_cluster.fresh_dsn(pg_session_cluster)

    async def go():
        s = await PostgresRequestStore.open(dsn, clock=lambda: 1000.0, max_connections=4)
        try:
            before = s.database.transactions
            holder = HolderRecord("", "7420000000009999", "RSSMRA80A01H501U", "Mario", "Rossi", "1980-01-01", "M1")
            created = await asyncio.gather(*(s.enqueue(rec(f"i{i:02d}"), lane=LANE_STANDARD, payload=b"{}",
                                                       audit=audit(f"i{i:02d}"), holder=holder,
                                                       claimer="relay" if i % 2 else None)
                                             for i in range(40)))
            commits = s.database.transactions - before
            stored = [await s.get_request(f"i{i:02d}") for i in range(40)]
            holders = [await s.get_holder(f"i{i:02d}") for i in range(40)]
            return created, commits, stored, holders, await s.list_audit()
        finally:
            await s.close()
    created, commits, stored, holders, audits = asyncio.run(go())
    assert created == [True] * 40
    assert commits < 20, commits   # shared: far fewer transactions than requests
    assert [(r.state, r.outbox_status) for r in stored] == [("RECEIVED", "queued"), ("PENDING", "sending")] * 20
    assert all(h is not None and h.card_id == "7420000000009999" for h in holders)
    assert sorted(a.request_id for a in audits) == [f"i{i:02d}" for i in range(40)]


def test_one_key_offered_by_two_requests_at_once_is_certified_for_one(pg_session_cluster):
    """Two requests with the same public key accepted at the same moment, in one shared transaction or in
    two daemons' transactions: one is accepted, the other refused with nothing written; the requests shared
    with the refused one are all accepted."""
    from tests.store.test_contract import audit, rec

    dsn = pg_cluster.fresh_dsn(pg_session_cluster)
    key = KeyBinding(b"q" * 32, "RSSMRA80A01H501U", "cns-auth")

    async def offer(store, rid, k):
        try:
            return await store.enqueue(rec(rid), lane=LANE_STANDARD, payload=b"{}", audit=audit(rid), key=k)
        except KeyAlreadyCertified:
            return "refused"

    async def go():
        a = await PostgresRequestStore.open(dsn, clock=lambda: 1000.0, max_connections=4)
        b = await PostgresRequestStore.open(dsn, clock=lambda: 1000.0, max_connections=4)
        try:
            same = await asyncio.gather(offer(a, "s1", key), offer(a, "s2", key),
                                        *(offer(a, f"o{i}", None) for i in range(10)))
            across = []
            for round_ in range(5):   # two daemons: separate transactions racing for the key
                kr = KeyBinding(bytes([round_]) * 32, "RSSMRA80A01H501U", "cns-auth")
                across.append(await asyncio.gather(offer(a, f"x{round_}", kr), offer(b, f"y{round_}", kr)))
            return same, across, [await a.get_request(r) for r in ("s1", "s2")], \
                [(await a.get_request(f"x{i}"), await a.get_request(f"y{i}")) for i in range(5)], \
                [x.request_id for x in await a.list_audit()]
        finally:
            await a.close()
            await b.close()
    same, across, (s1, s2), pairs, audited = asyncio.run(go())
    assert sorted(map(str, same[:2])) == ["True", "refused"]
    assert same[2:] == [True] * 10
    loser = "s2" if same[0] is True else "s1"
    assert (s1 if loser == "s1" else s2) is None and loser not in audited
    for result, (x, y) in zip(across, pairs):
        assert sorted(map(str, result)) == ["True", "refused"], result
        assert (x is None) != (y is None)   # exactly one written


def test_complete_issue_returns_the_committed_request(pg_session_cluster):
    """The relay answers the waiting client from what ``complete_issue`` returns: over PostgreSQL too it is
    the request as committed (read in the same transaction), so no read round trip follows a delivery."""
    from tests.store.test_contract import audit, certificate

    dsn = pg_cluster.fresh_dsn(pg_session_cluster)

    async def go():
        s = await PostgresRequestStore.open(dsn, clock=lambda: 1000.0, max_connections=2)
        try:
            assert await put(s, "c1", claimer="relay")
            issued = certificate(77)
            reads = s.database.reads
            done = await s.complete_issue("c1", issued, "cns-auth", card_id="7420000000000077", holder_cf="",
                                          audit=audit("c1", "done"))
            return done, s.database.reads - reads, await s.get_request("c1"), issued
        finally:
            await s.close()
    done, reads, stored, issued = asyncio.run(go())
    assert reads == 0
    assert done == stored
    assert (done.state, done.serial_hex, done.certificate_der, done.outbox_status) == \
        ("ISSUED", "4D", issued.certificate_der, "done")
