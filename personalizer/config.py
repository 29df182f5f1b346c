"""The daemon's configuration: a TOML file → frozen dataclasses, validated once.

Relative paths are resolved against the config file's folder. Errors raise
``ConfigError(path, key, message)`` naming the file, the dotted key and what
was expected. Imports nothing of ours but ``errors``, ``validation`` and
``ca.signing`` (the default number of workers).

Example (``cns-personalizer init`` writes one)::

    [server]
    listen = "127.0.0.1:50051"
    tls_cert = "tls/server.pem"
    tls_key = "tls/server.key.pem"
    client_trust_anchors = "tls/tls-ca.pem"
    require_client_auth = true
    grace_seconds = 10
    # workers = 2               # embedded CA signing threads (default: the number of cores, 0 with processes > 1;
                                #   0 = on the event loop)
    # processes = 2             # server processes sharing the port (default: the number of cores, at most 64;
                                #   1 = one process; see personalizer/helpers.py)
    keepalive_min_ping_seconds = 10   # accept client keepalive pings this often (agents ping every 20 s)
    handshake_timeout_seconds = 10    # a connection that has not finished TLS by then is closed
    max_connections = 4096            # concurrent connections, authenticated or not (fd budget), per server process

    [store]
    data_dir = "data"
    synchronous = "FULL"        # FULL | NORMAL (WAL either way)
    # backend = "postgresql"    # issue 17: both sites on one Patroni cluster (default "sqlite")
    # dsn = "host=site-a,site-b port=5432,5432 dbname=cns user=cns target_session_attrs=read-write"
    # password_file = "secrets/pg-password"   # the DSN's password, kept out of the config (mode 0600)

    [ca]
    connector = "embedded"
    root_cert = "ca/root.pem"
    issuing_cert = "ca/issuing.pem"
    key_store = "file"          # file | pkcs11
    issuing_key = "ca/issuing.key.pem"
    key_passphrase_file = "ca/passphrase"
    # key_store = "pkcs11": pkcs11_module, token_label, key_label, pin_file

    # connector = "ejbca": the CA is an EJBCA reached over its REST API (mTLS); root_cert,
    # issuing_cert and the key settings are then not used, [ca.ejbca] is required:
    # [ca.ejbca]
    # base_url = "https://ejbca.example.it:8443"
    # client_cert = "ejbca/ra-client.pem"       # our RA administrator certificate (PEM)
    # client_key = "ejbca/ra-client.key.pem"    # its key (PEM, unencrypted, mode 0600)
    # trust_anchors = "ejbca/tls-ca.pem"        # CA(s) that sign EJBCA's TLS certificate
    # ca_name = "CNS-Issuing-CA"                # EJBCA's certificate_authority_name
    # chain = "ejbca/chain.pem"                 # issuing CA first, root last
    # timeout_seconds = 10
    # [ca.ejbca.certificate_profiles]           # our profile → EJBCA certificate profile
    # cns-auth = "CNS_AUTH"
    # qualified-signature = "CNS_QUALIFIED"
    # [ca.ejbca.end_entity_profiles]            # our profile → EJBCA end-entity profile
    # cns-auth = "CNS_HOLDER"
    # qualified-signature = "CNS_HOLDER"

    [ca.urls]
    ca_issuers = "http://pki.cns-demo.it/ca/cns-issuing-ca.cer"
    ocsp = "http://ocsp.cns-demo.it"
    crl = "http://pki.cns-demo.it/crl/cns-issuing-ca.crl"
    pds = "https://pki.cns-demo.it/pds/pds-en.pdf"

    [profiles.cns-auth]
    min_rsa_bits = 2048         # 1024 allowed here only, for the legacy card model

    [broker]                    # the durable outbox and its relay (all optional)
    answer_wait_seconds = 2.0   # how long SubmitIssue & co. wait for the CA before answering RECEIVED/PENDING
    retry_initial_seconds = 1.0 # backoff: full jitter, doubling, capped
    retry_max_seconds = 300.0
    breaker_failures = 5        # consecutive CA failures that open the circuit
    breaker_reset_seconds = 30.0  # open → half-open (health() probe) after this
    relay_concurrency = 128     # deliveries in flight per process (default: 128 with the embedded CA, 32 with a remote one)
    renewal_window_days = 90    # renewal accepted this many days before expiry
    device_life_years = 6       # no certificate beyond this from the card's first one

    [service_window]            # issuance/renewal; suspension & revocation are 24x7
    timezone = "Europe/Rome"
    weekdays = "08-21"          # Monday..Friday, local hours [open, close)
    saturday = "08-14"
    sunday = "closed"
    national_holidays = true    # Italian national holidays closed (incl. Easter Monday)
    closed_dates = []           # extra closed days, "YYYY-MM-DD" or TOML dates, 2000..2099, each once
    always_open = false         # true only for test deployments

    [[maintenance]]             # planned CA maintenance (also: cnsctl maintenance add)
    id = "2026-12-upgrade"
    starts_at = "2026-12-05T20:00:00+01:00"
    ends_at = "2026-12-06T02:00:00+01:00"
    reason = "CA software upgrade"

    [metrics]                   # Prometheus text format; off unless enabled
    enabled = false
    http_host = "127.0.0.1"
    http_port = 9464

    [status_page]               # central IT's read-only status page: HTTPS, admin client certificate only
    enabled = false
    http_host = "127.0.0.1"
    http_port = 8443
    max_connections = 64
    request_timeout_seconds = 10

    [pki]                       # CRL (HTTP + files) and OCSP publication, if personalizer.pki is installed
    enabled = false
    http_host = "127.0.0.1"
    http_port = 8080
    crl_dir = "crl"
    refresh_seconds = 3600      # SLA4.3: at least every 2 hours; at most 6300 (nextUpdate = +refresh+15 min <= 2 h)

    [enrollment]                # stations enroll with a one-time code (cnsctl station add); off unless enabled
    enabled = false
    address = "0.0.0.0:50052"   # TLS without client auth; serves StationEnrollment.Enroll only
    tls_ca_key = "tls/tls-ca.key.pem"   # signs station certificates and the client CRL (0600)
    cert_days = 365             # station certificate lifetime; the agent renews with 1/3 of it left
    code_hours = 72             # how long a code may be used
    attempts_per_minute = 10    # Enroll calls per minute from one address

    [reports]                   # the daily archive (tender §5.1.8), written by the daemon each day
    enabled = true
    dir = "reports"             # cns-archive-YYYY-MM-DD/ bundles (cns-personalizer report archive|monthly)
    keep = 400                  # archives kept (the oldest beyond this are deleted)
    hour = 1                    # local hour after which yesterday's archive is written
    timezone = "Europe/Rome"    # the day of the chambers
    max_connections = 512       # concurrent HTTP connections; at the limit the oldest unfinished request is dropped
    request_timeout_seconds = 10  # a request (line, headers, body) must arrive within this

Unknown sections and keys are refused, naming the key and the keys expected there.
"""
from __future__ import annotations

