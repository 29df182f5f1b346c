"""Fixtures: an emulated token on a sparse flash file behind the pure-Python pyusb bus."""
from __future__ import annotations

import pytest
import usb.core

from firmware_profiles.usbemu import EmulatedUsbBus, make_token
from firmware_profiles.usbtoken import load_token_models


@pytest.fixture(scope="session")
def token_models():
    return load_token_models()


@pytest.fixture(params=["cns-token-ccid", "cns-token-hid"])
def model(request, token_models):
    return token_models[request.param]


@pytest.fixture
def bus():
    return EmulatedUsbBus()


@pytest.fixture
def token(model, tmp_path, bus):
    t = make_token(model, tmp_path / "flash.bin")
    bus.plug(t)
    yield t
    t.flash.close()


def find(bus, **kw):
    return usb.core.find(backend=bus, **kw)
