"""Operational metrics (design rule 7): work, latency, failures, backlog.

Labels are bounded: service, RPC method, event type, route template,
channel, outcome. Never a case code, a person or an incident type.
"""
from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

RPC_DURATION = Histogram(
    "warmi_rpc_duration_seconds", "Time to serve an RPC call", ["service", "method"], buckets=LATENCY_BUCKETS
)
EVENT_HANDLER_DURATION = Histogram(
    "warmi_event_handler_duration_seconds",
    "Time to handle one event delivery",
    ["service", "event_type"],
    buckets=LATENCY_BUCKETS,
)
HTTP_DURATION = Histogram(
    "warmi_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["service", "route", "method"],
    buckets=LATENCY_BUCKETS,
)
HTTP_RESPONSES = Counter(
    "warmi_http_responses_total", "HTTP responses by status class", ["service", "route", "status_class"]
)
HANDLER_FAILURES = Counter(
    "warmi_handler_failures_total",
    "Entrypoint executions that raised an unexpected error",
    ["service", "entrypoint", "error"],
)
EVENT_RETRIES = Counter(
    "warmi_event_retries_total", "Event deliveries scheduled for another try", ["service", "event_type"]
)
EVENT_DEAD_LETTERED = Counter(
    "warmi_event_dead_lettered_total", "Event deliveries moved to a dead-letter queue", ["service", "event_type"]
)
EVENT_REJECTED = Counter(
    "warmi_event_rejected_total",
    "Event messages dead-lettered at once because no retry could handle them",
    ["service", "event_type", "reason"],
)  # reason: undecodable (not JSON), invalid (fails the catalogue's envelope or schema)
UNROUTED = Gauge(
    "warmi_events_unrouted_messages", "Events that no queue was bound to take, waiting in the unrouted queue", ["service"]
)
SETTLE_LOST = Counter(
    "warmi_settle_lost_total",
    "Acks and requeues let go because the broker connection had died (the broker delivers again)",
    ["service", "kind", "action"],
)  # kind: rpc, event; action: ack, requeue
RPC_REPLIES_LOST = Counter(
    "warmi_rpc_replies_lost_total", "RPC replies that could not be published before giving up", ["service"]
)
RPC_REPLIES_REPEATED = Counter(
    "warmi_rpc_replies_repeated_total",
    "Requests delivered again and answered with the answer already computed instead of running twice",
    ["service"],
)
EVENT_DUPLICATES = Counter(
    "warmi_event_duplicates_total", "Event deliveries skipped as already handled", ["service", "event_type"]
)
OUTBOX_PENDING = Gauge("warmi_outbox_pending_messages", "Outbox rows not yet published", ["service"])
OUTBOX_OLDEST_AGE = Gauge(
    "warmi_outbox_oldest_pending_age_seconds", "Age of the oldest unpublished outbox row", ["service"]
)
OUTBOX_PUBLISHED = Counter("warmi_outbox_published_total", "Outbox rows published and confirmed", ["service"])
OUTBOX_FAILURES = Counter("warmi_outbox_publish_failures_total", "Relay passes that failed to publish", ["service"])
STEP_ALERTS = Counter(
    "warmi_step_alerts_total", "Plan-step alerts staged by the deadline sweep", ["kind"]
)  # kind: due_soon, overdue, escalated_president, escalated_supervisor; never a step or a case
STEPS_OVERDUE = Gauge(
    "warmi_plan_steps_overdue", "Open plan steps past their due time, all organisations together", ["service"]
)
NOTIFICATIONS = Counter(
    "warmi_notifications_total", "Notification delivery attempts by channel, kind and outcome",
    ["channel", "kind", "outcome"],
)  # outcome: sent, failed (tried again), rejected, superseded, capped, cancelled
NOTIFICATION_LATENCY = Histogram(
    "warmi_notification_latency_seconds", "From the event's occurred_at to the provider's acceptance",
    ["channel"], buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)
NOTIFICATION_ACKS = Counter(
    "warmi_notification_acknowledgements_total", "Urgent notices acknowledged, by the rung they had reached",
    ["rung"],
)
NOTIFICATION_ESCALATIONS = Counter(
    "warmi_notification_escalations_total", "Unacknowledged notices that climbed a rung, by the rung reached",
    ["rung"],
)
NOTIFICATION_SPEND = Gauge(
    "warmi_notification_spend_messages", "SMS and WhatsApp messages of the month, per organisation",
    ["organization", "channel"],
)  # the organisation is no survivor fact; these are the only metrics that name one
NOTIFICATION_SPEND_CAP = Gauge(
    "warmi_notification_spend_cap_messages", "The monthly cap of SMS and WhatsApp messages, per organisation",
    ["organization", "channel"],
)
NOTIFICATION_CAP_FALLBACKS = Counter(
    "warmi_notification_cap_fallbacks_total", "Messages not sent on a channel because the monthly cap was reached",
    ["organization", "channel"],
)
NOTIFICATION_UNREACHABLE = Counter(
    "warmi_notification_unreachable_total", "People a rule names who could not be reached, by kind and reason",
    ["kind", "reason"],
)
NOTIFICATION_ACK_REFUSED = Counter(
    "warmi_notification_ack_refused_total", "Acknowledgement links refused, by reason", ["reason"]
)
NOTIFICATION_RULES_REFUSED = Counter(
    "warmi_notification_rules_refused_total", "Rules files refused at load; the previous rules stayed"
)
TEMPLATE_FALLBACKS = Counter(
    "warmi_notification_template_fallbacks_total",
    "Notification texts rendered in another language than the one asked for, for want of its catalogue",
    ["kind", "locale"],
)  # locale: the language asked for (a two- or three-letter code, else "other"); never a person
RETENTION_DELETED = Counter(
    "warmi_retention_deleted_total", "Rows deleted by retention once older than their period", ["service", "table"]
)  # table: outbox, processed_events, deliveries

_server_started: dict[str, object] = {}


def serve(address: str) -> None:
    """Serve ``/metrics`` for this process on ``address`` (host:port), once.

    Several containers in one process (tests, ``warmi serve all``) share the
    process's registry, so the first caller starts the one server.
    """
    if not address or address in _server_started:
        return
    import eventlet
    import eventlet.wsgi

    host, _, port = address.rpartition(":")
    sock = eventlet.listen((host or "0.0.0.0", int(port)))
    app = make_wsgi_app()
    _server_started[address] = eventlet.spawn(eventlet.wsgi.server, sock, app, log_output=False)
    log.info("metrics served", extra={"address": address})
