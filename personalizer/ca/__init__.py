"""CA connectors behind one protocol (``base.CAConnector``).

- ``embedded``: the default connector, a root and an issuing CA inside the
  daemon; keys in an encrypted file or a PKCS#11 token (``keys``); its own
  certificate index, revocations and CRL numbers in ``ca.db`` (``index``);
  a delegated OCSP responder identity (``responder``).
- ``ejbca``: EJBCA's REST API over mTLS.
- ``profiles`` (certificate templates), ``reasons`` (RFC 5280 / EJBCA
  revocation reasons), ``errors`` (``InvalidTransition``).

CRL and OCSP publication live in ``personalizer.pki``. Must not import grpc,
proto, the service, the broker or the store's SQL.
"""
