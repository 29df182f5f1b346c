"""A mistyped service calendar (``[service_window]``: opening hours, closed dates, time zone) keeps the
daemon from starting, with one line naming the file, the key and the form expected (issue 10 item 3).

Without this, some typos were taken silently: a TOML date-time in ``closed_dates`` was kept and never
matched a day (the chamber stayed open), ``20261224`` and ``"2026-W52-4"`` were read as dates, a
duplicate passed, and a wrong ``always_open`` was reported as an unknown time zone.
"""
from __future__ import annotations

import datetime as dt
import subprocess

import pytest

from personalizer import config
from personalizer.errors import ConfigError
from tests.personalizer import helpers

HOURS_FORM = '"HH-HH"'
DATE_FORM = "YYYY-MM-DD"
TZ_FORM = "Europe/Rome"


def _write(deployment, name: str, lines: str):
    """The deployment's config with ``lines`` in its [service_window] (without always_open)."""
    text = deployment.server_config.read_text().replace("always_open = true\n", lines + "\n")
    p = deployment.server_config.with_name(f"calendar-{name}.toml")
    p.write_text(text)
    return p


BAD = [
    ("hour-25", 'weekdays = "08-25"', "service_window.weekdays", HOURS_FORM),
    ("clock-time", 'weekdays = "08:00-21:00"', "service_window.weekdays", HOURS_FORM),
    ("25-00", 'saturday = "25:00"', "service_window.saturday", HOURS_FORM),
    ("end-before-start", 'saturday = "14-08"', "service_window.saturday", "closes at or before it opens"),
    ("empty-day", 'weekdays = "08-08"', "service_window.weekdays", "closes at or before it opens"),
    ("number", "weekdays = 8", "service_window.weekdays", HOURS_FORM),
    ("closed-typo", 'sunday = "close"', "service_window.sunday", '"closed"'),
    ("feb-30", 'closed_dates = ["2026-02-30"]', "service_window.closed_dates", DATE_FORM),
    ("month-13", 'closed_dates = ["2026-13-01"]', "service_window.closed_dates", DATE_FORM),
    ("day-first", 'closed_dates = ["25/12/2026"]', "service_window.closed_dates", DATE_FORM),
    ("compact", 'closed_dates = ["20261224"]', "service_window.closed_dates", DATE_FORM),
    ("week-date", 'closed_dates = ["2026-W52-4"]', "service_window.closed_dates", DATE_FORM),
    ("integer", "closed_dates = [20261224]", "service_window.closed_dates", DATE_FORM),
    ("date-time", "closed_dates = [2026-12-25T10:00:00]", "service_window.closed_dates", "not a date-time"),
    ("duplicate", 'closed_dates = ["2026-12-24", "2026-12-31", "2026-12-24"]', "service_window.closed_dates",
     "2026-12-24 is listed twice"),
    ("duplicate-mixed", 'closed_dates = ["2026-12-24", 2026-12-24]', "service_window.closed_dates", "listed twice"),
    ("year-typo", 'closed_dates = ["0226-12-24"]', "service_window.closed_dates", "between 2000 and 2099"),
    ("not-a-list", 'closed_dates = "2026-12-24"', "service_window.closed_dates", "expected list"),
    ("tz-typo", 'timezone = "Europe/Roma"', "service_window.timezone", TZ_FORM),
    ("tz-empty", 'timezone = ""', "service_window.timezone", TZ_FORM),
    ("tz-offset", 'timezone = "+01:00"', "service_window.timezone", TZ_FORM),
    ("tz-path", 'timezone = "../../etc/passwd"', "service_window.timezone", TZ_FORM),
    ("always-open-text", 'always_open = "yes"', "service_window.always_open", "expected bool"),
    ("holidays-text", 'national_holidays = "no"', "service_window.national_holidays", "expected bool"),
]


@pytest.mark.parametrize("name,lines,key,expected", BAD, ids=[b[0] for b in BAD])
def test_a_bad_calendar_value_is_refused_naming_the_key_and_the_form(deployment, name, lines, key, expected):
    p = _write(deployment, name, lines)
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    err = ei.value
    assert err.key == key and expected in err.message, str(err)
    assert "\n" not in str(err) and str(err).count(str(p)) == 1, str(err)


@pytest.mark.parametrize("name,lines,key,expected", [b for b in BAD if b[0] in (
    "25-00", "end-before-start", "feb-30", "date-time", "duplicate", "tz-typo", "always-open-text")],
    ids=lambda v: v if isinstance(v, str) and "=" not in v and "." not in v and '"' not in v else "")
def test_the_daemon_refuses_to_start_on_a_bad_calendar(deployment, name, lines, key, expected):
    """``cns-personalizer serve`` stops before it listens: exit code non-zero, one line on stderr naming the
    file, the key and the expected form, no traceback, nothing on stdout (no "listening on port")."""
    p = _write(deployment, name, lines)
    out = subprocess.run([str(helpers.VENV_BIN / "cns-personalizer"), "serve", "--config", str(p)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, out
    lines_out = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines_out) == 1, out.stderr
    assert str(p) in lines_out[0] and key in lines_out[0] and expected in lines_out[0], lines_out[0]
    assert "Traceback" not in out.stderr and "listening" not in out.stdout, out


def test_a_good_calendar_loads_as_written(deployment):
    p = _write(deployment, "good", 'timezone = "Europe/Rome"\nweekdays = "07-22"\nsaturday = "closed"\n'
                                   'sunday = "09-13"\nclosed_dates = ["2026-12-24", 2026-12-31]\n'
                                   "national_holidays = false")
    cal = config.load(p).calendar
    assert cal.extra_closed == frozenset({dt.date(2026, 12, 24), dt.date(2026, 12, 31)})
    assert cal.hours[0] == (7, 22) and cal.hours[5] is None and cal.hours[6] == (9, 13)
    assert cal.timezone == "Europe/Rome" and cal.national_holidays is False and cal.always_open is False
