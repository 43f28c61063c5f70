"""Need to know: who may do what with which case (domain.md, principles).

A user sees a case only through a role in its organisation; programme and
operator roles see aggregates only; an excluded user (conflict of interest)
sees nothing, not even that the case exists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.cases.domain.model import Case


@dataclass(frozen=True)
class Caller:
    user_id: str
    organization_id: str
    roles: frozenset[str]
    supervised: frozenset[str] = field(default_factory=frozenset)  # organisations she supervises

    def has(self, role: str) -> bool:
        return role in self.roles


def may_open_case(caller: Caller) -> bool:
    return bool({"focal_point", "case_lead", "president"} & caller.roles)


def _president(caller: Caller, case: "Case") -> bool:
    return caller.has("president") and caller.organization_id == case.organization_id


def _lead(caller: Caller, case: "Case") -> bool:
    return (
        caller.has("case_lead")
        and caller.organization_id == case.organization_id
        and case.case_lead_id == caller.user_id
    )


def _supervisor(caller: Caller, case: "Case") -> bool:
    return caller.has("supervisor") and case.organization_id in caller.supervised


def _opener(caller: Caller, case: "Case") -> bool:
    return (
        caller.has("focal_point")
        and caller.organization_id == case.organization_id
        and case.opened_by == caller.user_id
    )


def may_view_case(caller: Caller, case: "Case") -> bool:
    if caller.user_id in case.excluded_users:
        return False
    return _president(caller, case) or _lead(caller, case) or _supervisor(caller, case) or _opener(caller, case)


def may(operation: str, caller: Caller, case: "Case", *, step_roles: tuple[str, ...] = ()) -> bool:
    """Whether ``caller``, who may see ``case``, may also do ``operation``."""
    if not may_view_case(caller, case):
        return False
    if operation == "read":
        return True
    if operation in ("update", "classify", "set_risk", "consent"):
        return _lead(caller, case) or _president(caller, case)
    if operation in ("assign", "exclude"):
        return _president(caller, case)
    if operation == "approve":
        return _supervisor(caller, case)
    if operation in ("close", "reopen"):
        return _lead(caller, case) or _president(caller, case) or _supervisor(caller, case)
    if operation == "audit_trail":
        return _president(caller, case) or _supervisor(caller, case)
    if operation == "complete_step":
        if _president(caller, case):
            return True
        return ("case_lead" in step_roles and _lead(caller, case)) or (
            "focal_point" in step_roles and _opener(caller, case)
        )
    raise ValueError(f"unknown operation {operation}")


def statistics_scope(caller: Caller) -> frozenset[str] | None:
    """Organisations whose anonymous figures the caller may see, or None."""
    if caller.has("president") or caller.has("programme"):
        return frozenset({caller.organization_id}) | caller.supervised
    if caller.has("supervisor"):
        return caller.supervised
    return None
