"""What the cases service answers: a case, a list, a trail, statistics.
Every read of a case is audited."""
from __future__ import annotations

import csv
import io
import json
import re
import uuid
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, exists, func, or_, select

from contracts.errors import Forbidden, InvalidInput, NotFound
from services.cases.adapters import orm
from services.cases.adapters.crypto import KeyRing, bind, bound
from services.cases.adapters.protocols import load as load_protocol
from services.cases.domain.access import Caller, statistics_scope
from services.cases.domain.audit import case_chain
from services.cases.domain.classification import CONTEXT_FLAGS, SEXUAL
from services.cases.service_layer.editing import load_case
from services.cases.service_layer.unit_of_work import UnitOfWork

SMALL_CELL = 5  # counts under this are not shown


def case_detail(uow: UnitOfWork, keyring: KeyRing, caller: Caller, case_id: str) -> dict:
    """The whole case for someone allowed to see it, with the sensitive
    fields decrypted; the read is audited, naming what was shown. Each step
    shows its reference beside its protocol id: the reference is what the
    step's events name."""
    bind(uow.session, keyring)
    case = load_case(uow, caller, case_id, "read")
    now = datetime.now(timezone.utc)
    protocol = load_protocol(case.protocol_id, case.protocol_version)
    steps = []
    order = {rule.id: n for n, rule in enumerate(protocol.steps)}  # protocol order, not insertion order
    for row in sorted(uow.plans.steps(case.id), key=lambda r: order.get(r.step_id, len(order))):
        rule = protocol.step(row.step_id)
        steps.append({
            "step_id": row.step_id, "ref": row.ref, "title": rule.title, "responsible": list(row.responsible),
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
    # exclusions hold the user's keyed digest, not her id: the caller's under each key of the ring
    where = [
        or_(*visible),
        ~exists().where(orm.case_exclusions.c.case_id == c.c.id,
                        orm.case_exclusions.c.user_digest.in_(bound(uow.session).digests(caller.user_id))),
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


QUARTER = re.compile(r"(\d{4})-Q([1-4])\Z")
MAX_QUARTERS = 40  # ten years in one answer


def quarter_of(month: str) -> str:
    """``2026-02`` → ``2026-Q1``."""
    return f"{month[:4]}-Q{(int(month[5:7]) - 1) // 3 + 1}"


def _quarter_index(value: str, field: str) -> int:
    match = QUARTER.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidInput("statistics cover whole calendar quarters",
                           {field: ["a calendar quarter, e.g. 2026-Q1"]})
    return int(match.group(1)) * 4 + int(match.group(2)) - 1


def _quarter_name(index: int) -> str:
    return f"{index // 4}-Q{index % 4 + 1}"


def quarter_range(first: str | None, last: str | None) -> tuple[int, int] | None:
    """The quarters asked for, as indexes, or None for every quarter with
    figures. Only whole calendar quarters can be asked for: figures of a
    month range could be subtracted from each other."""
    if first is None and last is None:
        return None
    if first is None or last is None:
        missing = "from" if first is None else "to"
        raise InvalidInput("give both ends of the range", {missing: ["give the first and the last quarter"]})
    start, end = _quarter_index(first, "from"), _quarter_index(last, "to")
    if end < start:
        raise InvalidInput("the range ends before it starts", {"to": ["comes before from"]})
    if end - start + 1 > MAX_QUARTERS:
        raise InvalidInput("too many quarters", {"to": [f"at most {MAX_QUARTERS} quarters at once"]})
    return start, end


def statistics(uow: UnitOfWork, caller: Caller, filters: dict) -> dict:
    """Anonymous counts over cases whose survivor's consent to aggregate
    reporting stands, read from the statistics cells, per calendar quarter
    (of the month of opening in the organisation's time zone): ``from`` and
    ``to`` are quarters (``2026-Q1``, both included).

    Each quarter's figures are computed from that quarter's cells alone, and
    no figure adds quarters together: any two answers show the same figures
    for a quarter they both cover, so subtracting one from the other tells
    nothing. In a quarter, any count under 5 is withheld (``null``), and so
    is a second one where a single withheld count could be worked out from
    the quarter's total."""
    scope = statistics_scope(caller)
    if not scope:
        raise Forbidden("your role does not see statistics")
    asked = quarter_range(filters.get("from"), filters.get("to"))
    t = orm.statistics_cells
    where = [t.c.organization_id.in_(sorted(scope)), t.c.n > 0]
    if asked is not None:
        first, last = _quarter_name(asked[0]), _quarter_name(asked[1])
        where.append(t.c.opened_month >= f"{first[:4]}-{(int(first[-1]) - 1) * 3 + 1:02d}")
        where.append(t.c.opened_month <= f"{last[:4]}-{int(last[-1]) * 3:02d}")
    sexual = {t_.value for t_ in SEXUAL}
    quarters: dict[str, dict] = {}
    for cell in uow.session.execute(select(t).where(*where)):
        figures = quarters.setdefault(quarter_of(cell.opened_month), _empty_quarter())
        figures["total"] += cell.n
        for name, value in (("by_type", cell.incident_type or "unclassified"), ("by_age_group", cell.age_group)):
            figures[name][value] = figures[name].get(value, 0) + cell.n
        for flag in filter(None, cell.context_flags.split(",")):
            figures["by_context"][flag] += cell.n
        if cell.minor and cell.incident_type in sexual:
            figures["by_context"]["child_sexual_abuse"] += cell.n
    if asked is not None:
        names = [_quarter_name(i) for i in range(asked[0], asked[1] + 1)]
    else:
        names = sorted(quarters)
    return {
        "quarters": [_shown(name, quarters.get(name) or _empty_quarter()) for name in names],
        "suppressed_below": SMALL_CELL,
    }


def _empty_quarter() -> dict:
    return {"total": 0, "by_type": {}, "by_age_group": {},
            "by_context": dict.fromkeys((*CONTEXT_FLAGS, "child_sexual_abuse"), 0)}


def _shown(name: str, figures: dict) -> dict:
    """One quarter's figures with its small cells withheld."""
    return {
        "quarter": name,
        "total": _suppress(figures["total"]),
        "by_type": _suppress_partition(figures["by_type"]),
        "by_age_group": _suppress_partition(figures["by_age_group"]),
        "by_context": {key: _suppress(n) for key, n in sorted(figures["by_context"].items())},
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
    """One row per quarter, dimension and value; no row across quarters."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["quarter", "dimension", "value", "count"])
    for quarter in figures["quarters"]:
        writer.writerow([quarter["quarter"], "total", "all", _cell(quarter["total"])])
        for dimension in ("by_type", "by_age_group", "by_context"):
            for value, n in quarter[dimension].items():
                writer.writerow([quarter["quarter"], dimension.removeprefix("by_"), value, _cell(n)])
    return out.getvalue()


def _cell(n) -> str:
    return f"<{SMALL_CELL}" if n is None else str(n)


def weekly_figures(uow: UnitOfWork, caller: Caller, now: datetime | None = None) -> dict:
    """A president's week in three counts, for her digest: her organisation's
    open cases, open steps due in the next seven days, and open steps past
    their due time. Cases she is excluded from are not counted, so the
    figures never reveal one. Counts only: no case is read, nothing audited."""
    if not caller.has("president"):
        raise Forbidden("the weekly figures are a president's")
    now = now or datetime.now(timezone.utc)
    c, s = orm.cases, orm.plan_steps
    mine = and_(
        c.c.organization_id == caller.organization_id, c.c.status != "closed",
        ~exists().where(orm.case_exclusions.c.case_id == c.c.id,
                        orm.case_exclusions.c.user_digest.in_(bound(uow.session).digests(caller.user_id))),
    )
    open_cases = uow.session.execute(select(func.count()).select_from(c).where(mine)).scalar()
    steps = select(func.count()).select_from(s.join(c, c.c.id == s.c.case_id)).where(mine, s.c.status == "open")
    due = uow.session.execute(steps.where(s.c.due_at >= now, s.c.due_at < now + timedelta(days=7))).scalar()
    overdue = uow.session.execute(steps.where(s.c.due_at < now)).scalar()
    uow.session.rollback()
    return {"open_cases": open_cases, "due_this_week": due, "overdue": overdue}


MAX_ASKED = 1000  # people asked about at once


def excluded_among(uow: UnitOfWork, caller: Caller, case_id: str, user_ids) -> list[str]:
    """Which of ``user_ids`` are excluded from the case, so that the
    notifications service never tells one of them about it. Only that
    service asks (a caller holding exactly its service role, which no
    person can hold), and only about a case of the organisation it signed
    for. The answer is those of ``user_ids`` that are excluded, as given;
    no fact of the case is read or returned, so nothing is audited."""
    if caller.roles != frozenset({"notifications"}):
        raise Forbidden("only the notifications service asks this")
    if not isinstance(user_ids, list) or len(user_ids) > MAX_ASKED:
        raise InvalidInput("the people asked about are not valid",
                           {"user_ids": [f"a list of at most {MAX_ASKED} user ids"]})
    asked: dict[str, list[str]] = {}
    for given in user_ids:
        try:
            canonical = str(uuid.UUID(given)) if isinstance(given, str) else None
        except ValueError:
            canonical = None
        if canonical is None:
            raise InvalidInput("the people asked about are not valid", {"user_ids": ["each one a user id"]})
        asked.setdefault(canonical, []).append(given)
    try:
        uuid.UUID(str(case_id))
    except ValueError:
        raise NotFound("no such case") from None
    c, x = orm.cases, orm.case_exclusions
    organization_id = uow.session.execute(select(c.c.organization_id).where(c.c.id == str(case_id))).scalar()
    if organization_id is None:
        uow.session.rollback()
        raise NotFound("no such case")
    if organization_id != caller.organization_id:
        uow.session.rollback()
        raise Forbidden("the case belongs to another organisation")
    # exclusions hold each user's keyed digest, under the key of the day it was written
    stored = set(uow.session.execute(select(x.c.user_digest).where(x.c.case_id == str(case_id))).scalars())
    uow.session.rollback()
    if not stored:
        return []
    ring = bound(uow.session)
    return [given for canonical, names in asked.items() if stored.intersection(ring.digests(canonical))
            for given in names]
