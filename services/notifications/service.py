"""The notifications service: nameko entrypoints only.

The case events it is told of go through the rules (``rules.yaml``) to
notices and deliveries (``service_layer.handlers``); its timers climb the
escalation ladder of unacknowledged notices, release what quiet hours held,
plan weekly digests and reload the rules when their files change."""
from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from dataclasses import replace
from pathlib import Path

import eventlet
from nameko.dependency_providers import Config
from nameko.extensions import DependencyProvider

from contracts import rpc as contract
from contracts.errors import EXPECTED, Forbidden
from servicekit import metrics
from servicekit.callers import Callers
from servicekit.config import home
from servicekit.database import Database
from servicekit.outbox import OutboxRelay
from servicekit.reliable_events import event_consumer
from servicekit.retention import Retention, handled_events, published_outbox
from servicekit.rpc import RpcProxy, rpc
from servicekit.telemetry import Telemetry
from servicekit.timers import configured_timer
from services.notifications.adapters import orm
from services.notifications.adapters.channels import senders_from_config
from services.notifications.adapters.retention import finished_deliveries, notice_history
from services.notifications.adapters.templates import Renderer
from services.notifications.domain import acks
from services.notifications.domain.model import DeliveryFailed, Recipient
from services.notifications.domain.rules import RulesHolder
from services.notifications.service_layer import handlers
from services.notifications.service_layer.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

RULES_FILE = Path(__file__).resolve().parent / "rules.yaml"
# who the service is when it asks cases who is excluded from a case: no person's id
SERVICE_USER_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "warmi:service/notifications"))
ASKED_AT_ONCE = 1000  # the most people cases answers about in one call


class MetricsObserver(handlers.Observer):
    """What the handlers report, as Prometheus metrics (bounded labels:
    channel, kind, outcome, rung, reason, and the organisation for spending,
    which is not a survivor fact)."""

    def delivery(self, channel, kind, outcome):
        metrics.NOTIFICATIONS.labels(channel, kind, outcome).inc()

    def latency(self, channel, kind, seconds):
        metrics.NOTIFICATION_LATENCY.labels(channel).observe(max(0.0, seconds))

    def acknowledged(self, rung):
        metrics.NOTIFICATION_ACKS.labels(rung).inc()

    def escalated(self, rung):
        metrics.NOTIFICATION_ESCALATIONS.labels(rung).inc()

    def capped(self, organization_id, channel):
        metrics.NOTIFICATION_CAP_FALLBACKS.labels(organization_id, channel).inc()

    def spend(self, organization_id, channel, count, cap):
        metrics.NOTIFICATION_SPEND.labels(organization_id, channel).set(count)
        metrics.NOTIFICATION_SPEND_CAP.labels(organization_id, channel).set(cap)

    def no_channel(self, kind, reason):
        metrics.NOTIFICATION_UNREACHABLE.labels(kind, reason).inc()

    def ack_refused(self, reason):
        metrics.NOTIFICATION_ACK_REFUSED.labels(reason).inc()


def ack_keys(config: dict) -> acks.AckKeys:
    """The keys acknowledgement links are signed with: ``ACK_KEYS``, or the
    file ``ACK_KEYS_FILE`` (default ``$WARMI_HOME/ack.keys``, made by
    ``warmi run``)."""
    value = config.get("ACK_KEYS")
    if value:
        return acks.AckKeys.parse(value)
    path = Path(config.get("ACK_KEYS_FILE") or home() / "ack.keys")
    if not path.exists():
        raise ValueError("no ACK_KEYS set and no acknowledgement key file; run `warmi keys init`")
    return acks.AckKeys.parse(path.read_text())


class Notifier(DependencyProvider):
    """The channels, texts, rules and keys, made once from configuration
    and shared by every worker of the container. The e-mail sender keeps up
    to one open SMTP connection per worker, closed when the container stops."""

    def setup(self) -> None:
        config = self.container.config
        self.senders = senders_from_config(config, pool_size=self.container.max_workers)
        rules_file = Path(config.get("NOTIFICATION_RULES") or RULES_FILE)
        overrides = config.get("NOTIFICATION_RULES_DIR")
        self.rules = RulesHolder(rules_file, Path(overrides) if overrides else None, on_error=self._rules_refused)
        self.env = handlers.Env(
            rules=self.rules, renderer=Renderer(), senders=self.senders, ack_keys=ack_keys(config),
            public_url=config.get("PUBLIC_URL") or "http://127.0.0.1:8000", observer=MetricsObserver(),
            late_opening=timedelta(seconds=float(config.get("LATE_OPENING_SECONDS", 10))),
        )

    @staticmethod
    def _rules_refused(error) -> None:
        metrics.NOTIFICATION_RULES_REFUSED.inc()
        log.error("notification rules refused; the previous rules stay", extra={"reason": str(error)})

    def get_dependency(self, worker_ctx) -> handlers.Env:
        return self.env

    def stop(self) -> None:
        for sender in self.senders.values():
            sender.close()

    def kill(self) -> None:
        for sender in self.senders.values():
            sender.close(polite=False)


