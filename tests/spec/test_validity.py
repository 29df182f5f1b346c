"""Validity and device-life arithmetic (cns_spec.validity), one rule for the agent's pre-check and the
personalizer's renewal check: add_years around 29 February, and the renewal window's and the device life's edges."""
from __future__ import annotations

import datetime as _dt

import pytest

from cns_spec import validity

UTC = _dt.timezone.utc


def t(y, m, d, hh=0, mm=0):
    return _dt.datetime(y, m, d, hh, mm, tzinfo=UTC)


@pytest.mark.parametrize("start, years, expected", [
    (t(2024, 2, 29, 10, 30), 6, t(2030, 2, 28, 10, 30)),   # leap day → 28 February
    (t(2024, 2, 29), 4, t(2028, 2, 29)),                   # leap to leap keeps the 29th
    (t(2024, 2, 29), 1, t(2025, 2, 28)),
    (t(2023, 2, 28), 1, t(2024, 2, 28)),                   # never moves to the 29th
    (t(2023, 3, 1), 1, t(2024, 3, 1)),
    (t(2025, 12, 31, 23, 59), 6, t(2031, 12, 31, 23, 59)),
    (t(2025, 1, 1), 0, t(2025, 1, 1)),
])
def test_add_years(start, years, expected):
    assert validity.add_years(start, years) == expected


def test_the_window_opens_exactly_window_before_expiry():
    expiry = t(2027, 6, 1, 12)
    assert validity.renewal_opens(expiry, _dt.timedelta(days=90)) == t(2027, 3, 3, 12)


@pytest.mark.parametrize("now, new_validity, outlives", [
    (t(2029, 2, 28), _dt.timedelta(days=365), False),      # ends exactly at end of life: allowed
    (t(2029, 2, 28, 0, 1), _dt.timedelta(days=365), True),  # one minute past it: refused
    (t(2026, 1, 1), _dt.timedelta(days=3 * 365), False),
])
def test_device_life_edge(now, new_validity, outlives):
    first = t(2024, 2, 29)   # end of life 2030-02-28 00:00
    assert validity.device_end_of_life(first) == t(2030, 2, 28)
    assert validity.outlives_device(now, new_validity, first) is outlives


def test_both_sides_use_it():
    from agent.ops import renew
    from personalizer.rules import lifecycle

    assert not hasattr(lifecycle, "add_years") and not hasattr(renew, "_add_years")
    assert renew.DEFAULT_DEVICE_LIFE_YEARS == lifecycle.DEVICE_LIFE_YEARS == validity.DEVICE_LIFE_YEARS == 6
    assert lifecycle.DEFAULT_RENEWAL_WINDOW == _dt.timedelta(days=renew.DEFAULT_WINDOW_DAYS) == _dt.timedelta(days=90)
