"""Enrollment without a daemon: code expiry, hashing, single use under a race, CSR checks, the rate
limiter, the agent's two-phase credential switch and the renewal threshold (issue 18 items 4, 6)."""
from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from agent.uplink import enroll as agent_enroll
from agent.uplink import station_cert
from cns_spec import enrollment_code
from personalizer import deploy
from personalizer.enrollment import Enrollment, EnrollLimiter
from personalizer.errors import InvalidRequest, PermissionDenied, Unauthenticated
from personalizer.store import SqliteRequestStore

ADMIN = "urn:cns:admin:central-it"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return deploy.TlsCA(tmp_path_factory.mktemp("tls"))


class Clock:
    def __init__(self):
        self.now = 1_900_000_000.0

    def __call__(self):
        return self.now


def _csr(key=None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


def _run(tls, tmp_path, body):
    async def go():
        clock = Clock()
        store = await SqliteRequestStore.open(tmp_path / "r.sqlite", clock=clock)
        e = Enrollment(store=store, tls_ca_cert=tls.cert, tls_ca_key=tls.key, client_crl=tls.dir / deploy.CLIENT_CRL,
                       clock=clock)
        try:
            return await body(e, clock, store)
        finally:
            await store.close()
    return asyncio.run(go())


def test_an_expired_code_is_refused_and_changes_nothing(tls, tmp_path):
    async def body(e, clock, store):
        bundle, expires = await e.add_station(ADMIN, "RM-U-01", "RM", valid_hours=2)
        code, fp = enrollment_code.parse_bundle(bundle)
        assert fp == enrollment_code.fingerprint(tls.cert.public_bytes(serialization.Encoding.DER))
        clock.now = expires + 1                                      # the operator enrolls a day late
        with pytest.raises(Unauthenticated, match="expired at .*ask central IT for a new one"):
            await e.enroll(code, _csr())
        assert await store.station_state("RM", "RM-U-01") == "pending"
        assert await store.find_enrollment_code(enrollment_code.code_hash(code)) == ("RM", "RM-U-01", expires, None)
        audit = [a for a in await store.list_audit() if a.operation == "station-enroll"]
        assert [(a.actor, a.result, a.detail) for a in audit] == [("unauthenticated", "refused:UNAUTHENTICATED",
                                                                   "code expired")]
        return code
    code = _run(tls, tmp_path, body)
    db = b"".join(p.read_bytes() for p in tmp_path.glob("r.sqlite*"))
    assert code.encode() not in db                                   # stored hashed only
    assert enrollment_code.code_hash(code).encode() in db


def test_one_code_enrolls_once_even_when_two_use_it_at_once(tls, tmp_path):
    async def body(e, clock, store):
        code, _ = enrollment_code.parse_bundle((await e.add_station(ADMIN, "RM-U-02", "RM"))[0])
        results = await asyncio.gather(*(e.enroll(code, _csr()) for _ in range(5)), return_exceptions=True)
        ok = [r for r in results if not isinstance(r, Exception)]
        assert len(ok) == 1, results
        assert all(isinstance(r, Unauthenticated) and "already used" in str(r) for r in results if r not in ok)
        assert await store.station_serials("RM", "RM-U-02") == [ok[0].serial_hex]
    _run(tls, tmp_path, body)


def test_the_identity_comes_from_the_code_never_from_the_csr(tls, tmp_path):
    async def body(e, clock, store):
        code, _ = enrollment_code.parse_bundle((await e.add_station(ADMIN, "RM-U-03", "RM"))[0])
        key = ec.generate_private_key(ec.SECP256R1())
        sneaky = (x509.CertificateSigningRequestBuilder()
                  .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
                  .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:cns:admin:root")]),
                                 critical=False).sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
        issued = await e.enroll(code, sneaky)
        cert = x509.load_pem_x509_certificate(issued.certificate_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:cns:station:RM:RM-U-03"]
        assert cert.public_key().public_numbers() == key.public_key().public_numbers()
        cert.verify_directly_issued_by(tls.cert)
    _run(tls, tmp_path, body)


def test_weak_or_forged_csrs_and_bad_names_are_refused_without_spending_the_code(tls, tmp_path):
    async def body(e, clock, store):
        code, _ = enrollment_code.parse_bundle((await e.add_station(ADMIN, "RM-U-04", "RM"))[0])
        with pytest.raises(InvalidRequest, match="at least 2048"):
            await e.enroll(code, _csr(rsa.generate_private_key(65537, 1024)))
        forged = bytearray(_csr())
        forged[-5] ^= 0xFF                                           # signature no longer verifies
        with pytest.raises(InvalidRequest):
            await e.enroll(code, bytes(forged))
        with pytest.raises(InvalidRequest, match="not a DER"):
            await e.enroll(code, b"junk")
        assert (await store.find_enrollment_code(enrollment_code.code_hash(code)))[3] is None
        await e.enroll(code, _csr())                                 # still usable
        for station, chamber in (("bad id!", "RM"), ("RM-U-05", "rome")):
            with pytest.raises(InvalidRequest):
                await e.add_station(ADMIN, station, chamber)
        with pytest.raises(InvalidRequest, match="valid_hours"):
            await e.add_station(ADMIN, "RM-U-05", "RM", valid_hours=24 * 365)
    _run(tls, tmp_path, body)


def test_revoked_station_cannot_renew_or_use_a_pending_code(tls, tmp_path):
    async def body(e, clock, store):
        code, _ = enrollment_code.parse_bundle((await e.add_station(ADMIN, "RM-U-06", "RM"))[0])
        await e.enroll(code, _csr())
        spare, _ = enrollment_code.parse_bundle((await e.add_station(ADMIN, "RM-U-06", "RM"))[0])
        assert await e.revoke(ADMIN, "RM-U-06", "RM") == 1
        with pytest.raises(PermissionDenied, match="revoked"):
            await e.renew("RM-U-06", "RM", _csr())
        with pytest.raises(Unauthenticated, match="already used"):   # revocation spent the unused code
            await e.enroll(spare, _csr())
    _run(tls, tmp_path, body)


def test_limiter_bounds_attempts_per_address_and_refills():
    clock = Clock()
    lim = EnrollLimiter(per_peer=3, overall=5, clock=clock)
    assert [lim.allow("ipv4:10.0.0.1") for _ in range(4)] == [True, True, True, False]
    assert [lim.allow("ipv4:10.0.0.2") for _ in range(3)] == [True, True, False]   # overall cap (5)
    clock.now += 60
    assert lim.allow("ipv4:10.0.0.1")


def test_bundle_parsing_forgives_spaces_and_case_but_not_missing_parts():
    code = enrollment_code.new_code()
    fp = "ab" * 32
    assert enrollment_code.parse_bundle(f"  {code.upper()[:10]} {code.upper()[10:]}-{fp.upper()}\n") == (code, fp)
    for bad in (code, f"{code}-{fp[:-1]}", f"{code[:-1]}-{fp}", ""):
        with pytest.raises(enrollment_code.BadCode, match="whole text"):
            enrollment_code.parse_bundle(bad)


def test_interrupted_credential_switch_is_finished_or_undone(tmp_path):
    key, cert = tmp_path / "client.key.pem", tmp_path / "client.pem"
    key.write_bytes(b"old key")
    cert.write_bytes(b"old cert")
    (tmp_path / "client.key.pem.new").write_bytes(b"new key")     # crash before the certificate was written
    assert agent_enroll.recover_credentials(key, cert) == "undone"
    assert (key.read_bytes(), cert.read_bytes()) == (b"old key", b"old cert")
    (tmp_path / "client.key.pem.new").write_bytes(b"new key")     # both written, none switched
    (tmp_path / "client.pem.new").write_bytes(b"new cert")
    assert agent_enroll.recover_credentials(key, cert) == "finished"
    assert (key.read_bytes(), cert.read_bytes()) == (b"new key", b"new cert")
    key.write_bytes(b"newer key")                                   # key switched, certificate not yet
    (tmp_path / "client.pem.new").write_bytes(b"newer cert")
    assert agent_enroll.recover_credentials(key, cert) == "finished"
    assert (key.read_bytes(), cert.read_bytes()) == (b"newer key", b"newer cert")
    assert agent_enroll.recover_credentials(key, cert) == "none"
    agent_enroll.install_credentials(key, cert, b"k", b"c")
    assert (key.read_bytes(), cert.read_bytes(), key.stat().st_mode & 0o777) == (b"k", b"c", 0o600)


def test_renewal_is_due_with_a_third_of_the_lifetime_left(tls):
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(tls.cert.subject).issuer_name(tls.cert.subject)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=300)).sign(tls.key, hashes.SHA256()))
    assert not agent_enroll.renewal_due(cert, now + dt.timedelta(days=199))
    assert agent_enroll.renewal_due(cert, now + dt.timedelta(days=200))


