"""The cases service's tables. Nobody else reads them (design rule 2)."""
from sqlalchemy import (
    Boolean, Column, ForeignKey, Index, Integer, MetaData, String, Table, Text, UniqueConstraint, text,
)

from servicekit.audit import audit_tables
from servicekit.inbox import inbox_table
from servicekit.outbox import outbox_table
from servicekit.types import UtcDateTime

metadata = MetaData()

organizations = Table(
    "organizations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("code", String(10), nullable=False, unique=True),
    Column("timezone", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("protocol_id", String(64), nullable=False, server_default="smp-gbv"),
    Column("protocol_version", Integer, nullable=False, server_default="1"),
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
    Column("incident_at", UtcDateTime(), nullable=True),
    Column("opened_at", UtcDateTime(), nullable=False),
    Column("opened_by", String(36), nullable=False),
    Column("narrative_enc", Text, nullable=True),
    Column("survivor_name_enc", Text, nullable=True),
    Column("idempotency_key", String(100), nullable=True),
    Column("version", Integer, nullable=False, default=1),
    # survivor profile and incident (no identity: that is survivor_name_enc)
    Column("minor", Boolean, nullable=False, server_default=text("false")),
    Column("disability", Boolean, nullable=True),
    # encrypted with the key ring, padded so that the length tells no code from another
    Column("place_enc", Text, nullable=True),
    Column("perpetrator_relationship_enc", Text, nullable=True),
    Column("context_flags", String(200), nullable=False, server_default=""),
    Column("incident_type", String(32), nullable=True),
    Column("classification_answers_enc", Text, nullable=True),
    Column("delay_bucket", String(16), nullable=True),
    Column("risk_level", String(16), nullable=True),
    Column("case_lead_id", String(36), nullable=True, index=True),
    Column("protocol_id", String(64), nullable=True),
    Column("protocol_version", Integer, nullable=True),
    Column("closure_approved_by", String(36), nullable=True),
    Column("updated_at", UtcDateTime(), nullable=True),
    # for the anonymised statistics: the month of opening in the organisation's
    # time zone, and whether the survivor's consent to aggregate reporting stands
    Column("opened_month", String(7), nullable=True),
    Column("reporting_consent", Boolean, nullable=False, server_default=text("false")),
    UniqueConstraint("organization_id", "idempotency_key", name="uq_cases_idempotency"),
    Index("ix_cases_org_status", "organization_id", "status"),
)

# an excluded member names a suspect: her id is stored encrypted, and found
# through its keyed digest (crypto.KeyRing.digest), never in the clear
case_exclusions = Table(
    "case_exclusions",
    metadata,
    Column("case_id", String(36), ForeignKey("cases.id"), primary_key=True),
    Column("user_digest", String(64), primary_key=True),
    Column("user_id_enc", Text, nullable=False),
    Column("excluded_by", String(36), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
)

status_changes = Table(
    "status_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("case_id", String(36), ForeignKey("cases.id"), nullable=False, index=True),
    Column("from_status", String(16), nullable=True),
    Column("to_status", String(16), nullable=False),
    Column("reason", String(32), nullable=True),
    Column("actor_id", String(36), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
)

consents = Table(
    "consents",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("case_id", String(36), ForeignKey("cases.id"), nullable=False, index=True),
    Column("purpose", String(32), nullable=False),
    Column("provider_id", String(36), nullable=True),
    Column("data_shared", String(200), nullable=False, server_default=""),
    Column("given_by", String(16), nullable=False),
    Column("child_assent", Boolean, nullable=True),
    Column("recorded_by", String(36), nullable=False),
    Column("recorded_at", UtcDateTime(), nullable=False),
    Column("withdrawn_by", String(36), nullable=True),
    Column("withdrawn_at", UtcDateTime(), nullable=True),
)

plan_steps = Table(
    "plan_steps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("case_id", String(36), ForeignKey("cases.id"), nullable=False, index=True),
    Column("organization_id", String(36), nullable=False),
    Column("step_id", String(8), nullable=False),
    # the step's opaque reference: events name it instead of the protocol's step id
    Column("ref", String(16), nullable=False),
    Column("responsible", String(100), nullable=False),
    Column("due_at", UtcDateTime(), nullable=False),
    Column("urgent", Boolean, nullable=False),
    Column("status", String(16), nullable=False),  # open, done, cancelled
    Column("completed_at", UtcDateTime(), nullable=True),
    Column("completed_by", String(36), nullable=True),
    Column("outcome", String(16), nullable=True),  # done, declined
    Column("note_enc", Text, nullable=True),
    Column("approved_by", String(36), nullable=True),
    # the deadline sweep: the next alert (due soon, overdue, escalations) and when it is due
    Column("alert_stage", Integer, nullable=False, server_default="0"),
    Column("next_alert_at", UtcDateTime(), nullable=True),
    UniqueConstraint("case_id", "step_id", name="uq_plan_step"),
    Index(
        "ix_plan_steps_open_due",
        "due_at",
        postgresql_where=text("status = 'open'"),
        sqlite_where=text("status = 'open'"),
    ),
    Index(
        "ix_plan_steps_alerts",
        "next_alert_at",
        postgresql_where=text("status = 'open' AND next_alert_at IS NOT NULL"),
        sqlite_where=text("status = 'open' AND next_alert_at IS NOT NULL"),
    ),
)

# Anonymous counts kept as cases change, one row per combination of the
# reported dimensions: the statistics read these few rows, never the cases.
statistics_cells = Table(
    "statistics_cells",
    metadata,
    Column("organization_id", String(36), primary_key=True),
    Column("opened_month", String(7), primary_key=True),
    Column("incident_type", String(32), primary_key=True),  # "" while unclassified
    Column("age_group", String(16), primary_key=True),
    Column("minor", Boolean, primary_key=True),
    Column("context_flags", String(200), primary_key=True),
    Column("n", Integer, nullable=False),
)

# the audit trail (servicekit.audit): one HMAC chain per case, and one for
# operators' commands; the key lives outside the database
audit = audit_tables(metadata, "audit", subjects=("case_id", "organization_id"))
audit_log, audit_heads = audit.log, audit.heads

outbox = outbox_table(metadata)
processed_events = inbox_table(metadata)

# the providers of the referrals service's directory, as its events announce them
providers = Table(
    "providers",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
)
