"""CRL and OCSP publication for a CA that keeps its own revocation records.

``PkiPublisher`` (publisher.py) builds and writes CRLs and serves them and OCSP
over HTTP. It sees the CA only through ``RevocationAuthority`` (source.py),
which the embedded CA implements. Modules: ``crl`` and ``ocsp`` are pure
builders (bytes and records in, DER out); ``http`` is a small asyncio HTTP/1.1
server. Must not import grpc, proto, the store, the broker or the service.
"""
from personalizer.pki.publisher import PkiPublisher
from personalizer.pki.source import RevocationAuthority

__all__ = ["PkiPublisher", "RevocationAuthority"]
