"""One station's configuration: TOML → typed, frozen dataclasses, validated at load.

``load(path) -> StationConfig`` reads the file once and raises
``StationConfigError(path, key, message)`` naming the file, the dotted key and
what was expected. Relative file paths are resolved against the file's folder.
The schema is described in SCHEMA.md; examples are in ``examples/``.

Imports nothing of ours (and not grpc: ``station_config.channel`` holds the
optional gRPC helpers). Used by the agent (``agent`` uplink) and by cnsctl.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["StationConfig", "StationSection", "PersonalizerSection", "ProxySection", "UpdatesSection",
           "FleetSection", "OperationsSection", "RenewalSection", "EnrollmentSection", "StationConfigError",
           "load", "ROLES"]

ROLE_STATION = "station"
ROLE_OPERATOR_TOOL = "operator-tool"
ROLE_ADMIN = "admin"
ROLE_IR = "ir"             # recognition officer: registers holders for deferred issuance (cnsctl registration)
ROLES = (ROLE_STATION, ROLE_OPERATOR_TOOL, ROLE_ADMIN, ROLE_IR)
STATION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CHAMBER_RE = re.compile(r"^[A-Z]{2,4}$")
ENDPOINT_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")
PROXY_RE = re.compile(r"^https?://[^\s/]+(:[0-9]{1,5})?/?$")
UPDATES_URL_RE = re.compile(r"^https?://[^\s/]+(/[^\s]*)?$")
PEM_MARKER = b"-----BEGIN "
TOKEN_LABEL_RE = re.compile(r"^[^\x00-\x1f]{1,32}$")   # CK_TOKEN_INFO.label: 32 bytes, padded with blanks
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_KEEPALIVE_S = 20.0        # below common proxy idle timeouts (REFERENCE.md §5)


class StationConfigError(ValueError):
    def __init__(self, path: Path | str, key: str, message: str):
        super().__init__(f"{path}: {key}: {message}")
        self.path = path
        self.key = key
        self.message = message


@dataclass(frozen=True)
class StationSection:
    id: str
    chamber_code: str
    role: str                      # station | operator-tool | admin
    data_dir: Path                 # the agent's journal and state
    # No socket_dir: the agent's socket is per user session ($XDG_RUNTIME_DIR/cns-agent/agent.sock,
    # or `cns-agent run --socket`), which a station-wide file cannot know; the key is refused.


@dataclass(frozen=True)
class PersonalizerSection:
    primary: str                   # host:port
    dr: str | None                 # disaster-recovery host:port, optional
    trust_anchors: Path            # PEM bundle of the CA(s) that sign the personalizer's server certificate
    client_certificate: Path       # PEM, this station's mTLS identity
    client_key: Path | None        # PEM, unencrypted, readable by the agent's user only; None: in a PKCS#11 token
    server_name: str | None        # TLS name override (tests, IP endpoints); None = the endpoint host
    timeout_seconds: float         # default deadline of unary calls
    keepalive_seconds: float       # HTTP/2 keepalive ping interval of the agent's stream


@dataclass(frozen=True)
class ProxySection:
    url: str                       # http://host:port (HTTP CONNECT); mTLS stays end to end
    no_proxy: tuple[str, ...]


@dataclass(frozen=True)
class RenewalSection:
    """When the agent offers renewal: from ``window_days`` before the certificates expire (the
    personalizer applies its own window too and has the last word)."""
    window_days: int = 90


MAX_WINDOW_DAYS = 3650   # longer than any certificate's life (the 6-year device life): "any time"
DEFAULT_WATCH_TIMEOUT_S = 600.0
DEFAULT_RECOVERY_RETRY_S = 30.0


@dataclass(frozen=True)
class OperationsSection:
    """How the agent runs journaled device operations.

    ``watch_timeout_seconds``: how long one attempt follows a queued certificate request (CA closed,
    outbox busy) before it leaves the operation open, card released, to be retried.
    ``recovery_retry_seconds``: how often an operation left open is tried again while its card stays
    in a reader (it is also tried whenever the card is seen again)."""
    watch_timeout_seconds: float = DEFAULT_WATCH_TIMEOUT_S
    recovery_retry_seconds: float = DEFAULT_RECOVERY_RETRY_S


TOKEN_INSTALL_RE = re.compile(r"^(ask|auto)$")


@dataclass(frozen=True)
class UpdatesSection:
    """The release repository (TUF over plain HTTP) the agent takes token releases and its own builds from."""
    url: str                       # base URL: {url}/metadata/, {url}/targets/
    proxy: str | None = None       # http://HOST:PORT forward proxy for it; None = direct
    token_install: str = "ask"     # a newer token release, once downloaded: "ask" the holder, or "auto" (when idle)
    token_postpone_hours: float = 24.0   # a release the holder declined ("Later") is asked again after this


DEFAULT_FLEET_MAX_BACKOFF_S = 120.0


@dataclass(frozen=True)
class FleetSection:
    """The agent's fleet stream (issue 15): one ``Fleet.Connect`` to the personalizer it already reaches
    (same endpoints, mTLS identity, proxy and keepalive), supervised by the agent while it runs.
    ``max_backoff_seconds``: the longest wait between two attempts while the personalizer is unreachable."""
    enabled: bool = True
    max_backoff_seconds: float = DEFAULT_FLEET_MAX_BACKOFF_S


@dataclass(frozen=True)
class EnrollmentSection:
    """The station key in a PKCS#11 token instead of a file (issue 18 item 4): ``cns-agent enroll`` makes it
    there (never extractable), the token signs the CSR and every TLS handshake; ``[personalizer] client_key``
    is then absent. The key is the token's private key whose public key the client certificate carries.
    ``pin_file``: the token's user PIN (one line, mode 0600), read when the token is opened."""
    pkcs11_module: Path            # the token's PKCS#11 library (e.g. /usr/lib/softhsm/libsofthsm2.so)
    token_label: str
    pin_file: Path