import datetime as _dt
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personalizer.rules import validation
from personalizer.ca.signing import default_workers
from personalizer.errors import ConfigError
from personalizer.outbox.windows import DEFAULT_HOURS, Maintenance, ServiceCalendar, WindowError, check_window

SYNCHRONOUS_MODES = ("FULL", "NORMAL")
STORE_BACKENDS = ("sqlite", "postgresql")
KEY_STORES = ("file", "pkcs11")
CONNECTORS = ("embedded", "ejbca")
EJBCA_PROFILE_TABLES = ("certificate_profiles", "end_entity_profiles")


@dataclass(frozen=True)
class ServerConfig:
    listen: str
    tls_cert: Path
    tls_key: Path
    client_trust_anchors: Path
    require_client_auth: bool = True
    grace_seconds: float = 10.0
    client_crl: Path | None = None   # CRL of revoked client certificates, signed by the TLS CA (reread on change)
    workers: int = 1                 # embedded CA signing threads ([server] workers; default: number of cores)
    processes: int = 1               # gRPC server processes on the listen port ([server] processes; default in
                                     # the file: default_processes(), the number of cores; issue 16)
    keepalive_min_ping_seconds: float = 10.0
    handshake_timeout_seconds: float = 10.0
    max_connections: int = 4096


@dataclass(frozen=True)
class StoreConfig:
    data_dir: Path
    synchronous: str = "FULL"
    backend: str = "sqlite"
    dsn: str = ""                      # postgresql: libpq DSN listing both sites (no password)
    password_file: Path | None = None

    def postgres_dsn(self) -> str:
        """The DSN with the password read from ``password_file`` (never logged, never in the config)."""
        if self.password_file is None:
            return self.dsn
        password = self.password_file.read_text().strip().replace("\\", "\\\\").replace("'", "\\'")
        return f"{self.dsn} password='{password}'"

    @property
    def database(self) -> Path:
        return self.data_dir / "requests.sqlite"


@dataclass(frozen=True)
class EjbcaConfig:
    """``[ca.ejbca]``: where EJBCA is, how we authenticate (mTLS) and how our profiles map to EJBCA's."""

    base_url: str
    client_cert: Path
    client_key: Path
    trust_anchors: Path
    ca_name: str
    chain: Path
    certificate_profiles: dict[str, str]
    end_entity_profiles: dict[str, str]
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class CAConfig:
    connector: str
    root_cert: Path | None        # embedded only
    issuing_cert: Path | None     # embedded only
    key_store: str
    issuing_key: Path | None = None
    key_passphrase_file: Path | None = None
    pkcs11_module: str | None = None
    token_label: str | None = None
    key_label: str | None = None
    pin_file: Path | None = None
    urls: dict[str, str] = field(default_factory=dict)
    sign_in_thread: bool = False
    ejbca: EjbcaConfig | None = None   # connector = "ejbca" only


