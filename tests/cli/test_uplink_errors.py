"""The agent's uplink says what is wrong with a connection (the message reaches the operator's CLI)."""
from __future__ import annotations

import asyncio

import pytest

import station_config
from agent.ops.errors import UplinkUnavailable
from agent.uplink.client import PersonalizerClient
from personalizer import deploy
from tests.cli.conftest import with_endpoint


async def _ca_status(cfg):
    async with PersonalizerClient(cfg) as client:
        return await client.ca_status()


def test_wrong_trust_anchor_is_named(deployment, daemon, tmp_path):
    other = deploy.init_deployment(tmp_path / "other", ca_key_bits=2048)
    path = with_endpoint(deployment.station_config, daemon.port,
                         deployment.station_config.parent / f"wrong-{tmp_path.name}.toml",
                         **{r'trust_anchors = ".*"': f'trust_anchors = "{other.tls_ca}"'})
    with pytest.raises(UplinkUnavailable) as ei:
        asyncio.run(_ca_status(station_config.load(path)))
    msg = str(ei.value)
    assert "not trusted" in msg and str(other.tls_ca) in msg
    assert ei.value.code == "UNAVAILABLE"


def test_the_right_one_works(deployment, daemon, tmp_path):
    path = with_endpoint(deployment.station_config, daemon.port,
                         deployment.station_config.parent / f"right-{tmp_path.name}.toml")
    assert asyncio.run(_ca_status(station_config.load(path))).operational
