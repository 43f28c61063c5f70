"""When a message may go out, when the weekly digest is due, and which month
pays for an SMS: each in the time zone of the people concerned.

Instants come in and go out as aware datetimes (results in UTC); zones are
IANA names. Wall-clock times that a daylight-saving change skips or repeats
are handled: a time the clocks skip that day stands for the first instant
after it (the moment they jump), and a time they repeat for its next
occurrence.
"""
from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])\Z")  # "HH:MM", 00:00 to 23:59
WEEK_HOURS = 7 * 24


def quiet_until(now: datetime, tz: str, start: str | None, end: str | None) -> datetime | None:
    """The UTC instant a person's quiet hours (``start``-``end`` on the wall
    clock of zone ``tz``, over midnight when start > end) end, if ``now``
    falls inside them; None when it does not, or she has none (either bound
    missing, or both equal)."""
    _check_aware(now)
    if start is None or end is None:
        return None
    begin, finish = _clock(start), _clock(end)
    if begin == finish:
        return None
    zone = ZoneInfo(tz)
    local = now.astimezone(zone)
    wall = local.time()
    inside = begin <= wall < finish if begin < finish else (wall >= begin or wall < finish)
    if not inside:
        return None
    today = local.date()
    return min(i for day in (today, today + timedelta(days=1)) for i in _instants(zone, day, finish) if i > now)


def digest_due(now: datetime, tz: str, weekday: int, hour: int, *, grace_hours: int = 24) -> str | None:
    """The ISO week ("2026-W48") whose digest is due at ``now``: the local
    time in ``tz`` is at or past that week's ``weekday`` (0 = Monday) at
    ``hour``, by less than ``grace_hours``. None outside every such window.
    The caller sends once per key; the grace lets a service that was down at
    the hour still send it, and not days late."""
    _check_aware(now)
    if not (0 <= weekday <= 6 and 0 <= hour <= 23 and 0 < grace_hours < WEEK_HOURS):
        raise ValueError("weekday 0..6, hour 0..23, grace_hours 1..167")
    zone = ZoneInfo(tz)
    today = now.astimezone(zone).date()
    # the grace of last week's digest may reach into this week
    for day in (today, today - timedelta(days=7)):
        year, week, _ = day.isocalendar()
        due = _instants(zone, date.fromisocalendar(year, week, weekday + 1), time(hour))[0]
        if due <= now < due + timedelta(hours=grace_hours):
            return f"{year}-W{week:02d}"
    return None


def month_key(now: datetime, tz: str) -> str:
    """The calendar month ("2026-11") ``now`` falls in, in zone ``tz``."""
    _check_aware(now)
    local = now.astimezone(ZoneInfo(tz))
    return f"{local.year:04d}-{local.month:02d}"


def _instants(zone: ZoneInfo, day: date, wall: time) -> list[datetime]:
    """The UTC instants, earliest first, at which the wall clock of ``zone``
    reads ``wall`` on ``day``: two when the clocks go back over it, and when
    they skip it, the one instant they jump."""
    first = datetime.combine(day, wall, tzinfo=zone)
    earlier = first.astimezone(timezone.utc)
    later = first.replace(fold=1).astimezone(timezone.utc)
    if later < earlier:  # PEP 495: inside a gap, fold=1 maps before fold=0
        return [_jump(zone, later, earlier)]
    return [earlier] if earlier == later else [earlier, later]


def _jump(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The first second whose offset is the one at ``after``, between two
    instants on either side of one change of offset."""
    low, high = int(before.timestamp()), int(after.timestamp())
    offset = after.astimezone(zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, timezone.utc)


def _clock(text: str) -> time:
    match = CLOCK.match(text)
    if not match:
        raise ValueError("a time of day is HH:MM")
    return time(int(match.group(1)), int(match.group(2)))


def _check_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("an aware instant is needed")
