"""The agent checks the card the way holders' applications will (issue 9 item 13).

A card served over vpcd to a private pcscd; the agent's operations reach it through PC/SC
(``PcscLink``, shared mode) against the real daemon (mTLS, embedded CA). After a
personalization and after a renewal the outcome's ``pkcs11`` says ``verified``: OpenSC's
PKCS#11 module (python-pkcs11, in the agent's process) found both certificates the agent
wrote and their keys, and a test signature by each verified — while the agent's own
connection stayed open. After the renewal OpenSC shows the NEW certificates (the module is
finalized after each check, so no stale binding). A card whose certificate does not match its
key is reported ``failed`` naming the keyset; without the PIN the answer is ``not available``.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.card.cns import CnsSession
from firmware_profiles.emulator.admin import SoftwareAuthenticator
from agent.card.issuer import IssuerSession
from agent.devices.pcsc import PcscLink
from agent.ops.journal import Journal
from agent.ops.p11check import Pkcs11Check
from agent.ops.personalize import Personalizer
from agent.uplink.card_admin import CardAdminClient
from firmware_profiles import load_models
from firmware_profiles.emulator import EmulatedCard
from firmware_profiles.emulator.vpcd import VpcdClient, parse_address
from tests.conftest import OPENSC_PKCS11
from tests.ops import renewal_env as env

pytestmark = [pytest.mark.pcscd, pytest.mark.opensc]

MODEL = load_models()["infocamere-cns-2048"]
READER = "Virtual PCD 00 00"
OPENSC_CONF = """app default {
    debug = 0;
    framework pkcs15 { use_file_caching = false; use_pin_caching = false; }
}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    dep = env.make_deployment(tmp_path_factory.mktemp("p11check") / "cns", env.free_port())
    p = env.ThreadedPersonalizer(dep)
    yield p, env.station_for(dep)
    p.close()


@pytest.fixture
def served(pcscd, opensc_tools, tmp_path):
    """A blank card in the first vpcd reader; OpenSC in this process reads its config from OPENSC_CONF."""
    conf = tmp_path / "opensc.conf"
    conf.write_text(OPENSC_CONF)
    old = os.environ.get("OPENSC_CONF")
    os.environ["OPENSC_CONF"] = str(conf)
    card = EmulatedCard(MODEL)
    host, port = parse_address(pcscd.vpcd_address(0))
    client = VpcdClient(card, host, port).start()
    assert client.inserted.wait(10), "the card never connected to vpcd"
    try:
        yield card
    finally:
        client.stop()
        time.sleep(0.5)   # let pcscd notice the removal before the next card
        if old is None:
            os.environ.pop("OPENSC_CONF", None)
        else:
            os.environ["OPENSC_CONF"] = old


def _connect():
    for _ in range(50):
        try:
            return PcscLink(READER)
        except Exception:
            time.sleep(0.1)
    return PcscLink(READER)


def _run(tmp_path, fn):
    async def go():
        j = await Journal.open(tmp_path / "journal.db")
        try:
            return await fn(j)
        finally:
            await j.close()
    return asyncio.run(go())


def _personalize(station, journal, check):
    async def go():
        async with env.PersonalizerClient(station) as uplink:
            p = Personalizer(journal=journal, uplink=uplink, requester=env.REQUESTER,
                             card_admin=CardAdminClient(uplink).for_operation("personalize", env.REQUESTER), pkcs11=check)
            return await p.start(connect=_connect, reader=READER, model=MODEL, holder=env.HOLDER,
                                 codes=env.codes_for(MODEL))
    return go()


def _renew(station, journal, check):
    async def go():
        async with env.PersonalizerClient(station) as uplink:
            return await env.renewer(journal, uplink, pkcs11=check).start(
                connect=_connect, reader=READER, model=MODEL, codes=env.codes_for(MODEL))
    return go()


def test_personalization_and_renewal_verified_through_opensc(world, served, tmp_path):
    p, station = world
    p.ca.reset()
    check = Pkcs11Check(OPENSC_PKCS11)
    first = _run(tmp_path, lambda j: _personalize(station, j, check))
    assert first.state == "done", first.message
    assert first.pkcs11 == "verified"
    assert first.as_dict()["pkcs11"] == "verified"
    out = _run(tmp_path, lambda j: _renew(station, j, check))
    assert out.state == "done", out.message
    assert out.pkcs11 == "verified"
    assert out.certificates != first.certificates
    # the check judged the new certificates: the old ones are no longer on the card
    assert check.check_sync(READER, first.certificates, env.codes_for(MODEL).pin).startswith("failed: OpenSC does "
                                                                                           "not show the CNS0")


def _foreign_certificate(der: bytes) -> bytes:
    """A certificate with the same subject for ANOTHER key (self-signed)."""
    old = x509.load_der_x509_certificate(der)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.DER)


def test_certificate_not_matching_its_key_is_reported(world, served, tmp_path):
    p, station = world
    p.ca.reset()
    check = Pkcs11Check(OPENSC_PKCS11)
    out = _run(tmp_path, lambda j: _personalize(station, j, check))
    assert out.state == "done" and out.pkcs11 == "verified", (out.message, out.pkcs11)
    foreign = _foreign_certificate(out.certificates["CNS0"])
    link = _connect()
    try:
        cns = CnsSession(link, MODEL)
        issuer = IssuerSession(cns, MODEL)
        issuer.authenticate(SoftwareAuthenticator(MODEL))
        issuer.write_ef(MODEL.keyset("CNS0").cert_path, foreign)
        # the agent's connection stays open during the check (shared mode, no transaction held)
        result = check.check_sync(READER, {"CNS0": foreign, "CNS1": out.certificates["CNS1"]},
                                  env.codes_for(MODEL).pin)
    finally:
        link.close()
    assert result.startswith("failed: ") and "CNS0" in result and "does not match" in result, result
    assert "CNS1" not in result
    pin = env.codes_for(MODEL).pin
    assert pin not in result
    no_pin = check.check_sync(READER, {"CNS0": foreign, "CNS1": out.certificates["CNS1"]}, None)
    assert no_pin.startswith("not available: ") and "PIN" in no_pin


def test_missing_module_is_declared_not_available(tmp_path):
    result = asyncio.run(Pkcs11Check(tmp_path / "no-such-module.so").check(reader=READER, certificates={},
                                                                          pin="12345678"))
    assert result.startswith("not available: ") and "not installed" in result
