"""The referrals service: the provider directory, for now. Consent-gated
referrals and their lifecycle come next."""
from __future__ import annotations

from servicekit.rpc import rpc

from contracts import rpc as contract
from contracts.errors import EXPECTED, Forbidden
from servicekit.callers import Callers
from servicekit.database import Database
from servicekit.outbox import OutboxRelay
from servicekit.retention import Retention, published_outbox
from servicekit.telemetry import Telemetry
from servicekit.timers import configured_timer
from services.referrals.adapters import orm
from services.referrals.service_layer import handlers


_CALLER = contract.CallerSchema()


class ReferralsService:
    name = "referrals"

    db = Database()
    relay = OutboxRelay(orm.outbox)
    retention = Retention(published_outbox(orm.outbox))
    telemetry = Telemetry()
    callers = Callers()

    @rpc(expected_exceptions=EXPECTED)
    def list_providers(self, caller: dict, organization_id: str | None = None) -> list:
        """The directory of an organisation (the caller's own by default):
        for those who work cases there, or supervise it."""
        who = contract.load(_CALLER, self.callers.verify(caller))
        own = str(who["organization_id"])
        wanted = own if organization_id is None else str(organization_id)
        roles = set(who["roles"])
        allowed = (wanted == own and bool(roles & {"focal_point", "case_lead", "president"})) or (
            "supervisor" in roles and wanted in {str(o) for o in who["supervised_organization_ids"]}
            or (wanted == own and "supervisor" in roles))
        if not allowed:
            raise Forbidden("your roles do not let you see this directory")
        return handlers.list_providers(self.db.session, wanted)

    @configured_timer("RETENTION.INTERVAL_SECONDS", 3600)
    def purge_history(self) -> None:
        """Delete history past its retention period (servicekit.retention)."""
        self.retention()

    @rpc
    def health(self) -> dict:
        return {"service": self.name, "status": "ok"}
