"""The referrals service: the provider directory, for now. Consent-gated
referrals and their lifecycle come next."""
from __future__ import annotations

from servicekit.rpc import rpc

from contracts import rpc as contract
from contracts.errors import EXPECTED
from servicekit.database import Database
from servicekit.outbox import OutboxRelay
from servicekit.telemetry import Telemetry
from services.referrals.adapters import orm
from services.referrals.service_layer import handlers


class ReferralsService:
    name = "referrals"

    db = Database()
    relay = OutboxRelay(orm.outbox)
    telemetry = Telemetry()

    @rpc(expected_exceptions=EXPECTED)
    def list_providers(self, caller: dict) -> list:
        who = contract.load(contract.CallerSchema(), caller)
        return handlers.list_providers(self.db.session, str(who["organization_id"]))

    @rpc
    def health(self) -> dict:
        return {"service": self.name, "status": "ok"}
