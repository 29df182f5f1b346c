"""gRPC channels to the personalizer built from a ``StationConfig``.

Imports grpc (and, for a token key, ``station_config.token_key`` and cryptography), nothing else of ours. The agent's uplink and cnsctl use::

    cfg = station_config.load(path)
    channel = station_config.channel.secure_channel(cfg)            # grpc.aio, primary
    channel = station_config.channel.secure_channel(cfg, dr=True)   # the DR site
    stub = personalizer_pb2_grpc.PersonalizerStub(channel)

``channel_credentials(cfg)`` gives mTLS credentials (trust anchors, client key
and certificate; with ``[enrollment]`` the key is in a PKCS#11 token that signs each
handshake, ``station_config.token_key``); ``channel_options(cfg)`` the keepalive, proxy, TLS-name and
retry settings (retries on UNAVAILABLE only; request ids make them safe).
``connection_problem(code, details, cfg)`` turns a failed connection's gRPC
status into one sentence a person can act on (untrusted server certificate,
refused client certificate, nothing listening, unknown host, no answer in time),
naming the endpoint and the configuration key to check; None for other errors.
"""
from __future__ import annotations

import json

import grpc

from station_config import StationConfig

RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.5s",
    "maxBackoff": "8s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
SERVICE_CONFIG = {"methodConfig": [{"name": [{"service": "cns.v1.Personalizer"}], "retryPolicy": RETRY_POLICY}]}


def channel_credentials(cfg: StationConfig) -> grpc.ChannelCredentials:
    p = cfg.personalizer
    if cfg.enrollment is not None:      # the key stays in the token: it signs each handshake (token_key)
        return token_credentials(cfg)
    return grpc.ssl_channel_credentials(
        root_certificates=p.trust_anchors.read_bytes(),
        private_key=p.client_key.read_bytes(),
        certificate_chain=p.client_certificate.read_bytes())


def token_credentials(cfg: StationConfig) -> grpc.ChannelCredentials:
    """mTLS credentials whose private-key operation is done by the station's PKCS#11 token."""
    import warnings

    import grpc.experimental
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from station_config import token_key

    e, p = cfg.enrollment, cfg.personalizer
    chain = p.client_certificate.read_bytes()
    spki = x509.load_pem_x509_certificate(chain).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    token = token_key.open_token(e.pkcs11_module, e.token_label, e.pin_file)
    with warnings.catch_warnings():     # grpc.experimental warns on every call that it is experimental
        warnings.simplefilter("ignore")
        return grpc.experimental.ssl_channel_credentials_with_custom_signer(
            private_key_sign_fn=token.tls_signer(spki), root_certificates=p.trust_anchors.read_bytes(),
            certificate_chain=chain)


def _bypass_proxy(cfg: StationConfig, endpoint: str) -> bool:
    host = endpoint.rsplit(":", 1)[0].strip("[]")
    return any(host == n or (n.startswith(".") and host.endswith(n)) for n in cfg.proxy.no_proxy)


def channel_options(cfg: StationConfig, *, dr: bool = False) -> list[tuple[str, object]]:
    p = cfg.personalizer
    opts: list[tuple[str, object]] = [
        ("grpc.keepalive_time_ms", int(p.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    ]
    if p.server_name:
        opts.append(("grpc.ssl_target_name_override", p.server_name))
    if cfg.proxy is not None and not _bypass_proxy(cfg, target(cfg, dr=dr)):
        opts.append(("grpc.http_proxy", cfg.proxy.url))
    return opts


def connection_problem(code: grpc.StatusCode, details: str | None, cfg: StationConfig, *,
                       dr: bool = False) -> str | None:
    """One actionable sentence for a call that failed to reach the personalizer, or None.

    gRPC reports only the last address it tried (``localhost`` may end on ``::1``), so the
    checks look for the TLS failure anywhere in ``details`` before falling back to the socket error.
    """
    details = details or ""
    key = "personalizer.dr" if dr else "personalizer.primary"
    try:
        endpoint = target(cfg, dr=dr)
    except ValueError:
        endpoint = "?"
    where = f"the personalizer at {endpoint} ({key} in {cfg.source})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (f"no answer from {where} within {cfg.personalizer.timeout_seconds:g} s "
                "(personalizer.timeout_seconds); try again later or ask central IT whether it is up")
    if code != grpc.StatusCode.UNAVAILABLE:
        return None
    if "CERTIFICATE_VERIFY_FAILED" in details or "certificate verify failed" in details.lower():
        return (f"the server certificate of {where} is not trusted: it is not signed by a CA in "
                f"personalizer.trust_anchors ({cfg.personalizer.trust_anchors}); install the personalizer's "
                "TLS CA there")
    if "Peer name" in details and "not in peer certificate" in details:
        return (f"the server certificate of {where} does not name {endpoint.rsplit(':', 1)[0]}; use the name "
                "it was issued for, or set personalizer.server_name")
    if "PRIVATE_KEY_OPERATION_FAILED" in details and cfg.enrollment is not None:
        return (f"the station key in the PKCS#11 token {cfg.enrollment.token_label!r} did not sign the connection to "
                f"{where}: is the token inserted and its PIN in enrollment.pin_file right?")
    if ("Socket closed" in details or "ALERT" in details or "CERTIFICATE_REQUIRED" in details
            or "handshake" in details.lower()):
        return (f"{where} refused this client's certificate ({cfg.personalizer.client_certificate}): it is not "
                "issued by the personalizer's client CA, or has expired; ask central IT for a new one")
    if "resolv" in details or "Domain name not found" in details or "DNS" in details:
        return f"cannot resolve the host name of {where}; check the name and the network"
    if "Connection refused" in details or "connect" in details.lower():
        hint = ""
        if endpoint.startswith("localhost:") and "::1" in details:
            hint = (f" (localhost was tried as ::1 last; a daemon listening on 127.0.0.1 only is reached as "
                    f"127.0.0.1:{endpoint.rsplit(':', 1)[1]}, and only then would a TLS problem show)")
        return (f"nothing answers at {where}: is `cns-personalizer serve` running there, and is the "
                f"address right?{hint}")
    return None


def target(cfg: StationConfig, *, dr: bool = False) -> str:
    if dr and not cfg.personalizer.dr:
        raise ValueError(f"{cfg.source}: personalizer.dr is not configured")
    return cfg.personalizer.dr if dr else cfg.personalizer.primary


def secure_channel(cfg: StationConfig, *, dr: bool = False) -> grpc.aio.Channel:
    """An asyncio mTLS channel to the primary (or DR) personalizer."""
    return grpc.aio.secure_channel(target(cfg, dr=dr), channel_credentials(cfg), options=channel_options(cfg, dr=dr))


def secure_channel_sync(cfg: StationConfig, *, dr: bool = False) -> grpc.Channel:
    """The same for synchronous callers (scripts, cnsctl)."""
    return grpc.secure_channel(target(cfg, dr=dr), channel_credentials(cfg), options=channel_options(cfg, dr=dr))
