"""The embedded CA with its key in a PKCS#11 token (SoftHSM2): CRLs and the OCSP responder are signed
through the token, and openssl accepts them.

The token work runs in a child process: SoftHSM2 reads ``SOFTHSM2_CONF`` once per process, at the
first C_Initialize, so a second token directory in the same pytest process would not be seen (and
would break tests/personalizer/test_softhsm.py).
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ca import support

pytestmark = pytest.mark.softhsm

ROOT = Path(__file__).resolve().parents[2]
TOKEN_LABEL = "cns-ca-crl-test"
KEY_LABEL = "cns-issuing"
USER_PIN = "12345678"
SO_PIN = "87654321"
KEY_BITS = 2048


def child(tmp: str, module: str) -> None:
    """Runs in the child: key in the token, CA, one held certificate, a CRL."""
    import pkcs11
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa
    from pkcs11 import Attribute, KeyType

    from personalizer import deploy
    from personalizer.ca.embedded import EmbeddedCA
    from personalizer.ca.keys import Pkcs11Signer
    from personalizer.pki import PkiPublisher

    tmp_path = Path(tmp)
    with pkcs11.lib(module).get_token(token_label=TOKEN_LABEL).open(rw=True, user_pin=USER_PIN) as s:
        pub, _ = s.generate_keypair(KeyType.RSA, KEY_BITS, label=KEY_LABEL, store=True,
                                    private_template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True})
        public_key = rsa.RSAPublicNumbers(int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big"),
                                          int.from_bytes(pub[Attribute.MODULUS], "big")).public_key()
    ca_dir = tmp_path / "ca"
    root, issuing, _ = deploy.create_ca(ca_dir, key_bits=KEY_BITS, issuing_public_key=public_key)
    signer = Pkcs11Signer(module=module, token_label=TOKEN_LABEL, pin=USER_PIN, key_label=KEY_LABEL)
    ca = EmbeddedCA(signer=signer, issuing_cert=issuing, root_cert=root, ca_dir=ca_dir, sign_in_thread=True)
    publisher = PkiPublisher(ca, crl_dir=tmp_path / "crl", http_host="127.0.0.1", http_port=0)

    async def go():
        issued = await ca.issue("qualified-signature", support.csr(), support.SUBJECT, "hsm-1")
        await ca.suspend(issued.ref)
        crl = await publisher.publish_now()
        responder = (await ca.ocsp_responder()).certificate
        await ca.close()
        return issued, crl, responder

    issued, crl, responder = asyncio.run(go())
    assert crl.is_signature_valid(issuing.public_key())
    responder.verify_directly_issued_by(issuing)
    (tmp_path / "leaf.pem").write_bytes(support.pem(x509.load_der_x509_certificate(issued.certificate_der)))


def test_crl_signed_in_the_token(tmp_path, softhsm2_module):
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "PYTHONPATH": str(ROOT)}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", USER_PIN,
                    "--so-pin", SO_PIN], check=True, capture_output=True, timeout=60, env=env)
    r = subprocess.run([sys.executable, "-c", "import sys; from tests.ca.test_pkcs11_crl import child; "
                        "child(sys.argv[1], sys.argv[2])", str(tmp_path), str(softhsm2_module)],
                       capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    ca_dir = tmp_path / "ca"
    v = support.run("openssl", "verify", "-crl_check", "-CAfile", ca_dir / "root.pem", "-untrusted",
                    ca_dir / "issuing.pem", "-CRLfile", tmp_path / "crl" / "cns-issuing-ca.pem", tmp_path / "leaf.pem")
    assert v.returncode != 0 and "certificate revoked" in v.stdout + v.stderr, v.stdout + v.stderr
