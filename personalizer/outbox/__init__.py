"""The outbox: every CA call goes through it, durably.

``broker`` (front door: idempotency, validation, watchers), ``relay`` (delivers due rows to the CA at least once,
never issuing twice), ``payloads`` (what a row carries and its lane), ``policy`` (retry and circuit breaker, pure),
``windows`` (the CA's service calendar and planned maintenance, pure), ``metrics`` (CA health figures),
``ca_status`` (the one CA-status reading behind GetCAStatus and Prometheus). Imports rules, records, the store
protocol and ca; never grpc or proto.
"""
