"""The gRPC uplink classifies a failed call once: refused (with its code) or not now (retry later)."""
from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import station_config
from agent.ops.errors import UplinkError, UplinkUnavailable
from agent.ops.uplink import REFUSED_CODES, Uplink, refused
from agent.uplink.client import PersonalizerClient, _translate

CFG = station_config.load(Path(station_config.__file__).parent / "examples" / "station.toml")


def _failed(code: grpc.StatusCode, details: str = "the reason") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c.name in REFUSED_CODES])
def test_a_refusal_keeps_its_code_and_the_servers_reason(code):
    err = _translate(_failed(code), "issue request r-1", CFG, False)
    assert type(err) is UplinkError and refused(err)
    assert err.code == code.name and f"{code.name}: the reason" in str(err) and "issue request r-1" in str(err)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED])
def test_anything_else_is_not_now(code):
    err = _translate(_failed(code), "issue request r-1", CFG, False)
    assert isinstance(err, UplinkUnavailable) and not refused(err) and err.code == code.name


def test_an_unreachable_personalizer_is_worded_for_a_person():
    err = _translate(_failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), "CA status", CFG, False)
    assert "personalizer.timeout_seconds" in str(err) and str(CFG.source) in str(err)


def test_the_grpc_uplink_is_an_uplink():
    assert isinstance(PersonalizerClient(CFG), Uplink)
