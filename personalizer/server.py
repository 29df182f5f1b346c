"""Assemble and run the daemon: CA + store + broker + relay + grpc.aio server with mTLS.

``Daemon.build(cfg, *, ca=None, store=None, clock=time.time)`` is the one place the daemon is wired
(production: ``create(cfg)``; tests and benchmarks inject a store, a CA double, a clock, and
``serve=False`` for broker + relay without servers);
``start()`` binds (port 0 → ephemeral, returned) and starts the supervised
relay task, the optional metrics endpoint, the optional status page for central IT
(``personalizer.status``, ``[status_page]``) and the optional PKI publisher
(``personalizer.pki``, when installed and ``[pki] enabled``). The CA is the
embedded one or, with ``[ca] connector = "ejbca"``, the EJBCA REST connector
(``build_ca``). ``serve`` prints one line per bound port on stdout
("listening on port N", then "metrics on port N", "status page on port N", "pki on port N") so a
supervisor or a test can find ephemeral ports. ``stop()``
marks health NOT_SERVING, drains the gRPC server with the configured grace
period, stops the relay (rows it claimed stay ``sending`` and are retried
after ``find_issued`` on the next start), then closes the store and the CA. ``run(cfg)`` is the foreground entry point with SIGTERM /
SIGINT handling. Health checking (grpc.health.v1) and reflection are on.

One daemon per store and port: ``create`` first takes ``guard.StoreLock`` on
the data directory (a second daemon is refused with the holder's pid) and
binds without SO_REUSEPORT (a busy port is refused naming its holder). If
start-up fails, everything opened is closed and the process exits non-zero.
With ``[server] processes = N`` > 1 the port is shared (SO_REUSEPORT) with the
daemon's own N - 1 helper processes (``personalizer.helpers``; ``build(helper=I)``
is one of them: no store lock, PKI publication, metrics, archive or
enrollment port (StationAdmin yes), relay claims under ``<claimer>#I``). What an
admin call through one process changes holds in the others: maintenance windows
are reread every 50 ms, watchers of requests another process delivers follow the
store (``Broker.follow_store``), the CA figures and the card-admin buckets are
shared files of the data directory (``outbox.shared_metrics``, ``rate``), the
CRL follows every process's revocations (``pki.publisher``). Every process serves
the fleet: fleet commands cross processes through the store (``fleet.wake_sqlite``),
the primary alone steps rollouts.
``server_options`` maps ``[server]`` to grpc channel arguments: keepalive,
handshake timeout and a cap on concurrent connections.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from personalizer.edge import identity
from personalizer.edge.admin_service import QueueAdminService
from personalizer.outbox.broker import Broker, RenewalRules
from personalizer.ca import profiles
from personalizer.ca.base import CAConnector
from personalizer.ca.embedded import EmbeddedCA
from personalizer.ca.index import DB_NAME as CA_DB_NAME, CertificateIndex
from personalizer.ca.keys import FileSigner, Pkcs11Signer
from personalizer.config import MAX_PROCESSES, DaemonConfig
from personalizer.errors import ConfigError
from personalizer import helpers
from personalizer.store import phases
from personalizer.guard import StoreLock, address_in_use, port_holder, raise_fd_limit
from personalizer.outbox.metrics import CAMetrics, MetricsServer, StatusFigures
from personalizer.outbox.policy import CircuitBreaker, RetryPolicy
from personalizer.edge.health import HealthServicer
from personalizer.edge.registration_service import SERVICE_NAME as REGISTRATIONS_SERVICE_NAME, RegistrationsService
from personalizer.outbox.relay import Relay
from personalizer.edge.service import SERVICE_NAME, PersonalizerService
from personalizer.store import RequestStore, SqliteRequestStore
from personalizer.edge.tls_clients import ClientTrust
from proto.cns.v1 import admin_pb2, admin_pb2_grpc, personalizer_pb2_grpc, registrations_pb2_grpc
from proto.wire import DecodeInterceptor

ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["QueueAdmin"].full_name

log = logging.getLogger(__name__)

# 12 MiB: a registration's signed request form (≤ 10 MiB, registrations.MAX_FORM_BYTES) must reach the
# handler to get its clear message; every other field stays bounded by personalizer.edge.limits.
MAX_MESSAGE_BYTES = 12 << 20
TSI_MAX_FRAME_BYTES = 4096   # grpc.tsi.max_frame_size: the largest TLS record the server writes


def keepalive_options(min_ping_seconds: float) -> list[tuple[str, int]]:
    """The server's HTTP/2 keepalive and ping policy (also given to bench fleet's bare reference server, so both
    servers ping and accept pings alike)."""
    return [
        # ping idle clients every 60 s; accept client pings every min_ping_seconds (agents: 20 s)
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(min_ping_seconds * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_options(s, *, share_port: bool = False) -> list[tuple[str, object]]:
    """grpc core channel arguments of the server, from ``[server]`` (names as in grpc's
    include/grpc/impl/channel_arg_names.h; an unknown name is silently ignored by grpc, so
    tests/personalizer/test_daemon_limits.py proves each one takes effect)."""
    return [
        *keepalive_options(s.keepalive_min_ping_seconds),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # idle or slow clients: TLS must finish in time; total connections are capped (fd budget)
        ("grpc.server_handshake_timeout_ms", int(s.handshake_timeout_seconds * 1000)),
        ("grpc.max_allowed_incoming_connections", s.max_connections),
        # TLS records of at most 4 KiB (grpc's default: 16 KiB): each connection's frame protector holds a
        # buffer of this size; ~7 KiB less per fleet stream (bench fleet, 1,000 agents), 20,000 streams < 2 GiB
        ("grpc.tsi.max_frame_size", TSI_MAX_FRAME_BYTES),
        # a second daemon on the same port must fail to bind, not share it (grpc sets SO_REUSEPORT by default);
        # shared only with this daemon's own helper processes ([server] processes > 1, personalizer.helpers)
        ("grpc.so_reuseport", 1 if share_port else 0),
    ]


STATUS_SCRAPE_TIMEOUT_SECONDS = 5.0
MAINTENANCE_REFRESH_SECONDS = 0.05  # [server] processes > 1: each relay rereads the stored maintenance windows
                                    # (a window added through another process holds here within this)


def build_ejbca(cfg: DaemonConfig) -> CAConnector:
    from personalizer.ca.ejbca import EjbcaConnector, EjbcaSettings

    e = cfg.ca.ejbca
    try:
        settings = EjbcaSettings(base_url=e.base_url, client_cert=e.client_cert, client_key=e.client_key,
                                 trust_anchors=e.trust_anchors, ca_name=e.ca_name, chain_pem=e.chain,
                                 certificate_profiles=dict(e.certificate_profiles),
                                 end_entity_profiles=dict(e.end_entity_profiles), timeout_seconds=e.timeout_seconds)
    except ValueError as exc:
        raise ConfigError(cfg.source, "ca.ejbca.base_url", str(exc)) from exc
    return EjbcaConnector(settings)


def build_ca(cfg: DaemonConfig, index_opener=None) -> CAConnector:
    """The configured connector: the embedded CA (default) or EJBCA over REST. ``index_opener``: the
    embedded CA's index elsewhere than ca.db (the replicated database with backend = "postgresql")."""
    c = cfg.ca
    if c.connector == "ejbca":
        return build_ejbca(cfg)
    try:
        root = x509.load_pem_x509_certificate(c.root_cert.read_bytes())
        issuing = x509.load_pem_x509_certificate(c.issuing_cert.read_bytes())
    except ValueError as exc:
        raise ConfigError(cfg.source, "ca.root_cert/issuing_cert", "not a PEM certificate") from exc
    if c.key_store == "pkcs11":
        pin = c.pin_file.read_text().strip()
        signer = Pkcs11Signer(module=c.pkcs11_module, token_label=c.token_label, pin=pin, key_label=c.key_label)
    else:
        signer = FileSigner.load(c.issuing_key, c.key_passphrase_file)
    urls = profiles.CAUrls(**c.urls)
    # the CA's own index (ca.db) and OCSP responder live next to its certificates
    return EmbeddedCA(signer=signer, issuing_cert=issuing, root_cert=root, urls=urls,
                      sign_in_thread=c.sign_in_thread, ca_dir=c.issuing_cert.parent,
                      signing_workers=cfg.server.workers, index_opener=index_opener,
                      shared_index=cfg.server.processes > 1)


