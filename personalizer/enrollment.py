"""Station enrollment: one-time codes, station certificates from CSRs, renewal and revocation (issue 18 item 4).

Central IT issues a code for one station of one chamber (``add_station``);
the code (``cns_spec.enrollment_code``: 160 random bits) is stored as its
SHA-256 only, expires (``code_hours``) and is spent by the first enrollment
that uses it, in the same commit that records the certificate. ``enroll``
takes the code and a CSR: the certificate's identity URI comes from the code's
binding, never from the CSR (only its public key, proven by its signature, is
used). ``renew`` issues a new certificate for an enrolled station's own
identity (the mTLS caller); ``revoke`` lists every station certificate in the
client CRL (``tls_clients.revoke``: the daemon rereads it, so the station is
refused at once) and spends its unused codes.

The unauthenticated surface is ``enroll`` alone; ``EnrollLimiter`` bounds how
often it can be tried (per peer address and overall), so guessing a code is
hopeless on top of its 160 bits. A refused enrollment says why in one line
(unknown, expired, already used) and writes one audit row; it changes nothing.

Imports cryptography, ``cns_spec``, ``errors``, ``identity`` (URIs), ``tls_clients``, ``ca.profiles`` and the
store's types; no grpc.
"""
from __future__ import annotations

import datetime as _dt
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cns_spec import enrollment_code
from personalizer.ca import profiles
from personalizer.errors import FailedPrecondition, InvalidRequest, NotFound, PermissionDenied, Unauthenticated
from personalizer.edge.identity import ROLE_STATION, identity_uri
from personalizer.store import AuditEntry, RequestStore
from personalizer.edge import tls_clients
from cns_spec import reasons as spec_reasons

STATION_ID_RE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
CHAMBER_RE = r"[A-Z]{2,4}"
MAX_CODE_HOURS = 24 * 30
MIN_RSA_BITS = 2048
EC_CURVES = (ec.SECP256R1, ec.SECP384R1)
ACTOR_UNAUTHENTICATED = "unauthenticated"


@dataclass(frozen=True)
class IssuedStation:
    station_id: str
    chamber_code: str
    certificate_pem: bytes
    tls_ca_pem: bytes
    not_after: float
    serial_hex: str


class EnrollLimiter:
    """Token buckets: ``per_peer`` attempts per minute from one address, ``overall`` per minute in all."""

    def __init__(self, per_peer: int = 10, overall: int = 120, clock=time.monotonic, max_peers: int = 10_000):
        self._rates = (per_peer / 60.0, overall / 60.0)
        self._caps = (float(per_peer), float(overall))
        self._clock = clock
        self._peers: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._all = (float(overall), clock())
        self._max_peers = max_peers
        self._lock = threading.Lock()

    def _take(self, bucket: tuple[float, float], rate: float, cap: float, now: float) -> tuple[bool, tuple]:
        tokens, at = bucket
        tokens = min(cap, tokens + (now - at) * rate)
        return (tokens >= 1.0, (tokens - 1.0 if tokens >= 1.0 else tokens, now))

    def allow(self, peer: str) -> bool:
        with self._lock:
            now = self._clock()
            ok_all, all_next = self._take(self._all, self._rates[1], self._caps[1], now)
            ok_peer, peer_next = self._take(self._peers.get(peer, (self._caps[0], now)), self._rates[0],
                                            self._caps[0], now)
            if not (ok_all and ok_peer):
                return False
            self._all = all_next
            self._peers[peer] = peer_next
            self._peers.move_to_end(peer)
            if len(self._peers) > self._max_peers:
                self._peers.popitem(last=False)
            return True


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:1.2.3.4:5678" → "ipv4:1.2.3.4"): one bucket per host."""
    head, _, _ = peer.rpartition(":")
    return head or peer


def _check_names(station_id: str, chamber_code: str) -> None:
    if not re.fullmatch(CHAMBER_RE, chamber_code or ""):
        raise InvalidRequest("chamber_code", "expected 2 to 4 upper-case letters, e.g. RM")
    if not re.fullmatch(STATION_ID_RE, station_id or ""):
        raise InvalidRequest("station_id", "expected 1 to 64 characters of A-Z a-z 0-9 . _ - (first a letter or digit)")


