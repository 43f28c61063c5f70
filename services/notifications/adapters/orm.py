"""The notifications service's tables: its projections (organisations and
members from identity, the few facts of a case it needs from cases), the
notices it decided to send, each delivery of a notice, the log of every
attempt and escalation step, acknowledgement links, SMS/WhatsApp spending,
digests sent, and its own outbox and inbox."""
from sqlalchemy import Column, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

from servicekit.inbox import inbox_table
from servicekit.outbox import outbox_table
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
    Column("code", String(8), nullable=True),  # the rules' per-organisation overrides are by code
)

recipients = Table(
    "recipients",
    metadata,
    Column("user_id", String(36), primary_key=True),
    Column("organization_id", String(36), nullable=False, index=True),
    Column("roles", String(200), nullable=False),  # comma-separated, every role she holds
    Column("name", String(200), nullable=True),
    Column("channel", String(16), nullable=False),  # "email": her e-mail address is ``address``
    Column("address", String(320), nullable=True),  # work e-mail; none: she cannot be e-mailed
    Column("phone", String(16), nullable=True),  # E.164
    Column("locale", String(8), nullable=False),
    Column("active", Integer, nullable=False, default=1),
    Column("revision", Integer, nullable=False, server_default="0"),
    Column("whatsapp_opt_in", Integer, nullable=False, server_default="0"),
    Column("quiet_start", String(5), nullable=True),  # HH:MM in her organisation's zone
    Column("quiet_end", String(5), nullable=True),
    Column("digest_weekday", Integer, nullable=True),  # none: the rules' default
    Column("digest_hour", Integer, nullable=True),
    Column("preferences", Text, nullable=True),  # JSON {kind: [channels]}
)

# organisations a supervisor supervises: escalations reach her
supervisions = Table(
    "supervisions",
    metadata,
    Column("user_id", String(36), primary_key=True),
    Column("organization_id", String(36), primary_key=True, index=True),
)

# what notifications needs to know of a case: its code (the one case fact a
# message may show), who opened it and who leads it, its risk, open or closed
cases = Table(
    "cases",
    metadata,
    Column("case_id", String(36), primary_key=True),
    Column("organization_id", String(36), nullable=False, index=True),
    Column("survivor_code", String(40), nullable=True),
    Column("focal_point_id", String(36), nullable=True),
    Column("case_lead_id", String(36), nullable=True),
    Column("lead_changed_at", UtcDateTime(), nullable=True),  # the event that set the lead: older ones lose
    Column("risk_level", String(8), nullable=True),
    Column("closed", Integer, nullable=False, server_default="0"),
    Column("state_changed_at", UtcDateTime(), nullable=True),
)

# one notice per (event, rule): the rule as it was when the event arrived,
# who it reached so far (``rung``), and whether someone acknowledged it
notices = Table(
    "notices",
    metadata,
    Column("id", String(36), primary_key=True),  # uuid5 of (event, rule): a repeat plans the same notice
    Column("event_id", String(36), nullable=False, index=True),
    Column("event_type", String(64), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("urgency", String(16), nullable=False),
    Column("organization_id", String(36), nullable=False),
    Column("case_id", String(36), nullable=True, index=True),
    Column("step_ref", String(16), nullable=True),
    Column("frozen", Text, nullable=False),  # JSON: the rule and the message's values, frozen
    Column("rung", String(16), nullable=True),  # the highest rung of the ladder told so far
    Column("created_at", UtcDateTime(), nullable=False),
    Column("ack_due_at", UtcDateTime(), nullable=True),  # unacknowledged by then: climb one rung
    Column("wake_at", UtcDateTime(), nullable=True, index=True),  # the timer's next look at it
    Column("acknowledged_at", UtcDateTime(), nullable=True),
    Column("acknowledged_by", String(36), nullable=True),
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
    Column("notice_id", String(36), nullable=False),
    Column("not_before", UtcDateTime(), nullable=True),  # held by quiet hours until then
    Column("fallbacks", String(64), nullable=True),  # the channels left in its chain, comma-separated
    Column("provider_code", String(32), nullable=True),
    UniqueConstraint("notice_id", "recipient_id", "channel", name="uq_delivery_once"),
    Index("ix_deliveries_created_at", "created_at"),  # retention deletes finished rows by age
    Index("ix_deliveries_notice", "notice_id"),
)

# every attempt and every escalation step, never a message body or address
notice_log = Table(
    "notice_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("notice_id", String(36), nullable=False, index=True),
    Column("case_id", String(36), nullable=True, index=True),
    Column("organization_id", String(36), nullable=False),
    Column("at", UtcDateTime(), nullable=False, index=True),
    Column("step", String(16), nullable=False),  # planned, sent, failed, rejected, fallback, held, ...
    Column("rung", String(16), nullable=True),
    Column("recipient_role", String(32), nullable=True),
    Column("channel", String(16), nullable=True),
    Column("code", String(32), nullable=True),  # the provider's answer code or a reason
)

# one acknowledgement link per (notice, recipient); used once
acks = Table(
    "acks",
    metadata,
    Column("id", String(16), primary_key=True),  # hex of the 8 random bytes the token signs
    Column("notice_id", String(36), nullable=False, index=True),
    Column("recipient_id", String(36), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("used_at", UtcDateTime(), nullable=True),
    UniqueConstraint("notice_id", "recipient_id", name="uq_ack_once"),
)

# SMS and WhatsApp messages per organisation and month, against its cap
spending = Table(
    "spending",
    metadata,
    Column("organization_id", String(36), primary_key=True),
    Column("month", String(7), primary_key=True),
    Column("channel", String(16), primary_key=True),
    Column("count", Integer, nullable=False),
)

# the weekly digest of each person, once per ISO week
digests = Table(
    "digests",
    metadata,
    Column("recipient_id", String(36), primary_key=True),
    Column("week", String(8), primary_key=True),
    Column("notice_id", String(36), nullable=False),
)

processed_events = inbox_table(metadata)
outbox = outbox_table(metadata)
