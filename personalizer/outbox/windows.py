"""CA service windows: when issuance may be sent, and planned maintenance.

Pure (no I/O, no clock of its own): every question takes the time as an
aware ``datetime``. The default calendar is the tender's (SLA4.1): weekdays
08–21, Saturday 08–14, Sundays and Italian national holidays closed, in
Europe/Rome. Suspension and revocation are 24x7 (the relay's priority lane
never asks the calendar); planned maintenance stops every lane.

Italian national holidays: 1 Jan, 6 Jan, Easter Monday, 25 Apr, 1 May,
2 Jun, 15 Aug, 1 Nov, 8 Dec, 25 Dec, 26 Dec. Easter is computed with the
anonymous Gregorian algorithm (Meeus/Jones/Butcher).

``check_window`` is the one rule for a maintenance window, wherever it comes
from (the config file, ``cnsctl maintenance add``, a stored row): it starts
after ``EARLIEST`` and at most ``MAX_AHEAD`` from now, ends after it starts,
lasts at most ``MAX_DURATION``, and has a short printable reason. Times in
milliseconds (or any year past 9999) fall outside the horizon and are refused
with the field named. ``from_rows`` turns stored rows into windows and
reports, rather than raises on, the rows it cannot read.

Imports nothing of ours.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

DEFAULT_TIMEZONE = "Europe/Rome"
FIXED_HOLIDAYS = ((1, 1), (1, 6), (4, 25), (5, 1), (6, 2), (8, 15), (11, 1), (12, 8), (12, 25), (12, 26))
# weekday() → (open hour, close hour) or None; Monday = 0.
DEFAULT_HOURS: dict[int, tuple[int, int] | None] = {
    0: (8, 21), 1: (8, 21), 2: (8, 21), 3: (8, 21), 4: (8, 21), 5: (8, 14), 6: None}
SEARCH_DAYS = 30   # next_change looks this far ahead at most
MAX_DURATION = _dt.timedelta(days=7)
MAX_AHEAD = _dt.timedelta(days=2 * 366)
EARLIEST = _dt.datetime(2000, 1, 1, tzinfo=_dt.timezone.utc)
MAX_ID_CHARS = 64
MAX_REASON_CHARS = 200


class WindowError(ValueError):
    """A maintenance window that breaks ``check_window``: ``field`` names the offending field."""

    def __init__(self, field_: str, message: str):
        super().__init__(f"{field_}: {message}")
        self.field, self.message = field_, message


def easter_sunday(year: int) -> _dt.date:
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month = (h + l_ - 7 * m + 114) // 31
    day = (h + l_ - 7 * m + 114) % 31 + 1
    return _dt.date(year, month, day)


def italian_holidays(year: int) -> frozenset[_dt.date]:
    days = {_dt.date(year, m, d) for m, d in FIXED_HOLIDAYS}
    days.add(easter_sunday(year) + _dt.timedelta(days=1))   # Pasquetta
    return frozenset(days)


@dataclass(frozen=True)
class Maintenance:
    """A planned CA maintenance window, [starts_at, ends_at) in UTC."""

    id: str
    starts_at: _dt.datetime
    ends_at: _dt.datetime
    reason: str = ""

    def active(self, now: _dt.datetime) -> bool:
        return self.starts_at <= now < self.ends_at


@dataclass(frozen=True)
class ServiceCalendar:
    """Opening hours per weekday, closed days, time zone. ``always_open`` disables the calendar."""

    timezone: str = DEFAULT_TIMEZONE
    hours: dict[int, tuple[int, int] | None] = field(default_factory=lambda: dict(DEFAULT_HOURS))
    national_holidays: bool = True
    extra_closed: frozenset[_dt.date] = frozenset()
    always_open: bool = False

    def __post_init__(self):
        ZoneInfo(self.timezone)   # raises for an unknown zone, at construction
        for wd, span in self.hours.items():
            if span is not None and not (0 <= span[0] < span[1] <= 24):
                raise ValueError(f"weekday {wd}: opening hours {span} must satisfy 0 <= open < close <= 24")

    def _local(self, now: _dt.datetime) -> _dt.datetime:
        if now.tzinfo is None:
            raise ValueError("ServiceCalendar needs an aware datetime")
        return now.astimezone(ZoneInfo(self.timezone))

    def closed_day(self, day: _dt.date) -> bool:
        return day in self.extra_closed or (self.national_holidays and day in italian_holidays(day.year))

    def is_open(self, now: _dt.datetime) -> bool:
        if self.always_open:
            return True
        local = self._local(now)
        span = self.hours.get(local.weekday())
        if span is None or self.closed_day(local.date()):
            return False
        return span[0] <= local.hour + local.minute / 60 + local.second / 3600 < span[1]

    def next_change(self, now: _dt.datetime) -> _dt.datetime | None:
        """When ``is_open`` next flips (hour resolution, as windows are whole hours); None if never."""
        if self.always_open:
            return None
        state = self.is_open(now)
        tz = ZoneInfo(self.timezone)
        local = self._local(now).replace(minute=0, second=0, microsecond=0)
        for step in range(1, SEARCH_DAYS * 24 + 1):
            # walk local wall-clock hours; re-localise so DST days stay right
            t = (local + _dt.timedelta(hours=step)).replace(tzinfo=None).replace(tzinfo=tz)
            if self.is_open(t) != state:
                return t.astimezone(_dt.timezone.utc)
        return None


def _instant(field_: str, value: float | _dt.datetime, now: _dt.datetime) -> _dt.datetime:
    if isinstance(value, _dt.datetime):
        t = value
    else:
        try:
            seconds = float(value)
            if seconds != seconds:   # NaN
                raise ValueError
            t = _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc)
        except (TypeError, ValueError, OverflowError, OSError):
            t = None
    if t is None or t.tzinfo is None or t < EARLIEST or t > now + MAX_AHEAD:
        unit = "" if isinstance(value, _dt.datetime) else " (seconds since the epoch, not milliseconds)"
        shown = value.isoformat() if isinstance(value, _dt.datetime) else repr(value)
        raise WindowError(field_, f"must be a time between {EARLIEST.date()} and {MAX_AHEAD.days} days from now"
                                  f"{unit}, got {shown}")
    return t.astimezone(_dt.timezone.utc)


def check_window(id_: str, starts_at: float | _dt.datetime, ends_at: float | _dt.datetime, reason: str,
                 *, now: _dt.datetime) -> Maintenance:
    """The validated window, or ``WindowError`` naming the field that is wrong."""
    if not isinstance(id_, str) or not id_ or len(id_) > MAX_ID_CHARS or not id_.isprintable():
        raise WindowError("id", f"must be 1..{MAX_ID_CHARS} printable characters")
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise WindowError("reason", f"must be at most {MAX_REASON_CHARS} printable characters")
    start = _instant("starts_at", starts_at, now)
    end = _instant("ends_at", ends_at, now + MAX_DURATION)
    if end <= start:
        raise WindowError("ends_at", "must be after starts_at")
    if end - start > MAX_DURATION:
        raise WindowError("ends_at", f"a maintenance window lasts at most {MAX_DURATION.days} days, "
                                     f"got {end - start}")
    return Maintenance(id_, start, end, reason)


def from_rows(rows, *, now: _dt.datetime) -> tuple[list[Maintenance], list[str]]:
    """Stored ``(id, starts_at, ends_at, reason, ...)`` rows → windows, and one problem line per unreadable row."""
    windows, problems = [], []
    for row in rows:
        try:
            windows.append(check_window(row[0], row[1], row[2], row[3] or "", now=now))
        except (WindowError, IndexError, TypeError) as exc:
            problems.append(f"maintenance window {row[0] if row else '?'!r} skipped: {exc}")
    return windows, problems


def active_maintenance(windows: list[Maintenance], now: _dt.datetime) -> Maintenance | None:
    """The active window that ends last (overlapping windows extend each other)."""
    active = [w for w in windows if w.active(now)]
    return max(active, key=lambda w: w.ends_at) if active else None
