"""The conformance run (agent.conformance.checks) against emulated cards: a conforming card passes
every check; each deliberately non-conforming card fails the check of its clause, and the card is
left as it was (test key erased, PIN back, counters full)."""
from __future__ import annotations

import pytest

from agent.conformance import checks
from agent.conformance.checks import FAIL, NOT_RUN, PASS, ConformanceError
from firmware_profiles.emulator.admin import SoftwareAuthenticator
from tests.conformance.emulated import VirtualClock, card

PIN, PUK = "12345678", "87654321"


def by_id(report) -> dict:
    return {c.id: c for c in report.checks}


def run(transport, model, **kw):
    kw.setdefault("pin", PIN)
    kw.setdefault("puk", PUK)
    kw.setdefault("admin_key", SoftwareAuthenticator(model))
    return checks.run(transport, model, reader="emulated", **kw)


def test_conforming_card_with_realistic_timing_passes_everything():
    # realistic timing; key generation shortened (it is not what §5.2.1.2 times, and 25 s a key is slow)
    c, model, t = card("keygen_seconds.2048=1", "keygen_seconds.1024=0.5", timing="realistic")
    before = c.snapshot()
    report = run(t, model, samples=3)
    got = by_id(report)
    assert [k for k, v in got.items() if v.status != PASS] == ["opensc"], report.as_dict()
    assert got["opensc"].status == NOT_RUN           # in process: OpenSC cannot open it, and it says so
    assert report.conforming and report.mode.startswith("full: a blank test card")
    assert 1.3 < got["sign_time"].figures["median_seconds"] <= 4.0
    assert got["sign_time"].figures["samples"] == 3
    assert "exercised on a blank test card" in got["pin_block"].detail
    after = c.snapshot()
    assert after["keys"] == before["keys"] == {}     # the test key was erased
    assert after["pins"] == before["pins"]           # same codes, full counters


def test_slow_signature_fails_the_time_clause():
    clock = VirtualClock()
    c, model, t = card("sign_seconds.2048=4.6", timing="realistic", clock=clock)
    report = run(t, model, samples=3, clock=clock)
    got = by_id(report)
    assert got["sign_time"].status == FAIL
    assert "§5.2.1.2" in got["sign_time"].clause and "4 s" in got["sign_time"].clause
    assert got["sign_time"].figures["median_seconds"] == pytest.approx(4.6, abs=0.1)
    assert [x.id for x in report.failures] == ["sign_time"] and not report.conforming


def test_two_tries_fail_the_blocking_clause_and_the_card_is_unblocked():
    c, model, t = card("pin_tries=2")
    report = run(t, model)
    got = by_id(report)
    assert got["pin_block"].status == FAIL
    assert "blocked after 2 wrong PIN" in got["pin_block"].detail and "§5.2.1.2" in got["pin_block"].clause
    assert [x.id for x in report.failures] == ["pin_block"]
    pins = c.snapshot()["pins"]
    assert all(p["tries_left"] == p["max_tries"] for p in pins.values())
    assert {p["value"] for p in pins.values()} == {PIN, PUK}


def test_six_digit_pin_fails_the_length_clause():
    c, model, t = card("pin_length=6")
    report = run(t, model, pin="123456", puk="876543")
    got = by_id(report)
    assert got["pin_length"].status == FAIL
    assert "6 digits" in got["pin_length"].detail and "PIN and PUK of 8 digits" in got["pin_length"].clause
    assert [x.id for x in report.failures] == ["pin_length"]


def test_card_accepting_a_six_digit_new_pin_fails_and_gets_its_pin_back():
    # an 8-digit card whose policy lets the holder choose 6 digits
    import dataclasses

    c, model, t = card()
    lax = dataclasses.replace(model.pin_policy, min_length=6)
    c.model = dataclasses.replace(model, pin_policy=lax)
    report = run(t, model)
    assert by_id(report)["pin_length"].status == FAIL
    assert "accepted a 6-digit new PIN" in by_id(report)["pin_length"].detail
    assert {p["value"] for p in c.snapshot()["pins"].values()} == {PIN, PUK}


def test_small_eeprom_fails():
    c, model, t = card("eeprom_bytes=32768")
    report = run(t, model)
    assert [x.id for x in report.failures] == ["eeprom"]
    assert "32768 bytes" in by_id(report)["eeprom"].detail


