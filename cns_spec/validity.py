"""Date arithmetic for certificate validity and the device's life, the same on the agent and the personalizer.

* ``add_years``: the same day ``years`` later; 29 February → 28 February in a non-leap year.
* ``renewal_opens``: the first instant a renewal is allowed, ``window`` before the certificate expires.
* ``device_end_of_life``: ``DEVICE_LIFE_YEARS`` (6) after the card's first certificate was issued;
  ``outlives_device`` says whether a new certificate issued ``now`` would be valid past it.

Pure: standard library only, nothing of ours, no I/O. The refusal messages stay with each side.
"""
from __future__ import annotations

import datetime as _dt

DEVICE_LIFE_YEARS = 6
DEFAULT_RENEWAL_WINDOW_DAYS = 90


def add_years(t: _dt.datetime, years: int) -> _dt.datetime:
    try:
        return t.replace(year=t.year + years)
    except ValueError:   # 29 February in a year that has none
        return t.replace(year=t.year + years, day=28)


def renewal_opens(expiry: _dt.datetime, window: _dt.timedelta) -> _dt.datetime:
    return expiry - window


def device_end_of_life(first_issued: _dt.datetime, years: int = DEVICE_LIFE_YEARS) -> _dt.datetime:
    return add_years(first_issued, years)


def outlives_device(now: _dt.datetime, new_validity: _dt.timedelta, first_issued: _dt.datetime,
                    years: int = DEVICE_LIFE_YEARS) -> bool:
    return now + new_validity > device_end_of_life(first_issued, years)


__all__ = ["DEFAULT_RENEWAL_WINDOW_DAYS", "DEVICE_LIFE_YEARS", "add_years", "device_end_of_life", "outlives_device",
           "renewal_opens"]
