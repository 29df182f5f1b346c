"""Station enrollment against a real daemon: cnsctl station add → cns-agent enroll → mTLS calls work;
reused, unknown or malformed codes and an unexpected server certificate are refused with one line and
nothing changed; revocation is enforced; renewal over mTLS switches to a new key (issue 18 items 4, 6)."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import station_config
from agent import cli as agent_cli
from cns_spec import enrollment_code
from personalizer import cnsctl
from proto.cns.v1 import enrollment_pb2 as epb, enrollment_pb2_grpc as epb_grpc
from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.personalizer import helpers


def _cnsctl(deployment, capsys, *args) -> tuple[int, dict, str]:
    capsys.readouterr()
    rc = cnsctl.main(["--config", str(deployment.admin_config), "--json", *args])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else {}), err


def _admin_config(deployment, daemon) -> None:
    """The admin config names port 0 (init with listen :0): point it at the running daemon."""
    p = deployment.admin_config
    p.write_text(p.read_text().replace("127.0.0.1:0", f"127.0.0.1:{daemon.port}"))


@pytest.fixture(scope="module")
def admin(deployment, daemon):
    _admin_config(deployment, daemon)
    return deployment


def _add(admin, capsys, station: str, chamber: str = "RM") -> str:
    rc, out, err = _cnsctl(admin, capsys, "station", "add", "--station-id", station, "--chamber", chamber)
    assert rc == 0, err
    return out["code"]


def _enroll(daemon, capsys, code: str, d: Path, *extra) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = agent_cli.main(["enroll", "--code", code, "--personalizer", f"localhost:{daemon.port}",
                         "--enroll-port", str(daemon.enroll_port), "--dir", str(d), *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def _snapshot(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())} if d.exists() else {}


def _ca_status(cfg: station_config.StationConfig):
    from station_config import channel
    with channel.secure_channel_sync(cfg) as ch:
        return pb_grpc.PersonalizerStub(ch).GetCAStatus(pb.GetCAStatusRequest(), timeout=10)


def test_enroll_then_mtls_works_and_the_code_is_spent(admin, daemon, capsys, tmp_path):
    code = _add(admin, capsys, "RM-ENR-01")
    assert len(enrollment_code.parse_bundle(code)[0]) == 32       # 160-bit code + CA fingerprint
    d = tmp_path / "station"
    rc, out, err = _enroll(daemon, capsys, code, d)
    assert rc == 0, err
    assert "enrolled station RM-ENR-01 (RM)" in out
    assert (d / "client.key.pem").stat().st_mode & 0o777 == 0o600
    cfg = station_config.load(d / "station.toml")
    assert (cfg.station.id, cfg.station.chamber_code) == ("RM-ENR-01", "RM")
    cert = x509.load_pem_x509_certificate((d / "client.pem").read_bytes())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    assert uris == ["urn:cns:station:RM:RM-ENR-01"]
    assert _ca_status(cfg).connector                                 # the new identity is accepted over mTLS

    before = _snapshot(d)
    rc, out, err = _enroll(daemon, capsys, code, d)                  # the operator runs it again
    assert rc == 1 and "already used" in err and len(err.strip().splitlines()) == 1
    assert _snapshot(d) == before                                    # the working identity is untouched
    assert _ca_status(cfg).connector

    rc, listed, err = _cnsctl(admin, capsys, "station", "list", "--chamber", "RM")
    row = next(s for s in listed["stations"] if s["station"] == "RM-ENR-01")
    assert row["state"] == "enrolled" and row["serial"] == f"{cert.serial_number:X}"


def test_unknown_and_malformed_codes_write_nothing(admin, daemon, capsys, tmp_path):
    real = _add(admin, capsys, "RM-ENR-02")
    _, fp = enrollment_code.parse_bundle(real)
    d = tmp_path / "station"
    rc, _, err = _enroll(daemon, capsys, enrollment_code.new_code() + "-" + fp, d)
    assert rc == 1 and "not valid" in err and "Traceback" not in err
    rc, _, err = _enroll(daemon, capsys, real[:20], d)                # a truncated paste
    assert rc == 1 and "whole text" in err
    assert not d.exists()


def test_unexpected_server_certificate_is_refused_before_the_code_is_sent(admin, daemon, capsys, tmp_path):
    real = _add(admin, capsys, "RM-ENR-03")
    code, _ = enrollment_code.parse_bundle(real)
    other = hashlib.sha256(b"another CA").hexdigest()
    d = tmp_path / "station"
    rc, _, err = _enroll(daemon, capsys, f"{code}-{other}", d)
    assert rc == 1 and "unexpected certificate" in err and "nothing was sent" in err
    assert not d.exists()
    rc, _, err = _enroll(daemon, capsys, real, d)                    # the code was not spent
    assert rc == 0, err


def test_revoked_station_is_refused_and_cannot_renew(admin, daemon, capsys, tmp_path):
    d = tmp_path / "station"
    assert _enroll(daemon, capsys, _add(admin, capsys, "RM-ENR-04"), d)[0] == 0
    cfg = station_config.load(d / "station.toml")
    assert _ca_status(cfg).connector
    rc, row, err = _cnsctl(admin, capsys, "station", "revoke", "--station-id", "RM-ENR-04", "--chamber", "RM")
    assert rc == 0, err
    assert row["state"] == "revoked" and row["revoked_certificates"] == 1
    deadline = time.monotonic() + 5
    while True:                                                      # the daemon rereads the CRL within ~1 s
        try:
            _ca_status(cfg)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in exc.details()
            break
        assert time.monotonic() < deadline, "revoked station still accepted"
        time.sleep(0.3)
    capsys.readouterr()
    rc = agent_cli.main(["renew-station", "--config", str(d / "station.toml"), "--force"])
    assert rc == 1 and "revoked" in capsys.readouterr().err
    # central IT lets the station back in with a new code: it re-enrolls in the same folder
    rc, out, err = _enroll(daemon, capsys, _add(admin, capsys, "RM-ENR-04"), d)
    assert rc == 0, err
    assert _ca_status(station_config.load(d / "station.toml")).connector


def test_renewal_over_mtls_switches_to_a_new_key(admin, daemon, capsys, tmp_path):
    d = tmp_path / "station"
    assert _enroll(daemon, capsys, _add(admin, capsys, "RM-ENR-05"), d)[0] == 0
    old_cert = x509.load_pem_x509_certificate((d / "client.pem").read_bytes())
    old_key = (d / "client.key.pem").read_bytes()
    capsys.readouterr()
    assert agent_cli.main(["renew-station", "--config", str(d / "station.toml")]) == 0
    assert "not due" in capsys.readouterr().out                     # a fresh certificate is not renewed
    assert (d / "client.key.pem").read_bytes() == old_key
    assert agent_cli.main(["renew-station", "--config", str(d / "station.toml"), "--force", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    new_cert = x509.load_pem_x509_certificate((d / "client.pem").read_bytes())
    assert out["renewed"] and out["serial"] == f"{new_cert.serial_number:X}" != f"{old_cert.serial_number:X}"
    assert (d / "client.key.pem").read_bytes() != old_key
    assert (d / "client.key.pem").stat().st_mode & 0o777 == 0o600
    assert not list(d.glob("*.new")) and not list(d.glob("*.tmp"))
    assert _ca_status(station_config.load(d / "station.toml")).connector
    # the next renewal supersedes the first certificate: revoked, while the one renewing stays valid
    first = helpers.ClientCert(old_cert.public_bytes(serialization.Encoding.PEM), old_key)
    assert agent_cli.main(["renew-station", "--config", str(d / "station.toml"), "--force"]) == 0
    assert _ca_status(station_config.load(d / "station.toml")).connector
    deadline = time.monotonic() + 5
    with helpers.channel(daemon.port, admin.root / "tls", first) as ch:
        while True:
            try:
                pb_grpc.PersonalizerStub(ch).GetCAStatus(pb.GetCAStatusRequest(), timeout=5)
            except grpc.RpcError as exc:
                assert "revoked" in exc.details()
                break
            assert time.monotonic() < deadline, "superseded station certificate still accepted"
            time.sleep(0.3)
    rc, listed, _ = _cnsctl(admin, capsys, "station", "list")
    assert next(s for s in listed["stations"] if s["station"] == "RM-ENR-05")["revoked_certificates"] == 1


def test_only_enroll_is_reachable_without_a_client_certificate(admin, daemon, deployment):
    tls = deployment.root / "tls"
    with helpers.channel(daemon.enroll_port, tls, None) as ch:      # enrollment port: nothing else is served
        with pytest.raises(grpc.RpcError) as exc:
            pb_grpc.PersonalizerStub(ch).GetCAStatus(pb.GetCAStatusRequest(), timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as exc:
            epb_grpc.StationAdminStub(ch).AddStation(epb.AddStationRequest(station_id="X", chamber_code="RM"),
                                                     timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    station = helpers.client_cert(tls, common_name="s", identity="urn:cns:station:RM:RM-X")
    with helpers.channel(daemon.port, tls, station) as ch:          # mTLS port: a station may not add stations
        with pytest.raises(grpc.RpcError) as exc:
            epb_grpc.StationAdminStub(ch).AddStation(epb.AddStationRequest(station_id="RM-Y", chamber_code="RM"),
                                                     timeout=5)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        from personalizer import config
        from personalizer.store import AuditFilter, read_audit
        rows = read_audit(config.load(deployment.server_config).store.database, AuditFilter())
        assert any(r.actor == "urn:cns:station:RM:RM-X" and r.result == "refused:PERMISSION_DENIED"
                   and "AddStation" in r.operation for r in rows)   # the refusal is audited
        with pytest.raises(grpc.RpcError) as exc:                   # nor reach Enroll there
            epb_grpc.StationEnrollmentStub(ch).Enroll(epb.EnrollRequest(code="a" * 32), timeout=5)
        assert exc.value.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED)


def test_a_code_for_another_station_does_not_overwrite_this_one(admin, daemon, capsys, tmp_path):
    d = tmp_path / "station"
    assert _enroll(daemon, capsys, _add(admin, capsys, "RM-ENR-06"), d)[0] == 0
    before = _snapshot(d)
    other = _add(admin, capsys, "RM-ENR-07")
    rc, _, err = _enroll(daemon, capsys, other, d)
    assert rc == 1 and "RM-ENR-06" in err and "another --dir" in err
    assert _snapshot(d) == before
    rc, _, err = _enroll(daemon, capsys, other, tmp_path / "other")   # the code was not spent
    assert rc == 0, err


def test_an_unwritable_folder_is_refused_before_the_code_is_spent(admin, daemon, capsys, tmp_path):
    code = _add(admin, capsys, "RM-ENR-09")
    (tmp_path / "file").write_text("not a folder")
    rc, _, err = _enroll(daemon, capsys, code, tmp_path / "file" / "station")
    assert rc == 1 and "cannot write the station folder" in err and "still valid" in err
    assert _enroll(daemon, capsys, code, tmp_path / "station")[0] == 0


def test_enrollment_port_refuses_oversized_requests(admin, daemon):
    with helpers.channel(daemon.enroll_port, admin.root / "tls", None) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            epb_grpc.StationEnrollmentStub(ch).Enroll(epb.EnrollRequest(code="a" * 32, csr_der=b"x" * 100_000),
                                                      timeout=5)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

def test_a_server_showing_the_right_ca_with_a_foreign_certificate_is_refused(admin, daemon, capsys, tmp_path):
    """An impostor can present the (public) CA certificate in its chain: the pin finds it, and gRPC then
    verifies the impostor's own certificate against it, which fails. The code is never sent."""
    from concurrent import futures
    import datetime as dt
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from personalizer.ca import profiles

    code = _add(admin, capsys, "RM-ENR-10")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor")])
    fake_ca = profiles.build_ca(name, key.public_key(), issuer=None, now=dt.datetime.now(dt.timezone.utc),
                                path_length=0, validity=dt.timedelta(days=1)).sign(key, hashes.SHA256())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = profiles.build_tls_leaf("impostor", leaf_key.public_key(), issuer=fake_ca,
                                   now=dt.datetime.now(dt.timezone.utc), server_names=["localhost"]
                                   ).sign(key, hashes.SHA256())
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)   # noqa: E731
    chain = pem(leaf) + (admin.root / "tls" / "tls-ca.pem").read_bytes()
    seen = []

    class Spy(epb_grpc.StationEnrollmentServicer):
        def Enroll(self, request, context):
            seen.append(request.code)
            return epb.StationCertificate()

    impostor = grpc.server(futures.ThreadPoolExecutor(2))
    epb_grpc.add_StationEnrollmentServicer_to_server(Spy(), impostor)
    port = impostor.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(
        leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()), chain)]))
    impostor.start()
    try:
        capsys.readouterr()
        rc = agent_cli.main(["enroll", "--code", code, "--personalizer", f"localhost:{daemon.port}",
                             "--enroll-port", str(port), "--dir", str(tmp_path / "s")])
        err = capsys.readouterr().err
    finally:
        impostor.stop(0)
    assert rc == 1 and "certificate" in err and "nothing was changed" in err, err
    assert seen == [] and not (tmp_path / "s").exists()
    assert _enroll(daemon, capsys, code, tmp_path / "s")[0] == 0      # the code is still good


