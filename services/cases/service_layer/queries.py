"""What the cases service answers: a case, a list, a trail, statistics.
Every read of a case is audited."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone

from sqlalchemy import and_, exists, or_, select

from contracts.errors import Forbidden
from services.cases.adapters import orm
from services.cases.adapters.crypto import KeyRing
from services.cases.adapters.protocols import load as load_protocol
from services.cases.domain.access import Caller, statistics_scope
from services.cases.domain.audit import case_chain
from services.cases.domain.classification import CONTEXT_FLAGS, SEXUAL
from services.cases.service_layer.editing import load_case
from services.cases.service_layer.unit_of_work import UnitOfWork

SMALL_CELL = 5  # counts under this are not shown


def case_detail(uow: UnitOfWork, keyring: KeyRing, caller: Caller, case_id: str) -> dict:
    """The whole case for someone allowed to see it, with the sensitive
    fields decrypted; the read is audited, naming what was shown."""
    case = load_case(uow, caller, case_id, "read")
    now = datetime.now(timezone.utc)
    protocol = load_protocol(case.protocol_id, case.protocol_version)
    steps = []
    order = {rule.id: n for n, rule in enumerate(protocol.steps)}  # protocol order, not insertion order
    for row in sorted(uow.plans.steps(case.id), key=lambda r: order.get(r.step_id, len(order))):
        rule = protocol.step(row.step_id)
        steps.append({
            "step_id": row.step_id, "title": rule.title, "responsible": list(row.responsible),
            "done_when": rule.done_when, "due_at": row.due_at, "urgent": row.urgent, "status": row.status,
            "overdue": row.status == "open" and row.due_at < now, "completed_at": row.completed_at,
            "completed_by": row.completed_by, "outcome": row.outcome,
            "note": keyring.decrypt(row.note_ciphertext), "approved_by": row.approved_by,
            "needs_approval_by": rule.approver or (
                rule.approver_if_high_risk if case.risk and case.risk.value == "high" else None),
        })
    consents = [
        {"id": c.id, "purpose": c.purpose, "provider_id": c.provider_id, "data_shared": list(c.data_shared),
         "given_by": c.given_by, "child_assent": c.child_assent, "recorded_by": c.recorded_by,
         "recorded_at": c.recorded_at, "withdrawn_at": c.withdrawn_at}
        for c in uow.consents.for_case(case.id)
    ]
    history = [
        {"from": r.from_status, "to": r.to_status, "reason": r.reason, "by": r.actor_id, "at": r.at}
        for r in uow.cases.status_history(case.id)
    ]
    uow.audit(case_id=case.id, organization_id=case.organization_id, actor_id=caller.user_id, action="read",
              fields=["summary", "narrative", "survivor_name", "plan", "consents"], now=now)
    uow.commit()
    return {
        "case": case,
        "narrative": keyring.decrypt(case.narrative_ciphertext),
        "survivor_name": keyring.decrypt(case.survivor_name_ciphertext),
        "plan": {"protocol": case.protocol_id, "version": case.protocol_version, "steps": steps},
        "consents": consents,
        "history": history,
    }


def list_cases(uow: UnitOfWork, caller: Caller, filters: dict) -> tuple[list, int]:
    """Cases the caller may see, newest first; each listed case is audited."""
    c = orm.cases
    visible = []
    if caller.has("president"):
        visible.append(c.c.organization_id == caller.organization_id)
    if caller.has("supervisor") and caller.supervised:
        visible.append(c.c.organization_id.in_(sorted(caller.supervised)))
    if caller.has("case_lead"):
        visible.append(and_(c.c.organization_id == caller.organization_id, c.c.case_lead_id == caller.user_id))
    if caller.has("focal_point"):
        visible.append(and_(c.c.organization_id == caller.organization_id, c.c.opened_by == caller.user_id))
    if not visible:
        raise Forbidden("your role sees aggregates only")
    where = [
        or_(*visible),
        ~exists().where(orm.case_exclusions.c.case_id == c.c.id, orm.case_exclusions.c.user_id == caller.user_id),
    ]
    if filters.get("status"):
        where.append(c.c.status == filters["status"])
    if filters.get("risk_level"):
        where.append(c.c.risk_level == filters["risk_level"])
    if filters.get("overdue"):
        s = orm.plan_steps
        where.append(exists().where(s.c.case_id == c.c.id, s.c.status == "open",
                                    s.c.due_at < datetime.now(timezone.utc)))
    per_page = filters["per_page"]
    cases, total = uow.cases.page(where=where, order=[c.c.opened_at.desc(), c.c.id],
                                  limit=per_page, offset=(filters["page"] - 1) * per_page)
    now = datetime.now(timezone.utc)
    for case in cases:
        uow.audit(case_id=case.id, organization_id=case.organization_id, actor_id=caller.user_id,
                  action="list", fields=["summary"], now=now)
    uow.commit()
    return cases, total


def audit_trail(uow: UnitOfWork, caller: Caller, case_id: str) -> list[dict]:
    case = load_case(uow, caller, case_id, "audit_trail")
    trail = [{"id": e.id, "actor_id": e.actor_id, "action": e.action, "fields": json.loads(e.detail or "[]"),
              "at": e.at} for e in uow.audit_trail.entries(uow.session, case_chain(case.id))]
    uow.audit(case_id=case.id, organization_id=case.organization_id, actor_id=caller.user_id,
              action="read_audit", fields=["audit_trail"])
    uow.commit()
    return trail


def verify_audit(uow: UnitOfWork, anchored: dict | None = None) -> list:
    """Every chain of the trail, checked from its first entry (MACs, links,
    heads) and, with ``anchored`` (the cases heads of an anchor), that no
    anchored entry is gone; the problems found."""
    return uow.audit_trail.verify(uow.session, anchored)


def statistics(uow: UnitOfWork, caller: Caller, filters: dict) -> dict:
    """Anonymous counts over cases whose survivor's consent to aggregate
    reporting stands, read from the statistics cells; any count under 5 is
    withheld (``null``), and so is a second one where a single withheld count
    could be worked out from the total. ``from`` and ``to`` are months
    (YYYY-MM, both included)."""
    scope = statistics_scope(caller)
    if not scope:
        raise Forbidden("your role does not see statistics")
    t = orm.statistics_cells
    where = [t.c.organization_id.in_(sorted(scope)), t.c.n > 0]
    if filters.get("from"):
        where.append(t.c.opened_month >= filters["from"])
    if filters.get("to"):
        where.append(t.c.opened_month <= filters["to"])
    counts: dict[str, dict] = {"by_type": {}, "by_month": {}, "by_age_group": {}}
    context = dict.fromkeys((*CONTEXT_FLAGS, "child_sexual_abuse"), 0)
    total = 0
    sexual = {t_.value for t_ in SEXUAL}
    for cell in uow.session.execute(select(t).where(*where)):
        total += cell.n
        for name, value in (("by_type", cell.incident_type or "unclassified"), ("by_month", cell.opened_month),
                            ("by_age_group", cell.age_group)):
            counts[name][value] = counts[name].get(value, 0) + cell.n
        for flag in filter(None, cell.context_flags.split(",")):
            context[flag] += cell.n
        if cell.minor and cell.incident_type in sexual:
            context["child_sexual_abuse"] += cell.n
    return {
        "total": _suppress(total),
        **{name: _suppress_partition(cells) for name, cells in counts.items()},
        "by_context": {key: _suppress(n) for key, n in sorted(context.items())},
        "suppressed_below": SMALL_CELL,
    }


def _suppress(n: int) -> int | None:
    return n if n == 0 or n >= SMALL_CELL else None


def _suppress_partition(cells: dict) -> dict:
    """Small cells are withheld; where only one is, the next smallest goes too,
    or the total would give it away."""
    shown = {key: _suppress(n) for key, n in sorted(cells.items())}
    hidden = [key for key, n in shown.items() if n is None]
    if len(hidden) == 1:
        rest = sorted((n, key) for key, n in shown.items() if n)
        if rest:
            shown[rest[0][1]] = None
    return shown


def statistics_csv(figures: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["dimension", "value", "count"])
    writer.writerow(["total", "all", _cell(figures["total"])])
    for dimension in ("by_type", "by_month", "by_age_group", "by_context"):
        for value, n in figures[dimension].items():
            writer.writerow([dimension.removeprefix("by_"), value, _cell(n)])
    return out.getvalue()


def _cell(n) -> str:
    return f"<{SMALL_CELL}" if n is None else str(n)
