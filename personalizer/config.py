"""The daemon's configuration: a TOML file → frozen dataclasses, validated once.

Relative paths are resolved against the config file's folder. Errors raise
``ConfigError(path, key, message)`` naming the file, the dotted key and what
was expected. Imports nothing of ours but ``errors`` and ``validation``.

Example (``cns-personalizer init`` writes one)::

    [server]
    listen = "127.0.0.1:50051"
    tls_cert = "tls/server.pem"
    tls_key = "tls/server.key.pem"
    client_trust_anchors = "tls/tls-ca.pem"
    require_client_auth = true
    grace_seconds = 10

    [store]
    data_dir = "data"
    synchronous = "FULL"        # FULL | NORMAL (WAL either way)

    [ca]
    connector = "embedded"
    root_cert = "ca/root.pem"
    issuing_cert = "ca/issuing.pem"
    key_store = "file"          # file | pkcs11
    issuing_key = "ca/issuing.key.pem"
    key_passphrase_file = "ca/passphrase"
    # key_store = "pkcs11": pkcs11_module, token_label, key_label, pin_file

    [ca.urls]
    ca_issuers = "http://pki.cns-demo.it/ca/cns-issuing-ca.cer"
    ocsp = "http://ocsp.cns-demo.it"
    crl = "http://pki.cns-demo.it/crl/cns-issuing-ca.crl"
    pds = "https://pki.cns-demo.it/pds/pds-en.pdf"

    [profiles.cns-auth]
    min_rsa_bits = 2048         # 1024 allowed here only, for the legacy card model
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personalizer import validation
from personalizer.errors import ConfigError

SYNCHRONOUS_MODES = ("FULL", "NORMAL")
KEY_STORES = ("file", "pkcs11")
CONNECTORS = ("embedded",)


@dataclass(frozen=True)
class ServerConfig:
    listen: str
    tls_cert: Path
    tls_key: Path
    client_trust_anchors: Path
    require_client_auth: bool = True
    grace_seconds: float = 10.0


@dataclass(frozen=True)
class StoreConfig:
    data_dir: Path
    synchronous: str = "FULL"

    @property
    def database(self) -> Path:
        return self.data_dir / "requests.sqlite"


@dataclass(frozen=True)
class CAConfig:
    connector: str
    root_cert: Path
    issuing_cert: Path
    key_store: str
    issuing_key: Path | None = None
    key_passphrase_file: Path | None = None
    pkcs11_module: str | None = None
    token_label: str | None = None
    key_label: str | None = None
    pin_file: Path | None = None
    urls: dict[str, str] = field(default_factory=dict)
    sign_in_thread: bool = False


@dataclass(frozen=True)
class DaemonConfig:
    source: Path
    server: ServerConfig
    store: StoreConfig
    ca: CAConfig
    min_rsa_bits: dict[str, int]


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
    r = _Reader(path, data)
    s = r.table("server")
    listen = r.get(s, "server", "listen", str)
    if ":" not in listen:
        raise ConfigError(path, "server.listen", f"expected HOST:PORT, got {listen!r}")
    server = ServerConfig(
        listen=listen, tls_cert=r.path_(s, "server", "tls_cert"), tls_key=r.path_(s, "server", "tls_key"),
        client_trust_anchors=r.path_(s, "server", "client_trust_anchors"),
        require_client_auth=r.get(s, "server", "require_client_auth", bool, True),
        grace_seconds=r.get(s, "server", "grace_seconds", float, 10.0))
    st = r.table("store")
    sync = r.get(st, "store", "synchronous", str, "FULL").upper()
    if sync not in SYNCHRONOUS_MODES:
        raise ConfigError(path, "store.synchronous", f"expected one of {SYNCHRONOUS_MODES}, got {sync!r}")
    store = StoreConfig(data_dir=r.path_(st, "store", "data_dir", must_exist=False), synchronous=sync)
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
    if key_store == "file":
        extra = dict(issuing_key=r.path_(c, "ca", "issuing_key"),
                     key_passphrase_file=r.path_(c, "ca", "key_passphrase_file"))
    else:
        extra = dict(pkcs11_module=r.get(c, "ca", "pkcs11_module", str), token_label=r.get(c, "ca", "token_label", str),
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
    return DaemonConfig(source=path, server=server, store=store, ca=ca, min_rsa_bits=min_bits)
