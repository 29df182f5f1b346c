"""CSRs signed through a raw-RSA callback verify, and a wrong signer is caught."""
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.ops.csr import build_csr, pkcs1_v15_sha256_block
from agent.ops.errors import VerificationError


def raw_signer(key):
    n = key.private_numbers().public_numbers.n
    d = key.private_numbers().d
    size = (key.key_size + 7) // 8
    return lambda block: pow(int.from_bytes(block, "big"), d, n).to_bytes(size, "big")


@pytest.mark.parametrize("bits", [1024, 2048])
def test_csr_signed_by_raw_rsa_verifies(bits):
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    der = build_csr(key.public_key(), [("country_name", "IT"), ("common_name", "RSSMRA80A01H501U")], raw_signer(key))
    csr = x509.load_der_x509_csr(der)
    assert csr.is_signature_valid
    assert csr.public_key().public_numbers() == key.public_key().public_numbers()
    assert csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "RSSMRA80A01H501U"


def test_wrong_card_key_is_caught():
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(VerificationError, match="does not verify"):
        build_csr(key.public_key(), [("common_name", "x")], raw_signer(other))


def test_padding_layout():
    block = pkcs1_v15_sha256_block(b"abc", 128)
    import hashlib
    from agent.ops.csr import SHA256_DIGEST_INFO
    assert len(block) == 128 and block[:2] == b"\x00\x01"
    assert set(block[2:-52]) == {0xFF} and block[-52] == 0
    assert block[-51:] == SHA256_DIGEST_INFO + hashlib.sha256(b"abc").digest()
