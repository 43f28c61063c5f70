"""The notifications service: nameko entrypoints only."""
from __future__ import annotations

from nameko.extensions import DependencyProvider
from servicekit.rpc import rpc

from contracts import rpc as contract
from contracts.errors import EXPECTED, Forbidden
from servicekit import metrics
from servicekit.callers import Callers
from servicekit.database import Database
from servicekit.retention import Retention, handled_events
from servicekit.reliable_events import event_consumer
from servicekit.telemetry import Telemetry
from servicekit.timers import configured_timer
from services.notifications.adapters import orm
from services.notifications.adapters.email import EmailSender
from services.notifications.adapters.retention import finished_deliveries
from services.notifications.adapters.templates import Renderer
from services.notifications.domain.model import DeliveryFailed
from services.notifications.service_layer import handlers
from services.notifications.service_layer.unit_of_work import UnitOfWork


class Channels(DependencyProvider):
    """The senders, one per channel, made once from configuration and shared
    by every worker of the container. The e-mail sender keeps up to one open
    SMTP connection per worker (``max_workers``), closed when the container
    stops."""

    def setup(self) -> None:
        config = self.container.config
        self.senders = {
            "email": EmailSender(
                config.get("SMTP_URL") or "smtp://127.0.0.1:8025",
                config.get("MAIL_FROM") or "warmi@localhost",
                pool_size=self.container.max_workers,
            )
        }
        self.renderer = Renderer()
        self.public_url = config.get("PUBLIC_URL") or "http://127.0.0.1:8000"

    def get_dependency(self, worker_ctx) -> "Channels":
        return self

    def stop(self) -> None:
        """Say goodbye (QUIT) on every idle connection."""
        for sender in self.senders.values():
            sender.close()

    def kill(self) -> None:
        for sender in self.senders.values():
            sender.close(polite=False)


def record_outcome(channel: str, outcome: str) -> None:
    metrics.NOTIFICATIONS.labels(channel, outcome).inc()


# who may see a case's delivery state: whoever may see cases at all; the
# deliveries shown are those of the caller's organisation, or of one she
# supervises (the gateway asks only after the cases service let her see the case)
CASE_ROLES = frozenset({"focal_point", "case_lead", "president", "supervisor"})
_CALLER = contract.CallerSchema()


class NotificationsService:
    name = "notifications"

    db = Database()
    channels = Channels()
    retention = Retention(handled_events(orm.processed_events), finished_deliveries(orm.deliveries))
    telemetry = Telemetry()
    callers = Callers()

    @event_consumer("cases", "case_opened", expected_exceptions=(DeliveryFailed,))
    def handle_case_opened(self, event: dict) -> None:
        handled = handlers.notify_case_opened(
            UnitOfWork(self.db.session),
            self.channels.senders,
            self.channels.renderer,
            event,
            public_url=self.channels.public_url,
            outcome=record_outcome,
        )
        if not handled:
            metrics.EVENT_DUPLICATES.labels(self.name, "case_opened").inc()

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

    @rpc(expected_exceptions=EXPECTED)
    def case_notifications(self, caller: dict, case_id: str) -> dict:
        """Delivery state of a case's notifications, for a caller the cases
        service has already let see the case."""
        who = contract.load(_CALLER, self.callers.verify(caller))
        if not CASE_ROLES & set(who["roles"]):
            raise Forbidden("your roles do not let you see cases")
        mine = {str(who["organization_id"])} | {str(o) for o in who["supervised_organization_ids"]}
        result = handlers.case_notifications(
            UnitOfWork(self.db.session), organization_ids=mine, case_id=str(case_id)
        )
        result["deliveries"] = contract.DeliveryViewSchema(many=True).dump(result["deliveries"])
        return result

    @configured_timer("RETENTION.INTERVAL_SECONDS", 3600)
    def purge_history(self) -> None:
        """Delete history past its retention period (servicekit.retention)."""
        self.retention()

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
