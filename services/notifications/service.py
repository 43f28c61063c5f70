"""The notifications service: nameko entrypoints only."""
from __future__ import annotations

from nameko.extensions import DependencyProvider
from servicekit.rpc import rpc

from contracts import rpc as contract
from contracts.errors import EXPECTED, Forbidden
from servicekit import metrics
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


class NotificationsService:
    name = "notifications"

    db = Database()
    channels = Channels()
    retention = Retention(handled_events(orm.processed_events), finished_deliveries(orm.deliveries))
    telemetry = Telemetry()

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

    @rpc(expected_exceptions=EXPECTED)
    def case_notifications(self, caller: dict, case_id: str) -> dict:
        """Delivery state of a case's notifications, for a caller the cases
        service has already let see the case."""
        who = contract.load(contract.CallerSchema(), caller)
        if not who["roles"]:
            raise Forbidden("no role")
        result = handlers.case_notifications(
            UnitOfWork(self.db.session), organization_id=str(who["organization_id"]), case_id=str(case_id)
        )
        result["deliveries"] = contract.DeliveryViewSchema(many=True).dump(result["deliveries"])
        return result

    @configured_timer("RETENTION.INTERVAL_SECONDS", 3600)
    def purge_history(self) -> None:
        """Delete history past its retention period (servicekit.retention)."""
        self.retention()

    @rpc
    def health(self) -> dict:
        return {"service": self.name, "status": "ok"}
