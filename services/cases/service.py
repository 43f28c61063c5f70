"""The cases service: nameko entrypoints only. Each loads its input through a
contract schema, calls the service layer, and dumps the result."""
from __future__ import annotations

import logging
from datetime import timedelta

from nameko.extensions import DependencyProvider
from servicekit.rpc import rpc

from contracts import rpc as contract
from contracts.errors import EXPECTED
from servicekit import metrics
from servicekit.audit import AuditKeys
from servicekit.callers import Callers
from servicekit.config import home
from servicekit.database import Database
from servicekit.outbox import OutboxRelay
from servicekit.retention import Retention, handled_events, published_outbox
from servicekit.reliable_events import event_consumer
from servicekit.telemetry import CallHeaders, Telemetry
from servicekit.timers import configured_timer
from services.cases.adapters import crypto, orm
from services.cases.adapters.crypto import KeyRing
from services.cases.domain.access import Caller
from services.cases.domain.deadlines import AlertPolicy
from services.cases.domain.model import Case
from services.cases.service_layer import consents, handlers, plans, queries
from services.cases.service_layer.sweep import overdue_steps, sweep
from services.cases.service_layer.unit_of_work import UnitOfWork, cases_audit_trail

log = logging.getLogger(__name__)


class Keys(DependencyProvider):
    def setup(self) -> None:
        config = self.container.config
        default_file = str(home() / "cases.keys")
        self.keyring = KeyRing.from_settings(
            config.get("ENCRYPTION_KEYS"), config.get("ENCRYPTION_KEYS_FILE") or default_file
        )

    def get_dependency(self, worker_ctx) -> KeyRing:
        return self.keyring


class AuditKeysOf(DependencyProvider):
    """The audit trail, with its keys from AUDIT_KEYS or AUDIT_KEYS_FILE (else
    audit.keys in WARMI_HOME): the service does not start without one."""

    def setup(self) -> None:
        self.trail = cases_audit_trail(AuditKeys.configured(self.container.config))

    def get_dependency(self, worker_ctx):
        return self.trail


class Deadlines(DependencyProvider):
    """The alert policy of the deadline sweep, from configuration."""

    def setup(self) -> None:
        settings = self.container.config.get("DEADLINES") or {}
        self.policy = AlertPolicy(
            due_soon=timedelta(hours=float(settings.get("DUE_SOON_HOURS", 2))),
            to_president=timedelta(hours=float(settings.get("ESCALATE_TO_PRESIDENT_HOURS", 24))),
            to_supervisor=timedelta(hours=float(settings.get("ESCALATE_TO_SUPERVISOR_HOURS", 72))),
        )

    def get_dependency(self, worker_ctx) -> AlertPolicy:
        return self.policy


# The schemas of every call, made once: a marshmallow schema copies its fields
# when it is made, which cost more than loading through it. They keep no state
# between calls.
_CALLER = contract.CallerSchema()
_OPEN_CASE = contract.OpenCaseSchema()
_CASE_VIEW = contract.CaseViewSchema()
_EXPECTED_VERSION = contract.ExpectedVersionSchema()


def edit_command(schema, payload, expected_version) -> dict:
    """An edit's body through its schema, with the version it was made on
    (the HTTP ``If-Match``), which the service layer checks atomically."""
    command = contract.load(schema, payload) if schema is not None else {}
    command["version"] = contract.load(_EXPECTED_VERSION, {"expected_version": expected_version})["expected_version"]
    return command


def caller_from(data) -> Caller:
    loaded = contract.load(_CALLER, data)
    return Caller(
        str(loaded["user_id"]), str(loaded["organization_id"]), frozenset(loaded["roles"]),
        frozenset(str(o) for o in loaded["supervised_organization_ids"]),
    )


def view(case: Case) -> dict:
    return _CASE_VIEW.dump(
        {
            "id": case.id,
            "version": case.version,
            "organization_id": case.organization_id,
            "survivor_code": case.survivor_code,
            "status": case.status.value,
            "age_group": case.age_group,
            "sex": case.sex,
            "minor": case.minor,
            "incident_at": case.incident_at,
            "opened_at": case.opened_at,
            "opened_by": case.opened_by,
            "risk_level": case.risk.value if case.risk else None,
            "incident_type": case.incident_type.value if case.incident_type else None,
            "delay_bucket": case.delay_bucket,
            "case_lead_id": case.case_lead_id,
            "child_sexual_abuse": case.child_sexual_abuse,
            "mandatory_report": case.minor,
            "has_narrative": case.narrative_ciphertext is not None,
            "has_survivor_name": case.survivor_name_ciphertext is not None,
        }
    )


