"""The world a renewal test needs: a personalizer whose renewal window admits a freshly
personalized card, run in a thread of the test process so that its CA can fail on demand,
and helpers to personalize, renew, resume and judge a card.

``ThreadedPersonalizer`` is the real daemon (``personalizer.server.Daemon.build``: mTLS gRPC,
store, broker, relay, embedded CA) on a fixed port, with the embedded CA wrapped in the CA
test double ``FaultyCA`` (tests/support/ca.py). ``stop()``/``start()`` take it down and bring it back on the same port.

Issuances are counted in the embedded CA's own index (``ca.db``): a renewal has request
ids ``renew-<op id>-<keyset>`` and the index refuses a second certificate per request id,
so a duplicate issuance would show as a certificate for the same card under any other id.
"""
from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from agent.card.cns import CnsSession
from agent.card.issuer import IssuerSession
from agent.ops.csr import pkcs1_v15_sha256_block
from agent.ops.holder import Codes, HolderRecord
from agent.ops.journal import Journal
from agent.ops.personalize import Personalizer
from agent.ops.renew import RenewalPolicy, Renewer
from agent.uplink.client import PersonalizerClient
from agent.uplink.card_admin import CardAdminClient
from personalizer import config as pconfig
from personalizer import deploy
from personalizer import server as pserver
from tests.support.emulated import EmulatedTransport, connect_to  # noqa: F401  (re-exported to tests)
from tests.support.ca import FaultyCA

HOLDER = HolderRecord(codice_fiscale="RSSMRA80A01H501U", given_name="Mario", surname="Rossi",
                      birth_date="1980-01-01", sex="M", birth_town="ROMA", issuer="CCIAA di Roma")
REQUESTER = {"station_id": "RM-STATION-01", "chamber_code": "RM", "operator_id": "op-test"}
WIDE = RenewalPolicy(window_days=36500)     # a fresh card is inside this window (tests only)
SET_CODES = Codes("24681357", "97531864")


def codes_for(model) -> Codes:
    return Codes(model.pin_policy.factory_test_pin) if model.pin_mode == "preset" else SET_CODES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_deployment(root: Path, port: int):
    dep = deploy.init_deployment(root, chamber="RM", station_id="RM-STATION-01", listen=f"127.0.0.1:{port}")
    cfg = dep.server_config.read_text()
    cfg = cfg.replace("min_rsa_bits = 2048", "min_rsa_bits = 1024")
    cfg = cfg.replace("answer_wait_seconds = 2.0", "answer_wait_seconds = 0.5\nrenewal_window_days = 36500\n"
                      "retry_initial_seconds = 0.2\nretry_max_seconds = 0.5\nbreaker_failures = 1000")
    dep.server_config.write_text(cfg)
    text = dep.station_config.read_text()
    dep.station_config.write_text(text.replace("timeout_seconds = 30", "timeout_seconds = 2"))
    return dep


