"""The embedded CA signing through a PKCS#11 token (SoftHSM2), end to end through the daemon."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from personalizer import deploy
from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.personalizer import helpers

pytestmark = pytest.mark.softhsm

TOKEN_LABEL = "cns-ca-test"
KEY_LABEL = "cns-issuing"
USER_PIN = "12345678"
SO_PIN = "87654321"
KEY_BITS = 2048   # the production default is 3072; 2048 keeps the token's key generation quick in tests


@pytest.fixture
def token(tmp_path, softhsm2_module, monkeypatch):
    import pkcs11
    from pkcs11 import Attribute, KeyType

    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", USER_PIN,
                    "--so-pin", SO_PIN], check=True, capture_output=True, timeout=60)
    # In a fresh process: SoftHSM reads SOFTHSM2_CONF once per process, and another test
    # may already have loaded it here with its own token directory.
    script = (
        "import pkcs11, sys\n"
        "from pkcs11 import Attribute, KeyType\n"
        f"lib = pkcs11.lib({str(softhsm2_module)!r})\n"
        f"with lib.get_token(token_label={TOKEN_LABEL!r}).open(rw=True, user_pin={USER_PIN!r}) as s:\n"
        f"    pub, _ = s.generate_keypair(KeyType.RSA, {KEY_BITS}, label={KEY_LABEL!r}, store=True,\n"
        "        private_template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True})\n"
        "    print(int.from_bytes(pub[Attribute.MODULUS], 'big'), int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], 'big'))\n")
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SOFTHSM2_CONF": str(conf)}).stdout.split()
    n, e = int(out[0]), int(out[1])
    return conf, rsa.RSAPublicNumbers(e, n).public_key()


def test_daemon_issues_through_pkcs11_key(tmp_path, token, deployment, softhsm2_module):
    conf, public_key = token
    ca_dir = tmp_path / "ca"
    root, issuing, file_key = deploy.create_ca(ca_dir, key_bits=KEY_BITS, issuing_public_key=public_key)
    assert file_key is None and not (ca_dir / "issuing.key.pem").exists()
    (ca_dir / "pin").write_text(USER_PIN + "\n")
    (ca_dir / "pin").chmod(0o600)
    tls = deployment.root / "tls"
    cfg = tmp_path / "personalizer.toml"
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:0"
tls_cert = "{tls / 'server.pem'}"
tls_key = "{tls / 'server.key.pem'}"
client_trust_anchors = "{tls / 'tls-ca.pem'}"
grace_seconds = 2

[store]
data_dir = "data"

[ca]
connector = "embedded"
root_cert = "ca/root.pem"
issuing_cert = "ca/issuing.pem"
key_store = "pkcs11"
pkcs11_module = "{softhsm2_module}"
token_label = "{TOKEN_LABEL}"
key_label = "{KEY_LABEL}"
pin_file = "ca/pin"

# This test is about the PKCS#11 key, not the CA's hours: without this the tender's
# calendar applies and, in the evening or on a Sunday, the request would wait in the queue.
[service_window]
always_open = true
""")
    d = helpers.DaemonProcess(cfg, env={"SOFTHSM2_CONF": str(conf)})
    try:
        station_dir = deployment.station_config.parent
        cc = helpers.ClientCert((station_dir / "client.pem").read_bytes(), (station_dir / "client.key.pem").read_bytes())
        with helpers.channel(d.port, tls, cc) as ch:
            resp = pb_grpc.PersonalizerStub(ch).SubmitIssue(
                helpers.issue_request(profile=pb.CA_PROFILE_QUALIFIED_SIGNATURE), timeout=30)
    finally:
        assert d.stop() == 0
    cert = x509.load_der_x509_certificate(resp.certificate_der)
    cert.verify_directly_issued_by(issuing)
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out = subprocess.run(["openssl", "verify", "-CAfile", str(ca_dir / "root.pem"), "-untrusted",
                          str(ca_dir / "issuing.pem"), str(leaf)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
