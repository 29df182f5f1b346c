"""The agent as a user runs it: ``cns-agent run`` as an unprivileged user against a
private pcscd + vpcd, cards from ``cns-emulator serve`` and a raw vpcd card,
observed through ``cns-agent devices --json`` and ``cns-agent watch --json``."""
from __future__ import annotations

import os
import stat
import subprocess

import pytest

from tests.conftest import require
from tests.support.vpcd import RawCard

from tests.agent.support import (
    BIN,
    AgentUnderTest,
    Emulator,
    allow_traverse,
    as_user,
    ensure_test_user,
    raw_vpcd_card,
    wait_for,
)

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
        raw.stop()
    agent.wait_reader(R1, lambda r: not r["card_present"])


def test_client_without_agent_says_so(pcscd, tmp_path):
    other = AgentUnderTest(pcscd.env, ensure_test_user())
    try:
        res = other.cli("devices", "--json", check=False)
        assert res.returncode == 1 and "no agent is running" in res.stderr and "Traceback" not in res.stderr
    finally:
        other.cleanup()


def test_blank_card_inserted_removed_reinserted(agent, pcscd, tmp_path):
    emu = Emulator(pcscd.env, PROFILE, pcscd.vpcd_address(0), state=tmp_path / "blank.json").start()
    try:
        c = card(agent.wait_reader(R0, lambda r: r["card_present"] and r["card"]["state"] != "reading"))
        assert c["state"] == "ready" and c["supported"] and c["model_id"] == PROFILE, c
        assert len(c["serial"]) == 16 and c["blank"] and c["holder_label"] == ""
        serial = c["serial"]
        emu.stop()
        agent.wait_reader(R0, lambda r: not r["card_present"])
        emu.start()
        c = card(agent.wait_reader(R0, lambda r: r["card_present"] and r["card"]["state"] == "ready"))
        assert c["serial"] == serial  # the same card (state file) came back
    finally:
        emu.stop()
    agent.wait_reader(R0, lambda r: not r["card_present"])


def test_personalized_card_shows_its_holder(agent, pcscd, tmp_path):
    from firmware_profiles import load_models
    from tests.support.emulated import personalized_card
    from tests.agent.test_cns_emulated import HOLDER

    state = tmp_path / "mario.json"
    personalized_card(load_models()[PROFILE], HOLDER, state_path=state).power_off()
    emu = Emulator(pcscd.env, PROFILE, pcscd.vpcd_address(0), state=state).start()
    try:
        c = card(agent.wait_reader(R0, lambda r: r["card_present"] and r["card"]["state"] == "ready"))
        assert c["holder_label"] == "MARIO ROSSI" and not c["blank"]
        table = agent.cli("devices").stdout
        assert "MARIO ROSSI" in table and PROFILE not in table  # the human view shows the model's name
    finally:
        emu.stop()
    agent.wait_reader(R0, lambda r: not r["card_present"])


def test_card_pulled_mid_read_is_reported_then_read_on_reinsertion(agent, pcscd, tmp_path):
    seen = len(agent.events)
    emu = Emulator(pcscd.env, PROFILE, pcscd.vpcd_address(0), state=tmp_path / "pulled.json",
                   faults=("drop:ins=B0,nth=2",), reinsert_after=1.0).start()
    try:
        c = card(agent.wait_reader(R0, lambda r: r["card_present"] and r["card"]["state"] == "ready"))
        assert c["blank"] and len(c["serial"]) == 16
        events = [e for e in agent.events[seen:] if e.get("reader", {}).get("name") == R0]
        kinds = [(e["kind"], e.get("interrupted")) for e in events]
        assert ("card_removed", True) in kinds, [e["reader"]["card"]["error"] for e in events if e["kind"] == "card_error"]
        pulled = kinds.index(("card_removed", True))
        assert kinds[pulled - 1][0] == "card_inserted" and kinds[-1][0] == "card_read", kinds
        assert agent.proc.poll() is None  # the agent lives on
    finally:
        emu.stop()
    agent.wait_reader(R0, lambda r: not r["card_present"])


class GarbageCard(RawCard):
    """A known CNS ATR whose files make no sense: SELECT answers 9000, READ BINARY 5 bytes + 6282."""

    def transmit(self, apdu: bytes) -> bytes:
        return b"\x01\x02\x03\x04\x05\x62\x82" if apdu[1] == 0xB0 else b"\x90\x00"


def test_malformed_answers_are_a_card_error_not_a_crash(agent, pcscd):
    from firmware_profiles import load_models
    from tests.support.vpcd import insert

    bridge = insert(pcscd.vpcd_address(1), GarbageCard(load_models()[PROFILE].atr))
    try:
        c = card(agent.wait_reader(R1, lambda r: r["card_present"] and r["card"]["state"] != "reading"))
        assert c["state"] == "error" and c["model_id"] == PROFILE and "EF_IDCarta" in c["error"], c
        assert agent.proc.poll() is None
    finally:
        bridge.stop()
    agent.wait_reader(R1, lambda r: not r["card_present"])


def test_agent_refuses_a_runtime_dir_owned_by_someone_else(pcscd):
    ids = ensure_test_user()
    if ids is None:
        require(["root, to hand the directory to another user (CI runs as root)"])
    other = AgentUnderTest(pcscd.env, ids)
    try:
        (other.runtime / "cns-agent").mkdir(mode=0o700)  # owned by root, not by the test user
        res = subprocess.run(as_user(ids, [str(BIN / "cns-agent"), "run"]), env=other.env, cwd="/",
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 1 and "refusing to start" in res.stderr and "Traceback" not in res.stderr
    finally:
        other.cleanup()


def test_agent_survives_pcscd_restart(pcscd, tmp_path):
    """pcscd stops: readers vanish and info says so; pcscd comes back: readers return, agent never died."""
    from tests.support.pcscd import start_pcscd

    own = start_pcscd(tmp_path / "own-pcscd")
    allow_traverse(own.socket_path.parent)
    ids = ensure_test_user()
    agent = AgentUnderTest(own.env, ids)
    try:
        agent.start()
        agent.wait_reader(R0, lambda r: True)
        own.stop()
        wait_for(lambda: agent.devices()["readers"] == [], 15, lambda: f"readers not cleared: {agent.log_text()}")
        assert "unavailable" in agent.cli("info").stdout
        own = start_pcscd(tmp_path / "own-pcscd")  # same socket path, new vpcd ports
        allow_traverse(own.socket_path.parent)
        agent.wait_reader(R0, lambda r: not r["card_present"], timeout=20)
        assert agent.proc.poll() is None
    finally:
        rc = agent.stop()
        own.stop()
        agent.cleanup()
    assert rc == 0
