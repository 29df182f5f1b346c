"""Issue 9 items 2 and 4 (personalization side): a request central IT cancels while the CA is closed.

A real daemon of its own deployment whose service window is closed today (``closed_dates``), then
reopened by a restart with ``always_open``; ``cnsctl queue cancel`` as central IT runs it. The card is
emulated in process behind ``StationOps`` (the agent's per-station object).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import zoneinfo

import pytest

from agent.card.cns import CnsSession
from agent.card.issuer import IssuerSession
from agent.ops.errors import UplinkUnavailable
from agent.ops.journal import Journal
from agent.ops.personalize import Personalizer
from agent.ops.station import StationOps
from agent.uplink.client import PersonalizerClient
from agent.uplink.card_admin import CardAdminClient
from firmware_profiles.emulator import EmulatedCard
from personalizer import deploy
from tests.support.emulated import EmulatedTransport, connect_reader
from tests.ops.conftest import station_config_for
from tests.ops.test_personalize import HOLDER, MODELS, REQUESTER, codes_for
from tests.personalizer import helpers

MODEL = MODELS["infocamere-cns-2048"]


def _closed_today(server_config) -> None:
    today = dt.datetime.now(zoneinfo.ZoneInfo("Europe/Rome")).date()
    days = ", ".join(f'"{today + dt.timedelta(days=n)}"' for n in (0, 1))
    text = server_config.read_text().replace("always_open = true", f"closed_dates = [{days}]")
    server_config.write_text(text.replace("min_rsa_bits = 2048", "min_rsa_bits = 1024"))


def _open_always(server_config) -> None:
    text = server_config.read_text()
    server_config.write_text(text[:text.index("closed_dates")] + "always_open = true" +
                             text[text.index("]", text.index("closed_dates")) + 1:])


@pytest.fixture
def closed_deployment(tmp_path_factory):
    dep = deploy.init_deployment(tmp_path_factory.mktemp("closed") / "cns", chamber="RM",
                                 station_id="RM-STATION-01", listen="127.0.0.1:0")
    _closed_today(dep.server_config)
    daemons = [helpers.DaemonProcess(dep.server_config)]
    yield dep, daemons
    for d in daemons:
        if d.proc.poll() is None:
            d.stop()


def _cnsctl(dep, port, *args):
    cfg = dep.admin_config.with_name(f"admin-{port}.toml")
    cfg.write_text(dep.admin_config.read_text().replace(':0"', f':{port}"'))
    return subprocess.run([str(helpers.VENV_BIN / "cnsctl"), "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=60)


class UnreachableForRevoke:
    """A mock of a network cut that hits only status changes: the real uplink for everything else."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def change_status(self, *a, **kw):
        raise UplinkUnavailable("personalizer: revoke: UNAVAILABLE: connection reset (mock)", code="UNAVAILABLE")


def test_cancelled_request_undoes_the_card_and_revokes_the_issued_certificate(closed_deployment, tmp_path):
    dep, daemons = closed_deployment
    card = EmulatedCard(MODEL)
    codes = codes_for(MODEL)
    messages: list[str] = []

    async def personalize_while_closed():
        cfg = station_config_for(dep, daemons[0].port)
        journal = await Journal.open(tmp_path / "j.db")
        uplink = PersonalizerClient(cfg)
        ops = StationOps(cfg, journal, watch_timeout_s=30, uplink=uplink)
        reopened: list[str] = []
        ops.on_open = reopened.append
        try:
            t0 = asyncio.get_running_loop().time()
            out = await ops.personalize(connect=connect_reader(card), reader="r0", model=MODEL, holder=HOLDER, codes=codes,
                                        progress=lambda step, msg: messages.append(msg))
            took = asyncio.get_running_loop().time() - t0
            return out, took, reopened, ops.device_lock("r0").locked()
        finally:
            await uplink.close()
            await journal.close()

    out, took, reopened, locked = asyncio.run(personalize_while_closed())
    # item 4: not waited for with the card held; the operator is told the CA is closed and when it reopens
    assert out.state == "open" and took < 15, (out.message, took)
    assert "CA is closed" in out.message and "outside the CA service window" in out.message
    assert "reopens at" in out.message and "you may take it out" in out.message
    assert reopened == ["r0"] and not locked
    rids = {ks.name: f"pers-{out.op_id}-{ks.name}" for ks in MODEL.keysets}

    # central IT cancels the signature request; the CA reopens (daemon restarted with the window open)
    res = _cnsctl(dep, daemons[0].port, "queue", "cancel", rids["CNS1"])
    assert res.returncode == 0, res.stderr
    daemons[0].stop()
    _open_always(dep.server_config)
    daemons.append(helpers.DaemonProcess(dep.server_config))
    cfg = station_config_for(dep, daemons[-1].port)

    async def resume(uplink_wrap=None):
        journal = await Journal.open(tmp_path / "j.db")
        try:
            [op] = await journal.open_operations()
            async with PersonalizerClient(cfg) as uplink:
                p = Personalizer(journal=journal, uplink=uplink_wrap(uplink) if uplink_wrap else uplink,
                                 requester=REQUESTER, card_admin=CardAdminClient(uplink).for_operation("personalize", REQUESTER),
                                 watch_timeout_s=30)
                return await p.resume(op, connect=lambda: connect_reader(card)("r0"), model=MODEL), \
                    await journal.history(op.op_id)
        finally:
            await journal.close()

    async def status_of(request_id):
        async with PersonalizerClient(cfg) as uplink:
            return await uplink.certificate_status(request_id=request_id)

    # the undo is interrupted while revoking (network cut): the card is blank, the operation stays open
    first, _ = asyncio.run(resume(UnreachableForRevoke))
    assert first.state == "open" and "blank again" in first.message and "retries" in first.message
    assert asyncio.run(status_of(rids["CNS0"])).status == 1             # still active: not yet revoked
    # the next attempt (agent restart, reinsert) finishes the undo and revokes what was issued
    final, history = asyncio.run(resume())
    assert final.state == "undone", final.message
    assert "cancelled" in final.message and "revoked" in final.message
    st = asyncio.run(status_of(rids["CNS0"]))
    assert st.status == 3 and st.revocation_reason == "cessationOfOperation"
    assert ("revoke-orphans", "done") in [(s, p) for s, p, _ in history]
    # a blank card again: no certificate file (never a 0-byte one), no key, EF_DatiPersonali cleared
    card.power_off()
    card.power_on()
    cns = CnsSession(EmulatedTransport(card), MODEL)
    issuer = IssuerSession(cns, MODEL)
    assert all(issuer.read_ef(ks.cert_path) is None for ks in MODEL.keysets)
    assert all(issuer.read_public_key(ks.key_ref) is None for ks in MODEL.keysets)
    assert not any(cns.read_file(MODEL.paths.dati_personali))
