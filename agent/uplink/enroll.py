"""Station enrollment and station-certificate renewal, on the workstation (issue 18 item 4).

``enroll`` turns a code bundle from central IT (``cns_spec.enrollment_code``)
into this station's mTLS identity without anyone copying a key:

1. pin: a TLS handshake with the enrollment port reads the chain the server
   presents (nothing is sent) and keeps the certificate whose SHA-256 is the
   bundle's fingerprint; none → ``EnrollError`` ("unexpected certificate").
2. a new EC P-256 key is made here, in memory; a CSR is sent with the code over
   gRPC whose only trust anchor is the pinned CA (gRPC then verifies the
   server's certificate and name as for any call).
3. the key (0600), the certificate, the CA and, when absent, ``station.toml``
   are written; the previous key and certificate stay in place until the new
   pair is complete (``install_credentials``).

``renew_if_due`` renews over the existing mTLS channel (``StationAdmin.RenewStation``)
when a third of the certificate's lifetime or less is left: a new key and CSR,
the same two-phase write. ``recover_credentials`` finishes or undoes a write a
crash interrupted; both call it first. The due check, the two-phase write and the
agent's daily loop are ``agent.uplink.station_cert`` (no cryptography: the idle agent runs
them; this module is imported when a renewal is due).

With a PKCS#11 token (``enroll(..., token=TokenSettings(module, label, pin_file))``, or the
``[enrollment]`` section of an existing configuration) the key pair is made in the token, never
extractable, the token signs the CSR (``agent.ops.csr.build_signed_csr``) and, through
``station_config.token_key``, every TLS handshake; no key file is written, and ``station.toml`` gets
``[enrollment]`` instead of ``client_key``. A renewal makes the new pair in the same token; the pairs
no certificate uses any more are deleted once the new certificate is in place.
Imports grpc, cryptography, ``proto``, ``station_config``, ``agent.ops.csr``, ``agent.uplink.station_cert``
and ``cns_spec``; never ``personalizer``.
"""
from __future__ import annotations

import datetime as _dt
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cns_spec import enrollment_code
import station_config
from proto.cns.v1 import enrollment_pb2 as epb, enrollment_pb2_grpc as epb_grpc
from station_config import StationConfig, channel
# the certificate's due check, the two-phase switch and the agent's loop (no cryptography: an idle agent runs them)
from agent.uplink import station_cert
from agent.uplink.station_cert import (  # noqa: F401 (re-exported: this module's API before the split)
    RENEW_FRACTION, RENEWAL_CHECK_S, EnrollError, _write, install_credentials, recover_credentials, renewal_due,
    renewal_loop)

DEFAULT_ENROLL_PORT = 50052
CALL_TIMEOUT_S = 30.0
TOKEN_TOML = """
[enrollment]
pkcs11_module = "{module}"
token_label = "{label}"
pin_file = "{pin_file}"
"""

STATION_TOML = """\
# Station configuration written by `cns-agent enroll` (station_config schema).
[station]
id = "{station_id}"
chamber_code = "{chamber}"
role = "station"
data_dir = "agent-data"

[personalizer]
primary = "{endpoint}"
trust_anchors = "tls-ca.pem"
client_certificate = "client.pem"
{client_key}timeout_seconds = 30
"""


@dataclass(frozen=True)
class TokenSettings:
    """Where the station key is made: a PKCS#11 token (``[enrollment]`` of station_config)."""
    module: Path
    label: str
    pin_file: Path

    def open(self):
        from station_config import token_key
        try:
            return token_key.open_token(self.module, self.label, self.pin_file)
        except token_key.TokenKeyError as exc:
            raise EnrollError(f"{exc}; nothing was sent") from None


def _toml_str(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class _NewKey:
    """A new station key and its CSR: in memory (written 0600 later) or in the token (never leaves it)."""

    def __init__(self, common_name: str, token: TokenSettings | None) -> None:
        self.token = token
        if token is None:
            self.key, self.csr_der = new_key_and_csr(common_name)
            self.spki = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo)
            return
        from agent.ops.csr import build_signed_csr
        from agent.ops.errors import VerificationError
        from station_config import token_key
        tk = token.open()
        try:
            self.spki = tk.generate()
            self.csr_der = build_signed_csr(self.spki, [("common_name", common_name)], "sha256_ecdsa",
                                            lambda tbs: tk.sign(self.spki, tbs), who="the token")
        except (token_key.TokenKeyError, VerificationError) as exc:
            raise EnrollError(f"{exc}; nothing was sent") from None
        self.key = None

    def key_pem(self) -> bytes | None:
        return _key_pem(self.key) if self.key is not None else None

    def installed(self) -> None:
        """The certificate for this key is in place: drop the token's other station keys (best effort: an
        old pair left in the token is unused, and the next renewal drops it)."""
        if self.token is not None:
            from station_config import token_key
            try:
                self.token.open().prune(self.spki)
            except (EnrollError, token_key.TokenKeyError) as exc:
                import logging
                logging.getLogger("agent.enroll").warning("old station keys left in the token: %s", exc)


