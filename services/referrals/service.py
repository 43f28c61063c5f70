"""The referrals service: the provider directory, for now. Consent-gated
referrals and their lifecycle come next."""
from __future__ import annotations

from servicekit.rpc import rpc

from contracts import rpc as contract
from contracts.errors import EXPECTED
from servicekit.database import Database
from servicekit.outbox import OutboxRelay
from servicekit.retention import Retention, published_outbox
from servicekit.telemetry import Telemetry
from servicekit.timers import configured_timer
from services.referrals.adapters import orm
from services.referrals.service_layer import handlers


class ReferralsService:
    name = "referrals"

    db = Database()
    relay = OutboxRelay(orm.outbox)
    retention = Retention(published_outbox(orm.outbox))
    telemetry = Telemetry()

    @rpc(expected_exceptions=EXPECTED)
    def list_providers(self, caller: dict) -> list:
        who = contract.load(contract.CallerSchema(), caller)
        return handlers.list_providers(self.db.session, str(who["organization_id"]))

    @configured_timer("RETENTION.INTERVAL_SECONDS", 3600)
    def purge_history(self) -> None:
        """Delete history past its retention period (servicekit.retention)."""
        self.retention()

    @rpc
    def health(self) -> dict:
        return {"service": self.name, "status": "ok"}