def test_1024_only_card_fails_keygen_and_cannot_time_2048():
    c, model, t = card(model_id="oberthur-cns-1024")
    report = run(t, model, pin="", puk="")
    got = by_id(report)
    assert got["rsa_keygen"].status == FAIL and "RSA-2048 refused" in got["rsa_keygen"].detail
    assert got["sign_time"].status == NOT_RUN and got["pin_length"].status == NOT_RUN
    assert c.snapshot()["keys"] == {}


def test_blank_card_without_codes_yet_says_so_instead_of_failing():
    c, model, t = card(model_id="oberthur-cns-1024")     # codes are set at personalization
    report = run(t, model, pin="24681357", puk="97531864")
    got = by_id(report)
    for cid in ("pin_length", "sha256", "sign_time"):
        assert got[cid].status == NOT_RUN and "no PIN yet" in got[cid].detail, got[cid]
    assert got["pin_block"].status == NOT_RUN and "no PIN yet" in got["pin_block"].detail
    assert [x.id for x in report.failures] == ["rsa_keygen"]           # RSA-2048 refused: a real failure
    assert c.snapshot()["keys"] == {}


def test_personalized_card_gets_only_non_destructive_checks():
    from agent.card.cns import CnsSession
    from agent.card.issuer import IssuerSession
    from tests.support.emulated import admin_login

    c, model, t = card()
    s = CnsSession(t, model)          # a live CNS0 key and certificate file: not a blank card any more
    admin_login(s, model)
    IssuerSession(s, model).generate_key(model.keysets[0].key_ref)
    IssuerSession(s, model).write_ef(model.keysets[0].cert_path, b"\x30\x03\x02\x01\x01")
    before = c.snapshot()
    report = run(t, model, admin_key=None, admin_key_problem="none configured")
    got = by_id(report)
    assert report.mode.startswith("non-destructive")
    assert got["pin_block"].status == PASS and got["pin_block"].detail.startswith("non-destructive")
    assert got["rsa_keygen"].status == NOT_RUN and "none configured" in got["rsa_keygen"].detail
    assert got["sign_time"].status == PASS and "live CNS0 key" in got["sign_time"].detail
    after = c.snapshot()
    assert after["keys"] == before["keys"] and after["pins"] == before["pins"]


def test_wrong_pin_stops_the_run_with_one_line_and_no_pin_in_it():
    c, model, t = card()
    with pytest.raises(ConformanceError) as err:
        run(t, model, pin="11112222")
    assert "refused the PIN (2 tries left)" in str(err.value) and "11112222" not in str(err.value)
    assert c.snapshot()["keys"] == {}


def test_wrong_puk_stops_before_any_pin_is_blocked():
    c, model, t = card()
    with pytest.raises(ConformanceError) as err:
        run(t, model, puk="11112222")
    assert "refused the PUK" in str(err.value)
    pin_ref = f"{model.keysets[0].pin_ref:02X}"
    assert c.snapshot()["pins"][pin_ref]["tries_left"] == 3


class _WrongKey:
    """An issuer that answers every challenge with another card's key (all zeros)."""

    def cryptogram(self, *, model_id, serial, challenge, transport_key=False):
        from firmware_profiles.emulator import admin
        return admin.cryptogram(bytes(16), challenge)


def test_wrong_issuer_key_stops_the_run_before_anything_is_written():
    c, model, t = card()
    with pytest.raises(ConformanceError) as err:
        run(t, model, admin_key=_WrongKey())
    assert "refused the issuer key" in str(err.value)
    assert c.snapshot()["keys"] == {}


class Nonsense:
    """A transport whose card answers garbage to one instruction (after the card really ran it)."""

    def __init__(self, inner, ins: int, answer: bytes, sw: int = 0x9000, p1: int | None = None):
        self.inner, self.ins, self.answer, self.sw, self.p1 = inner, ins, answer, sw, p1

    def transmit(self, apdu: bytes):
        data, sw = self.inner.transmit(apdu)
        if apdu[1] == self.ins and self.p1 in (None, apdu[2]):
            return self.answer, self.sw
        return data, sw


