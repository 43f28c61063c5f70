"""The notifications service's tables: its projection of recipients, and the
delivery log."""
from sqlalchemy import Column, Index, Integer, MetaData, String, Table, UniqueConstraint

from servicekit.inbox import inbox_table
from servicekit.types import UtcDateTime

metadata = MetaData()

# organisations and their members as identity's events describe them; each
# row keeps the revision it was last told, so an older event changes nothing
organizations = Table(
    "organizations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("timezone", String(64), nullable=False),
    Column("language", String(8), nullable=True),
    Column("revision", Integer, nullable=False, server_default="0"),
)

recipients = Table(
    "recipients",
    metadata,
    Column("user_id", String(36), primary_key=True),
    Column("organization_id", String(36), nullable=False, index=True),
    Column("roles", String(200), nullable=False),  # comma-separated, every role she holds
    Column("name", String(200), nullable=True),
    Column("channel", String(16), nullable=False),  # her e-mail channel, for now the one channel
    Column("address", String(320), nullable=True),  # work e-mail; none: she cannot be e-mailed
    Column("phone", String(16), nullable=True),  # E.164
    Column("locale", String(8), nullable=False),
    Column("active", Integer, nullable=False, default=1),
    Column("revision", Integer, nullable=False, server_default="0"),
)

# organisations a supervisor supervises: escalations reach her
supervisions = Table(
    "supervisions",
    metadata,
    Column("user_id", String(36), primary_key=True),
    Column("organization_id", String(36), primary_key=True, index=True),
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