@dataclass(frozen=True)
class StationConfig:
    source: Path
    station: StationSection
    personalizer: PersonalizerSection
    proxy: ProxySection | None
    renewal: RenewalSection = RenewalSection()
    updates: UpdatesSection | None = None
    operations: OperationsSection = OperationsSection()
    fleet: FleetSection | None = None      # None: no [fleet] section, no fleet stream
    enrollment: EnrollmentSection | None = None   # None: the station key is the client_key file

    def endpoints(self) -> tuple[str, ...]:
        """Primary first, then DR."""
        return (self.personalizer.primary,) + ((self.personalizer.dr,) if self.personalizer.dr else ())


_SECTIONS = {
    "station": {"id", "chamber_code", "role", "data_dir"},
    "personalizer": {"primary", "dr", "trust_anchors", "client_certificate", "client_key", "server_name",
                     "timeout_seconds", "keepalive_seconds"},
    "proxy": {"url", "no_proxy"},
    "cards": set(),   # its two keys are retired (issue 12): card administration keys are central
    "renewal": {"window_days"},
    "updates": {"url", "proxy", "token_install", "token_postpone_hours"},
    "operations": {"watch_timeout_seconds", "recovery_retry_seconds"},
    "fleet": {"enabled", "max_backoff_seconds"},
    "enrollment": {"pkcs11_module", "token_label", "pin_file"},
}
_REQUIRED_SECTIONS = ("station", "personalizer")
_RETIRED = {("station", "socket_dir"): "no longer read: the agent's socket is $XDG_RUNTIME_DIR/cns-agent/agent.sock "
                                       "(or `cns-agent run --socket PATH`); delete this line",
            ("cards", "admin_keys"): "no longer read: card administration keys never reach a workstation, the "
                                     "personalizer answers the card (issue 12); delete this line and the key file",
            ("cards", "allow_test_admin_keys"): "no longer read: even test cards are administered by the "
                                                "personalizer's token (issue 12); delete this line"}


