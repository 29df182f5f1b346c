"""``cns-personalizer init``: a complete test deployment in one folder.

Creates, under DIR::

    personalizer.toml            the daemon's config (server, store, CA)
    ca/root.pem, ca/issuing.pem  the embedded CNS CA (RSA; issuing RSA-3072)
    ca/*.key.pem, ca/passphrase  encrypted PKCS#8 keys and their passphrase (0600)
    tls/tls-ca.pem               the service TLS CA (EC P-256), trust anchor of both sides
    tls/server.pem, .key.pem     server certificate for localhost / 127.0.0.1
    tls/client-crl.pem           revoked client certificates (empty; ``cns-personalizer revoke-client``)
    stations/<id>/station.toml   the DEMO station's config for the agent (station_config schema)
    stations/<id>/client.pem ... the station's client certificate and key, and a copy
                                 of tls-ca.pem: the folder is self-contained (paths
                                 relative to it), so it can be copied to a workstation
                                 or handed to the operator user (``station_owner``)
    admin/admin.toml             cnsctl config (station_config schema, role admin)
    ir/ir.toml                   cnsctl config of a recognition officer (role ir: cnsctl registration)
    data/                        the request store
    hsm/                         a SoftHSM2 token with the emulated card models' TEST card
                                 administration master keys (issue 12; ``[card_admin]``)

The demo station's key is written here only for the demo and the tests
(``demo_station``, the default; ``init --no-demo-station`` leaves it out).
Production stations are enrolled instead, and no key is copied: central IT
runs ``cnsctl station add``, the operator ``cns-agent enroll --code ...``
(``[enrollment]`` is on in the config written here, on the port after the
listen port, or an ephemeral one when that is 0).

The stations' and cnsctl's endpoint is the address the daemon listens on (a
wildcard listen address becomes the loopback address), and the server
certificate names it. Arguments are checked before anything is written:
``DeploymentError`` (a ``PersonalizerError``) says what is wrong.

The CNS CA and the TLS CA are distinct on purpose: the certificates on cards
never authenticate services. Must not import grpc, proto or the service.
"""
from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from personalizer.ca import profiles
from personalizer.ca.keys import save_encrypted_key, write_private
from personalizer.cardadmin import setup as cardadmin_setup
from personalizer.errors import PersonalizerError
from personalizer.edge.identity import ROLE_ADMIN, ROLE_IR, ROLE_STATION, identity_uri
from personalizer.edge.tls_clients import write_empty_crl

DEFAULT_CA_KEY_BITS = 3072
CA_KEY_BITS_RANGE = (2048, 8192)
STATION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")     # as station_config
CHAMBER_RE = re.compile(r"^[A-Z]{2,4}$")
LISTEN_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")
DEFAULT_LISTEN = "127.0.0.1:50051"
CA_ORGANIZATION = "CNS Demo Camere di Commercio"
CA_ORG_IDENTIFIER = "VATIT-00000000000"
SERVER_NAMES = ["localhost", "127.0.0.1"]
PASSPHRASE_BYTES = 32
CLIENT_CRL = "client-crl.pem"
TLS_CA_KEY = "tls-ca.key.pem"


class DeploymentError(PersonalizerError):
    """An argument of ``init`` that cannot make a working deployment; nothing was written."""


@dataclass(frozen=True)
class Deployment:
    root: Path
    server_config: Path
    station_config: Path | None      # None with demo_station=False
    admin_config: Path
    ir_config: Path          # the recognition officer's cnsctl config (role ir)
    root_cert: Path
    issuing_cert: Path
    tls_ca: Path
    listen: str
    endpoint: str = ""         # what the stations and cnsctl connect to


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _plain_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_ca(ca_dir: Path, *, key_bits: int = DEFAULT_CA_KEY_BITS, root_key_bits: int | None = None,
              issuing_public_key=None) -> tuple[x509.Certificate, x509.Certificate, rsa.RSAPrivateKey | None]:
    """Root + issuing CA. With ``issuing_public_key`` (a key held in a token) no issuing key file is written."""
    now = _now()
    passphrase = secrets.token_urlsafe(PASSPHRASE_BYTES).encode()
    write_private(ca_dir / "passphrase", passphrase + b"\n")
    root_key = rsa.generate_private_key(65537, root_key_bits or key_bits)
    root = profiles.build_ca(profiles.ca_name("CNS Demo Root CA", CA_ORGANIZATION, CA_ORG_IDENTIFIER),
                             root_key.public_key(), issuer=None, now=now, path_length=1,
                             validity=profiles.ROOT_VALIDITY).sign(root_key, profiles_hash())
    issuing_key = None
    if issuing_public_key is None:
        issuing_key = rsa.generate_private_key(65537, key_bits)
        issuing_public_key = issuing_key.public_key()
        save_encrypted_key(ca_dir / "issuing.key.pem", issuing_key, passphrase)
    issuing = profiles.build_ca(profiles.ca_name("CNS Demo Issuing CA", CA_ORGANIZATION, CA_ORG_IDENTIFIER),
                                issuing_public_key, issuer=root, now=now, path_length=0,
                                validity=profiles.ISSUING_VALIDITY).sign(root_key, profiles_hash())
    save_encrypted_key(ca_dir / "root.key.pem", root_key, passphrase)
    _write_public(ca_dir / "root.pem", _pem(root))
    _write_public(ca_dir / "issuing.pem", _pem(issuing))
    return root, issuing, issuing_key