@dataclass(frozen=True)
class Enrolled:
    station_id: str
    chamber_code: str
    config: Path
    serial_hex: str
    not_after: _dt.datetime


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EnrollError(f"--personalizer {endpoint!r}: expected HOST:PORT, e.g. personalizer.cciaa.it:50051")
    return host.strip("[]"), int(port)


def fetch_pinned_ca(host: str, port: int, fingerprint: str, *, timeout: float = 10.0) -> bytes:
    """The PEM of the certificate the server presents in its chain whose SHA-256 is ``fingerprint``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE          # nothing is trusted from this handshake but the pinned certificate
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            getter = getattr(tls, "get_unverified_chain", None) or tls._sslobj.get_unverified_chain  # < 3.13
            chain = [c.public_bytes(ssl._ssl.ENCODING_DER) if not isinstance(c, bytes) else c for c in getter() or []]
    except (OSError, ssl.SSLError) as exc:
        raise EnrollError(f"cannot reach the personalizer's enrollment port {host}:{port}: "
                          f"{getattr(exc, 'strerror', None) or exc}; check the address and that enrollment is on") from None
    for der in chain:
        if enrollment_code.fingerprint(der) == fingerprint:
            cert = x509.load_der_x509_certificate(der)
            return cert.public_bytes(serialization.Encoding.PEM)
    raise EnrollError(f"the personalizer at {host}:{port} presented an unexpected certificate (not from the CA the "
                      "enrollment code names): nothing was sent; check the address, or ask central IT")


def new_key_and_csr(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.DER)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _rpc_error(exc: grpc.RpcError, where: str) -> EnrollError:
    code, detail = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and ("CERTIFICATE_VERIFY_FAILED" in detail
                                                or "certificate verify failed" in detail.lower()):
        return EnrollError(f"{where} presented an unexpected certificate (not issued by the CA the enrollment "
                           "code names): the code was not sent and nothing was changed; check the address, or "
                           "ask central IT")
    if code == grpc.StatusCode.UNAVAILABLE and "Peer name" in detail and "not in peer certificate" in detail:
        return EnrollError(f"the certificate of {where} does not carry that host name: nothing was changed; use the "
                           "name it was issued for, or --server-name")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return EnrollError(f"{where} did not answer ({code.name.lower()}); try again later")
    return EnrollError(f"{where} refused: {detail or code.name}")


def enroll(bundle: str, personalizer: str, directory: Path, *, enroll_port: int = DEFAULT_ENROLL_PORT,
           server_name: str | None = None, timeout: float = CALL_TIMEOUT_S,
           token: TokenSettings | None = None) -> Enrolled:
    """Enroll this workstation; writes into ``directory`` (created 0700). Refused → nothing changed.
    ``token``: make the key in this PKCS#11 token (default: the existing configuration's, else a file)."""
    try:
        code, fingerprint = enrollment_code.parse_bundle(bundle)
    except enrollment_code.BadCode as exc:
        raise EnrollError(str(exc)) from None
    host, _port = split_endpoint(personalizer)
    config = directory / "station.toml"
    existing = _existing_identity(config)
    if token is not None and existing is not None and _existing_token(config) is None:
        raise EnrollError(f"{config} keeps this station's key in a file: enrolling again with a PKCS#11 token needs "
                          "another --dir (nothing was sent, the code is still valid)")
    token = token or _existing_token(config)
    created = _writable_folder(directory)       # before the code is spent: a folder we cannot write loses it
    try:
        return _enroll(code, fingerprint, host, personalizer, directory, config, existing, enroll_port=enroll_port,
                       server_name=server_name, timeout=timeout, token=token)
    except BaseException:
        if created:
            try:
                directory.rmdir()               # only if still empty: nothing of ours is left behind
            except OSError:
                pass
        raise


def _writable_folder(directory: Path) -> bool:
    """Create ``directory`` (0700) if needed and prove it writable; True when it was created here."""
    created = not directory.exists()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = directory / ".cns-enroll-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise EnrollError(f"cannot write the station folder {directory}: {exc.strerror or exc}; choose another --dir "
                          "(nothing was sent, the code is still valid)") from None
    return created