class _Loader:
    def __init__(self, path: Path, data: dict):
        self.path, self.data, self.base = path, data, path.parent

    def fail(self, key: str, message: str) -> StationConfigError:
        return StationConfigError(self.path, key, message)

    def value(self, section: str, key: str, kind: type, *, default: Any = ...) -> Any:
        table = self.data.get(section, {})
        dotted = f"{section}.{key}"
        if key not in table:
            if default is ...:
                return self._missing(dotted, kind)
            return default
        v = table[key]
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
            raise self.fail(dotted, f"expected {kind.__name__}, got {type(v).__name__} {v!r}")
        return v

    def _missing(self, dotted: str, kind: type):
        raise self.fail(dotted, f"missing; expected {kind.__name__}")

    def pattern(self, section: str, key: str, regex: re.Pattern, what: str, *, optional: bool = False) -> str | None:
        v = self.value(section, key, str, default=None if optional else ...)
        if v is None:
            return None
        if not regex.match(v):
            raise self.fail(f"{section}.{key}", f"expected {what}, got {v!r}")
        return v

    def file_path(self, section: str, key: str) -> Path:
        return (self.base / Path(self.value(section, key, str)).expanduser()).resolve()

    def pem_file(self, section: str, key: str) -> Path:
        p = self.file_path(section, key)
        try:
            head = p.read_bytes()
        except FileNotFoundError:
            raise self.fail(f"{section}.{key}", f"file not found: {p}") from None
        except OSError as exc:
            raise self.fail(f"{section}.{key}", f"cannot read {p}: {exc.strerror}") from None
        if PEM_MARKER not in head:
            raise self.fail(f"{section}.{key}", f"{p} is not a PEM file")
        return p

    def existing_file(self, section: str, key: str) -> Path:
        p = self.file_path(section, key)
        if not p.is_file():
            raise self.fail(f"{section}.{key}", f"file not found: {p}")
        return p

    def positive(self, section: str, key: str, default: float, *, unit: str = "seconds") -> float:
        v = self.value(section, key, float, default=default)
        if v <= 0:
            raise self.fail(f"{section}.{key}", f"expected a positive number of {unit}, got {v}")
        return v


