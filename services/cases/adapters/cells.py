"""The statistics cells: counts of reported cases per combination of the
published dimensions, kept in step with every change of a counted case."""
from __future__ import annotations

from sqlalchemy import delete, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from services.cases.adapters import orm
from services.cases.domain.model import Case

Key = tuple  # (organization_id, opened_month, incident_type, age_group, minor, context_flags)

RECOUNT = (
    "INSERT INTO statistics_cells (organization_id, opened_month, incident_type, age_group, minor, context_flags, n) "
    "SELECT organization_id, opened_month, COALESCE(incident_type, ''), age_group, minor, context_flags, count(*) "
    "FROM cases WHERE reporting_consent GROUP BY organization_id, opened_month, COALESCE(incident_type, ''), "
    "age_group, minor, context_flags"
)


def key_of(case: Case) -> Key | None:
    """The cell a case counts in, or None while it is not counted."""
    if not case.reporting_consent or case.opened_month is None:
        return None
    return (
        case.organization_id, case.opened_month, case.incident_type.value if case.incident_type else "",
        case.age_group, bool(case.minor), ",".join(sorted(case.context_flags)),
    )


def move(session: Session, old: Key | None, new: Key | None) -> None:
    if old == new:
        return
    if old is not None:
        _add(session, old, -1)
    if new is not None:
        _add(session, new, 1)


def _add(session: Session, key: Key, delta: int) -> None:
    t = orm.statistics_cells
    values = dict(zip(("organization_id", "opened_month", "incident_type", "age_group", "minor", "context_flags"), key))
    if delta > 0:
        insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
        statement = insert(t).values(**values, n=delta)
        session.execute(statement.on_conflict_do_update(index_elements=list(values), set_={"n": t.c.n + delta}))
    else:
        match = [t.c[name] == value for name, value in values.items()]
        session.execute(update(t).where(*match).values(n=t.c.n + delta))


def recount(session: Session) -> None:
    """Rebuild every cell from the cases (after an import, or to repair)."""
    session.execute(delete(orm.statistics_cells))
    session.execute(text(RECOUNT))
