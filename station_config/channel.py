"""gRPC channels to the personalizer built from a ``StationConfig``.

Imports grpc (not anything of ours). The agent's uplink and cnsctl use::

    cfg = station_config.load(path)
    channel = station_config.channel.secure_channel(cfg)            # grpc.aio, primary
    channel = station_config.channel.secure_channel(cfg, dr=True)   # the DR site
    stub = personalizer_pb2_grpc.PersonalizerStub(channel)

``channel_credentials(cfg)`` gives mTLS credentials (trust anchors, client key
and certificate); ``channel_options(cfg)`` the keepalive, proxy, TLS-name and
retry settings (retries on UNAVAILABLE only; request ids make them safe).
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
    return grpc.ssl_channel_credentials(
        root_certificates=p.trust_anchors.read_bytes(),
        private_key=p.client_key.read_bytes(),
        certificate_chain=p.client_certificate.read_bytes())


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