@pytest.mark.parametrize("ins,p1,answer,check", [
    (0x46, 0x00, b"\x7f\x49\x05\x81\x01\x07\x82", "rsa_keygen"),   # GENERATE (the key IS made): truncated answer
    (0x46, 0x01, b"\x7f\x49\x02\x81\x00", "rsa_keygen"),            # reading the spare slot: nonsense
    (0xCA, None, b"\x00\x01", "eeprom"),                             # GET DATA: 2 bytes instead of 12
    (0x2A, None, b"\x01\x02\x03", "sha256"),                         # PSO: a 3-byte "signature"
])
def test_nonsense_answer_fails_its_check_clearly_and_nothing_is_left_half_written(ins, p1, answer, check):
    c, model, t = card()
    before = c.snapshot()
    report = run(Nonsense(t, ins, answer, p1=p1), model)
    got = by_id(report)
    assert got[check].status == FAIL and "the card answered" in got[check].detail, got[check]
    assert "Traceback" not in got[check].detail and "\n" not in got[check].detail
    after = c.snapshot()
    assert after["keys"] == {} and after["pins"] == before["pins"]   # test key erased, PIN counters full
    assert report.left_on_card == []


def test_card_answering_nonsense_to_its_serial_is_refused_before_anything_is_written():
    c, model, t = card()
    before = c.snapshot()
    with pytest.raises(ConformanceError) as err:
        run(Nonsense(t, 0xB0, b"\x00\xff" * 8, 0x9000), model)
    assert "does not answer as a CNS card" in str(err.value) and "nothing was written" in str(err.value)
    assert c.snapshot() == before


def test_cancel_mid_run_cleans_up_and_says_so():
    c, model, t = card()
    seen = []

    def progress(step, message):
        seen.append(step)

    with pytest.raises(checks.Cancelled) as err:
        run(t, model, progress=progress, cancelled=lambda: "sha256" in seen)   # after keygen made a key
    assert "cancelled" in str(err.value) and "put back" in str(err.value)
    assert "rsa_keygen" in seen and "sign_time" not in seen
    assert c.snapshot()["keys"] == {}
    assert all(p["tries_left"] == p["max_tries"] for p in c.snapshot()["pins"].values())


@pytest.mark.slow
def test_conforming_card_with_full_realistic_timing_passes():
    # key generation as the model states it (6 s and 25 s): about 45 s of card time
    c, model, t = card(timing="realistic")
    report = run(t, model, samples=5)
    assert [x.id for x in report.checks if x.status != PASS] == ["opensc"] and report.conforming
    assert report.checks[3].figures["keygen_2048_seconds"] >= 25


def _key_in_spare_slot(c, model, t, marker: bytes):
    from agent.card.cns import CnsSession
    from agent.card.issuer import IssuerSession
    from tests.support.emulated import admin_login
    s = CnsSession(t, model)
    admin_login(s, model)
    IssuerSession(s, model).generate_key(model.keysets[0].spare_key_ref)
    s.update_binary(model.paths.renewal_marker, marker)


def test_a_test_key_left_by_a_pulled_card_is_erased_by_the_next_run():
    c, model, t = card()
    _key_in_spare_slot(c, model, t, bytes(64))
    report = run(t, model)
    got = by_id(report)
    assert got["rsa_keygen"].status == PASS and "stale key in the spare slot 02 erased" in got["rsa_keygen"].detail
    assert c.snapshot()["keys"] == {}


def test_the_key_of_a_renewal_in_progress_is_never_touched():
    c, model, t = card()
    _key_in_spare_slot(c, model, t, b"CNSRENEW" + bytes(range(16)) + bytes(40))
    key_before = c.snapshot()["keys"]
    report = run(t, model)
    got = by_id(report)
    assert got["rsa_keygen"].status == NOT_RUN and "renewal in progress" in got["rsa_keygen"].detail
    assert c.snapshot()["keys"] == key_before


def test_card_pulled_mid_run_one_line_then_the_next_run_cleans_up():
    c, model, t = card(faults=["drop:ins=2A"])           # pulled as the card is about to sign
    with pytest.raises(ConformanceError) as err:
        run(t, model)
    assert str(err.value).startswith("the card left emulated during the run")
    assert "erased by the next conformance run" in str(err.value)
    assert c.snapshot()["keys"] != {}                     # the test key is still there: the card was gone
    c.power_on()
    report = run(t, model, samples=1)
    assert report.conforming
    assert "stale key" in by_id(report)["rsa_keygen"].detail and c.snapshot()["keys"] == {}
