"""The cases service's tables. Nobody else reads them (design rule 2)."""
from sqlalchemy import (
    Column, DateTime, ForeignKey, Integer, MetaData, String, Table, Text, UniqueConstraint,
)

from servicekit.inbox import inbox_table
from servicekit.outbox import outbox_table

metadata = MetaData()

organizations = Table(
    "organizations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("code", String(10), nullable=False, unique=True),
    Column("timezone", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

survivor_code_sequences = Table(
    "survivor_code_sequences",
    metadata,
    Column("organization_id", String(36), ForeignKey("organizations.id"), primary_key=True),
    Column("year", Integer, primary_key=True),
    Column("last_value", Integer, nullable=False),
)

cases = Table(
    "cases",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), ForeignKey("organizations.id"), nullable=False, index=True),
    Column("survivor_code", String(32), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("age_group", String(16), nullable=False),
    Column("sex", String(16), nullable=False),
    Column("incident_at", DateTime(timezone=True), nullable=True),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("opened_by", String(36), nullable=False),
    Column("narrative_enc", Text, nullable=True),
    Column("survivor_name_enc", Text, nullable=True),
    Column("idempotency_key", String(100), nullable=True),
    Column("version", Integer, nullable=False, default=1),
    UniqueConstraint("organization_id", "idempotency_key", name="uq_cases_idempotency"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("case_id", String(36), nullable=False, index=True),
    Column("organization_id", String(36), nullable=False),
    Column("actor_id", String(36), nullable=False),
    Column("action", String(32), nullable=False),
    Column("fields", Text, nullable=False, default=""),
    Column("at", DateTime(timezone=True), nullable=False),
)

outbox = outbox_table(metadata)
processed_events = inbox_table(metadata)