def _expire(deployment, code_bundle: str) -> None:
    """As if the operator enrolled after the code's expiry: the daemon's stored expiry moved into the past
    (the daemon reads the code's row on every call; codes live at least an hour, too long to wait for)."""
    import sqlite3
    code, _ = enrollment_code.parse_bundle(code_bundle)
    dbs = sorted((deployment.root / "data").glob("*.sqlite"))
    assert dbs, list((deployment.root / "data").iterdir())
    hits = 0
    for db in dbs:
        with sqlite3.connect(db, timeout=10) as con:
            try:
                hits += con.execute("UPDATE enrollment_codes SET expires_at = ? WHERE code_sha256 = ?",
                                    (time.time() - 60, enrollment_code.code_hash(code))).rowcount
            except sqlite3.OperationalError:      # another of the daemon's files
                continue
    assert hits == 1


def test_an_expired_code_gives_one_line_and_leaves_the_working_station_as_it_was(admin, daemon, capsys, tmp_path):
    d = tmp_path / "station"
    assert _enroll(daemon, capsys, _add(admin, capsys, "RM-ENR-10"), d)[0] == 0
    before = _snapshot(d)
    late = _add(admin, capsys, "RM-ENR-11")
    _expire(admin, late)
    rc, out, err = _enroll(daemon, capsys, late, tmp_path / "late")    # a fresh folder: nothing is left behind
    assert rc == 1 and "expired" in err and "central IT" in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and not (tmp_path / "late").exists()
    rc, out, err = _enroll(daemon, capsys, late, d)                      # over a working station: kept as it was
    assert rc == 1 and "expired" in err
    assert _snapshot(d) == before
    assert _ca_status(station_config.load(d / "station.toml")).connector


