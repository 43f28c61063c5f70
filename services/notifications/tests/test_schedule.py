"""Quiet hours, the weekly digest and the spending month, in people's own zones."""
from datetime import datetime, timedelta, timezone

import pytest

from services.notifications.domain.schedule import digest_due, month_key, quiet_until


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


LIMA = "America/Lima"  # UTC-5 all year


@pytest.mark.parametrize("now,until", [
    (utc(2026, 11, 20, 1, 59), None),                      # 20:59 in Lima
    (utc(2026, 11, 20, 2, 0), utc(2026, 11, 20, 12, 0)),   # 21:00: until 07:00 the next morning
    (utc(2026, 11, 20, 4, 30), utc(2026, 11, 20, 12, 0)),  # 23:30
    (utc(2026, 11, 20, 5, 0), utc(2026, 11, 20, 12, 0)),   # midnight
    (utc(2026, 11, 20, 11, 59), utc(2026, 11, 20, 12, 0)),  # 06:59
    (utc(2026, 11, 20, 12, 0), None),                      # 07:00: over
    (utc(2026, 11, 20, 17, 0), None),                      # noon
])
def test_quiet_hours_over_midnight_in_lima(now, until):
    assert quiet_until(now, LIMA, "21:00", "07:00") == until


def test_quiet_hours_within_one_day():
    assert quiet_until(utc(2026, 11, 20, 18, 30), LIMA, "13:00", "15:00") == utc(2026, 11, 20, 20, 0)
    assert quiet_until(utc(2026, 11, 20, 17, 59), LIMA, "13:00", "15:00") is None
    assert quiet_until(utc(2026, 11, 20, 20, 0), LIMA, "13:00", "15:00") is None


def test_the_end_of_quiet_hours_is_a_utc_instant():
    until = quiet_until(utc(2026, 11, 20, 4, 30), LIMA, "21:00", "07:00")
    assert until.utcoffset() == timedelta(0)
    assert quiet_until(datetime(2026, 11, 19, 23, 30, tzinfo=timezone(timedelta(hours=-5))), LIMA,
                       "21:00", "07:00") == until


@pytest.mark.parametrize("start,end", [(None, None), ("21:00", None), (None, "07:00"), ("07:00", "07:00")])
def test_no_quiet_hours_without_both_ends(start, end):
    assert quiet_until(utc(2026, 11, 20, 4, 30), LIMA, start, end) is None


@pytest.mark.parametrize("bad", ["7:00", "24:00", "07:60", "0700", "07:00 ", ""])
def test_a_time_of_day_is_hh_mm(bad):
    with pytest.raises(ValueError):
        quiet_until(utc(2026, 11, 20, 4, 30), LIMA, "21:00", bad)


def test_a_naive_instant_is_refused():
    naive = datetime(2026, 11, 20)
    for call in (lambda: quiet_until(naive, LIMA, "21:00", "07:00"), lambda: digest_due(naive, LIMA, 0, 8),
                 lambda: month_key(naive, LIMA)):
        with pytest.raises(ValueError):
            call()


MADRID = "Europe/Madrid"  # 2026-03-29 02:00 CET -> 03:00 CEST (01:00 UTC); 2026-10-25 03:00 CEST -> 02:00 CET


def test_a_night_that_loses_an_hour_is_an_hour_shorter():
    # 21:00 CET on the 28th to 07:00 CEST on the 29th: nine hours, not ten
    assert quiet_until(utc(2026, 3, 28, 20, 0), MADRID, "21:00", "07:00") == utc(2026, 3, 29, 5, 0)


def test_an_end_the_clocks_skip_means_the_moment_they_jump():
    # 02:30 does not exist on the 29th: quiet hours end when 02:00 CET becomes 03:00 CEST
    assert quiet_until(utc(2026, 3, 28, 23, 30), MADRID, "23:00", "02:30") == utc(2026, 3, 29, 1, 0)
    assert quiet_until(utc(2026, 3, 29, 0, 59, 59), MADRID, "23:00", "02:30") == utc(2026, 3, 29, 1, 0)
    assert quiet_until(utc(2026, 3, 29, 1, 0), MADRID, "23:00", "02:30") is None  # 03:00 CEST
    # the same in Chile, where midnight is skipped (00:00 -04 becomes 01:00 -03 at 04:00 UTC on 6 September)
    assert quiet_until(utc(2026, 9, 6, 3, 0), "America/Santiago", "22:00", "00:30") == utc(2026, 9, 6, 4, 0)


