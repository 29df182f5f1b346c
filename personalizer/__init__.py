"""The central personalizer daemon (``cns-personalizer``) and ``cnsctl``.

Owns: the Personalizer gRPC service, mTLS identities and their roles, the
request store, the CA connectors (embedded CA by default) and the test
deployment generator (``cns-personalizer init``).

Must not import: ``agent`` or ``firmware_profiles`` (DESIGN.md boundaries).
May import: ``proto`` and ``station_config``.

Layers, outermost first::

    cli / cnsctl ─ server (Daemon.build: the one place the daemon is wired; grpc.aio, mTLS, signals)
                    ├─ edge/ (servicers: proto ↔ domain, errors → status codes; identity: client
                    │         certificate → role, chamber; tls_clients; limits)   never imports store/
                    └─ outbox/ broker (idempotency, watchers, the edge's reads and admin calls)
                              relay (claim_due → CA, retries, breaker, calendar), ca_status, metrics
                         ├─ store/ (RequestStore protocol; sqlite.py + sql.py named queries; memory.py)
                         ├─ records (states, lanes, records shared by store, outbox and edge)
                         ├─ rules/ (validation, lifecycle, registrations: pure)
                         └─ ca/ (CAConnector protocol; embedded CA; key stores), pki/ (CRL, OCSP)
"""
