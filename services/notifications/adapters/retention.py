"""Which delivery rows retention may delete: finished ones only."""
from sqlalchemy import Table

from servicekit.retention import Rule
from services.notifications.domain.model import DeliveryStatus

FINISHED = (DeliveryStatus.SENT.value, DeliveryStatus.CANCELLED.value)


def finished_deliveries(table: Table, default_days: float = 365) -> Rule:
    """Sent or cancelled deliveries, by when they were made. They are a case's
    notification history, shown with the case, so they are kept long; a
    delivery pending, sending or failed (its event still being retried) is
    never deleted."""
    return Rule("deliveries", table, "created_at", "DELIVERIES_DAYS", default_days,
                lambda t: t.c.status.in_(FINISHED))