def test_the_agents_renewal_check_survives_a_failure_and_runs_again(monkeypatch):
    calls = []

    def fake_renew(cfg):                      # a mock of the check and the personalizer call: the loop is under test
        calls.append(cfg)
        if len(calls) == 1:
            raise agent_enroll.EnrollError("the personalizer did not answer (unavailable); try again later")
        return None

    monkeypatch.setattr(station_cert, "check_and_renew", fake_renew)

    async def go():
        task = asyncio.create_task(agent_enroll.renewal_loop("cfg", every=0.01))
        await asyncio.sleep(0.2)
        assert not task.done()                # a failed check never stops the agent
        task.cancel()
    asyncio.run(go())
    assert len(calls) >= 2                    # checked at start, and again after the failure


def _cert(tls, not_before: dt.datetime, days: float) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateBuilder().subject_name(tls.cert.subject).issuer_name(tls.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(not_before)
            .not_valid_after(not_before + dt.timedelta(days=days)).sign(tls.key, hashes.SHA256()))


def test_the_due_check_reads_the_dates_cryptography_reads(tls):
    """The agent's check at start reads the certificate with asn1crypto (no cryptography at idle): the same
    dates, so the same answer on either side of the threshold (UTCTime and GeneralizedTime alike)."""
    for start in (dt.datetime(2030, 1, 1, 12, 30, 15, tzinfo=dt.timezone.utc),
                  dt.datetime(2049, 6, 1, tzinfo=dt.timezone.utc)):            # not_after in 2050+: GeneralizedTime
        cert = _cert(tls, start, 400)
        v = station_cert.validity(cert.public_bytes(serialization.Encoding.PEM))
        assert (v.not_valid_before_utc, v.not_valid_after_utc) == (cert.not_valid_before_utc, cert.not_valid_after_utc)
        threshold = station_cert.renewal_from(cert)
        for now in (threshold - dt.timedelta(seconds=1), threshold, threshold + dt.timedelta(days=1)):
            assert station_cert.renewal_due(v, now) == station_cert.renewal_due(cert, now) == (now >= threshold)