# who may see a case's delivery history: whoever may see cases at all; the
# deliveries shown are those of the caller's organisation, or of one she
# supervises (the gateway asks only after the cases service let her see the case)
CASE_ROLES = frozenset({"focal_point", "case_lead", "president", "supervisor"})
_CALLER = contract.CallerSchema()


def _case_event(name: str):
    """An entrypoint for one case event: the rules decide who hears of it."""

    @event_consumer("cases", name, expected_exceptions=(DeliveryFailed,))
    def handle(self, event: dict) -> None:
        if not handlers.handle_event(UnitOfWork(self.db.session), self._env(), event, f"handle_{name}"):
            metrics.EVENT_DUPLICATES.labels(self.name, name).inc()

    handle.__name__ = f"handle_{name}"
    return handle


class NotificationsService:
    name = "notifications"

    db = Database()
    notifier = Notifier()
    relay = OutboxRelay(orm.outbox)
    retention = Retention(handled_events(orm.processed_events), finished_deliveries(orm.deliveries),
                          notice_history(orm.notice_log), published_outbox(orm.outbox))
    telemetry = Telemetry()
    callers = Callers()
    cases = RpcProxy("cases")
    config = Config()

    # -- the case's events: each one through the rules --------------------------
    handle_case_opened = _case_event("case_opened")
    handle_case_updated = _case_event("case_updated")
    handle_case_classified = _case_event("case_classified")
    handle_risk_changed = _case_event("risk_changed")
    handle_case_lead_assigned = _case_event("case_lead_assigned")
    handle_step_completed = _case_event("step_completed")
    handle_step_due_soon = _case_event("step_due_soon")
    handle_step_overdue = _case_event("step_overdue")
    handle_step_escalated = _case_event("step_escalated")
    handle_case_closed = _case_event("case_closed")
    handle_case_reopened = _case_event("case_reopened")

    @event_consumer("notifications", "notice_due", expected_exceptions=(DeliveryFailed,))
    def handle_notice_due(self, event: dict) -> None:
        if not handlers.handle_notice_due(UnitOfWork(self.db.session), self.notifier, event, "handle_notice_due"):
            metrics.EVENT_DUPLICATES.labels(self.name, "notice_due").inc()

    # -- identity's events: who the committee's people are -------------------
    def _project(self, event: dict, kind: str, handler: str) -> None:
        project = handlers.project_organization if kind == "organization" else handlers.project_member
        if not project(UnitOfWork(self.db.session), event, handler):
            metrics.EVENT_DUPLICATES.labels(self.name, event["type"]).inc()

    @event_consumer("identity", "organization_registered")
    def handle_organization_registered(self, event: dict) -> None:
        self._project(event, "organization", "handle_organization_registered")

    @event_consumer("identity", "organization_changed")
    def handle_organization_changed(self, event: dict) -> None:
        self._project(event, "organization", "handle_organization_changed")

    @event_consumer("identity", "member_added")
    def handle_member_added(self, event: dict) -> None:
        self._project(event, "member", "handle_member_added")

    @event_consumer("identity", "member_changed")
    def handle_member_changed(self, event: dict) -> None:
        self._project(event, "member", "handle_member_changed")

    @event_consumer("identity", "member_deactivated")
    def handle_member_deactivated(self, event: dict) -> None:
        self._project(event, "member", "handle_member_deactivated")

    @event_consumer("identity", "member_roles_changed")
    def handle_member_roles_changed(self, event: dict) -> None:
        self._project(event, "member", "handle_member_roles_changed")

    @event_consumer("identity", "supervision_granted")
    def handle_supervision_granted(self, event: dict) -> None:
        self._project(event, "member", "handle_supervision_granted")

    @event_consumer("identity", "supervision_ended")
    def handle_supervision_ended(self, event: dict) -> None:
        self._project(event, "member", "handle_supervision_ended")

    # -- timers ------------------------------------------------------------------
    @configured_timer("WAKE_INTERVAL_SECONDS", 15)
    def wake(self) -> None:
        """Climb unacknowledged notices, release what quiet hours held."""
        handlers.wake(UnitOfWork(self.db.session), self._env())

    @configured_timer("DIGEST_INTERVAL_SECONDS", 300)
    def digests(self) -> None:
        """Plan each president's weekly digest at her local day and hour."""
        handlers.plan_digests(UnitOfWork(self.db.session), self.notifier, self._figures)

    def _env(self) -> handlers.Env:
        """The shared handlers' environment, asking cases through this worker."""
        return replace(self.notifier, excluded=self._excluded)

    def _excluded(self, organization_id: str, case_id: str, user_ids: list[str]) -> set[str]:
        """Which of ``user_ids`` are excluded from the case, as cases answers
        the service's own signed question (its service role, for the case's
        organisation). ``DeliveryFailed`` unless it answers within
        ``EXCLUSIONS_TIMEOUT_SECONDS``: nobody is told without the answer."""
        caller = self.callers.sign({
            "user_id": SERVICE_USER_ID, "organization_id": organization_id, "roles": ["notifications"],
            "supervised_organization_ids": [],
        })
        excluded: set[str] = set()
        try:
            with eventlet.Timeout(float(self.config.get("EXCLUSIONS_TIMEOUT_SECONDS", 5)), TimeoutError):
                for start in range(0, len(user_ids), ASKED_AT_ONCE):
                    excluded.update(self.cases.excluded_among(caller, case_id,
                                                              user_ids[start:start + ASKED_AT_ONCE]))
        except Exception as exc:  # cases away, slow or refusing: the event or the climb waits
            log.warning("exclusions unavailable; tried again later", extra={"error": type(exc).__name__})
            raise DeliveryFailed("cases did not say who is excluded from the case") from None
        return excluded

    def _figures(self, person: Recipient) -> dict | None:
        """Her organisation's counts for the digest, read from cases as she
        herself may read them (a caller signed for her)."""
        caller = self.callers.sign({
            "user_id": person.user_id, "organization_id": person.organization_id,
            "roles": sorted(person.roles), "supervised_organization_ids": [],
        })
        try:
            return self.cases.weekly_figures(caller)
        except Exception as exc:  # cases away: the next tick tries again, within the day
            log.warning("weekly figures unavailable", extra={"error": type(exc).__name__})
            return None

    @configured_timer("RULES_RELOAD_SECONDS", 30)
    def reload_rules(self) -> None:
        self.notifier.rules.reload_if_changed()

    @configured_timer("RETENTION.INTERVAL_SECONDS", 3600)
    def purge_history(self) -> None:
        """Delete history past its retention period (servicekit.retention)."""
        self.retention()

    # -- RPC -----------------------------------------------------------------------
    @rpc(expected_exceptions=EXPECTED)
    def case_notifications(self, caller: dict, case_id: str) -> dict:
        """Deliveries of a case's notifications and every attempt and
        escalation step, for a caller the cases service has let see the case."""
        who = contract.load(_CALLER, self.callers.verify(caller))
        if not CASE_ROLES & set(who["roles"]):
            raise Forbidden("your roles do not let you see cases")
        mine = {str(who["organization_id"])} | {str(o) for o in who["supervised_organization_ids"]}
        result = handlers.case_notifications(
            UnitOfWork(self.db.session), organization_ids=mine, case_id=str(case_id)
        )
        result["deliveries"] = contract.DeliveryViewSchema(many=True).dump(result["deliveries"])
        result["history"] = contract.NoticeStepSchema(many=True).dump(result["history"])
        return result

    @rpc
    def acknowledgement(self, token) -> dict:
        """What an acknowledgement link shows before the tap: its state and
        the case code, nothing else. Like ``health`` it takes no caller: the
        signed, expiring, single-use token is the credential."""
        if not isinstance(token, str) or len(token) > 64:
            return {"state": "invalid", "case_code": None}
        answer = handlers.ack_status(UnitOfWork(self.db.session), self.notifier, token)
        return {"state": answer.state, "case_code": answer.case_code}

    @rpc
    def acknowledge(self, token) -> dict:
        """The tap: record the acknowledgement, once; the climb stops."""
        if not isinstance(token, str) or len(token) > 64:
            return {"state": "invalid", "case_code": None}
        answer = handlers.acknowledge(UnitOfWork(self.db.session), self.notifier, token)
        return {"state": answer.state, "case_code": answer.case_code}

    @rpc
    def sms_reply(self, phone, body) -> dict:
        """A reply forwarded by the SMS provider (the gateway checked its
        signature): "OK" acknowledges the newest open urgent notice of that phone."""
        if not isinstance(phone, str) or not isinstance(body, str) or len(phone) > 16 or len(body) > 320:
            return {"acknowledged": 0}
        return {"acknowledged": handlers.acknowledge_by_reply(UnitOfWork(self.db.session), self.notifier,
                                                              phone, body)}

    @rpc
    def knows_member(self, member_id, revision) -> bool:
        """Whether this revision of a member (or a later one) has arrived from
        identity: for the operators' command that made it. Like ``health`` it
        takes no caller and answers only yes or no about an id."""
        if not isinstance(member_id, str) or len(member_id) > 36 or not isinstance(revision, int):
            return False
        return UnitOfWork(self.db.session).member_revision(member_id) >= revision

    @rpc
    def health(self) -> dict:
        return {"service": self.name, "status": "ok"}

