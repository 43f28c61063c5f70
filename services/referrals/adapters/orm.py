"""The referrals service's tables: the provider directory and its outbox."""
from sqlalchemy import Boolean, Column, MetaData, String, Table, text

from servicekit.outbox import outbox_table
from servicekit.types import UtcDateTime

metadata = MetaData()

providers = Table(
    "providers",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", UtcDateTime(), nullable=False),
)

outbox = outbox_table(metadata)
