"""The personalizer config refuses what it does not know and windows it cannot honour, naming the key."""
from __future__ import annotations

import datetime as dt

import pytest

from personalizer import config

from personalizer.outbox import windows
from personalizer.errors import ConfigError

BASE = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=180)


def _d(days: float = 0, hours: float = 0, tz: str = "+00:00") -> str:
    """An ISO time ``days``/``hours`` after BASE (about half a year ahead, inside the 2-year horizon)."""
    return (BASE + dt.timedelta(days=days, hours=hours)).strftime("%Y-%m-%dT%H:%M:%S") + tz


def _load(deployment, tmp_path, edit):
    p = deployment.server_config.with_name(f"schema-{abs(hash(edit(''))) % 10**8}.toml")
    p.write_text(edit(deployment.server_config.read_text()))
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    return ei.value


@pytest.mark.parametrize("edit,key,text", [
    (lambda t: t + "\n[sever]\nlisten = 1\n", "sever", "unknown section"),
    (lambda t: t.replace("grace_seconds = 5", "grace_seconds = 5\nmax_conections = 5"), "server.max_conections",
     "unknown key"),
    (lambda t: t.replace("[broker]", "[broker]\nretry_max = 3"), "broker.retry_max", "unknown key"),
    (lambda t: t.replace("min_rsa_bits = 2048", "min_rsa_bit = 2048", 1), "profiles.cns-auth.min_rsa_bit",
     "unknown key"),
    (lambda t: t + '\n[[maintenance]]\nstarts_at = "' + _d() + '"\nends_at = "' + _d(hours=1) + '"'
                   '\nwhy = "x"\n', "maintenance[0].why", "unknown key"),
    (lambda t: t.replace("[service_window]", "[service_window]\nweekday = \"08-20\""), "service_window.weekday",
     "unknown key"),
    (lambda t: t.replace("grace_seconds = 5", "grace_seconds = 5\nmax_connections = 0"), "server.max_connections",
     "between"),
    (lambda t: t.replace("grace_seconds = 5", "grace_seconds = 5\nhandshake_timeout_seconds = -1"),
     "server.handshake_timeout_seconds", "between"),
])
def test_unknown_or_out_of_range_keys_are_refused(deployment, tmp_path, edit, key, text):
    err = _load(deployment, tmp_path, edit)
    assert err.key == key and text in err.message, str(err)


def _window_toml(start: str, end: str) -> str:
    return f'\n[[maintenance]]\nid = "w"\nstarts_at = "{start}"\nends_at = "{end}"\n'


@pytest.mark.parametrize("start,end,key,text", [
    (_d(), "9999-12-31T23:30:00-01:00", "maintenance[0].ends_at", "out of range"),
    (_d(), "9999-12-31T00:00:00+00:00", "maintenance[0].ends_at", "days from now"),
    (_d(1), _d(), "maintenance[0].ends_at", "after starts_at"),
    (_d(), _d(60), "maintenance[0].ends_at", "at most 7 days"),
    ("1999-01-01T00:00:00+00:00", "1999-01-01T02:00:00+00:00", "maintenance[0].starts_at", "between 2000-01-01"),
])
def test_config_maintenance_windows_are_checked(deployment, tmp_path, start, end, key, text):
    err = _load(deployment, tmp_path, lambda t: t + _window_toml(start, end))
    assert err.key == key and text in err.message, str(err)


def test_a_sane_config_window_loads(deployment, tmp_path):
    p = tmp_path / "ok.toml"
    p.write_text(deployment.server_config.read_text().replace('"tls/', f'"{deployment.root}/tls/')
                 .replace('"ca/', f'"{deployment.root}/ca/')
                 + _window_toml(_d(tz="+01:00"), _d(hours=6, tz="+01:00")))
    (w,) = config.load(p).maintenance
    assert w.starts_at == BASE - dt.timedelta(hours=1) and w.ends_at - w.starts_at == dt.timedelta(hours=6)


def test_from_rows_skips_unreadable_rows_and_says_why():
    now = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    t = now.timestamp()
    rows = [("ms", t * 1000, t * 1000 + 3600_000, "", "admin"), ("nan", float("nan"), t, "", "admin"),
            ("ok", t + 60, t + 3600, "fine", "admin"), ("huge", 1e300, 1e300, "", "admin")]
    got, problems = windows.from_rows(rows, now=now)
    assert [w.id for w in got] == ["ok"]
    assert len(problems) == 3 and all("skipped" in p for p in problems)


def test_repeated_identical_log_lines_are_rate_limited():
    import logging

    from personalizer.guard import RepeatFilter
    now = [0.0]
    f = RepeatFilter(burst=3, window=60, clock=lambda: now[0])

    def rec(msg, *args):
        return logging.LogRecord("personalizer.x", logging.ERROR, __file__, 1, msg, args, None)

    passed = [f.filter(rec("CA refused %s", "the same")) for _ in range(1000)]
    assert sum(passed) == 3
    assert f.filter(rec("CA refused %s", "another"))   # a different message is not held back
    now[0] = 61.0
    r = rec("CA refused %s", "the same")
    assert f.filter(r) and "997 identical message(s) suppressed" in r.getMessage()
