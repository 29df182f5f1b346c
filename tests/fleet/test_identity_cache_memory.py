"""The mTLS identity cache stays small per station (issue 15 item 6: 20,000 streams under 2 GiB): an entry keeps
a digest of the presented chain, the identity, the expiry and the revocation key, not the chain's PEM bytes and
a parsed certificate (~4.4 KB an entry at 4,096 entries), and still answers like before."""
from __future__ import annotations

import datetime as dt
import tracemalloc

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from personalizer.ca import profiles
from personalizer.edge import identity
from personalizer.errors import Unauthenticated


class Ctx:
    def __init__(self, pem: bytes):
        self.pem = pem

    def auth_context(self):
        return {identity.AUTH_PEM_KEY: [self.pem], identity.AUTH_CHAIN_KEY: [self.pem]}


@pytest.fixture(scope="module")
def pems(deployment):
    tls = deployment.root / "tls"
    ca_key = serialization.load_pem_private_key((tls / "tls-ca.key.pem").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((tls / "tls-ca.pem").read_bytes())
    now = dt.datetime.now(dt.timezone.utc)
    out = []
    for i in range(300):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = profiles.build_tls_leaf(f"S-{i}", key.public_key(), issuer=ca, now=now,
                                       identity_uri=f"urn:cns:station:RM:S-{i}").sign(ca_key, hashes.SHA256())
        out.append(cert.public_bytes(serialization.Encoding.PEM))
    return out


def test_an_identity_cache_entry_costs_under_half_a_kib(pems):
    interceptor = identity.AuthInterceptor(cache_size=4096)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for pem in pems:
            interceptor._identity(Ctx(pem))
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per = sum(s.size_diff for s in after.compare_to(before, "filename")) / len(pems)
    assert len(interceptor._cache) == len(pems)
    assert per < 512, per   # keyed by PEM + chain and holding the parsed certificate: 4,360 bytes


def test_the_compact_entry_still_answers_and_checks_revocation_on_every_call(pems, deployment):
    from personalizer.edge.tls_clients import ClientTrust
    tls = deployment.root / "tls"
    trust = ClientTrust((tls / "tls-ca.pem").read_bytes(), tls / "client-crl.pem")
    interceptor = identity.AuthInterceptor(trust=trust)
    first = interceptor._identity(Ctx(pems[0]))
    again = interceptor._identity(Ctx(pems[0]))   # from the cache
    assert first == again and first.uri == "urn:cns:station:RM:S-0"
    leaf = x509.load_pem_x509_certificate(pems[0])
    from personalizer.edge.tls_clients import _Revoked
    trust._revoked = _Revoked(trust._revoked.number, frozenset({(leaf.issuer.public_bytes(), leaf.serial_number)}))
    with pytest.raises(Unauthenticated, match="revoked"):
        interceptor._identity(Ctx(pems[0]))
