"""The embedded CA with its key in a PKCS#11 token (SoftHSM2): CRLs and the OCSP responder are signed
through the token, and openssl accepts them."""
from __future__ import annotations

import asyncio
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from personalizer import deploy
from personalizer.ca.embedded import EmbeddedCA
from personalizer.ca.keys import Pkcs11Signer
from personalizer.pki import PkiPublisher
from tests.ca import support

pytestmark = pytest.mark.softhsm

TOKEN_LABEL = "cns-ca-crl-test"
KEY_LABEL = "cns-issuing"
USER_PIN = "12345678"
SO_PIN = "87654321"
KEY_BITS = 2048


@pytest.fixture
def token_key(tmp_path, softhsm2_module, monkeypatch):
    import pkcs11
    from pkcs11 import Attribute, KeyType

    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", USER_PIN,
                    "--so-pin", SO_PIN], check=True, capture_output=True, timeout=60)
    with pkcs11.lib(str(softhsm2_module)).get_token(token_label=TOKEN_LABEL).open(rw=True, user_pin=USER_PIN) as s:
        pub, _ = s.generate_keypair(KeyType.RSA, KEY_BITS, label=KEY_LABEL, store=True,
                                    private_template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True})
        n = int.from_bytes(pub[Attribute.MODULUS], "big")
        e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
    return softhsm2_module, rsa.RSAPublicNumbers(e, n).public_key()


def test_crl_signed_in_the_token(tmp_path, token_key):
    module, public_key = token_key
    ca_dir = tmp_path / "ca"
    root, issuing, _ = deploy.create_ca(ca_dir, key_bits=KEY_BITS, issuing_public_key=public_key)
    signer = Pkcs11Signer(module=str(module), token_label=TOKEN_LABEL, pin=USER_PIN, key_label=KEY_LABEL)
    ca = EmbeddedCA(signer=signer, issuing_cert=issuing, root_cert=root, ca_dir=ca_dir, sign_in_thread=True)
    pub = PkiPublisher(ca, crl_dir=tmp_path / "crl", http_host="127.0.0.1", http_port=0)

    async def go():
        issued = await ca.issue("qualified-signature", support.csr(), support.SUBJECT, "hsm-1")
        await ca.suspend(issued.ref)
        crl = await pub.publish_now()
        responder = (await ca.ocsp_responder()).certificate
        await ca.close()
        return issued, crl, responder

    issued, crl, responder = asyncio.run(go())
    assert crl.is_signature_valid(issuing.public_key())
    responder.verify_directly_issued_by(issuing)
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(support.pem(x509.load_der_x509_certificate(issued.certificate_der)))
    r = support.run("openssl", "verify", "-crl_check", "-CAfile", ca_dir / "root.pem", "-untrusted",
                    ca_dir / "issuing.pem", "-CRLfile", pub.crl_pem_path, leaf)
    assert r.returncode != 0 and "certificate revoked" in r.stdout + r.stderr, r.stdout + r.stderr