def _enroll(code: str, fingerprint: str, host: str, personalizer: str, directory: Path, config: Path,
            existing: tuple[str, str] | None, *, enroll_port: int, server_name: str | None,
            timeout: float, token: TokenSettings | None) -> Enrolled:
    ca_pem = fetch_pinned_ca(host, enroll_port, fingerprint, timeout=min(timeout, 10.0))
    new = _NewKey("cns-station", token)
    csr_der = new.csr_der
    target = f"[{host}]:{enroll_port}" if ":" in host else f"{host}:{enroll_port}"
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(target, creds, options=options) as ch:
        try:
            r = epb_grpc.StationEnrollmentStub(ch).Enroll(epb.EnrollRequest(
                code=code, csr_der=csr_der, expect_station_id=existing[0] if existing else "",
                expect_chamber_code=existing[1] if existing else ""), timeout=timeout)
        except grpc.RpcError as exc:
            raise _rpc_error(exc, f"the personalizer at {target}") from None
    cert = _check_issued(r.certificate_pem.encode(), new.spki, ca_pem)
    if existing is not None and existing != (r.station_id, r.chamber_code):
        raise EnrollError(f"{config} is the configuration of station {existing[0]} ({existing[1]}), but this code is "
                          f"for {r.station_id} ({r.chamber_code}): use another --dir; nothing was changed")
    recover_credentials(directory / "client.key.pem", directory / "client.pem")
    _write(directory / "tls-ca.pem", ca_pem, 0o644)
    install_credentials(directory / "client.key.pem", directory / "client.pem", new.key_pem(),
                        r.certificate_pem.encode())
    if existing is None:
        text = STATION_TOML.format(station_id=r.station_id, chamber=r.chamber_code, endpoint=personalizer,
                                   client_key='client_key = "client.key.pem"\n' if token is None else "")
        if token is not None:
            text += TOKEN_TOML.format(module=_toml_str(str(token.module)), label=_toml_str(token.label),
                                      pin_file=_toml_str(str(token.pin_file)))
        _write(config, text.encode(), 0o644)
    new.installed()
    return Enrolled(r.station_id, r.chamber_code, config, r.serial_hex, cert.not_valid_after_utc)


def _existing_identity(config: Path) -> tuple[str, str] | None:
    if not config.exists():
        return None
    try:
        cfg = station_config.load(config)
    except station_config.StationConfigError:
        import tomllib
        try:
            st = tomllib.loads(config.read_text()).get("station", {})
            return st.get("id", ""), st.get("chamber_code", "")
        except (OSError, tomllib.TOMLDecodeError, AttributeError):
            raise EnrollError(f"{config} exists and is not a station configuration; use another --dir") from None
    return cfg.station.id, cfg.station.chamber_code


def _existing_token(config: Path) -> TokenSettings | None:
    """The ``[enrollment]`` token of the configuration already in the folder, if it has one."""
    if not config.exists():
        return None
    try:
        e = station_config.load(config).enrollment
    except station_config.StationConfigError:
        return None
    return TokenSettings(e.pkcs11_module, e.token_label, e.pin_file) if e else None


def _check_issued(cert_pem: bytes, spki_der: bytes, ca_pem: bytes) -> x509.Certificate:
    """The certificate is for our key and signed by the pinned CA (never install what does not fit)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
    except Exception as exc:   # ValueError, TypeError, InvalidSignature (not a ValueError)
        raise EnrollError(f"the personalizer sent a certificate that does not verify ({type(exc).__name__}); "
                          "nothing was changed") from None
    if cert.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo) != spki_der:
        raise EnrollError("the personalizer sent a certificate for another key; nothing was changed")
    return cert


def renew_if_due(cfg: StationConfig, *, force: bool = False, now: _dt.datetime | None = None,
                 timeout: float | None = None) -> x509.Certificate | None:
    """Renew the station certificate when due (or ``force``); the new certificate, or None when not due."""
    p = cfg.personalizer
    current = station_cert.current(cfg)     # first: it settles an interrupted switch, and the certificate must read
    if not force and not renewal_due(current, now):
        return None
    e = cfg.enrollment
    new = _NewKey(cfg.station.id, TokenSettings(e.pkcs11_module, e.token_label, e.pin_file) if e else None)
    csr_der = new.csr_der
    with channel.secure_channel_sync(cfg) as ch:
        try:
            r = epb_grpc.StationAdminStub(ch).RenewStation(epb.RenewStationRequest(csr_der=csr_der),
                                                           timeout=timeout or p.timeout_seconds)
        except grpc.RpcError as exc:
            problem = channel.connection_problem(exc.code(), exc.details(), cfg)
            raise EnrollError(problem) if problem else _rpc_error(exc, "the personalizer") from None
    cert = _check_issued(r.certificate_pem.encode(), new.spki, p.trust_anchors.read_bytes())
    install_credentials(p.client_key, p.client_certificate, new.key_pem(), r.certificate_pem.encode())
    new.installed()
    return cert