def profiles_hash():
    from personalizer.ca.keys import SIGNATURE_HASH
    return SIGNATURE_HASH


class TlsCA:
    """The deployment's service TLS CA (EC P-256: fast handshakes)."""

    def __init__(self, tls_dir: Path):
        self.dir = tls_dir
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "CNS Demo Service TLS CA")])
        self.cert = profiles.build_ca(name, self.key.public_key(), issuer=None, now=_now(), path_length=0,
                                      validity=profiles.ROOT_VALIDITY).sign(self.key, profiles_hash())
        write_private(tls_dir / "tls-ca.key.pem", _plain_key(self.key))
        _write_public(tls_dir / "tls-ca.pem", _pem(self.cert))
        write_empty_crl(tls_dir / CLIENT_CRL, self.cert, self.key)

    @property
    def cert_path(self) -> Path:
        return self.dir / "tls-ca.pem"

    def issue(self, cert_path: Path, key_path: Path, common_name: str, *, server_names=None,
              identity: str | None = None) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = profiles.build_tls_leaf(common_name, key.public_key(), issuer=self.cert, now=_now(),
                                       server_names=server_names, identity_uri=identity).sign(self.key, profiles_hash())
        write_private(key_path, _plain_key(key))
        _write_public(cert_path, _pem(cert))


SERVER_TOML = """\
# cns-personalizer configuration written by `cns-personalizer init` (test deployment).
[server]
listen = "{listen}"
tls_cert = "tls/server.pem"
tls_key = "tls/server.key.pem"
client_trust_anchors = "tls/tls-ca.pem"
# Revoked station, tool and admin certificates (cns-personalizer revoke-client); reread when it changes.
client_crl = "tls/client-crl.pem"
require_client_auth = true
grace_seconds = 5

[store]
data_dir = "data"
synchronous = "FULL"

[ca]
connector = "embedded"
root_cert = "ca/root.pem"
issuing_cert = "ca/issuing.pem"
key_store = "file"
issuing_key = "ca/issuing.key.pem"
key_passphrase_file = "ca/passphrase"

[profiles.cns-auth]
min_rsa_bits = 2048

[profiles.qualified-signature]
min_rsa_bits = 2048

[broker]
answer_wait_seconds = 2.0

# A test deployment answers at any hour. Without this section the tender's calendar applies:
# weekdays 08-21, Saturday 08-14, Sundays and Italian national holidays closed (Europe/Rome).
[service_window]
always_open = true

[metrics]
enabled = false
http_host = "127.0.0.1"
http_port = 0

# Central IT's read-only status page: HTTPS on this port, for an admin client certificate only.
[status_page]
enabled = false
http_host = "127.0.0.1"
http_port = 0

# Stations enroll with a one-time code (cnsctl station add; cns-agent enroll), no key copied.
[enrollment]
enabled = true
address = "{enroll_listen}"
tls_ca_key = "tls/tls-ca.key.pem"
cert_days = 365
code_hours = 72
"""

STATION_TOML = """\
# Station configuration (station_config schema) written by `cns-personalizer init`.
[station]
id = "{station_id}"
chamber_code = "{chamber}"
role = "{role}"
data_dir = "{data_dir}"

[personalizer]
primary = "{endpoint}"
trust_anchors = "{trust}"
client_certificate = "client.pem"
client_key = "client.key.pem"
timeout_seconds = 30
"""


def endpoint_for(listen: str) -> tuple[str, str]:
    """(endpoint clients use, the host name the server certificate must carry) for a listen address."""
    m = LISTEN_RE.match(listen)
    if not m or not 0 <= int(m.group(2)) <= 65535:
        raise DeploymentError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:50051 "
                              "(port 0: any free port, then set the stations' personalizer.primary)")
    host, port = m.group(1), m.group(2)
    bare = host.strip("[]")
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return f"{host}:{port}", host
    if ip.is_unspecified:                                   # 0.0.0.0 / [::]: reachable on the loopback
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    name = str(ip)
    return (f"[{name}]:{port}" if ip.version == 6 else f"{name}:{port}"), name


def enroll_listen_for(listen: str) -> str:
    """The enrollment port beside ``listen``: any free one (0) when ``listen``'s is 0; else the next port when it
    is free at init, else a free port chosen now.

    A concrete ``listen`` gets a concrete enrollment port, written into the config: the daemon listens there on
    every start, so an agent's enrollment or self-renewal address stays valid across restarts (a port 0 would
    move on each start)."""
    import socket
    host, _, port = listen.rpartition(":")
    if int(port) == 0:
        return f"{host}:0"
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    for candidate in ((int(port) + 1,) if int(port) < 65535 else ()) + (0,):
        try:
            with socket.socket(family) as probe:
                probe.bind((bare, candidate))
                return f"{host}:{probe.getsockname()[1]}"
        except OSError:
            continue
    return f"{host}:0"


