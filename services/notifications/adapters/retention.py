"""Which delivery rows and history lines retention may delete: finished
ones only."""
from sqlalchemy import Table

from servicekit.retention import Rule
from services.notifications.domain import model

FINISHED = tuple(s.value for s in model.FINISHED)


def finished_deliveries(table: Table, default_days: float = 365) -> Rule:
    """Finished deliveries (sent, refused for good, superseded, capped,
    cancelled), by when they were made. They are a case's notification
    history, shown with the case, so they are kept long; a delivery pending,
    held, sending or failed (its event still being retried) is never deleted."""
    return Rule("deliveries", table, "created_at", "DELIVERIES_DAYS", default_days,
                lambda t: t.c.status.in_(FINISHED))


def notice_history(table: Table, default_days: float = 365) -> Rule:
    """The log of attempts and escalation steps, as long as the deliveries."""
    return Rule("notice_log", table, "at", "DELIVERIES_DAYS", default_days)