@dataclass(frozen=True)
class BrokerConfig:
    answer_wait_seconds: float = 2.0
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    breaker_failures: int = 5
    breaker_reset_seconds: float = 30.0
    relay_concurrency: int = 32      # the file's default depends on the CA: RELAY_CONCURRENCY
    renewal_window_days: int = 90
    device_life_years: int = 6


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = False
    http_host: str = "127.0.0.1"
    http_port: int = 9464


@dataclass(frozen=True)
class StatusPageConfig:
    """``[status_page]``: personalizer.status, on the server's TLS certificate and client trust anchors."""
    enabled: bool = False
    http_host: str = "127.0.0.1"
    http_port: int = 8443
    max_connections: int = 64
    request_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class PkiConfig:
    enabled: bool = False
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    crl_dir: Path | None = None
    refresh_seconds: float = 3600.0
    max_connections: int = 512
    request_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class ReportsConfig:
    enabled: bool = True
    dir: Path | None = None
    keep: int = 400
    hour: int = 1
    timezone: str = "Europe/Rome"


@dataclass(frozen=True)
class EnrollmentConfig:
    """``[enrollment]``: stations get their certificate with a one-time code (personalizer.enrollment)."""
    enabled: bool = False
    listen: str = ""                 # the server-auth-only port serving StationEnrollment.Enroll alone
    tls_ca_cert: Path | None = None  # the service TLS CA (default: server.client_trust_anchors)
    tls_ca_key: Path | None = None   # its key: signs station certificates and the client CRL
    cert_days: int = 365
    code_hours: int = 72
    attempts_per_minute: int = 10    # Enroll calls per minute from one address (120 overall)


@dataclass(frozen=True)
class DaemonConfig:
    source: Path
    server: ServerConfig
    store: StoreConfig
    ca: CAConfig
    min_rsa_bits: dict[str, int]
    broker: BrokerConfig = BrokerConfig()
    calendar: ServiceCalendar = ServiceCalendar()
    maintenance: tuple[Maintenance, ...] = ()
    metrics: MetricsConfig = MetricsConfig()
    status_page: StatusPageConfig = StatusPageConfig()
    pki: PkiConfig = PkiConfig()
    reports: ReportsConfig = ReportsConfig()
    enrollment: EnrollmentConfig = EnrollmentConfig()


# SLA4.3 (2 h) minus the CRL nextUpdate margin (personalizer.pki.crl.NEXT_UPDATE_MARGIN, 15 min)
MAX_CRL_REFRESH_SECONDS = 7200 - 900

MAX_WORKERS = 64


def _workers(path: Path, value: int) -> int:
    if not 0 <= value <= MAX_WORKERS:
        raise ConfigError(path, "server.workers", f"expected 0..{MAX_WORKERS} signing threads (0 = sign on the "
                                                  f"event loop; default: the number of cores), got {value}")
    return value


MAX_PROCESSES = 64


def default_processes() -> int:
    """``[server] processes`` when the file does not say: one server process per core (issue 16), at most
    ``MAX_PROCESSES``."""
    return min(MAX_PROCESSES, default_workers())


def _processes(path: Path, value: int) -> int:
    if not 1 <= value <= MAX_PROCESSES:
        raise ConfigError(path, "server.processes", f"expected 1..{MAX_PROCESSES} server processes sharing the "
                                                    f"listen port (1 = one process; default: the number of "
                                                    f"cores), got {value}")
    return value


MAX_CONNECTIONS = 1_000_000

# every section and key the daemon reads; anything else is a typo and refused (as station_config does)
_SECTIONS: dict[str, set[str] | None] = {
    "server": {"listen", "tls_cert", "tls_key", "client_trust_anchors", "require_client_auth", "grace_seconds",
               "keepalive_min_ping_seconds", "handshake_timeout_seconds", "max_connections", "client_crl", "workers",
               "processes"},
    "store": {"data_dir", "synchronous", "backend", "dsn", "password_file"},
    "ca": {"connector", "root_cert", "issuing_cert", "key_store", "issuing_key", "key_passphrase_file",
           "pkcs11_module", "token_label", "key_label", "pin_file", "urls", "sign_in_thread", "ejbca"},
    "profiles": None,   # profile names, checked where read
    "broker": {"answer_wait_seconds", "retry_initial_seconds", "retry_max_seconds", "breaker_failures",
               "breaker_reset_seconds", "relay_concurrency", "renewal_window_days", "device_life_years"},
    "service_window": {"timezone", "weekdays", "saturday", "sunday", "national_holidays", "closed_dates",
                       "always_open"},
    "maintenance": None,   # array of tables, checked where read
    "card_admin": None,    # checked where read (personalizer.cardadmin.setup)
    "metrics": {"enabled", "http_host", "http_port"},
    "status_page": {"enabled", "http_host", "http_port", "max_connections", "request_timeout_seconds"},
    "pki": {"enabled", "http_host", "http_port", "crl_dir", "refresh_seconds", "max_connections",
            "request_timeout_seconds"},
    "reports": {"enabled", "dir", "keep", "hour", "timezone"},
    "enrollment": {"enabled", "address", "tls_ca_cert", "tls_ca_key", "cert_days", "code_hours", "attempts_per_minute"},
}
_SUBTABLES = {
    "ca.ejbca": {"base_url", "client_cert", "client_key", "trust_anchors", "ca_name", "chain", "timeout_seconds",
                 "certificate_profiles", "end_entity_profiles"},
    "profiles.*": {"min_rsa_bits"},
    "maintenance[]": {"id", "starts_at", "ends_at", "reason"},
}


