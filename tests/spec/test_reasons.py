"""Revocation reasons have one home (cns_spec.reasons): RFC 5280's names and codes, cryptography's flags, and the
same list offered by the agent's CLI and accepted by the agent's operations and the personalizer's rules."""
from __future__ import annotations

import pytest
from cryptography import x509

from cns_spec import reasons

# RFC 5280 §5.3.1, written out here independently of the code under test.
RFC5280 = {"unspecified": 0, "keyCompromise": 1, "cACompromise": 2, "affiliationChanged": 3, "superseded": 4,
           "cessationOfOperation": 5, "certificateHold": 6, "removeFromCRL": 8, "privilegeWithdrawn": 9,
           "aACompromise": 10}


def test_codes_are_rfc_5280s():
    assert reasons.CRL_REASON_CODES == RFC5280


def test_every_name_round_trips_through_cryptographys_flags_and_the_crl_extension():
    assert {f.value for f in x509.ReasonFlags} == set(reasons.CRL_REASON_CODES)
    for name, code in reasons.CRL_REASON_CODES.items():
        flag = x509.ReasonFlags(name)
        assert flag.value == name
        ext = x509.CRLReason(flag)
        assert ext.reason is flag
        # the DER of the CRLReason extension is ENUMERATED <code>
        assert ext.public_bytes() == bytes([0x0A, 0x01, code]), name


def test_revocation_reasons_exclude_hold_and_remove_from_crl():
    assert set(reasons.REVOCATION_REASONS) == set(RFC5280) - {"certificateHold", "removeFromCRL"}
    assert reasons.REVOCATION_REASONS[0] == reasons.DEFAULT_REASON == "unspecified"


@pytest.mark.parametrize("given, expected", [("", "unspecified"), ("keyCompromise", "keyCompromise"),
                                             ("aACompromise", "aACompromise")])
def test_check_accepts_the_known_reasons(given, expected):
    assert reasons.check_revocation_reason(given) == expected


@pytest.mark.parametrize("given", ["certificateHold", "removeFromCRL", "keycompromise", "stolen", " superseded"])
def test_check_refuses_anything_else_naming_the_known_ones(given):
    with pytest.raises(ValueError, match="unknown revocation reason.*one of unspecified, keyCompromise"):
        reasons.check_revocation_reason(given)


def test_agent_and_personalizer_use_the_one_list():
    from agent.commands import lifecycle as cli
    from agent.ops import lifecycle as ops
    from personalizer.rules import lifecycle as rules
    from personalizer.ca import reasons as ca_reasons
    from personalizer.errors import InvalidRequest

    assert cli.REASONS is ops.REASONS is reasons.REVOCATION_REASONS
    assert ca_reasons.PERMANENT_REASONS == {x509.ReasonFlags(n) for n in reasons.REVOCATION_REASONS}
    assert ca_reasons.CRL_REASON_CODES == {x509.ReasonFlags(n): c for n, c in RFC5280.items()}
    assert ops.check_reason("revoke", "") == "unspecified"
    assert rules.check_reason("superseded") == "superseded"
    with pytest.raises(InvalidRequest, match="unknown revocation reason 'stolen'"):
        rules.check_reason("stolen")
    with pytest.raises(ValueError, match="unknown revocation reason 'stolen'"):
        ops.check_reason("revoke", "stolen")