def _check(root: Path, chamber: str, station_id: str, ca_key_bits: int, station_owner: str | None) -> None:
    if not CHAMBER_RE.match(chamber):
        raise DeploymentError(f"--chamber {chamber!r}: expected 2 to 4 upper-case letters, e.g. RM")
    if not STATION_ID_RE.match(station_id):
        raise DeploymentError(f"--station-id {station_id!r}: expected 1 to 64 characters of A-Z a-z 0-9 . _ -")
    low, high = CA_KEY_BITS_RANGE
    if not low <= ca_key_bits <= high or ca_key_bits % 256:
        raise DeploymentError(f"--ca-key-bits {ca_key_bits}: expected a multiple of 256 from {low} to {high} "
                              f"(default {DEFAULT_CA_KEY_BITS})")
    if station_owner is not None:
        import pwd
        try:
            pwd.getpwnam(station_owner)
        except KeyError:
            raise DeploymentError(f"--station-owner {station_owner!r}: no such user on this machine") from None
        if os.geteuid() != 0:
            raise DeploymentError("--station-owner needs root (it hands the station folder to that user); "
                                  "or run init as that user")
    if (root / "personalizer.toml").exists():
        raise DeploymentError(f"{root / 'personalizer.toml'} exists; refusing to overwrite a deployment")
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise DeploymentError(f"cannot create {root}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DeploymentError(f"cannot create {root}: {probe} is not writable by this user")


def _give_to(folder: Path, user: str) -> None:
    import pwd
    pw = pwd.getpwnam(user)
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, pw.pw_uid, pw.pw_gid)


def init_deployment(root: Path, *, chamber: str = "RM", station_id: str = "RM-STATION-01",
                    listen: str = DEFAULT_LISTEN, ca_key_bits: int = DEFAULT_CA_KEY_BITS,
                    admin_name: str = "central-it", station_owner: str | None = None,
                    demo_station: bool = True, ir_name: str = "ir-001") -> Deployment:
    """Write a test deployment under ``root``; ``station_owner``: a user to hand the station folder to;
    ``demo_station=False``: no station key at all (stations enroll)."""
    root = root.resolve()
    endpoint, server_host = endpoint_for(listen)
    _check(root, chamber, station_id, ca_key_bits, station_owner)
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / "data").mkdir(exist_ok=True)
    except OSError as exc:
        raise DeploymentError(f"cannot create {root}: {exc.strerror}") from None
    _, _, _ = create_ca(root / "ca", key_bits=ca_key_bits)
    tls = TlsCA(root / "tls")
    names = SERVER_NAMES + ([server_host] if server_host not in SERVER_NAMES else [])
    tls.issue(root / "tls" / "server.pem", root / "tls" / "server.key.pem", "cns-personalizer", server_names=names)
    station_dir = root / "stations" / station_id
    if demo_station:
        tls.issue(station_dir / "client.pem", station_dir / "client.key.pem", station_id,
                  identity=identity_uri(ROLE_STATION, station_id, chamber))
        shutil.copyfile(tls.cert_path, station_dir / "tls-ca.pem")
        _write_public(station_dir / "station.toml", STATION_TOML.format(
            station_id=station_id, chamber=chamber, role=ROLE_STATION, data_dir="agent-data",
            endpoint=endpoint, trust="tls-ca.pem").encode())
    admin_dir = root / "admin"
    tls.issue(admin_dir / "client.pem", admin_dir / "client.key.pem", admin_name,
              identity=identity_uri(ROLE_ADMIN, admin_name))
    _write_public(admin_dir / "admin.toml", STATION_TOML.format(
        station_id=admin_name, chamber=chamber, role=ROLE_ADMIN, data_dir="data",
        endpoint=endpoint, trust="../tls/tls-ca.pem").encode())
    ir_dir = root / "ir"   # a recognition officer of the chamber (deferred issuance: cnsctl registration)
    tls.issue(ir_dir / "client.pem", ir_dir / "client.key.pem", ir_name,
              identity=identity_uri(ROLE_IR, ir_name, chamber))
    _write_public(ir_dir / "ir.toml", STATION_TOML.format(
        station_id=ir_name, chamber=chamber, role=ROLE_IR, data_dir="data",
        endpoint=endpoint, trust="../tls/tls-ca.pem").encode())
    if station_owner is not None and demo_station:
        _give_to(station_dir, station_owner)
    card_admin = cardadmin_setup.init_test_token(root)   # the emulated models' TEST master keys
    _write_public(root / "personalizer.toml",
                  (SERVER_TOML.format(listen=listen, enroll_listen=enroll_listen_for(listen)) + card_admin).encode())
    return Deployment(root=root, server_config=root / "personalizer.toml",
                      station_config=station_dir / "station.toml" if demo_station else None,
                      admin_config=admin_dir / "admin.toml", ir_config=ir_dir / "ir.toml",
                      root_cert=root / "ca" / "root.pem",
                      issuing_cert=root / "ca" / "issuing.pem", tls_ca=tls.cert_path, listen=listen,
                      endpoint=endpoint)
