"""The cases service: nameko entrypoints only. Each loads its input through a
contract schema, calls the service layer, and dumps the result."""
from __future__ import annotations

from nameko.extensions import DependencyProvider
from nameko.rpc import rpc

from contracts import rpc as contract
from contracts.errors import EXPECTED
from servicekit.config import home
from servicekit.database import Database
from servicekit.outbox import OutboxRelay
from servicekit.telemetry import CallHeaders, Telemetry
from services.cases.adapters import orm
from services.cases.adapters.crypto import KeyRing
from services.cases.domain.access import Caller
from services.cases.domain.model import Case
from services.cases.service_layer import handlers
from services.cases.service_layer.unit_of_work import UnitOfWork


class Keys(DependencyProvider):
    def setup(self) -> None:
        config = self.container.config
        default_file = str(home() / "cases.keys")
        self.keyring = KeyRing.from_settings(
            config.get("ENCRYPTION_KEYS"), config.get("ENCRYPTION_KEYS_FILE") or default_file
        )

    def get_dependency(self, worker_ctx) -> KeyRing:
        return self.keyring


def caller_from(data) -> Caller:
    loaded = contract.load(contract.CallerSchema(), data)
    return Caller(str(loaded["user_id"]), str(loaded["organization_id"]), frozenset(loaded["roles"]))


def view(case: Case) -> dict:
    return contract.CaseViewSchema().dump(
        {
            "id": case.id,
            "organization_id": case.organization_id,
            "survivor_code": case.survivor_code,
            "status": case.status.value,
            "age_group": case.age_group,
            "sex": case.sex,
            "incident_at": case.incident_at,
            "opened_at": case.opened_at,
            "opened_by": case.opened_by,
            "has_narrative": case.narrative_ciphertext is not None,
            "has_survivor_name": case.survivor_name_ciphertext is not None,
        }
    )


class CasesService:
    name = "cases"

    db = Database()
    keys = Keys()
    relay = OutboxRelay(orm.outbox)
    telemetry = Telemetry()

    call_headers = CallHeaders()

    def _uow(self) -> UnitOfWork:
        return UnitOfWork(self.db.session, event_headers=self.call_headers)

    @rpc(expected_exceptions=EXPECTED)
    def open_case(self, caller: dict, payload: dict) -> dict:
        command = contract.load(contract.OpenCaseSchema(), payload)
        case = handlers.open_case(self._uow(), self.keys, caller_from(caller), command)
        return view(case)

    @rpc(expected_exceptions=EXPECTED)
    def get_case(self, caller: dict, case_id: str) -> dict:
        return view(handlers.get_case(self._uow(), caller_from(caller), str(case_id)))

    @rpc
    def health(self) -> dict:
        return {"service": self.name, "status": "ok"}
