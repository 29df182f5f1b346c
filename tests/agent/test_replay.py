"""APDU recordings: saved as JSON lines with PIN data redacted, replayed through the transport seam.

The committed recordings (tests/fixtures/apdu/, made by ``scripts/record-apdus``):

- ``personalization.jsonl`` / ``renewal.jsonl``: the agent's card layer driving an
  in-process emulated card; replayed here through ``ReplayTransport`` under the
  same card layer, with the recorded CA answers, and every command must match.
- ``opensc-read.jsonl``: what ``pkcs15-tool`` sent through pcscd + vpcd to a
  personalized emulated card (the emulator's card-side log); replayed against a
  fresh emulated card restored to the same state, every answer must match.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.card.errors import CardRemovedError
from agent.card.transport import Recording, RecordingError, RecordingTransport, ReplayDivergence, ReplayTransport
from firmware_profiles import load_models
from firmware_profiles.emulator import CardRemovedError as EmuRemoved
from firmware_profiles.emulator import EmulatedCard
from tests.support.emulated import EmulatedTransport
from tests.support import replay

FIXTURES = replay.FIXTURES
MODEL = load_models()[replay.MODEL_ID]
OTHER_PIN = "13572468"  # same length as the recorded one: PIN data is redacted, any PIN of that length replays


def _certs(rec: Recording):
    certs = {k: bytes.fromhex(v) for k, v in rec.meta["inputs"]["certs"].items()}

    def issue(ks_name: str, csr: bytes) -> bytes:
        assert csr.hex() == rec.meta["outputs"]["csrs"][ks_name], f"{ks_name}: another CSR than recorded"
        return certs[ks_name]
    return issue


def _replay_personalization(rec: Recording, **overrides) -> tuple[dict, ReplayTransport]:
    transport = ReplayTransport(rec)
    kw = dict(dati_personali=bytes.fromhex(rec.meta["inputs"]["dati_personali"]), pin=OTHER_PIN,
              puk="86420975", issue=_certs(rec))
    kw.update(overrides)
    out = replay.personalize_flow(transport, MODEL, **kw)
    return out, transport


# ------------------------------------------------------------------------------- the committed recordings
def test_the_personalization_recording_replays_through_the_card_layer():
    rec = Recording.load(FIXTURES / "personalization.jsonl")
    assert rec.meta["kind"] == "personalization" and rec.meta["model"] == MODEL.id
    out, transport = _replay_personalization(rec)
    transport.finish()                       # every recorded exchange was sent, in order
    assert out == rec.meta["outputs"]        # the same keys, CSRs and test signatures came back


def test_a_personalization_with_other_holder_data_diverges_at_its_update_binary():
    rec = Recording.load(FIXTURES / "personalization.jsonl")
    other = bytes.fromhex(rec.meta["inputs"]["dati_personali"]).replace(b"MARIO", b"LUIGI")
    with pytest.raises(ReplayDivergence) as exc:
        _replay_personalization(rec, dati_personali=other)
    line = next(e.line for e in rec.exchanges if e.command.startswith("00d6") and b"MARIO".hex() in e.command)
    assert f"personalization.jsonl:{line}: sent 00d6" in str(exc.value)


def test_the_renewal_recording_replays_through_the_card_layer():
    rec = Recording.load(FIXTURES / "renewal.jsonl")
    assert rec.meta["kind"] == "renewal"
    transport = ReplayTransport(rec)
    out = replay.renew_flow(transport, MODEL, pin=OTHER_PIN, issue=_certs(rec))
    transport.finish()
    assert out == rec.meta["outputs"] and out["holder"] == "MARIO ROSSI"


def test_a_renewal_that_stops_early_leaves_recorded_exchanges_unsent():
    rec = Recording.load(FIXTURES / "renewal.jsonl")
    transport = ReplayTransport(rec)
    assert replay.CnsSession(transport, MODEL).read_serial() == rec.meta["outputs"]["serial"]  # then stops
    with pytest.raises(ReplayDivergence, match=r"renewal\.jsonl:\d+: \d+ recorded exchange\(s\) never sent"):
        transport.finish()


def _opensc_card() -> tuple[EmulatedCard, Recording]:
    rec = Recording.load(FIXTURES / "opensc-read.jsonl")
    card = EmulatedCard(MODEL)
    card.restore(json.loads((FIXTURES / rec.meta["card_state"]).read_text()))
    return card, rec


def test_what_opensc_read_through_pcscd_replays_against_a_card_in_the_same_state():
    card, rec = _opensc_card()
    assert rec.meta["commands"][0] == "pkcs15-tool --dump"
    assert replay.replay_against_card(card, rec) == len(rec.exchanges) > 50


def test_a_card_in_another_state_diverges_from_the_opensc_recording():
    _card, rec = _opensc_card()
    with pytest.raises(ReplayDivergence, match=r"opensc-read\.jsonl:\d+: the card answered"):
        replay.replay_against_card(EmulatedCard(MODEL), rec)   # a blank card: no PKCS#15 application


# ------------------------------------------------------------------------------- format and errors
def _personalized_card():
    card = EmulatedCard(MODEL)
    card.power_on()
    return card, EmulatedTransport(card, (EmuRemoved,))


def test_a_saved_recording_holds_no_pin_and_loads_back(tmp_path):
    card, transport = _personalized_card()
    rec = RecordingTransport(transport)
    replay.personalize_flow(rec, MODEL, dati_personali=replay.dati_personali(), pin="24681357", puk="97531864",
                            issue=replay._test_ca_issue({}))
    path = tmp_path / "r.jsonl"
    rec.save(path, {"kind": "test"})
    text = path.read_text()
    for secret in ("24681357", "97531864"):
        assert secret.encode().hex() not in text and secret not in text
    loaded = Recording.load(path)
    assert loaded.meta == {"kind": "test"} and len(loaded.exchanges) == len(rec.exchanges)
    assert any("**" in e.command for e in loaded.exchanges)
    assert all(json.loads(line).keys() == {"c", "r"} for line in text.splitlines()[1:])


def test_replay_names_the_line_of_a_divergent_command(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"c": "00a4000c023f00", "r": "9000"}\n{"c": "00b0000010", "r": "00119000"}\n')
    t = ReplayTransport(path)
    assert t.transmit(bytes.fromhex("00a4000c023f00")) == (b"", 0x9000)
    with pytest.raises(ReplayDivergence, match=r"first difference at byte 7"):
        ReplayTransport(path).transmit(bytes.fromhex("00a4000c023f0000"))   # one byte longer
    with pytest.raises(ReplayDivergence, match=rf"{path}:2: sent 00b0000020, the recording has 00b0000010 \(first difference at byte 4\)"):
        t.transmit(bytes.fromhex("00b0000020"))


def test_replay_past_the_end_and_a_recorded_removal(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"t": 1.5, "c": "0020008108****************", "r": null}\n')
    t = ReplayTransport(path)
    with pytest.raises(CardRemovedError, match=r"r\.jsonl:1: the card went away"):
        t.transmit(bytes.fromhex("0020008108") + b"12345678")
    with pytest.raises(ReplayDivergence, match="after the recording's last exchange"):
        t.transmit(bytes.fromhex("00a4000c023f00"))


def test_a_card_pulled_mid_command_is_recorded_as_a_removal(tmp_path):
    card = EmulatedCard(MODEL, faults=["drop:ins=B0"])
    card.power_on()
    rec = RecordingTransport(EmulatedTransport(card, (EmuRemoved,)))
    with pytest.raises(CardRemovedError):
        replay.CnsSession(rec, MODEL).read_file(MODEL.paths.dati_personali)
    rec.save(tmp_path / "r.jsonl")
    last = Recording.load(tmp_path / "r.jsonl").exchanges[-1]
    assert last.command.startswith("00b0") and last.response is None


@pytest.mark.parametrize("line,what", [
    ('{"c": "00a4", "r": "9000"}', "not a recorded exchange"),
    ('{"c": "00a4000c023f0g", "r": "9000"}', "command is not hex"),
    ('{"c": "00a4000c023f00", "r": "90"}', "no status word"),
    ('{"c": "00a4000c023f00"}', "not a recorded exchange"),
    ("not json", "not a recorded exchange"),
])
def test_a_broken_recording_is_refused_naming_file_and_line(tmp_path, line, what):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"c": "00a4000c023f00", "r": "9000"}\n' + line + "\n")
    with pytest.raises(RecordingError, match=rf"bad\.jsonl:2: .*{what}"):
        Recording.load(path)


def test_a_missing_recording_is_one_clear_error(tmp_path):
    with pytest.raises(RecordingError, match="cannot read recording .*nope.jsonl"):
        Recording.load(tmp_path / "nope.jsonl")


def test_the_fixtures_are_small():
    for path in Path(FIXTURES).iterdir():
        assert path.stat().st_size < 64_000, path
