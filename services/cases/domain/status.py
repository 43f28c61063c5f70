"""The case status machine: open → in progress → closed → reopened."""
from __future__ import annotations

from enum import Enum


class CaseStatus(str, Enum):
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    CLOSED = "closed"
    REOPENED = "reopened"


ALLOWED: dict[CaseStatus, frozenset[CaseStatus]] = {
    CaseStatus.OPEN: frozenset({CaseStatus.IN_PROGRESS, CaseStatus.CLOSED}),
    CaseStatus.IN_PROGRESS: frozenset({CaseStatus.CLOSED}),
    # closed is final: the only way out is reopening, which is logged
    CaseStatus.CLOSED: frozenset({CaseStatus.REOPENED}),
    CaseStatus.REOPENED: frozenset({CaseStatus.IN_PROGRESS, CaseStatus.CLOSED}),
}
FINAL = frozenset({CaseStatus.CLOSED})


class TransitionRefused(ValueError):
    pass


def transition(current: CaseStatus, target: CaseStatus) -> CaseStatus:
    if target not in ALLOWED[current]:
        raise TransitionRefused(f"a case cannot go from {current.value} to {target.value}")
    return target
