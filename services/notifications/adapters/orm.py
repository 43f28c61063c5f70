"""The notifications service's tables: its projection of recipients, and the
delivery log."""
from sqlalchemy import Column, Index, Integer, MetaData, String, Table, UniqueConstraint

from servicekit.inbox import inbox_table
from servicekit.types import UtcDateTime

metadata = MetaData()

organizations = Table(
    "organizations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("timezone", String(64), nullable=False),
)

recipients = Table(
    "recipients",
    metadata,
    Column("user_id", String(36), primary_key=True),
    Column("organization_id", String(36), nullable=False, index=True),
    Column("role", String(32), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("address", String(320), nullable=False),
    Column("locale", String(8), nullable=False),
    Column("active", Integer, nullable=False, default=1),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("organization_id", String(36), nullable=False),
    Column("case_id", String(36), nullable=True, index=True),
    Column("recipient_id", String(36), nullable=False),
    Column("recipient_role", String(32), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", String(64), nullable=True),
    Column("claimed_until", UtcDateTime(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("sent_at", UtcDateTime(), nullable=True),
    UniqueConstraint("event_id", "recipient_id", "channel", name="uq_delivery_once"),
    Index("ix_deliveries_created_at", "created_at"),  # retention deletes finished rows by age
)

processed_events = inbox_table(metadata)