class ThreadedPersonalizer:
    def __init__(self, deployment):
        self.deployment = deployment
        self.cfg = pconfig.load(deployment.server_config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="personalizer", daemon=True)
        self.thread.start()
        self.daemon = None
        self.ca: FaultyCA | None = None
        self.window_closed = False
        self.start()

    def _run(self, coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        async def go():
            ca = await FaultyCA(pserver.build_ca(self.cfg)).open()
            d = await pserver.Daemon.build(self.cfg, ca=ca)
            if self.window_closed:
                d.relay.calendar = _closed_calendar()
            await d.start()
            return d, ca
        old = self.ca
        self.daemon, self.ca = self._run(go())
        if old is not None:   # keep the armed faults across a restart
            self.ca.down, self.ca.lose_answers, self.ca.refuse, self.ca.slow = \
                old.down, old.lose_answers, old.refuse, old.slow

    def stop(self) -> None:
        if self.daemon is not None:
            self._run(self.daemon.stop(0.2))
            self.daemon = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def close_window(self) -> None:
        """The CA's service window closes: issuance and renewal requests wait in the outbox."""
        self.window_closed = True
        self.daemon.relay.calendar = _closed_calendar()

    def open_window(self) -> None:
        from personalizer.outbox.windows import ServiceCalendar
        self.window_closed = False
        self.daemon.relay.calendar = ServiceCalendar(always_open=True)
        self.loop.call_soon_threadsafe(self.daemon.relay.wake)

    def request_state(self, request_id: str) -> str | None:
        rec = self._run(self.daemon.store.get_request(request_id))
        return rec.state if rec is not None else None

    @property
    def running(self) -> bool:
        return self.daemon is not None

    def issued(self) -> dict[str, bytes]:
        """request id → certificate DER, from the CA's own index."""
        db = self.cfg.ca.issuing_cert.parent / "ca.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            return {r[0]: r[1] for r in c.execute("SELECT request_id, certificate_der FROM certificates")}


def _closed_calendar():
    from personalizer.outbox.windows import ServiceCalendar
    return ServiceCalendar(hours={d: None for d in range(7)}, national_holidays=False)


def station_for(deployment):
    import station_config
    return station_config.load(deployment.station_config)


async def personalize(station, journal: Journal, card, model):
    async with PersonalizerClient(station) as uplink:
        p = Personalizer(journal=journal, uplink=uplink, requester=REQUESTER,
                         card_admin=CardAdminClient(uplink).for_operation("personalize", REQUESTER))
        return await p.start(connect=connect_to(card), reader="in-process", model=model, holder=HOLDER,
                             codes=codes_for(model))


def renewer(journal, uplink, **kw) -> Renewer:
    kw.setdefault("policy", WIDE)
    return Renewer(journal=journal, uplink=uplink, requester=REQUESTER,
                   card_admin=kw.pop("card_admin", None) or CardAdminClient(uplink).for_operation("renew", REQUESTER),
                   **kw)


async def renew(station, journal: Journal, card, model, codes=None, **kw):
    async with PersonalizerClient(station) as uplink:
        return await renewer(journal, uplink, **kw).start(connect=connect_to(card), reader="in-process",
                                                          model=model, codes=codes or codes_for(model))


async def recover(station, journal: Journal, card, model, codes=None, **kw):
    """What the agent does on start or card insert: resume every open operation of the card, no PIN."""
    ops = await journal.open_operations(card.serial)
    if not ops:
        return None
    async with PersonalizerClient(station) as uplink:
        return await renewer(journal, uplink, **kw).resume(ops[0], connect=connect_to(card), model=model,
                                                           codes=codes)


def card_view(card, model, pin: str | None = None) -> dict:
    """The card as a user finds it: per keyset the live certificate and whether its key signs for it."""
    if not card.powered:
        card.power_on()
    card.power_off()
    card.power_on()
    cns = CnsSession(EmulatedTransport(card), model)
    issuer = IssuerSession(cns, model)
    out = {f"pin_tries_{ks.name}": cns.pin_tries_left(ks.name) for ks in model.keysets}
    for ks in model.keysets:
        der = issuer.read_ef(ks.cert_path)
        cert = x509.load_der_x509_certificate(der)
        live = issuer.read_public_key(ks.key_ref)
        ok = live is not None and live.public_numbers() == cert.public_key().public_numbers()
        if pin is not None and ok:
            cns.verify_pin(pin, ks.name)
            block = pkcs1_v15_sha256_block(b"user check", (cert.public_key().key_size + 7) // 8)
            sig = issuer.raw_sign(ks, ks.key_ref, block)
            cert.public_key().verify(sig, b"user check", padding.PKCS1v15(), hashes.SHA256())
        out[ks.name] = {"der": der, "serial": cert.serial_number, "key_matches": ok,
                        "spare_key": issuer.read_public_key(ks.spare_key_ref) is not None,
                        "spare_cert": issuer.read_ef(ks.spare_cert_path) is not None}
    if model.paths.renewal_marker:
        out["marker_clear"] = not any(cns.read_file(model.paths.renewal_marker))
    card.power_off()
    card.power_on()
    return out


__all__ = ["ThreadedPersonalizer", "FaultyCA", "make_deployment", "free_port", "station_for", "personalize", "renew",
           "recover", "card_view", "codes_for", "HOLDER", "REQUESTER", "WIDE"]