def test_a_read_only_home_is_refused_before_the_code_is_spent(admin, daemon, capsys, tmp_path, monkeypatch):
    from tests.support.tmpfs import tmpfs
    code = _add(admin, capsys, "RM-ENR-12")
    with tmpfs(tmp_path / "home", "1m") as home:
        home.remount(read_only=True)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(home.path / ".config"))   # the default --dir, under it
        capsys.readouterr()
        rc = agent_cli.main(["enroll", "--code", code, "--personalizer", f"localhost:{daemon.port}",
                             "--enroll-port", str(daemon.enroll_port)])
        err = capsys.readouterr().err
        assert rc == 1 and "cannot write the station folder" in err and "Read-only file system" in err, err
        assert "still valid" in err and len(err.strip().splitlines()) == 1
        assert list(home.path.iterdir()) == []
    assert _enroll(daemon, capsys, code, tmp_path / "station")[0] == 0   # the code was not spent


def test_guessing_codes_is_rate_limited(admin, daemon, capsys, tmp_path):
    """Last in this module: it uses up this address's enrollment attempts."""
    _, fp = enrollment_code.parse_bundle(_add(admin, capsys, "RM-ENR-08"))
    errors = []
    for _ in range(25):
        rc, _, err = _enroll(daemon, capsys, f"{enrollment_code.new_code()}-{fp}", tmp_path / "s")
        assert rc == 1
        errors.append(err)
        if "too many" in err:
            break
    assert "too many enrollment attempts; wait a minute" in errors[-1], errors[-3:]
    assert len(errors) <= 20
