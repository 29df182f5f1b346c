"""The station certificate on disk: its validity, the renewal due check, the two-phase credential switch and
the agent's renewal loop (issue 18 item 4), without cryptography.

``cns-agent run`` checks the station certificate at start and then daily (``renewal_loop``). The check
finishes or undoes an interrupted credential switch (``recover_credentials``), reads the certificate's
validity with asn1crypto (``validity``: the whole certificate is parsed, strictly, as before) and renews
only when a third of its lifetime or less is left (``renewal_due``). Only a renewal imports
``agent.uplink.enroll`` (grpc stubs, cryptography: a new key, a CSR, the issued certificate verified), so an
idle enrolled agent does not hold cryptography's ~10 MB (issue 18 item 1: idle RSS).

``install_credentials`` writes the new key and certificate complete before switching to them; a crash in
between is settled by ``recover_credentials`` on the next check. Imports asn1crypto; nothing of ours
but ``agent.uplink.enroll``, when a renewal is due.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path

RENEW_FRACTION = 1 / 3            # renew when this fraction of the lifetime, or less, is left
RENEWAL_CHECK_S = 24 * 3600.0
NEW = ".new"

log = logging.getLogger("agent.enroll")


class EnrollError(Exception):
    """Enrollment or renewal failed; one line for the operator. Nothing on disk was changed."""


@dataclass(frozen=True)
class Validity:
    """A certificate's validity period (aware UTC datetimes; the names are cryptography's ``Certificate``'s,
    so ``renewal_due`` takes either)."""
    not_valid_before_utc: _dt.datetime
    not_valid_after_utc: _dt.datetime


def validity(pem: bytes, *, source: str = "the station certificate") -> Validity:
    """The validity of the PEM certificate ``pem``; ``EnrollError`` (one line naming ``source``) when it is not
    one certificate that parses: the same certificates are refused as cryptography's loader refuses."""
    from asn1crypto import pem as asn1_pem
    from asn1crypto import x509 as asn1_x509
    try:
        kind, _, der = asn1_pem.unarmor(pem)
        if kind != "CERTIFICATE":
            raise ValueError(f"a PEM {kind} block, not a CERTIFICATE")
        cert = asn1_x509.Certificate.load(der, strict=True)
        tbs = cert["tbs_certificate"]
        cert.native                                 # every field parsed now, as cryptography's loader does
        period = tbs["validity"]
        out = Validity(period["not_before"].native, period["not_after"].native)
    except (ValueError, TypeError, KeyError) as exc:
        raise EnrollError(f"{source} is not a readable X.509 certificate ({exc}); enroll this station again "
                          "(`cns-agent enroll`) or ask central IT") from None
    return out


def renewal_from(cert) -> _dt.datetime:
    """When the renewal of ``cert`` (a ``Validity`` or a cryptography ``Certificate``) is due."""
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - life * RENEW_FRACTION


def renewal_due(cert, now: _dt.datetime | None = None) -> bool:
    """``cert``: a ``Validity`` or a cryptography ``Certificate``."""
    return (now or _dt.datetime.now(_dt.timezone.utc)) >= renewal_from(cert)


def current(cfg) -> Validity:
    """Settle an interrupted credential switch, then the validity of the station certificate of ``cfg`` (a
    ``station_config.StationConfig``)."""
    p = cfg.personalizer
    recover_credentials(p.client_key, p.client_certificate)
    return validity(p.client_certificate.read_bytes(), source=f"the station certificate {p.client_certificate}")


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` complete or not at all (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _new(path: Path) -> Path:
    return path.with_name(path.name + NEW)


def recover_credentials(key_path: Path | None, cert_path: Path) -> str:
    """Finish or undo an interrupted ``install_credentials``: "none", "finished" or "undone".
    ``key_path`` None: the key is in a token (only the certificate is switched)."""
    key_new, cert_new = (_new(key_path) if key_path else None), _new(cert_path)
    if cert_new.exists():          # both new files were complete before the first switch
        if key_new is not None and key_new.exists():
            os.replace(key_new, key_path)
        os.replace(cert_new, cert_path)
        return "finished"
    if key_new is not None and key_new.exists():   # the new certificate never got written: keep the old pair
        key_new.unlink()
        return "undone"
    return "none"


def install_credentials(key_path: Path | None, cert_path: Path, key_pem: bytes | None, cert_pem: bytes) -> None:
    """Replace the key and certificate: both new files written first, then switched (``recover_credentials``).
    ``key_pem`` None: the key is in a token, only the certificate is switched."""
    if key_pem is not None:
        _write(_new(key_path), key_pem, 0o600)
    _write(_new(cert_path), cert_pem, 0o644)
    if key_pem is not None:
        os.replace(_new(key_path), key_path)
    os.replace(_new(cert_path), cert_path)


def check_and_renew(cfg):
    """One check of ``renewal_loop``: None when not due; else the new certificate (cryptography's), renewed by
    ``agent.uplink.enroll.renew_if_due`` (imported here, only then)."""
    cert = current(cfg)
    if not renewal_due(cert):
        log.info("station certificate valid until %s; it is renewed from %s", f"{cert.not_valid_after_utc:%Y-%m-%d}",
                 f"{renewal_from(cert):%Y-%m-%d}")
        return None
    from agent.uplink.enroll import renew_if_due
    return renew_if_due(cfg, force=True)


async def renewal_loop(cfg, *, every: float = RENEWAL_CHECK_S) -> None:
    """``cns-agent run``: check the station certificate at start and then daily; a failure is logged and
    retried at the next check (the current certificate stays in use)."""
    while True:
        try:
            cert = await asyncio.to_thread(check_and_renew, cfg)
            if cert is not None:
                log.info("station certificate renewed: serial %X, valid until %s", cert.serial_number,
                         cert.not_valid_after_utc.isoformat())
        except (EnrollError, OSError, ValueError) as exc:
            log.warning("station certificate not renewed (will retry in %.0f h): %s", every / 3600, exc)
        await asyncio.sleep(every)
