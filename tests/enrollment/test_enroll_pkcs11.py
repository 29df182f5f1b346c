"""The station key in a PKCS#11 token (SoftHSM2), issue 18 item 4: ``cns-agent enroll --pkcs11-module ...``
makes the key in the token (sensitive, never extractable), the token signs the CSR, no key file is
written, and every mTLS call to the real daemon (sync renewal, the agent's grpc.aio uplink channel) is
signed by the token through grpcio's custom-signer credentials. A renewal makes a new pair in the token
and leaves only the certificate's key there. A wrong PIN or a PIN file others can read is refused with
one line before the code is spent.

The agent runs in child processes: SoftHSM2 reads ``SOFTHSM2_CONF`` once per process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import ROOT
from tests.enrollment.test_enroll_daemon import _add, _admin_config, _cnsctl  # noqa: F401 (shared helpers)

LABEL = "cns-station-test"
PIN = "246810"
# the venv's agent, or the one-file build under test (tests/packaging/conftest.py: CNS_AGENT_BINARY)
BIN = os.environ.get("CNS_AGENT_BINARY") or os.path.join(os.path.dirname(sys.executable), "cns-agent")

# what the token says about this station's keys (run in a child with SOFTHSM2_CONF)
INSPECT = r"""
import json, sys, pkcs11
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import AttributeSensitive
from pkcs11.util.ec import encode_ec_public_key
tok = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2])
with tok.open(user_pin=sys.argv[3]) as s:
    privs = list(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: "cns-station"}))
    pubs = list(s.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: "cns-station"}))
    out = {"private": [], "public": [encode_ec_public_key(p).hex() for p in pubs]}
    for k in privs:
        try:
            k[Attribute.VALUE]
            readable = True
        except AttributeSensitive:
            readable = False
        out["private"].append({"sensitive": bool(k[Attribute.SENSITIVE]), "extractable": bool(k[Attribute.EXTRACTABLE]),
                               "never_extractable": bool(k[Attribute.NEVER_EXTRACTABLE]), "value_readable": readable})
print(json.dumps(out))
"""

# the agent's own uplink channel (grpc.aio, station_config.channel) makes an mTLS call with the token's key
AIO_CALL = r"""
import asyncio, sys
import station_config
from station_config import channel
from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
async def main():
    cfg = station_config.load(sys.argv[1])
    async with channel.secure_channel(cfg) as ch:
        r = await pb_grpc.PersonalizerStub(ch).GetCAStatus(pb.GetCAStatusRequest(), timeout=10)
        print("connector", r.connector)
