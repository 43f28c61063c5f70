"""Column types shared by every service's tables.

Every timestamp Warmi keeps is an instant. SQLite has no time zones: a
datetime with an offset used to be written as its wall time and read back as
UTC, hours off in Peru or Colombia. ``UtcDateTime`` stores the instant in UTC
on both databases and always hands back an aware UTC datetime, so no code
above the adapters has to know which database it runs on.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, TypeDecorator


class NaiveDatetimeError(ValueError):
    """A datetime without a time zone reached the database: its instant is unknown."""


class UtcDateTime(TypeDecorator):
    """``TIMESTAMP WITH TIME ZONE`` on PostgreSQL, UTC wall time on SQLite; the
    DDL is that of ``DateTime(timezone=True)``, so no migration is needed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            # guessing a zone here is how hours went missing; the caller must say
            raise NaiveDatetimeError("a datetime without a time zone cannot be stored")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)  # SQLite: stored as UTC above
        return value.astimezone(timezone.utc)  # PostgreSQL: in the session's time zone