def build_publisher(cfg: DaemonConfig, ca):
    """E's ``personalizer.pki.PkiPublisher`` when ``[pki] enabled``; None otherwise."""
    if not cfg.pki.enabled:
        return None
    try:
        from personalizer.pki import PkiPublisher
    except ImportError as exc:
        raise ConfigError(cfg.source, "pki.enabled", f"CRL/OCSP publication is not installed ({exc})") from exc
    p = cfg.pki
    return PkiPublisher(ca, crl_dir=p.crl_dir, http_host=p.http_host, http_port=p.http_port,
                        refresh_seconds=p.refresh_seconds, max_connections=p.max_connections,
                        request_timeout=p.request_timeout_seconds)


@dataclass
class Daemon:
    cfg: DaemonConfig
    store: RequestStore
    ca: CAConnector
    broker: Broker
    relay: Relay
    server: grpc.aio.Server | None = None          # None: built with serve=False (no gRPC, no HTTP)
    health: health.aio.HealthServicer | None = None
    metrics_server: MetricsServer | None = None
    status_page: object | None = None   # [status_page]: personalizer.status.server.StatusPage (issue 15)
    publisher: object | None = None
    fleet: object | None = None      # personalizer.edge.fleet_wiring.Fleet (issue 15)
    archiver: object | None = None   # the daily archive task ([reports], personalizer.reports.scheduler)
    enroll_server: grpc.aio.Server | None = None   # [enrollment]: the server-auth-only Enroll port
    enroll_port: int = 0
    card_admin: object | None = None   # [card_admin]: the CardAdmin servicer (personalizer.cardadmin), its token
    port: int = 0
    lock: StoreLock | None = None
    helper: int = 0                  # > 0: helper process I of a daemon with [server] processes > 1
    shared: bool = False             # [server] processes > 1 over the store this daemon opened
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    async def build(cls, cfg: DaemonConfig, *, ca: CAConnector | None = None, store: RequestStore | None = None,
                    clock: Callable[[], float] = time.time, claimer: str | None = None,
                    serve: bool = True, helper: int = 0,
                    ca_wrapper: Callable[[CAConnector], CAConnector] | None = None) -> "Daemon":
        """The daemon from its config: the one place its parts are wired.

        ``store``: a RequestStore to use (tests: a MemoryRequestStore, or a second store on one file);
        None opens the configured SQLite store, after taking ``StoreLock`` on the data directory (a
        second daemon touches nothing). ``ca``: a connector, already opened (tests: a CA double); None
        builds and opens the configured one. ``clock`` drives the store it opens, the broker, the relay
        and the metrics. ``claimer``: the name this daemon's relay claims rows under (default: host and
        database, stable across restarts, so a restart takes back its own claims and never another
        daemon's). ``serve=False`` leaves out the gRPC servers, metrics, PKI publication and archive
        (broker and relay only, for in-process tests and benchmarks). ``helper``: I > 0 builds helper
        process I of a daemon with ``[server] processes`` > 1 (see the module docstring). ``ca_wrapper``:
        applied to the connector this build makes, before it is opened (tests: a fault double around the
        configured CA, wired exactly as in production).

        The daemon owns what it is given: ``stop()`` closes the store and the CA. On a failure here
        everything opened so far is closed again (an open store or CA keeps threads that would keep a
        failed process alive)."""
        async with contextlib.AsyncExitStack() as undo:
            lock = None
            pg_store = sqlite_store = None
            ca_is_embedded = False   # built here, embedded: its index is where build_ca's opener puts it
            # several processes on the configured store: only when this build opens it (a test or benchmark that
            # injects its store is one process, and must not share figures with a daemon on the same data dir)
            shared = cfg.server.processes > 1 and store is None
            if store is None:
                if not helper:   # a helper serves under its primary's lock
                    lock = StoreLock(cfg.store.data_dir).acquire()   # first: a second daemon touches nothing
                    undo.callback(lock.release)
                if cfg.store.backend == "postgresql":   # issue 17: store and CA index in one replicated database
                    from personalizer.store.postgres import PostgresRequestStore
                    store = pg_store = await PostgresRequestStore.open(cfg.store.postgres_dsn())
                else:   # before the CA: its index lives in this file (issue 16)
                    store = sqlite_store = await SqliteRequestStore.open(
                        cfg.store.database, synchronous=cfg.store.synchronous, clock=clock,
                        shared=cfg.server.processes > 1)
                undo.push_async_callback(store.close)
            elif ca is not None:
                undo.push_async_callback(store.close)
            if ca is None:
                if pg_store is not None:
                    from personalizer.ca.index_postgres import PgCertificateIndex

                    async def pg_index():   # the CA's rows are written in complete_issue's transaction
                        index = PgCertificateIndex.over(pg_store.database, recorded_by_store=True)
                        pg_store.ca_record_statement = index.record_statement
                        return index
                    ca = build_ca(cfg, index_opener=pg_index)
                elif sqlite_store is not None:
                    async def sqlite_index():   # issue 16: the CA's tables in the store's file, its rows
                        # written in complete_issue's transaction (one commit per issuance); ca.db imported once
                        index = await CertificateIndex.open_in_store(
                            cfg.store.database, shared=cfg.server.processes > 1,
                            import_from=cfg.ca.issuing_cert.parent / CA_DB_NAME)
                        sqlite_store.ca_record_statement = index.record_statement
                        return index
                    ca = build_ca(cfg, index_opener=sqlite_index)
                else:
                    ca = build_ca(cfg)
                    undo.push_async_callback(store.close)   # an injected store: closed after the CA
                ca_is_embedded = isinstance(ca, EmbeddedCA)
                if ca_wrapper is not None:
                    ca = ca_wrapper(ca)
                undo.push_async_callback(ca.close)
                if ca_is_embedded:   # its own index (in the store's file, or PostgreSQL); other connectors keep records at the CA
                    await ca.open()
            else:
                undo.push_async_callback(ca.close)
            store = phases.traced(store)   # CNS_PHASE_TRACE set (benchmarks): per-request store timings
            claimer = claimer or f"{socket.gethostname()}:{cfg.store.database}"
            metrics = None
            if shared:   # every process shows the CA calls of all (outbox.shared_metrics)
                from personalizer.outbox.shared_metrics import FILE_NAME, SharedCAMetrics
                cfg.store.data_dir.mkdir(parents=True, exist_ok=True)
                metrics = SharedCAMetrics(cfg.store.data_dir / FILE_NAME, reset=not helper, clock=clock)
                undo.callback(metrics.close)
            daemon = cls._wire(cfg, ca, store, clock=clock,
                               claimer=helpers.claimer_of(claimer, helper) if helper else claimer,
                               shared=shared, metrics=metrics)
            # the CA's rows written by the store's own transaction: sign first, commit once (Broker.sign_first)
            daemon.broker.sign_first = sqlite_store is not None and ca_is_embedded
            daemon.lock = lock
            daemon.shared = shared
            daemon.helper = helper
            if serve:
                daemon._add_edge()
                await daemon._add_fleet()   # last: nothing after it can fail and leak its connection
            undo.pop_all()
            return daemon

    @classmethod
    async def create(cls, cfg: DaemonConfig) -> "Daemon":
        """The production daemon: ``build(cfg)`` with everything from the config."""
        return await cls.build(cfg)

    @classmethod
    def _wire(cls, cfg: DaemonConfig, ca: CAConnector, store: RequestStore, *, clock, claimer: str,
              shared: bool = False, metrics: CAMetrics | None = None) -> "Daemon":
        attach = getattr(ca, "attach_registry", None)
        if attach is not None:   # a CA with its own index falls back to the store's certificates
            attach(store)
        b = cfg.broker
        broker = Broker(store=store, ca=ca, min_rsa_bits=cfg.min_rsa_bits, answer_wait=b.answer_wait_seconds,
                        renewal=RenewalRules(b.renewal_window_days, b.device_life_years), clock=clock)
        relay = Relay(store=store, ca=ca, calendar=cfg.calendar, metrics=metrics or CAMetrics(clock=clock), clock=clock,
                      retry=RetryPolicy(b.retry_initial_seconds, b.retry_max_seconds),
                      breaker=CircuitBreaker(b.breaker_failures, b.breaker_reset_seconds),
                      concurrency=b.relay_concurrency, notify=broker.notify, watched=broker.watched,
                      maintenance=list(cfg.maintenance),
                      claimer=claimer, maintenance_refresh_seconds=MAINTENANCE_REFRESH_SECONDS if shared else None)
        broker.wake_relay = relay.wake
        broker.relay = relay
        return cls(cfg=cfg, store=store, ca=ca, broker=broker, relay=relay)

    def _add_edge(self) -> None:
        """The gRPC servers (mTLS), health, reflection, metrics, PKI publication and the daily archive."""
        cfg, broker, relay = self.cfg, self.broker, self.relay
        primary = not self.helper
        self.publisher = build_publisher(cfg, self.ca) if primary else None
        if self.publisher is not None:
            relay.set_on_status_change(self.publisher.publish_now)
        trust = ClientTrust(cfg.server.client_trust_anchors.read_bytes(), cfg.server.client_crl)
        # DecodeInterceptor first (outermost): undecodable bytes get INVALID_ARGUMENT, the rest see messages
        server = grpc.aio.server(interceptors=[DecodeInterceptor(), identity.AuthInterceptor(trust=trust)],
                                 options=server_options(cfg.server, share_port=cfg.server.processes > 1))
        personalizer_pb2_grpc.add_PersonalizerServicer_to_server(PersonalizerService(broker=broker, relay=relay),
                                                                 server)
        admin_pb2_grpc.add_QueueAdminServicer_to_server(QueueAdminService(broker=broker, relay=relay,
                                                                            config_windows=cfg.maintenance), server)
        registrations_pb2_grpc.add_RegistrationsServicer_to_server(RegistrationsService(broker=broker), server)
        from personalizer.edge import card_admin_service   # [card_admin]: issue 12
        card_admin = card_admin_service.register(cfg, broker, server, shared=self.shared)
        health_servicer = HealthServicer()   # the library's aio servicer plus List
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, ADMIN_SERVICE_NAME, REGISTRATIONS_SERVICE_NAME,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], server)
        s = cfg.server
        creds = grpc.ssl_server_credentials(
            [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
            root_certificates=s.client_trust_anchors.read_bytes(),
            require_client_auth=s.require_client_auth)
        self.server, self.health, self.card_admin = server, health_servicer, card_admin
        if cfg.metrics.enabled and primary:
            self.metrics_server = MetricsServer(relay.metrics, host=cfg.metrics.http_host,
                                                port=cfg.metrics.http_port, status=self.status_for_scrape)
        if cfg.status_page.enabled and primary:   # one page per daemon: its helpers do not bind the port
            from personalizer.status.server import StatusPage
            sp = cfg.status_page
            self.status_page = StatusPage(self.status_view, host=sp.http_host, port=sp.http_port, tls_cert=s.tls_cert,
                                          tls_key=s.tls_key, anchors=s.client_trust_anchors, client_crl=s.client_crl,
                                          max_connections=sp.max_connections,
                                          request_timeout=sp.request_timeout_seconds)
        if cfg.reports.enabled and primary and cfg.store.backend != "sqlite":
            # the archive reads the SQLite store's file; over PostgreSQL it would fail at every check
            log.warning("[reports]: the daily archives are written from the SQLite store only, so none is written "
                        "with [store] backend = \"%s\"; the database's backups (pgBackRest) keep the records. Set "
                        "[reports] enabled = false to silence this", cfg.store.backend)
        elif cfg.reports.enabled and primary:
            from personalizer.reports.scheduler import ArchiveScheduler
            r = cfg.reports
            self.archiver = ArchiveScheduler(cfg.store.database, r.dir, keep=r.keep, hour=r.hour, tz_name=r.timezone)
        try:
            # a helper joins the port its primary holds (SO_REUSEPORT): the trial bind is the primary's
            self.port = 0 if primary and address_in_use(s.listen) else server.add_secure_port(s.listen, creds)
        except RuntimeError:   # grpcio raises on a failed bind
            self.port = 0
        if self.port == 0:
            port = s.listen.rpartition(":")[2]
            holder = port_holder(int(port)) if port.isdigit() and int(port) else None
            raise ConfigError(cfg.source, "server.listen",
                              f"cannot listen on {s.listen}: " + (f"the port is in use by {holder}" if holder else
                                                                   "the address is in use or not local"))
        if cfg.enrollment.enabled:   # StationAdmin in every process; the enrollment port in the primary only
            self._add_enrollment(broker)

    async def _add_fleet(self) -> None:
        """Fleet.Connect/Poll and FleetAdmin on the mTLS server (issue 15), their tables in the daemon's database
        (the SQLite file, or the PostgreSQL database of ``[store] backend = "postgresql"``)."""
        from personalizer.edge import fleet_wiring
        pg = None
        if self.cfg.store.backend == "postgresql" and hasattr(self.store, "database"):
            pg = (self.store.database, self.cfg.store.postgres_dsn())   # issue 15 item 8: one fleet, many daemons
        # [server] processes > 1: every process serves the fleet (SO_REUSEPORT hands it any agent's connection);
        # commands cross processes through the store and the primary steps rollouts (fleet_wiring)
        self.fleet = await fleet_wiring.attach(self.server, self.cfg.store.database, pg=pg,
                                               processes=self.cfg.server.processes if self.shared else 1,
                                               leader=not self.helper,
                                               daemon=self.relay.claimer.rpartition("#")[0] if self.helper
                                               else self.relay.claimer, process=self.helper)
        if self.metrics_server is not None:
            self.metrics_server.registry.register(self.fleet.collector())

    def _add_enrollment(self, broker) -> None:
        """[enrollment]: StationAdmin on the mTLS port, StationEnrollment alone on its own port."""
        from personalizer.enrollment import Enrollment
        from personalizer.edge.enrollment_service import StationAdminService, build_enrollment_server
        from proto.cns.v1 import enrollment_pb2_grpc
        e, s = self.cfg.enrollment, self.cfg.server
        try:
            enrollment = Enrollment.from_files(self.store, ca_cert=e.tls_ca_cert, ca_key=e.tls_ca_key,
                                               client_crl=s.client_crl, cert_days=e.cert_days,
                                               code_hours=e.code_hours)
        except (OSError, ValueError) as exc:
            raise ConfigError(self.cfg.source, "enrollment.tls_ca_key", str(exc)) from exc
        enrollment_pb2_grpc.add_StationAdminServicer_to_server(StationAdminService(enrollment, broker), self.server)
        if self.helper:   # central IT's StationAdmin calls may reach any process; the Enroll port is the primary's
            return
        chain = s.tls_cert.read_bytes().rstrip(b"\n") + b"\n" + enrollment.ca_pem
        port = e.listen.rpartition(":")[2]
        holder = port_holder(int(port)) if port.isdigit() and int(port) else None
        if holder is None and not address_in_use(e.listen):
            try:
                self.enroll_server, self.enroll_port = build_enrollment_server(
                    enrollment, listen=e.listen, tls_key=s.tls_key.read_bytes(), tls_chain=chain,
                    attempts_per_minute=e.attempts_per_minute, base_options=server_options(s), broker=broker,
                    relay=self.relay, card_admin=self.card_admin.core if self.card_admin else None)
            except RuntimeError:   # grpcio raises on a failed bind
                self.enroll_port = 0
        if self.enroll_port == 0:
            raise ConfigError(self.cfg.source, "enrollment.address",
                              f"cannot listen on {e.listen}: " + (f"the port is in use by {holder}" if holder else
                                                                   "the address is in use or not local"))

    async def status_figures(self) -> StatusFigures:
        """The CA-status read model (``outbox.ca_status``) GetCAStatus answers: the Prometheus endpoint shows
        these, so both views agree."""
        return await self.broker.ca_status()

    async def status_view(self):
        """What the status page shows: the CA-status read model, the fleet's counts and active rollouts."""
        from personalizer.status.page import StatusView
        ca, ca_error = None, ""
        try:
            ca = await self.status_figures()
        except Exception as exc:   # the page shows the rest and says the CA status is unknown
            ca_error = f"{type(exc).__name__}: {exc}"
        fleet, streams, rollouts = None, 0, ()
        if self.fleet is not None:
            fleet, streams = await self.fleet.store.counts(), await self.fleet.streams()
            rollouts = tuple(await self.fleet.rollouts.list(active_only=True))
        return StatusView(generated_at=time.time(), ca=ca, fleet=fleet, streams_here=streams, rollouts=rollouts,
                          ca_error=ca_error)

    def status_for_scrape(self) -> StatusFigures | None:
        """Called from the metrics server's thread: run ``status_figures`` in the daemon's loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        future = asyncio.run_coroutine_threadsafe(self.status_figures(), loop)
        try:
            return future.result(STATUS_SCRAPE_TIMEOUT_SECONDS)
        except TimeoutError:
            future.cancel()
            log.warning("CA status for a metrics scrape took over %.0f s; serving last-known figures",
                        STATUS_SCRAPE_TIMEOUT_SECONDS)
            return None

    async def _start_status_page(self) -> None:
        sp = self.cfg.status_page
        try:
            await self.status_page.start()
        except OSError as exc:   # a busy or foreign address: one line naming the key and, if local, the holder
            holder = port_holder(sp.http_port) if sp.http_port else None
            raise ConfigError(self.cfg.source, "status_page.http_port",
                              f"cannot listen on {sp.http_host}:{sp.http_port}: " +
                              (f"the port is in use by {holder}" if holder else exc.strerror or str(exc))) from None

    async def start(self) -> int:
        self._loop = asyncio.get_running_loop()
        await self.relay.start()
        if self.shared:   # a request may be delivered by another process's relay
            self.broker.follow_store()
        if self.publisher is not None:
            await self.publisher.start()
        if self.metrics_server is not None:
            self.metrics_server.start()
        if self.status_page is not None:
            await self._start_status_page()
        if self.archiver is not None:
            await self.archiver.start()
        if self.server is None:   # serve=False: broker and relay only
            return 0
        await self.server.start()
        if self.enroll_server is not None:
            await self.enroll_server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("cns-personalizer %slistening on port %d (mTLS, client auth %s)",
                 f"helper {self.helper} " if self.helper else "", self.port,
                 "required" if self.cfg.server.require_client_auth else "optional",
                 extra={"port": self.port, "client_auth_required": self.cfg.server.require_client_auth,
                        "helper": self.helper})
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        grace = self.cfg.server.grace_seconds if grace is None else grace
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if self.fleet is not None:
            self.fleet.close_streams()   # fleet streams end now, normally: their agents reconnect, spread
            await self.fleet.streams_ended(min(5.0, grace))
        if self.enroll_server is not None:
            await self.enroll_server.stop(0)
        if self.server is not None:
            await self.server.stop(grace)
        await self.relay.stop()
        await self.broker.stop_following()
        if self.archiver is not None:
            await self.archiver.stop()
        if self.publisher is not None:
            await self.publisher.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.status_page is not None:
            await self.status_page.stop()
        if self.fleet is not None:
            await self.fleet.close()
        await self.store.close()
        await self.ca.close()
        self.relay.metrics.close()
        if self.card_admin is not None:
            self.card_admin.core.close()
        if self.lock is not None:
            self.lock.release()


async def serve(cfg: DaemonConfig, *, ready=None, helper: int = 0) -> None:
    """Run the daemon until SIGTERM/SIGINT. ``helper`` > 0: run helper process I (``personalizer.helpers``),
    whose ``cfg.server.listen`` names the port its primary bound."""
    before, after = raise_fd_limit()
    log.info("open files limit %d%s", after, f" (raised from {before})" if after != before else "")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM,) if helper else (signal.SIGTERM, signal.SIGINT):   # before "listening" is
        loop.add_signal_handler(sig, stopping.set)                # printed: a prompt SIGTERM is clean too
    if helper:
        # Ctrl-C reaches the whole process group: the primary stops its helpers itself (SIGTERM), so a
        # helper leaving on its own meanwhile would only look like a crash to restart
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        helpers.exit_when_primary_gone(loop)
    daemon = await Daemon.build(cfg, helper=helper)
    others = None
    try:
        port = await daemon.start()
        if not helper:
            # rows a helper of an earlier run held (it may have been killed with its primary) are due again
            await asyncio.gather(*(daemon.store.reset_sending(helpers.claimer_of(daemon.relay.claimer, i))
                                   for i in range(1, MAX_PROCESSES + 1)))
        if not helper and cfg.server.processes > 1:
            others = helpers.Helpers(cfg.source, port, cfg.server.processes)
            await others.start()
    except BaseException:
        await daemon.stop(0)   # nothing half-started stays up without listening
        raise
    if ready is not None:
        ready(port)
    if others is not None:
        log.info("serving with %d processes on port %d (helpers: pids %s)", cfg.server.processes, port,
                 ", ".join(map(str, others.pids)))
    if daemon.metrics_server is not None:
        print(f"cns-personalizer: metrics on port {daemon.metrics_server.port}", flush=True)
    if daemon.status_page is not None:
        print(f"cns-personalizer: status page on port {daemon.status_page.port}", flush=True)
    if daemon.publisher is not None:
        print(f"cns-personalizer: pki on port {daemon.publisher.port}", flush=True)
    if daemon.enroll_server is not None:
        print(f"cns-personalizer: enrollment on port {daemon.enroll_port}", flush=True)
    await stopping.wait()
    log.info("shutting down (grace %.1f s)", cfg.server.grace_seconds)
    if others is not None:
        await others.stop(cfg.server.grace_seconds)
    await daemon.stop()


def run(cfg: DaemonConfig, *, ready=None, helper: int = 0) -> None:
    asyncio.run(serve(cfg, ready=ready, helper=helper))
