"""A bounded sample of ``scripts/bench renew-faults``: randomized faults at random renewal steps,
recovery without the PIN, then the card checked as a user needs it (see benchmarks/renew_faults.py)."""
from __future__ import annotations

from benchmarks import renew_faults


def test_randomized_renewal_faults_never_leave_a_card_unusable():
    result = renew_faults.main(["--trials", "90", "--seed", "20261123", "--workers", "1"])
    assert result["trials"] == 90
    assert result["devices_unusable"] == 0, result["problems"]
    assert result["duplicate_issuances"] == 0, result["problems"]
    assert result["ok"]
    assert result["ended_old"] > 0 and result["ended_new"] > 0      # both ways out were exercised
    # a card renews again after a renewal (from its new certificates): more renewals end new than there are
    # cards. Renewing each card's first snapshot again was refused by the personalizer (superseded), so at
    # most one trial per card could end new and the rest tested that refusal (32 new of 10,000 trials)
    assert result["ended_new"] > renew_faults.CARDS, result
    assert sum(result["trials_per_kind"].values()) == 90 and min(result["trials_per_kind"].values()) > 0


def test_randomized_holder_self_renewal_faults_never_leave_a_card_unusable():
    """``--holder``: the same faults over the holder's path (HolderUplink and the card's proof to the SelfRenewal
    rules, recovery by running ``renew --self`` again); every request recorded as the holder's."""
    result = renew_faults.main(["--trials", "20", "--seed", "20261204", "--workers", "1", "--holder"])
    assert result["trials"] == 20 and result["path"].startswith("holder self-renewal")
    assert result["devices_unusable"] == 0, result["problems"]
    assert result["duplicate_issuances"] == 0, result["problems"]
    assert result["requests_not_the_holders"] == 0, result["problems"]
    assert result["ok"]
    # old only when the CA refused before both requests were answered (the holder's rerun has the PIN)
    assert result["ended_old"] > 0 and result["ended_new"] > 0
    assert sum(result["trials_per_kind"].values()) == 20 and min(result["trials_per_kind"].values()) > 0