def test_an_end_the_clocks_repeat_means_its_next_occurrence():
    # 02:00-03:00 happens twice on 25 October: first in CEST, then in CET
    assert quiet_until(utc(2026, 10, 25, 0, 0), MADRID, "01:00", "02:30") == utc(2026, 10, 25, 0, 30)  # 02:00 CEST
    assert quiet_until(utc(2026, 10, 25, 0, 45), MADRID, "01:00", "02:30") is None  # 02:45 CEST
    assert quiet_until(utc(2026, 10, 25, 1, 10), MADRID, "01:00", "02:30") == utc(2026, 10, 25, 1, 30)  # 02:10 CET
    # a night that gains an hour is an hour longer
    assert quiet_until(utc(2026, 10, 24, 19, 0), MADRID, "21:00", "07:00") == utc(2026, 10, 25, 6, 0)


def test_the_digest_is_due_from_its_hour_for_the_grace_and_not_otherwise():
    # Monday 2026-11-23 08:00 in Lima is 13:00 UTC; ISO week 48
    assert digest_due(utc(2026, 11, 23, 12, 59), LIMA, 0, 8) is None
    assert digest_due(utc(2026, 11, 23, 13, 0), LIMA, 0, 8) == "2026-W48"
    assert digest_due(utc(2026, 11, 24, 12, 59), LIMA, 0, 8) == "2026-W48"
    assert digest_due(utc(2026, 11, 24, 13, 0), LIMA, 0, 8) is None
    assert digest_due(utc(2026, 11, 23, 16, 0), LIMA, 0, 8, grace_hours=3) is None


def test_the_digest_is_sent_exactly_once_in_each_week():
    # a timer every ten minutes for six weeks, remembering the weeks it sent
    sent: dict[str, datetime] = {}
    now = utc(2026, 11, 16, 0, 0)
    while now < utc(2026, 12, 28, 0, 0):
        week = digest_due(now, LIMA, 0, 8)
        if week is not None and week not in sent:
            sent[week] = now
        now += timedelta(minutes=10)
    assert sent == {f"2026-W{w}": utc(2026, 11, 16, 13, 0) + timedelta(weeks=w - 47) for w in range(47, 53)}


def test_the_grace_of_a_sunday_digest_reaches_into_the_next_week():
    # Sunday 2026-11-29 20:00 in Lima (ISO week 48); on Monday the week is 49, the digest still 48's
    assert digest_due(utc(2026, 11, 30, 1, 0), LIMA, 6, 20) == "2026-W48"
    assert digest_due(utc(2026, 11, 30, 18, 0), LIMA, 6, 20) == "2026-W48"
    assert digest_due(utc(2026, 12, 1, 1, 0), LIMA, 6, 20) is None


def test_the_week_key_follows_the_iso_year():
    assert digest_due(utc(2026, 12, 28, 13, 0), LIMA, 0, 8) == "2026-W53"
    assert digest_due(utc(2027, 1, 4, 13, 0), LIMA, 0, 8) == "2027-W01"


def test_a_digest_hour_the_clocks_skip_is_due_when_they_jump():
    # Sunday 2026-03-29 02:00 does not exist in Madrid: due at 03:00 CEST
    assert digest_due(utc(2026, 3, 29, 0, 59), MADRID, 6, 2) is None
    assert digest_due(utc(2026, 3, 29, 1, 0), MADRID, 6, 2) == "2026-W13"


@pytest.mark.parametrize("weekday,hour,grace", [(7, 8, 24), (-1, 8, 24), (0, 24, 24), (0, 8, 0), (0, 8, 168)])
def test_a_digest_schedule_out_of_range_is_refused(weekday, hour, grace):
    with pytest.raises(ValueError):
        digest_due(utc(2026, 11, 23, 13, 0), LIMA, weekday, hour, grace_hours=grace)


def test_the_spending_month_is_the_organisations_own():
    assert month_key(utc(2026, 12, 1, 3, 0), LIMA) == "2026-11"  # still 30 November, 22:00, in Lima
    assert month_key(utc(2026, 12, 1, 5, 0), LIMA) == "2026-12"
    assert month_key(utc(2026, 12, 1, 3, 0), "UTC") == "2026-12"
    assert month_key(utc(2026, 12, 31, 23, 30), MADRID) == "2027-01"