def public_key_of(csr_der: bytes):
    """The CSR's public key after checking its signature and the key's strength."""
    try:
        csr = x509.load_der_x509_csr(csr_der)
    except ValueError:
        raise InvalidRequest("csr_der", "not a DER PKCS#10 certificate request") from None
    if not csr.is_signature_valid:
        raise InvalidRequest("csr_der", "the request's signature does not verify (key mismatch)")
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidRequest("csr_der", f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} needed")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, EC_CURVES):
            raise InvalidRequest("csr_der", f"EC curve {key.curve.name} not accepted; use P-256 or P-384")
    else:
        raise InvalidRequest("csr_der", "the key must be RSA (2048 bits or more) or EC P-256/P-384")
    return key


class Enrollment:
    """Codes, station certificates and their revocation, over the request store and the service TLS CA."""

    def __init__(self, *, store: RequestStore, tls_ca_cert: x509.Certificate, tls_ca_key, client_crl: Path,
                 cert_days: int = 365, code_hours: int = 72, clock=time.time):
        self.store = store
        self.ca_cert = tls_ca_cert
        self._ca_key = tls_ca_key
        self.client_crl = client_crl
        self.validity = _dt.timedelta(days=cert_days)
        self.code_hours = code_hours
        self._clock = clock
        self.ca_pem = tls_ca_cert.public_bytes(serialization.Encoding.PEM)
        self.ca_fingerprint = enrollment_code.fingerprint(tls_ca_cert.public_bytes(serialization.Encoding.DER))

    @classmethod
    def from_files(cls, store: RequestStore, *, ca_cert: Path, ca_key: Path, client_crl: Path, **kw) -> "Enrollment":
        cert = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        key = serialization.load_pem_private_key(ca_key.read_bytes(), None)
        if key.public_key().public_numbers() != cert.public_key().public_numbers():
            raise ValueError(f"{ca_key} is not the key of {ca_cert}")
        return cls(store=store, tls_ca_cert=cert, tls_ca_key=key, client_crl=client_crl, **kw)

    def _issue(self, station_id: str, chamber_code: str, public_key) -> tuple[x509.Certificate, str]:
        now = _dt.datetime.fromtimestamp(self._clock(), _dt.timezone.utc).replace(microsecond=0)
        cert = profiles.build_tls_leaf(station_id, public_key, issuer=self.ca_cert, now=now,
                                       identity_uri=identity_uri(ROLE_STATION, station_id, chamber_code),
                                       validity=self.validity).sign(self._ca_key, hashes.SHA256())
        return cert, f"{cert.serial_number:X}"

    def _result(self, station_id: str, chamber_code: str, cert: x509.Certificate, serial: str) -> IssuedStation:
        return IssuedStation(station_id, chamber_code, cert.public_bytes(serialization.Encoding.PEM), self.ca_pem,
                             cert.not_valid_after_utc.timestamp(), serial)

    async def add_station(self, actor: str, station_id: str, chamber_code: str, valid_hours: int = 0) -> tuple[str, float]:
        """A new one-time code bundle for the station and when it expires."""
        _check_names(station_id, chamber_code)
        hours = valid_hours or self.code_hours
        if not 1 <= hours <= MAX_CODE_HOURS:
            raise InvalidRequest("valid_hours", f"expected 1 to {MAX_CODE_HOURS} hours")
        code = enrollment_code.new_code()
        expires = self._clock() + hours * 3600
        await self.store.add_enrollment_code(
            enrollment_code.code_hash(code), chamber_code, station_id, expires,
            AuditEntry(actor, station_id, "station-add", None, f"{chamber_code}/{station_id}", "done",
                       f"code valid {hours} h", operator_id=""))
        return enrollment_code.make_bundle(code, self.ca_pem_der()), expires

    def ca_pem_der(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.DER)

    async def _refuse_enroll(self, peer: str, station: str, why: str, exc) -> None:
        await self.store.append_audit(AuditEntry(ACTOR_UNAUTHENTICATED, station, "station-enroll", None, peer,
                                                 f"refused:{exc.code}", why, operator_id=""))
        raise exc

    async def enroll(self, code: str, csr_der: bytes, *, peer: str = "",
                     expect: tuple[str, str] | None = None) -> IssuedStation:
        """Spend ``code`` and return the certificate for its station; refused (nothing changed) otherwise."""
        if not re.fullmatch(r"[a-z2-7]{32}", code or ""):
            await self._refuse_enroll(peer, "", "malformed code", InvalidRequest(
                "code", "the enrollment code is malformed; type it exactly as central IT gave it"))
        key = public_key_of(csr_der)
        h = enrollment_code.code_hash(code)
        found = await self.store.find_enrollment_code(h)
        now = self._clock()
        if found is None:
            await self._refuse_enroll(peer, "", "unknown code", Unauthenticated(
                "this enrollment code is not valid; check it or ask central IT for a new one (cnsctl station add)"))
        chamber, station, expires_at, used_at = found
        if used_at is not None:
            await self._refuse_enroll(peer, station, "code already used", Unauthenticated(
                "this enrollment code was already used; each code enrolls once: ask central IT for a new one"))
        if expires_at <= now:
            when = _dt.datetime.fromtimestamp(expires_at, _dt.timezone.utc).isoformat(timespec="minutes")
            await self._refuse_enroll(peer, station, "code expired", Unauthenticated(
                f"this enrollment code expired at {when}; ask central IT for a new one"))
        if expect is not None and expect != (station, chamber):
            await self._refuse_enroll(peer, station, "code for another station", FailedPrecondition(
                f"this enrollment code is for station {station} ({chamber}), not {expect[0]} ({expect[1]}) whose "
                "configuration is in that folder; use another --dir (the code is still valid)"))
        cert, serial = self._issue(station, chamber, key)
        if not await self.store.use_enrollment_code(
                h, now, serial, cert.not_valid_after_utc.timestamp(),
                AuditEntry(identity_uri(ROLE_STATION, station, chamber), station, "station-enroll", None, serial,
                           "done", peer, operator_id="")):
            await self._refuse_enroll(peer, station, "code used concurrently", Unauthenticated(
                "this enrollment code was already used; each code enrolls once: ask central IT for a new one"))
        return self._result(station, chamber, cert, serial)

    async def renew(self, station_id: str, chamber_code: str, csr_der: bytes, *,
                    current_serial: str = "") -> IssuedStation:
        """A new certificate (new key) for an enrolled station calling as itself (with ``current_serial``).

        Every other certificate of the station (older ones, which it no longer uses) is revoked as
        superseded; the calling one stays valid until the agent has switched to the new one, so a crash
        between this answer and the agent's write never locks the station out."""
        key = public_key_of(csr_der)
        state = await self.store.station_state(chamber_code, station_id)
        if state == "revoked":
            raise PermissionDenied(f"station {station_id} of chamber {chamber_code} is revoked")
        if state != "enrolled":
            raise FailedPrecondition(f"station {station_id} of chamber {chamber_code} was not enrolled; "
                                     "enroll it with a code from `cnsctl station add`")
        cert, serial = self._issue(station_id, chamber_code, key)
        if not await self.store.record_station_renewal(
                chamber_code, station_id, serial, cert.not_valid_after_utc.timestamp(),
                AuditEntry(identity_uri(ROLE_STATION, station_id, chamber_code), station_id, "station-renew", None,
                           serial, "done", operator_id="")):
            raise PermissionDenied(f"station {station_id} of chamber {chamber_code} is no longer enrolled")
        keep = {serial, current_serial.upper().lstrip("0")}
        superseded = [s for s in await self.store.station_serials(chamber_code, station_id)
                      if s.lstrip("0") not in keep]
        for s in superseded:
            tls_clients.revoke(self.client_crl, self.ca_cert, self._ca_key, int(s, 16), spec_reasons.SUPERSEDED)
        await self.store.mark_station_certificates_revoked(superseded)
        return self._result(station_id, chamber_code, cert, serial)

    async def revoke(self, actor: str, station_id: str, chamber_code: str, reason: str = "") -> int:
        """Revoke every certificate of the station (client CRL first, then the store); how many were added."""
        _check_names(station_id, chamber_code)
        reason = reason or spec_reasons.CESSATION_OF_OPERATION
        if reason not in tls_clients.REASONS:
            raise InvalidRequest("reason", f"use one of {', '.join(tls_clients.REASONS)}")
        if await self.store.station_state(chamber_code, station_id) is None:
            raise NotFound(f"no station {station_id} in chamber {chamber_code}")
        added = 0
        for serial in await self.store.station_serials(chamber_code, station_id):
            if tls_clients.revoke(self.client_crl, self.ca_cert, self._ca_key, int(serial, 16), reason):
                added += 1
        await self.store.revoke_station(chamber_code, station_id, AuditEntry(
            actor, station_id, "station-revoke", None, f"{chamber_code}/{station_id}", "done",
            f"{reason}; {added} certificate(s) added to the client CRL", operator_id=""))
        return added

    async def list(self, chamber_code: str = "") -> list[tuple]:
        return await self.store.list_stations(chamber_code)