def _refuse_unknown(path: Path, key: str, table: object, allowed: set[str]) -> None:
    if isinstance(table, dict):
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(path, f"{key}.{unknown[0]}", f"unknown key; expected one of {sorted(allowed)}")


def _check_names(path: Path, data: dict) -> None:
    for name in data:
        if name not in _SECTIONS:
            raise ConfigError(path, name, f"unknown section; expected one of {sorted(_SECTIONS)}")
    for name, allowed in _SECTIONS.items():
        if allowed is not None:
            _refuse_unknown(path, name, data.get(name), allowed)
    ca = data.get("ca")
    if isinstance(ca, dict):
        _refuse_unknown(path, "ca.ejbca", ca.get("ejbca"), _SUBTABLES["ca.ejbca"])
    profiles = data.get("profiles")
    if isinstance(profiles, dict):
        for name, table in profiles.items():
            _refuse_unknown(path, f"profiles.{name}", table, _SUBTABLES["profiles.*"])
    maint = data.get("maintenance")
    if isinstance(maint, list):
        for i, table in enumerate(maint):
            _refuse_unknown(path, f"maintenance[{i}]", table, _SUBTABLES["maintenance[]"])


def _bounded(path: Path, key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(path, key, f"must be between {low:g} and {high:g}, got {value!r}")


_HOURS_RE = re.compile(r"^(\d{1,2})-(\d{1,2})$")
_HOURS_FORM = '"HH-HH" (opening-closing hour, 0..24, e.g. "08-21") or "closed"'


def _hours(path: Path, key: str, value: object) -> tuple[int, int] | None:
    if value == "closed":
        return None
    m = _HOURS_RE.match(value) if isinstance(value, str) else None
    if not m:
        raise ConfigError(path, key, f"expected {_HOURS_FORM}, got {value!r}")
    opens, closes = int(m.group(1)), int(m.group(2))
    if not 0 <= opens < closes <= 24:
        why = "an hour past 24" if max(opens, closes) > 24 else "it closes at or before it opens"
        raise ConfigError(path, key, f"expected {_HOURS_FORM}, got {value!r} ({why})")
    return opens, closes


_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_FORM = "YYYY-MM-DD dates (e.g. \"2026-12-24\" or 2026-12-24)"


def _closed_dates(path: Path, key: str, values: list) -> frozenset[_dt.date]:
    """Extra closed days: TOML dates or "YYYY-MM-DD" strings, years 2000..2099, each once. Python's
    ``date.fromisoformat`` alone would take 20261224 and "2026-W52-4", and a TOML date-time (a ``date``
    subclass) would be kept and never match a day."""
    out: list[_dt.date] = []
    for raw in values:
        if isinstance(raw, _dt.datetime):
            raise ConfigError(path, key, f"expected {_DATE_FORM}, got the date-time {raw.isoformat()} (a day is "
                                         "closed whole: write the date, not a date-time)")
        if isinstance(raw, _dt.date):
            day = raw
        elif isinstance(raw, str) and _DATE_RE.match(raw):
            try:
                day = _dt.date.fromisoformat(raw)
            except ValueError:
                raise ConfigError(path, key, f"expected {_DATE_FORM}, got {raw!r} (no such day)") from None
        else:
            raise ConfigError(path, key, f"expected {_DATE_FORM}, got {raw!r}")
        if not 2000 <= day.year <= 2099:
            raise ConfigError(path, key, f"expected {_DATE_FORM} between 2000 and 2099, got {day.isoformat()}")
        if day in out:
            raise ConfigError(path, key, f"{day.isoformat()} is listed twice; expected {_DATE_FORM}, each once")
        out.append(day)
    return frozenset(out)


def _timezone(path: Path, key: str, tz: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(path, key, f"unknown time zone {tz!r}; expected a tz database name such as Europe/Rome "
                                     "(not an offset)") from None


def _when(path: Path, key: str, value: object) -> _dt.datetime:
    try:
        t = value if isinstance(value, _dt.datetime) else _dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(path, key, f"expected an ISO 8601 date-time with offset, got {value!r}") from None
    if t.tzinfo is None:
        raise ConfigError(path, key, f"needs a UTC offset (e.g. +01:00), got {value!r}")
    try:
        return t.astimezone(_dt.timezone.utc)
    except OverflowError:
        raise ConfigError(path, key, f"out of range, got {value!r}") from None


# [broker] relay_concurrency when the file does not set it. A remote CA (EJBCA) gets at most 32 calls in flight
# per process. The embedded CA signs on this machine's own threads, so more deliveries in flight only make the
# group commits larger: `scripts/bench queue` drained 0.92 / 0.99 of the raw signing rate with 128 against
# 0.81 / 0.79 with 32 on SQLite, and 0.66 / 0.67 against 0.55 / 0.61 on PostgreSQL with its synchronous standby
# (same holds, 2026-12-02), 0 lost / 0 duplicated in every kill round.
RELAY_CONCURRENCY = {"embedded": 128, "ejbca": 32}


def _load_operations(r: "_Reader", connector: str) -> dict:
    path = r.path
    b = r.table("broker", required=False)
    broker = BrokerConfig(
        answer_wait_seconds=r.get(b, "broker", "answer_wait_seconds", float, 2.0),
        retry_initial_seconds=r.get(b, "broker", "retry_initial_seconds", float, 1.0),
        retry_max_seconds=r.get(b, "broker", "retry_max_seconds", float, 300.0),
        breaker_failures=r.get(b, "broker", "breaker_failures", int, 5),
        breaker_reset_seconds=r.get(b, "broker", "breaker_reset_seconds", float, 30.0),
        relay_concurrency=r.get(b, "broker", "relay_concurrency", int, RELAY_CONCURRENCY[connector]),
        renewal_window_days=r.get(b, "broker", "renewal_window_days", int, 90),
        device_life_years=r.get(b, "broker", "device_life_years", int, 6))
    for key in ("answer_wait_seconds", "retry_initial_seconds", "retry_max_seconds", "breaker_reset_seconds"):
        if getattr(broker, key) < 0:
            raise ConfigError(path, f"broker.{key}", "must be >= 0")
    for key in ("breaker_failures", "relay_concurrency", "renewal_window_days", "device_life_years"):
        if getattr(broker, key) < 1:
            raise ConfigError(path, f"broker.{key}", "must be >= 1")
    w = r.table("service_window", required=False)
    hours = dict(DEFAULT_HOURS)
    wk = _hours(path, "service_window.weekdays", r.get(w, "service_window", "weekdays", object, "08-21"))
    for d in range(5):
        hours[d] = wk
    hours[5] = _hours(path, "service_window.saturday", r.get(w, "service_window", "saturday", object, "08-14"))
    hours[6] = _hours(path, "service_window.sunday", r.get(w, "service_window", "sunday", object, "closed"))
    closed = _closed_dates(path, "service_window.closed_dates", r.get(w, "service_window", "closed_dates", list, []))
    tz = r.get(w, "service_window", "timezone", str, "Europe/Rome")
    _timezone(path, "service_window.timezone", tz)
    calendar = ServiceCalendar(timezone=tz, hours=hours, extra_closed=closed,
                               national_holidays=r.get(w, "service_window", "national_holidays", bool, True),
                               always_open=r.get(w, "service_window", "always_open", bool, False))
    maint = []
    raw_m = r.data.get("maintenance", [])
    if not isinstance(raw_m, list):
        raise ConfigError(path, "maintenance", "expected an array of tables [[maintenance]]")
    for i, m in enumerate(raw_m):
        prefix = f"maintenance[{i}]"
        if not isinstance(m, dict):
            raise ConfigError(path, prefix, "expected a table")
        start = _when(path, f"{prefix}.starts_at", m.get("starts_at"))
        end = _when(path, f"{prefix}.ends_at", m.get("ends_at"))
        try:
            maint.append(check_window(r.get(m, prefix, "id", str, f"config-{i}"), start, end,
                                      r.get(m, prefix, "reason", str, ""), now=_dt.datetime.now(_dt.timezone.utc)))
        except WindowError as exc:
            raise ConfigError(path, f"{prefix}.{exc.field}", exc.message) from None
    mt = r.table("metrics", required=False)
    metrics = MetricsConfig(enabled=r.get(mt, "metrics", "enabled", bool, False),
                            http_host=r.get(mt, "metrics", "http_host", str, "127.0.0.1"),
                            http_port=r.get(mt, "metrics", "http_port", int, 9464))
    sp = r.table("status_page", required=False)
    status_page = StatusPageConfig(enabled=r.get(sp, "status_page", "enabled", bool, False),
                                   http_host=r.get(sp, "status_page", "http_host", str, "127.0.0.1"),
                                   http_port=r.get(sp, "status_page", "http_port", int, 8443),
                                   max_connections=r.get(sp, "status_page", "max_connections", int, 64),
                                   request_timeout_seconds=r.get(sp, "status_page", "request_timeout_seconds",
                                                                 float, 10.0))
    _bounded(path, "status_page.http_port", status_page.http_port, 0, 65535)
    _bounded(path, "status_page.max_connections", status_page.max_connections, 1, 4096)
    _bounded(path, "status_page.request_timeout_seconds", status_page.request_timeout_seconds, 0.1, 600)
    pk = r.table("pki", required=False)
    pki = PkiConfig(enabled=r.get(pk, "pki", "enabled", bool, False),
                    http_host=r.get(pk, "pki", "http_host", str, "127.0.0.1"),
                    http_port=r.get(pk, "pki", "http_port", int, 8080),
                    crl_dir=r.path_(pk, "pki", "crl_dir", must_exist=False, default="crl"),
                    refresh_seconds=r.get(pk, "pki", "refresh_seconds", float, 3600.0),
                    max_connections=r.get(pk, "pki", "max_connections", int, 512),
                    request_timeout_seconds=r.get(pk, "pki", "request_timeout_seconds", float, 10.0))
    _bounded(path, "pki.max_connections", pki.max_connections, 1, MAX_CONNECTIONS)
    _bounded(path, "pki.request_timeout_seconds", pki.request_timeout_seconds, 0.1, 600)
    if pki.refresh_seconds <= 0 or pki.refresh_seconds > MAX_CRL_REFRESH_SECONDS:
        raise ConfigError(path, "pki.refresh_seconds",
                          f"must be in (0, {MAX_CRL_REFRESH_SECONDS}]: a CRL is refreshed at least every 2 hours and "
                          "its nextUpdate (refresh + 15 min margin) must not pass 2 hours")
    return dict(broker=broker, calendar=calendar, maintenance=tuple(maint), metrics=metrics, pki=pki,
                status_page=status_page,
                reports=_load_reports(r), enrollment=_load_enrollment(r))


def _load_enrollment(r: "_Reader") -> EnrollmentConfig:
    e = r.table("enrollment", required=False)
    if not r.get(e, "enrollment", "enabled", bool, False):
        return EnrollmentConfig()
    listen = r.get(e, "enrollment", "address", str)
    if ":" not in listen:
        raise ConfigError(r.path, "enrollment.address", f"expected HOST:PORT, got {listen!r}")
    s = r.table("server")
    cfg = EnrollmentConfig(
        enabled=True, listen=listen,
        tls_ca_cert=r.path_(e, "enrollment", "tls_ca_cert", default=s.get("client_trust_anchors")),
        tls_ca_key=r.path_(e, "enrollment", "tls_ca_key"),
        cert_days=r.get(e, "enrollment", "cert_days", int, 365), code_hours=r.get(e, "enrollment", "code_hours", int, 72),
        attempts_per_minute=r.get(e, "enrollment", "attempts_per_minute", int, 10))
    if not 1 <= cfg.cert_days <= 825:
        raise ConfigError(r.path, "enrollment.cert_days", f"must be 1 to 825 days, got {cfg.cert_days}")
    if not 1 <= cfg.code_hours <= 720:
        raise ConfigError(r.path, "enrollment.code_hours", f"must be 1 to 720 hours, got {cfg.code_hours}")
    if not 1 <= cfg.attempts_per_minute <= 600:
        raise ConfigError(r.path, "enrollment.attempts_per_minute", f"must be 1 to 600, got {cfg.attempts_per_minute}")
    if r.get(s, "server", "client_crl", str, None) is None:
        raise ConfigError(r.path, "server.client_crl", "enrollment needs a client CRL (station revocation writes it)")
    return cfg


def _load_reports(r: "_Reader") -> ReportsConfig:
    rp = r.table("reports", required=False)
    rep = ReportsConfig(enabled=r.get(rp, "reports", "enabled", bool, True),
                        dir=r.path_(rp, "reports", "dir", must_exist=False, default="reports"),
                        keep=r.get(rp, "reports", "keep", int, 400), hour=r.get(rp, "reports", "hour", int, 1),
                        timezone=r.get(rp, "reports", "timezone", str, "Europe/Rome"))
    if rep.keep < 1:
        raise ConfigError(r.path, "reports.keep", f"must be at least 1 (archives kept), got {rep.keep}")
    if not 0 <= rep.hour <= 23:
        raise ConfigError(r.path, "reports.hour", f"must be a local hour 0-23, got {rep.hour}")
    _timezone(r.path, "reports.timezone", rep.timezone)
    return rep


class _Reader:
    def __init__(self, path: Path, data: dict):
        self.path, self.data, self.base = path, data, path.parent

    def table(self, key: str, required: bool = True) -> dict:
        value = self.data.get(key)
        if value is None:
            if required:
                raise ConfigError(self.path, key, "missing table")
            return {}
        if not isinstance(value, dict):
            raise ConfigError(self.path, key, "expected a table")
        return value

    def get(self, table: dict, prefix: str, key: str, kind: type, default: Any = ...) -> Any:
        if key not in table:
            if default is ...:
                raise ConfigError(self.path, f"{prefix}.{key}", f"missing; expected {kind.__name__}")
            return default
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(self.path, f"{prefix}.{key}", f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def path_(self, table: dict, prefix: str, key: str, must_exist: bool = True, default: Any = ...) -> Path | None:
        raw = self.get(table, prefix, key, str, default)
        if raw is None:
            return None
        p = (self.base / raw).resolve()
        if must_exist and not p.exists():
            raise ConfigError(self.path, f"{prefix}.{key}", f"file not found: {p}")
        return p


def load(path: str | Path) -> DaemonConfig:
    path = Path(path).resolve()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, "-", f"cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "-", f"not valid TOML: {exc}") from exc
    _check_names(path, data)
    r = _Reader(path, data)
    s = r.table("server")
    listen = r.get(s, "server", "listen", str)
    if ":" not in listen:
        raise ConfigError(path, "server.listen", f"expected HOST:PORT, got {listen!r}")
    server = ServerConfig(
        listen=listen, tls_cert=r.path_(s, "server", "tls_cert"), tls_key=r.path_(s, "server", "tls_key"),
        client_trust_anchors=r.path_(s, "server", "client_trust_anchors"),
        require_client_auth=r.get(s, "server", "require_client_auth", bool, True),
        grace_seconds=r.get(s, "server", "grace_seconds", float, 10.0),
        client_crl=r.path_(s, "server", "client_crl", default=None),
        # several processes are the parallelism: each signs on its own event loop (measured: less CPU per
        # certificate than signing threads contending for every process's GIL)
        workers=_workers(path, r.get(s, "server", "workers", int,
                                     0 if r.get(s, "server", "processes", int, default_processes()) > 1
                                     else default_workers())),
        processes=_processes(path, r.get(s, "server", "processes", int, default_processes())),
        keepalive_min_ping_seconds=r.get(s, "server", "keepalive_min_ping_seconds", float, 10.0),
        handshake_timeout_seconds=r.get(s, "server", "handshake_timeout_seconds", float, 10.0),
        max_connections=r.get(s, "server", "max_connections", int, 4096))
    _bounded(path, "server.keepalive_min_ping_seconds", server.keepalive_min_ping_seconds, 0.1, 3600)
    _bounded(path, "server.handshake_timeout_seconds", server.handshake_timeout_seconds, 0.1, 600)
    _bounded(path, "server.max_connections", server.max_connections, 1, MAX_CONNECTIONS)
    st = r.table("store")
    sync = r.get(st, "store", "synchronous", str, "FULL").upper()
    if sync not in SYNCHRONOUS_MODES:
        raise ConfigError(path, "store.synchronous", f"expected one of {SYNCHRONOUS_MODES}, got {sync!r}")
    store = _load_store(r, st, path, sync)
    c = r.table("ca")
    connector = r.get(c, "ca", "connector", str, "embedded")
    if connector not in CONNECTORS:
        raise ConfigError(path, "ca.connector", f"expected one of {CONNECTORS}, got {connector!r}")
    key_store = r.get(c, "ca", "key_store", str, "file")
    if key_store not in KEY_STORES:
        raise ConfigError(path, "ca.key_store", f"expected one of {KEY_STORES}, got {key_store!r}")
    urls = c.get("urls", {})
    if not isinstance(urls, dict) or not all(isinstance(v, str) for v in urls.values()):
        raise ConfigError(path, "ca.urls", "expected a table of strings")
    unknown = set(urls) - {"ca_issuers", "ocsp", "crl", "pds"}
    if unknown:
        raise ConfigError(path, "ca.urls", f"unknown keys {sorted(unknown)}")
    if connector == "ejbca":
        ca = CAConfig(connector=connector, root_cert=None, issuing_cert=None, key_store=key_store,
                      urls=dict(urls), ejbca=_load_ejbca(r, c))
    else:
        if key_store == "file":
            extra = dict(issuing_key=r.path_(c, "ca", "issuing_key"),
                         key_passphrase_file=r.path_(c, "ca", "key_passphrase_file"))
        else:
            extra = dict(pkcs11_module=r.get(c, "ca", "pkcs11_module", str),
                         token_label=r.get(c, "ca", "token_label", str),
                         key_label=r.get(c, "ca", "key_label", str), pin_file=r.path_(c, "ca", "pin_file"))
        ca = CAConfig(connector=connector, root_cert=r.path_(c, "ca", "root_cert"),
                      issuing_cert=r.path_(c, "ca", "issuing_cert"), key_store=key_store, urls=dict(urls),
                      sign_in_thread=r.get(c, "ca", "sign_in_thread", bool, key_store == "pkcs11"), **extra)
    profiles = r.table("profiles", required=False)
    min_bits = {p: validation.DEFAULT_MIN_RSA_BITS for p in validation.PROFILES}
    for name, table in profiles.items():
        if name not in validation.PROFILES:
            raise ConfigError(path, f"profiles.{name}", f"unknown profile; known: {', '.join(validation.PROFILES)}")
        if not isinstance(table, dict):
            raise ConfigError(path, f"profiles.{name}", "expected a table")
        bits = r.get(table, f"profiles.{name}", "min_rsa_bits", int, validation.DEFAULT_MIN_RSA_BITS)
        floor = validation.PROFILE_FLOOR_BITS[name]
        if bits < floor:
            raise ConfigError(path, f"profiles.{name}.min_rsa_bits", f"must be at least {floor}, got {bits}")
        min_bits[name] = bits
    ops = _load_operations(r, ca.connector)
    if ops["pki"].enabled and ca.connector != "embedded":
        raise ConfigError(path, "pki.enabled", f"CRL/OCSP publication needs the embedded CA; with connector "
                                               f"{ca.connector!r} the CA publishes its own CRLs and OCSP")
    return DaemonConfig(source=path, server=server, store=store, ca=ca, min_rsa_bits=min_bits, **ops)


def _load_store(r: "_Reader", st: dict, path: Path, sync: str) -> StoreConfig:
    backend = r.get(st, "store", "backend", str, "sqlite")
    if backend not in STORE_BACKENDS:
        raise ConfigError(path, "store.backend", f"expected one of {STORE_BACKENDS}, got {backend!r}")
    data_dir = r.path_(st, "store", "data_dir", must_exist=False)
    if backend == "sqlite":
        for key in ("dsn", "password_file"):
            if key in st:
                raise ConfigError(path, f"store.{key}", 'only for backend = "postgresql"')
        return StoreConfig(data_dir=data_dir, synchronous=sync)
    dsn = r.get(st, "store", "dsn", str)
    if re.search(r"(^|\s)password\s*=", dsn):
        raise ConfigError(path, "store.dsn", "holds a password: put it in store.password_file (mode 0600) instead")
    hosts = re.search(r"(^|\s)host\s*=\s*(\S+)", dsn)
    if not hosts or "," not in hosts.group(2):
        raise ConfigError(path, "store.dsn", "expected both sites, e.g. host=site-a,site-b port=5432,5432 ...")
    tsa = re.search(r"target_session_attrs\s*=\s*(\S+)", dsn)
    if not tsa or tsa.group(1) != "read-write":
        raise ConfigError(path, "store.dsn", "expected target_session_attrs=read-write (connect to the primary only)")
    pw = r.path_(st, "store", "password_file", default=None) if "password_file" in st else None
    return StoreConfig(data_dir=data_dir, synchronous=sync, backend=backend, dsn=dsn, password_file=pw)


def _load_ejbca(r: "_Reader", c: dict) -> EjbcaConfig:
    path = r.path
    e = c.get("ejbca")
    if not isinstance(e, dict):
        raise ConfigError(path, "ca.ejbca", 'connector = "ejbca" needs a [ca.ejbca] table')
    base_url = r.get(e, "ca.ejbca", "base_url", str)
    if not base_url.startswith("https://") or len(base_url) <= len("https://"):
        raise ConfigError(path, "ca.ejbca.base_url", f"expected https://host[:port], got {base_url!r}")
    maps = {}
    for table in EJBCA_PROFILE_TABLES:
        m = e.get(table)
        if not isinstance(m, dict) or not m or not all(isinstance(v, str) and v for v in m.values()):
            raise ConfigError(path, f"ca.ejbca.{table}", "expected a table: our profile name = EJBCA profile name")
        unknown = set(m) - set(validation.PROFILES)
        if unknown:
            raise ConfigError(path, f"ca.ejbca.{table}", f"unknown profiles {sorted(unknown)}; "
                                                         f"known: {', '.join(validation.PROFILES)}")
        maps[table] = dict(m)
    if set(maps["certificate_profiles"]) != set(maps["end_entity_profiles"]):
        raise ConfigError(path, "ca.ejbca.end_entity_profiles",
                          "must name the same profiles as ca.ejbca.certificate_profiles")
    timeout = r.get(e, "ca.ejbca", "timeout_seconds", float, 10.0)
    if timeout <= 0:
        raise ConfigError(path, "ca.ejbca.timeout_seconds", "must be > 0")
    return EjbcaConfig(base_url=base_url, client_cert=r.path_(e, "ca.ejbca", "client_cert"),
                       client_key=r.path_(e, "ca.ejbca", "client_key"),
                       trust_anchors=r.path_(e, "ca.ejbca", "trust_anchors"),
                       ca_name=r.get(e, "ca.ejbca", "ca_name", str), chain=r.path_(e, "ca.ejbca", "chain"),
                       timeout_seconds=timeout, **maps)