def detail_view(detail: dict) -> dict:
    case = detail.pop("case")
    out = view(case)
    out.update(
        place=case.place, perpetrator_relationship=case.perpetrator_relationship,
        context_flags=sorted(case.context_flags), disability=case.disability,
        narrative=detail["narrative"], survivor_name=detail["survivor_name"],
        plan=contract.jsonable(detail["plan"]), consents=contract.jsonable(detail["consents"]),
        history=contract.jsonable(detail["history"]),
    )
    return out


class CasesService:
    name = "cases"

    db = Database()
    keys = Keys()
    audit_chain = AuditKeysOf()  # not ``audit_trail``: the RPC of that name would hide it
    deadlines = Deadlines()
    relay = OutboxRelay(orm.outbox)
    retention = Retention(published_outbox(orm.outbox), handled_events(orm.processed_events))
    telemetry = Telemetry()
    call_headers = CallHeaders()
    callers = Callers()

    def _who(self, caller) -> Caller:
        """The caller, once its signature holds (servicekit.callers)."""
        return caller_from(self.callers.verify(caller))

    def _uow(self) -> UnitOfWork:
        session = self.db.session
        crypto.bind(session, self.keys)  # the case's facts and exclusions are read and written encrypted
        return UnitOfWork(session, event_headers=self.call_headers, audit_trail=self.audit_chain)

    @rpc(expected_exceptions=EXPECTED)
    def open_case(self, caller: dict, payload: dict) -> dict:
        command = contract.load(_OPEN_CASE, payload)
        return view(handlers.open_case(self._uow(), self.keys, self._who(caller), command, policy=self.deadlines))

    @rpc(expected_exceptions=EXPECTED)
    def get_case(self, caller: dict, case_id: str) -> dict:
        return detail_view(queries.case_detail(self._uow(), self.keys, self._who(caller), str(case_id)))

    @rpc(expected_exceptions=EXPECTED)
    def list_cases(self, caller: dict, filters: dict) -> dict:
        loaded = contract.load(contract.ListFilterSchema(), filters)
        cases, total = queries.list_cases(self._uow(), self._who(caller), loaded)
        return {"items": [view(c) for c in cases], "total": total, "page": loaded["page"],
                "per_page": loaded["per_page"]}

    @rpc(expected_exceptions=EXPECTED)
    def update_case(self, caller: dict, case_id: str, payload: dict, expected_version: int) -> dict:
        command = edit_command(contract.UpdateCaseSchema(), payload, expected_version)
        return view(handlers.update_case(self._uow(), self._who(caller), str(case_id), command, self.deadlines))

    @rpc(expected_exceptions=EXPECTED)
    def classify_case(self, caller: dict, case_id: str, payload: dict, expected_version: int) -> dict:
        command = edit_command(contract.ClassifySchema(), payload, expected_version)
        return view(handlers.classify_case(self._uow(), self._who(caller), str(case_id), command, self.deadlines))

    @rpc(expected_exceptions=EXPECTED)
    def set_risk(self, caller: dict, case_id: str, payload: dict, expected_version: int) -> dict:
        command = edit_command(contract.RiskSchema(), payload, expected_version)
        return view(handlers.set_risk(self._uow(), self._who(caller), str(case_id), command, self.deadlines))

    @rpc(expected_exceptions=EXPECTED)
    def assign_case_lead(self, caller: dict, case_id: str, payload: dict, expected_version: int) -> dict:
        command = edit_command(contract.AssignLeadSchema(), payload, expected_version)
        return view(handlers.assign_case_lead(self._uow(), self._who(caller), str(case_id), command))

    @rpc(expected_exceptions=EXPECTED)
    def exclude_user(self, caller: dict, case_id: str, payload: dict, expected_version: int) -> dict:
        command = edit_command(contract.ExcludeSchema(), payload, expected_version)
        return view(handlers.exclude_user(self._uow(), self._who(caller), str(case_id), command))

    @rpc(expected_exceptions=EXPECTED)
    def record_consent(self, caller: dict, case_id: str, payload: dict, expected_version: int) -> dict:
        command = edit_command(contract.ConsentSchema(), payload, expected_version)
        consent = consents.record_consent(self._uow(), self._who(caller), str(case_id), command,
                                          policy=self.deadlines)
        return {"id": consent.id, "purpose": consent.purpose, "case_version": command["version"] + 1}

    @rpc(expected_exceptions=EXPECTED)
    def withdraw_consent(self, caller: dict, case_id: str, consent_id: str, expected_version: int) -> dict:
        version = edit_command(None, None, expected_version)["version"]
        consent = consents.withdraw_consent(self._uow(), self._who(caller), str(case_id), str(consent_id),
                                            self.deadlines, version=version)
        return {"id": consent.id, "purpose": consent.purpose, "withdrawn": True, "case_version": version + 1}

    @rpc(expected_exceptions=EXPECTED)
    def complete_step(self, caller: dict, case_id: str, step_id: str, payload: dict, expected_version: int) -> dict:
        command = edit_command(contract.CompleteStepSchema(), payload, expected_version)
        return view(plans.complete_step(self._uow(), self.keys, self._who(caller), str(case_id), str(step_id),
                                           command, self.deadlines))

    @rpc(expected_exceptions=EXPECTED)
    def approve_step(self, caller: dict, case_id: str, step_id: str, expected_version: int) -> dict:
        version = edit_command(None, None, expected_version)["version"]
        return view(plans.approve_step(self._uow(), self._who(caller), str(case_id), str(step_id), version=version))

    @rpc(expected_exceptions=EXPECTED)
    def approve_closure(self, caller: dict, case_id: str, expected_version: int) -> dict:
        version = edit_command(None, None, expected_version)["version"]
        return view(handlers.approve_closure(self._uow(), self._who(caller), str(case_id), version=version))

    @rpc(expected_exceptions=EXPECTED)
    def close_case(self, caller: dict, case_id: str, payload: dict, expected_version: int) -> dict:
        command = edit_command(contract.CloseSchema(), payload, expected_version)
        return view(handlers.close_case(self._uow(), self._who(caller), str(case_id), command))

    @rpc(expected_exceptions=EXPECTED)
    def reopen_case(self, caller: dict, case_id: str, payload: dict, expected_version: int) -> dict:
        command = edit_command(contract.ReopenSchema(), payload, expected_version)
        return view(handlers.reopen_case(self._uow(), self._who(caller), str(case_id), command, self.deadlines))

    @rpc(expected_exceptions=EXPECTED)
    def audit_trail(self, caller: dict, case_id: str) -> list:
        return contract.jsonable(queries.audit_trail(self._uow(), self._who(caller), str(case_id)))

    @rpc(expected_exceptions=EXPECTED)
    def statistics(self, caller: dict, filters: dict) -> dict:
        loaded = contract.load(contract.StatisticsFilterSchema(), filters)
        figures = queries.statistics(self._uow(), self._who(caller), {"from": loaded["from_"], "to": loaded["to"]})
        return {"figures": figures, "csv": queries.statistics_csv(figures)}

    @rpc(expected_exceptions=EXPECTED)
    def weekly_figures(self, caller: dict) -> dict:
        """A president's counts for her weekly digest (the notifications
        service asks, with a caller signed for her)."""
        return queries.weekly_figures(self._uow(), self._who(caller))

    @rpc(expected_exceptions=EXPECTED)
    def excluded_among(self, caller: dict, case_id: str, user_ids: list) -> list:
        """Which of ``user_ids`` are excluded from the case: the notifications
        service asks before it tells anyone of the case (a caller signed for
        itself, with its service role; no person is answered)."""
        return queries.excluded_among(self._uow(), self._who(caller), str(case_id), user_ids)

    @configured_timer("DEADLINES.SWEEP_INTERVAL_SECONDS", 30)
    def sweep_deadlines(self) -> None:
        def counted(kinds) -> None:
            for kind, n in kinds.items():
                metrics.STEP_ALERTS.labels(kind).inc(n)

        staged = sweep(self.db.factory, self.deadlines, headers=self.call_headers, counted=counted)
        metrics.STEPS_OVERDUE.labels(self.name).set(overdue_steps(self.db.factory))
        if staged:
            log.info("deadline alerts staged", extra={"alerts": staged})

    @event_consumer("identity", "organization_registered")
    def handle_organization_registered(self, event: dict) -> None:
        if not handlers.project_organization(self._uow(), event):
            metrics.EVENT_DUPLICATES.labels(self.name, "organization_registered").inc()

    @event_consumer("identity", "organization_changed")
    def handle_organization_changed(self, event: dict) -> None:
        if not handlers.project_organization(self._uow(), event):
            metrics.EVENT_DUPLICATES.labels(self.name, "organization_changed").inc()

    @event_consumer("referrals", "provider_registered")
    def handle_provider_registered(self, event: dict) -> None:
        if not handlers.project_provider(self._uow(), event):
            metrics.EVENT_DUPLICATES.labels(self.name, "provider_registered").inc()

    @configured_timer("RETENTION.INTERVAL_SECONDS", 3600)
    def purge_history(self) -> None:
        """Delete history past its retention period (servicekit.retention)."""
        self.retention()

    @rpc
    def knows_organization(self, organization_id) -> bool:
        """Whether identity's event of this organisation has arrived: for the
        operators' command that registered it, to say when cases can be
        opened. Like ``health`` it takes no caller; it answers yes or no
        about an id the asker already has, and nothing else."""
        if not isinstance(organization_id, str) or len(organization_id) > 36:
            return False
        return self._uow().organizations.get(organization_id) is not None

    @rpc
    def health(self) -> dict:
        return {"service": self.name, "status": "ok"}
