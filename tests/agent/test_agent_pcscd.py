"""The agent as a user runs it: ``cns-agent run`` as an unprivileged user against a
private pcscd + vpcd, cards from ``cns-emulator serve`` and a raw vpcd card,
observed through ``cns-agent devices --json`` and ``cns-agent watch --json``."""
from __future__ import annotations

import os
import stat

import pytest

from tests.agent.support import AgentUnderTest, Emulator, allow_traverse, raw_vpcd_card, ensure_test_user, wait_for

pytestmark = pytest.mark.pcscd

R0, R1 = "Virtual PCD 00 00", "Virtual PCD 00 01"
UNKNOWN_ATR = bytes.fromhex("3B0214 50".replace(" ", ""))
PROFILE = "infocamere-cns-2048"


@pytest.fixture(scope="module")
def agent(pcscd):
    allow_traverse(pcscd.socket_path.parent)
    under_test = AgentUnderTest(pcscd.env, ensure_test_user())
    under_test.start()
    under_test.wait_reader(R0, lambda r: True)
    under_test.start_watch()
    yield under_test
    rc = under_test.stop()
    log = under_test.log_text()
    under_test.cleanup()
    assert rc == 0, f"agent did not stop cleanly (rc {rc}):\n{log}"


def card(reader: dict) -> dict:
    assert reader["card_present"], reader
    return reader["card"]


def test_socket_is_private_and_owned_by_the_user(agent):
    st = os.stat(agent.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(agent.socket.parent).st_mode) == 0o700
    if agent.ids:
        assert (st.st_uid, st.st_gid) == agent.ids
    info = agent.cli("info").stdout
    assert '"pcsc": "ok"' in info and PROFILE in info


def test_empty_readers_are_listed(agent):
    names = {r["name"]: r for r in agent.devices()["readers"]}
    assert set(names) >= {R0, R1}
    assert not names[R1]["card_present"]


def test_unknown_atr_is_listed_as_unsupported(agent, pcscd):
    raw = raw_vpcd_card(pcscd.vpcd_address(1), UNKNOWN_ATR)
    try:
        c = card(agent.wait_reader(R1, lambda r: r["card_present"]))
        assert c["state"] == "unsupported" and not c["supported"] and c["atr"] == UNKNOWN_ATR.hex().upper()
        assert c["model_id"] == "" and c["serial"] == ""
    finally:
        raw.remove()
    agent.wait_reader(R1, lambda r: not r["card_present"])


def test_client_without_agent_says_so(pcscd, tmp_path):
    other = AgentUnderTest(pcscd.env, ensure_test_user())
    try:
        res = other.cli("devices", "--json", check=False)
        assert res.returncode == 1 and "no agent is running" in res.stderr and "Traceback" not in res.stderr
    finally:
        other.cleanup()
