"""Identity's tables: organisations, people and their roles, supervisions,
API tokens, login throttling, and the outbox of identity events."""
from sqlalchemy import Boolean, Column, ForeignKey, Index, Integer, MetaData, String, Table, Text, false

from servicekit.audit import audit_tables
from servicekit.outbox import outbox_table
from servicekit.types import UtcDateTime

metadata = MetaData()

organizations = Table(
    "organizations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("code", String(10), nullable=False, unique=True),  # never changes: survivor codes start with it
    Column("name", String(200), nullable=False),
    Column("country", String(2), nullable=False),  # ISO 3166-1 alpha-2
    Column("timezone", String(64), nullable=False),
    Column("language", String(8), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

# organisations that oversee another (a federation, a partner NGO)
oversight = Table(
    "oversight",
    metadata,
    Column("organization_id", String(36), ForeignKey("organizations.id"), primary_key=True),
    Column("by_organization_id", String(36), ForeignKey("organizations.id"), primary_key=True),
)

people = Table(
    "people",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), ForeignKey("organizations.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("email", String(320), nullable=True, unique=True),  # work address, lower case
    Column("phone", String(16), nullable=True),  # E.164
    Column("language", String(8), nullable=False),
    Column("roles", String(200), nullable=False),  # comma-separated, sorted
    Column("active", Boolean, nullable=False),
    Column("password_hash", Text, nullable=True),  # argon2id
    Column("revision", Integer, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("deactivated_at", UtcDateTime(), nullable=True),
    # her notification settings (domain.model.NotificationSettings)
    Column("whatsapp_opt_in", Boolean, nullable=False, server_default=false()),
    Column("whatsapp_opted_in_at", UtcDateTime(), nullable=True),  # when she gave it; never in an event
    Column("quiet_hours_start", String(5), nullable=True),  # "HH:MM", the organisation's time zone
    Column("quiet_hours_end", String(5), nullable=True),
    Column("digest_weekday", Integer, nullable=True),  # 0 = Monday; null: the rules' default
    Column("digest_hour", Integer, nullable=True),
    Column("preferences", Text, nullable=False, server_default="{}"),  # JSON: {kind: [channel, ...]}
)

# a supervisor (often of a partner NGO) supervises several organisations
supervisions = Table(
    "supervisions",
    metadata,
    Column("person_id", String(36), ForeignKey("people.id"), primary_key=True),
    Column("organization_id", String(36), ForeignKey("organizations.id"), primary_key=True),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),  # SHA-256 of the secret
    Column("person_id", String(36), ForeignKey("people.id"), nullable=False, index=True),
    Column("scope", String(16), nullable=False),  # read | read_write
    Column("label", String(100), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("last_used_at", UtcDateTime(), nullable=True),
    Column("revoked_at", UtcDateTime(), nullable=True),
)

# failed logins per account and per address, for throttling
login_failures = Table(
    "login_failures",
    metadata,
    Column("key", String(400), primary_key=True),  # "account:<email>" or "address:<ip>"
    Column("failures", Integer, nullable=False),
    Column("window_started_at", UtcDateTime(), nullable=False),
    Column("locked_until", UtcDateTime(), nullable=True),
    Index("ix_login_failures_window", "window_started_at"),
)

outbox = outbox_table(metadata)

# the trail of identity's operators' commands (servicekit.audit): tokens
# issued and revoked, people added and deactivated, organisations registered
audit = audit_tables(metadata, prefix="audit", subjects=("organization_id", "member_id", "token_id"))
