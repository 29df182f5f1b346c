"""CA connectors behind one protocol (``base.CAConnector``).

``embedded`` is the default connector: a root and an issuing CA run inside the
daemon, keys in an encrypted file store or a PKCS#11 token (``keys``).
Later connectors (EJBCA REST) implement the same protocol. Must not import
grpc, proto, the service or the store's SQL.
"""