asyncio.run(main())
"""


@pytest.fixture(scope="module")
def admin(deployment, daemon):
    _admin_config(deployment, daemon)
    return deployment


@pytest.fixture
def token(tmp_path, softhsm2_module):
    conf = tmp_path / "softhsm2.conf"
    (tmp_path / "tokens").mkdir()
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "PYTHONPATH": str(ROOT)}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", LABEL, "--pin", PIN, "--so-pin", "13579246"],
                   env=env, check=True, capture_output=True)
    pin_file = tmp_path / "token.pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    return {"env": env, "module": str(softhsm2_module), "pin_file": pin_file}


def _agent(token, *args, env_extra=None) -> subprocess.CompletedProcess:
    return subprocess.run([BIN, *args], env={**token["env"], **(env_extra or {})}, capture_output=True, text=True,
                          timeout=120)


def _enroll(daemon, token, code: str, d, pin_file=None) -> subprocess.CompletedProcess:
    return _agent(token, "enroll", "--code", code, "--personalizer", f"localhost:{daemon.port}",
                  "--enroll-port", str(daemon.enroll_port), "--dir", str(d), "--pkcs11-module", token["module"],
                  "--token-label", LABEL, "--token-pin-file", str(pin_file or token["pin_file"]))


def _inspect(token) -> dict:
    r = subprocess.run([sys.executable, "-c", INSPECT, token["module"], LABEL, PIN], env=token["env"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _spki(cert_path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo).hex()


def test_enroll_makes_the_key_in_the_token_and_mtls_is_signed_by_it(admin, daemon, capsys, tmp_path, token):
    d = tmp_path / "station"
    r = _enroll(daemon, token, _add(admin, capsys, "RM-P11-01"), d)
    assert r.returncode == 0, r.stderr
    assert "enrolled station RM-P11-01 (RM)" in r.stdout
    assert not (d / "client.key.pem").exists() and not list(d.glob("*.key*"))   # no key on disk
    text = (d / "station.toml").read_text()
    assert "client_key" not in text and "[enrollment]" in text and LABEL in text and PIN not in text

    held = _inspect(token)
    assert held["private"] == [{"sensitive": True, "extractable": False, "never_extractable": True,
                                "value_readable": False}]
    assert held["public"] == [_spki(d / "client.pem")]                  # the certificate is for the token's key

    # the agent's grpc.aio uplink channel, then the station-certificate renewal, both over mTLS with the token
    r = subprocess.run([sys.executable, "-c", AIO_CALL, str(d / "station.toml")], env=token["env"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("connector "), r.stderr[-2000:]
    old = _spki(d / "client.pem")
    r = _agent(token, "renew-station", "--config", str(d / "station.toml"), "--force", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["renewed"] is True
    new = _spki(d / "client.pem")
    assert new != old
    held = _inspect(token)
    assert held["public"] == [new] and len(held["private"]) == 1       # the old pair is gone from the token
    assert held["private"][0]["never_extractable"] and not held["private"][0]["value_readable"]
    assert not (d / "client.key.pem").exists()
    r = subprocess.run([sys.executable, "-c", AIO_CALL, str(d / "station.toml")], env=token["env"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_wrong_token_pin_or_an_open_pin_file_is_refused_before_the_code_is_spent(admin, daemon, capsys,
                                                                                   tmp_path, token):
    code = _add(admin, capsys, "RM-P11-02")
    d = tmp_path / "station"
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("000000\n")
    wrong.chmod(0o600)
    r = _enroll(daemon, token, code, d, pin_file=wrong)
    assert r.returncode == 1 and "refused the PIN" in r.stderr and "nothing was sent" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "000000" not in r.stderr and "Traceback" not in r.stderr
    assert not d.exists()
    token["pin_file"].chmod(0o644)                                     # central IT left the PIN readable
    r = _enroll(daemon, token, code, d)
    assert r.returncode == 1 and "chmod 600" in r.stderr and PIN not in r.stderr, r.stderr
    assert not d.exists()
    token["pin_file"].chmod(0o600)
    r = _enroll(daemon, token, code, d)                                # the code was not spent
    assert r.returncode == 0, r.stderr
    assert _inspect(token)["public"] == [_spki(d / "client.pem")]


def test_half_given_token_options_are_refused_with_what_is_missing(daemon, tmp_path, token):
    r = _agent(token, "enroll", "--code", "x", "--personalizer", f"localhost:{daemon.port}", "--dir",
               str(tmp_path / "s"), "--pkcs11-module", token["module"])
    assert r.returncode == 1 and "--token-label, --token-pin-file missing" in r.stderr, r.stderr
    r = _agent(token, "enroll", "--code", "x", "--personalizer", f"localhost:{daemon.port}", "--dir",
               str(tmp_path / "s"), "--pkcs11-module", token["module"], "--token-label", "a\nb",
               "--token-pin-file", str(token["pin_file"]))
    assert r.returncode == 1 and "--token-label" in r.stderr and "expected 1..32" in r.stderr, r.stderr
    assert not (tmp_path / "s").exists()


def test_enrollment_section_is_checked_at_load(tmp_path, softhsm2_module):
    import station_config
    for name in ("ca.pem", "client.pem", "client.key.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "pin").write_text(PIN)
    base = ('[station]\nid = "RM-1"\nchamber_code = "RM"\ndata_dir = "d"\n[personalizer]\nprimary = "h:1"\n'
            'trust_anchors = "ca.pem"\nclient_certificate = "client.pem"\n')
    token = f'[enrollment]\npkcs11_module = "{softhsm2_module}"\ntoken_label = "{LABEL}"\npin_file = "pin"\n'
    cfg = tmp_path / "station.toml"
    cfg.write_text(base + token)
    e = station_config.load(cfg).enrollment
    assert (e.pkcs11_module, e.token_label, e.pin_file) == (softhsm2_module.resolve(), LABEL, tmp_path / "pin")
    assert station_config.load(cfg).personalizer.client_key is None
    for text, key in ((base + 'client_key = "client.key.pem"\n' + token, "personalizer.client_key"),
                      (base + token.replace('"pin"', '"nopin"'), "enrollment.pin_file"),
                      (base + token.replace(LABEL, "x" * 33), "enrollment.token_label"),
                      (base + token.replace(str(softhsm2_module), "/no/such/lib.so"), "enrollment.pkcs11_module"),
                      (base, "personalizer.client_key")):
        cfg.write_text(text)
        with pytest.raises(station_config.StationConfigError) as err:
            station_config.load(cfg)
        assert err.value.key == key, err.value


DROP_KEYS = r"""
import sys, pkcs11
from pkcs11 import Attribute, ObjectClass
with pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2]).open(user_pin=sys.argv[3], rw=True) as s:
    for k in list(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: "cns-station"})):
        k.destroy()
"""


def test_a_token_that_lost_the_key_gives_one_line_and_keeps_the_certificate(admin, daemon, capsys, tmp_path, token):
    d = tmp_path / "station"
    assert _enroll(daemon, token, _add(admin, capsys, "RM-P11-03"), d).returncode == 0
    subprocess.run([sys.executable, "-c", DROP_KEYS, token["module"], LABEL, PIN], env=token["env"], check=True,
                   timeout=60)                                          # central IT re-initialised the token
    before = (d / "client.pem").read_bytes()
    r = _agent(token, "renew-station", "--config", str(d / "station.toml"), "--force")
    assert r.returncode == 1 and f"PKCS#11 token '{LABEL}' did not sign" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert (d / "client.pem").read_bytes() == before


REPLUG = r"""
import sys
from pathlib import Path
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from station_config import token_key
tk = token_key.open_token(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
spki = tk.generate()
pub = serialization.load_der_public_key(spki)
pub.verify(tk.sign(spki, b"before"), b"before", ec.ECDSA(hashes.SHA256()))
tk._session.close()      # what pulling the token does to the library's session handles: they are gone
pub.verify(tk.sign(spki, b"after"), b"after", ec.ECDSA(hashes.SHA256()))   # a new login, same key
assert token_key.open_token(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])) is tk
print("ok")
"""


def test_the_token_key_survives_a_lost_session(token):
    # the token pulled and put back while the agent runs: the next handshake logs in again, no restart needed
    r = subprocess.run([sys.executable, "-c", REPLUG, token["module"], LABEL, str(token["pin_file"])],
                       env=token["env"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
