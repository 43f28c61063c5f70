"""When a step's alerts fall due (pure domain, no database)."""
from datetime import datetime, timedelta, timezone

from services.cases.domain.deadlines import AlertPolicy, alerts_due, first_alert

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=timezone.utc)
POLICY = AlertPolicy(due_soon=timedelta(hours=2))


def test_a_step_planned_inside_its_window_starts_without_the_due_soon_alert():
    due = NOW + timedelta(hours=1)  # R0 of a case opened now
    assert first_alert(due, NOW, POLICY) == (1, due)
    sent, stage, _ = alerts_due(1, due, due + timedelta(minutes=1), POLICY)
    assert sent == [("step_overdue", "responsible")] and stage == 2


def test_a_step_planned_before_its_window_gets_the_due_soon_alert_when_it_opens():
    due = NOW + timedelta(hours=24)
    assert first_alert(due, NOW, POLICY) == (0, due - timedelta(hours=2))


def test_a_step_planned_at_the_very_start_of_its_window_counts_as_inside():
    due = NOW + timedelta(hours=2)
    assert first_alert(due, NOW, POLICY) == (1, due)


def test_a_step_planned_already_overdue_is_alerted_as_overdue_at_the_next_sweep():
    due = NOW - timedelta(hours=3)
    stage, next_at = first_alert(due, NOW, POLICY)
    assert (stage, next_at) == (1, due)
    sent, _, _ = alerts_due(stage, due, NOW, POLICY)
    assert sent == [("step_overdue", "responsible")]
