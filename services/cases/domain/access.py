"""Need to know: who may do what with which case (domain.md, principles)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.cases.domain.model import Case

CASE_ROLES = {"focal_point", "case_lead", "president", "supervisor"}


@dataclass(frozen=True)
class Caller:
    user_id: str
    organization_id: str
    roles: frozenset[str]


def may_open_case(caller: Caller) -> bool:
    return bool({"focal_point", "case_lead", "president"} & caller.roles)


def may_view_case(caller: Caller, case: "Case") -> bool:
    """Programme and operator roles see aggregates only; an excluded user sees
    nothing, not even that the case exists."""
    if caller.user_id in case.excluded_users:
        return False
    if caller.organization_id != case.organization_id:
        return False
    if "president" in caller.roles:
        return True
    if "focal_point" in caller.roles and case.opened_by == caller.user_id:
        return True
    return False