@pytest.mark.parametrize("pem", [b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                                 b"-----BEGIN PRIVATE KEY-----\nMAMCAQA=\n-----END PRIVATE KEY-----\n",
                                 b"not a PEM file at all"])
def test_a_certificate_that_does_not_parse_is_one_line_naming_it(pem, tls):
    with pytest.raises(ValueError):           # what the check refused before (cryptography's loader)
        x509.load_pem_x509_certificate(pem)
    with pytest.raises(agent_enroll.EnrollError) as err:
        station_cert.validity(pem, source="the station certificate /x/client.pem")
    assert "/x/client.pem" in str(err.value) and "\n" not in str(err.value) and "enroll" in str(err.value)


def test_a_certificate_with_trailing_bytes_is_refused_as_before(tls):
    der = _cert(tls, dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc), 300).public_bytes(serialization.Encoding.DER)
    import base64
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der + b"\x00") + b"-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError):
        x509.load_pem_x509_certificate(pem)
    with pytest.raises(agent_enroll.EnrollError):
        station_cert.validity(pem)


def test_renew_station_with_a_corrupt_certificate_is_one_line_and_changes_nothing(tmp_path, capsys):
    """An operator's station folder whose client.pem got damaged: `cns-agent renew-station` says which file
    and what to do, in one line (no traceback), and leaves the key and the certificate as they were."""
    from agent import cli as agent_cli
    dep = deploy.init_deployment(tmp_path / "cns", listen="127.0.0.1:50999", ca_key_bits=2048)   # nothing there
    d = dep.station_config.parent
    (d / "client.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n")
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    capsys.readouterr()
    rc = agent_cli.main(["renew-station", "--config", str(dep.station_config)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "client.pem" in err and "Traceback" not in err, err
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before


def test_the_start_check_renews_only_when_due(tls, tmp_path, monkeypatch):
    """``check_and_renew`` (the agent's check at start and daily): a fresh certificate is left alone, a due
    one is renewed through ``renew_if_due`` (here a mock of the personalizer call)."""
    import station_config
    dep = deploy.init_deployment(tmp_path / "cns", listen="127.0.0.1:50999", ca_key_bits=2048)
    cfg = station_config.load(dep.station_config)
    renewed = []
    monkeypatch.setattr(agent_enroll, "renew_if_due", lambda c, force=False: renewed.append(force) or "new")
    assert station_cert.check_and_renew(cfg) is None and renewed == []
    now = dt.datetime.now(dt.timezone.utc)
    old = _cert(tls, now - dt.timedelta(days=300), 365)                      # 65 of 365 days left: due
    cfg.personalizer.client_certificate.write_bytes(old.public_bytes(serialization.Encoding.PEM))
    assert station_cert.check_and_renew(cfg) == "new" and renewed == [True]


def test_enrollment_config_is_checked_at_load(tmp_path):
    from personalizer import config
    from personalizer.errors import ConfigError
    dep = deploy.init_deployment(tmp_path / "cns", listen="127.0.0.1:0", demo_station=False, ca_key_bits=2048)
    assert not (dep.root / "stations").exists()                     # no station key written
    cfg = config.load(dep.server_config)
    assert cfg.enrollment.enabled and cfg.enrollment.tls_ca_key == dep.root / "tls" / "tls-ca.key.pem"
    text = dep.server_config.read_text()
    dep.server_config.write_text(text.replace('tls_ca_key = "tls/tls-ca.key.pem"\n', ""))
    with pytest.raises(ConfigError, match="enrollment.tls_ca_key"):
        config.load(dep.server_config)
    dep.server_config.write_text(text.replace("code_hours = 72", "code_hours = 0"))
    with pytest.raises(ConfigError, match="enrollment.code_hours"):
        config.load(dep.server_config)
    import socket
    with socket.socket() as taken:                    # listen + 1 when free; a concrete free port otherwise
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        chosen = int(deploy.enroll_listen_for(f"127.0.0.1:{busy - 1}").rpartition(":")[2])
        assert chosen not in (0, busy)
    # a concrete listen port never gets port 0: the enrollment address must survive a restart (a self-renewing
    # holder keeps it); listen port 0 (every start a new port) gets 0 too
    assert int(deploy.enroll_listen_for("127.0.0.1:65535").rpartition(":")[2]) > 0
    assert deploy.enroll_listen_for("127.0.0.1:0") == "127.0.0.1:0"