def load(path: str | Path) -> StationConfig:
    """Read and validate a station configuration file."""
    path = Path(path).resolve()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StationConfigError(path, "-", "file not found") from None
    except OSError as exc:
        raise StationConfigError(path, "-", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise StationConfigError(path, "-", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise StationConfigError(path, "-", f"not valid TOML: {exc}") from None
    ld = _Loader(path, data)
    for name, table in data.items():
        if name not in _SECTIONS:
            raise ld.fail(name, f"unknown section; expected one of {sorted(_SECTIONS)}")
        if not isinstance(table, dict):
            raise ld.fail(name, "expected a table")
        for key in table:
            if (name, key) in _RETIRED:
                raise ld.fail(f"{name}.{key}", _RETIRED[name, key])
        unknown = set(table) - _SECTIONS[name]
        if unknown:
            raise ld.fail(f"{name}.{sorted(unknown)[0]}", f"unknown key; expected one of {sorted(_SECTIONS[name])}")
    for name in _REQUIRED_SECTIONS:
        if name not in data:
            raise ld.fail(name, "missing section")
    role = ld.value("station", "role", str, default=ROLE_STATION)
    if role not in ROLES:
        raise ld.fail("station.role", f"expected one of {', '.join(ROLES)}, got {role!r}")
    station = StationSection(
        id=ld.pattern("station", "id", STATION_ID_RE, "1..64 characters of [A-Za-z0-9._-]"),
        chamber_code=ld.pattern("station", "chamber_code", CHAMBER_RE, "2..4 upper-case letters (e.g. RM)"),
        role=role, data_dir=ld.file_path("station", "data_dir"))
    primary = ld.pattern("personalizer", "primary", ENDPOINT_RE, "HOST:PORT")
    dr = ld.pattern("personalizer", "dr", ENDPOINT_RE, "HOST:PORT", optional=True)
    if dr is not None and dr == primary:
        raise ld.fail("personalizer.dr", "must differ from personalizer.primary")
    for section, key in (("personalizer", "primary"), ("personalizer", "dr")):
        v = data["personalizer"].get(key)
        if v and not 0 < int(v.rsplit(":", 1)[1]) < 65536:
            raise ld.fail(f"{section}.{key}", f"port out of range in {v!r}")
    enrollment = None
    if "enrollment" in data:
        enrollment = EnrollmentSection(pkcs11_module=ld.existing_file("enrollment", "pkcs11_module"),
                                       token_label=ld.pattern("enrollment", "token_label", TOKEN_LABEL_RE,
                                                              "1..32 characters (a PKCS#11 token label)"),
                                       pin_file=ld.existing_file("enrollment", "pin_file"))
        if "client_key" in data["personalizer"]:
            raise ld.fail("personalizer.client_key", "the station key is in the PKCS#11 token of [enrollment]: "
                                                     "delete this line (or the [enrollment] section)")
    personalizer = PersonalizerSection(
        primary=primary, dr=dr, trust_anchors=ld.pem_file("personalizer", "trust_anchors"),
        client_certificate=ld.pem_file("personalizer", "client_certificate"),
        client_key=None if enrollment else ld.pem_file("personalizer", "client_key"),
        server_name=ld.value("personalizer", "server_name", str, default=None) or None,
        timeout_seconds=ld.positive("personalizer", "timeout_seconds", DEFAULT_TIMEOUT_S),
        keepalive_seconds=ld.positive("personalizer", "keepalive_seconds", DEFAULT_KEEPALIVE_S))
    proxy = None
    if "proxy" in data:
        url = ld.pattern("proxy", "url", PROXY_RE, "http://HOST[:PORT]")
        no_proxy = ld.value("proxy", "no_proxy", list, default=[])
        if not all(isinstance(x, str) for x in no_proxy):
            raise ld.fail("proxy.no_proxy", "expected a list of host names")
        proxy = ProxySection(url=url, no_proxy=tuple(no_proxy))
    renewal = RenewalSection()
    if "renewal" in data:
        days = ld.value("renewal", "window_days", int, default=RenewalSection.window_days)
        if not 1 <= days <= MAX_WINDOW_DAYS:
            raise ld.fail("renewal.window_days", f"expected 1 to {MAX_WINDOW_DAYS} days, got {days}")
        renewal = RenewalSection(window_days=days)
    updates = None
    if "updates" in data:
        updates = UpdatesSection(url=ld.pattern("updates", "url", UPDATES_URL_RE, "http(s)://HOST[:PORT]/PATH"),
                                 proxy=ld.pattern("updates", "proxy", PROXY_RE, "http://HOST[:PORT]", optional=True),
                                 token_install=ld.pattern("updates", "token_install", TOKEN_INSTALL_RE,
                                                          '"ask" (the holder says when) or "auto" (when the token '
                                                          'is idle)', optional=True) or "ask",
                                 token_postpone_hours=ld.positive("updates", "token_postpone_hours", 24.0,
                                                                  unit="hours"))
    operations = OperationsSection(
        watch_timeout_seconds=ld.positive("operations", "watch_timeout_seconds", DEFAULT_WATCH_TIMEOUT_S),
        recovery_retry_seconds=ld.positive("operations", "recovery_retry_seconds", DEFAULT_RECOVERY_RETRY_S))
    fleet = None
    if "fleet" in data:
        fleet = FleetSection(enabled=ld.value("fleet", "enabled", bool, default=True),
                             max_backoff_seconds=ld.positive("fleet", "max_backoff_seconds",
                                                             DEFAULT_FLEET_MAX_BACKOFF_S))
    return StationConfig(source=path, station=station, personalizer=personalizer, proxy=proxy,
                         renewal=renewal, updates=updates, operations=operations, fleet=fleet, enrollment=enrollment)
