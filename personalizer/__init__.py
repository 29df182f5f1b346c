"""The central personalizer daemon (``cns-personalizer``) and ``cnsctl``.

Owns: the Personalizer gRPC service, mTLS identities and their roles, the
request store, the CA connectors (embedded CA by default) and the test
deployment generator (``cns-personalizer init``).

Must not import: ``agent`` or ``firmware_profiles`` (DESIGN.md boundaries).
May import: ``proto`` and ``station_config``.

Layers, outermost first::

    cli / cnsctl ─ server (grpc.aio, mTLS, health, reflection, signals)
                    ├─ identity (client certificate → role, chamber; interceptor)
                    │    └─ tls_clients (chain with path length, client CRL; pure)
                    └─ service (proto ↔ domain; errors → status codes; limits: request bounds)
                         └─ broker (idempotency, request states, watchers; audit: refusal rate limit)
                              ├─ store (SQLite via aiosqlite; all SQL)
                              ├─ validation, codice_fiscale, dati_personali (pure)
                              └─ ca (CAConnector protocol; embedded CA; key stores)
"""
