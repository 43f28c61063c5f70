"""After a fault: was anything lost, was anything done twice?

Reads the cases and notifications databases and the SMTP server's mail folder,
and holds them against what the load's clients were told.

lost:       a committed case without its president's e-mail; a 201 for a case
            that is not in the database; an idempotency key with no case after
            the client's retries; a case whose first due-soon alert was never
            staged by the sweep.
duplicated: a case with more than one e-mail, or an e-mail about no committed
            case; a key that made two cases (or was answered with two
            different cases); an alert staged twice for the same step and due
            time.

A verdict prints as counts and ids only: never a survivor code, nor anything
of a case's content.
"""
from __future__ import annotations

import email
import email.policy
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text

from tests.reliability.load import Submission

LINK = re.compile(r"/console/cases/([0-9a-f-]{36})")
SHOWN_IDS = 5


@dataclass
class Observation:
    """Everything the checker reads, at one moment."""

    cases: dict[str, str | None]  # case id -> idempotency key
    cases_per_key: Counter
    handled: int  # case_opened events recorded in the notifications inbox
    emails_per_case: Counter
    message_ids: dict[str, list[str]]
    emails: int
    alerts: Counter  # (case id, step id, due at) -> times a step_due_soon was staged
    pending_outbox: int

    def alerted_cases(self) -> set[str]:
        return {case_id for case_id, _, _ in self.alerts}

    def settled(self) -> bool:
        """Every case told and alerted, nothing left to relay."""
        return (
            not self.pending_outbox
            and all(self.emails_per_case[c] for c in self.cases)
            and set(self.cases) <= self.alerted_cases()
        )


def observe(engines: dict, mail_folder: Path) -> Observation:
    with engines["cases"].connect() as conn:
        rows = conn.execute(text("SELECT id, idempotency_key FROM cases")).all()
        alert_rows = conn.execute(
            text("SELECT body FROM outbox WHERE routing_key = 'step_due_soon'")
        ).scalars().all()
        pending = conn.execute(text("SELECT count(*) FROM outbox WHERE published_at IS NULL")).scalar()
    with engines["notifications"].connect() as conn:
        handled = conn.execute(
            text("SELECT count(*) FROM processed_events WHERE handler LIKE '%case_opened%'")
        ).scalar()
    alerts: Counter = Counter()
    for body in alert_rows:
        event = json.loads(body)
        alerts[(event["case_id"], event["data"]["step_ref"], event["data"]["due_at"])] += 1
    emails_per_case: Counter = Counter()
    message_ids: dict[str, list[str]] = {}
    emails = 0
    for path in sorted(mail_folder.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        emails += 1
        found = LINK.search(message.get_body(preferencelist=("plain",)).get_content())
        case_id = found.group(1) if found else "?"
        emails_per_case[case_id] += 1
        message_ids.setdefault(case_id, []).append(str(message["Message-ID"]))
    return Observation(
        cases={case_id: key for case_id, key in rows},
        cases_per_key=Counter(key for _, key in rows if key is not None),
        handled=handled,
        emails_per_case=emails_per_case,
        message_ids=message_ids,
        emails=emails,
        alerts=alerts,
        pending_outbox=pending,
    )


@dataclass
class Verdict:
    fault: str
    backend: str
    observation: Observation
    lost: dict[str, list[str]] = field(default_factory=dict)
    duplicated: dict[str, list[str]] = field(default_factory=dict)
    answers: Counter = field(default_factory=Counter)
    unexpected_answers: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    @property
    def lost_count(self) -> int:
        return sum(len(v) for v in self.lost.values())

    @property
    def duplicated_count(self) -> int:
        return sum(len(v) for v in self.duplicated.values())

    def line(self) -> str:
        o = self.observation
        return (
            f"fault {self.fault} [{self.backend}]: committed cases {len(o.cases)}, events handled {o.handled}, "
            f"e-mails {o.emails}, alerts staged {sum(o.alerts.values())}, "
            f"lost = {self.lost_count}, duplicated = {self.duplicated_count}"
            + (f"; client answers {answers}" if (answers := _compact(self.answers)) else "")
        )

    def details(self) -> str:
        parts = [self.line()]
        if self.unexpected_answers:
            parts.append(f"  unexpected answers: {dict(self.unexpected_answers)}")
        for title, found in (("lost", self.lost), ("duplicated", self.duplicated)):
            for reason, ids in found.items():
                if ids:
                    shown = ", ".join(ids[:SHOWN_IDS]) + (" ..." if len(ids) > SHOWN_IDS else "")
                    parts.append(f"  {title}: {len(ids)} {reason}: {shown}")
        parts.extend(f"  {note}" for note in self.notes)
        return "\n".join(parts)


def _compact(counts: Counter) -> str:
    return " ".join(f"{label}x{n}" for label, n in sorted(counts.items()))


def judge(fault: str, backend: str, observation: Observation, submissions: list[Submission]) -> Verdict:
    o = observation
    keys_with_case = {key for key in o.cases.values() if key}
    case_of_key = {key: case_id for case_id, key in o.cases.items() if key}
    verdict = Verdict(fault, backend, o)
    verdict.lost = {
        "committed cases without the president's e-mail": sorted(c for c in o.cases if not o.emails_per_case[c]),
        "201s for a case not in the database": sorted(
            case_id for s in submissions for case_id in s.case_ids if case_id not in o.cases
        ),
        "idempotency keys with no case after the client's retries": sorted(
            s.key for s in submissions if s.key not in keys_with_case
        ),
        "cases whose due-soon alert was never staged": sorted(set(o.cases) - o.alerted_cases()),
    }
    verdict.duplicated = {
        "cases with more than one e-mail": sorted(c for c, n in o.emails_per_case.items() if n > 1),
        "idempotency keys that made two cases": sorted(k for k, n in o.cases_per_key.items() if n > 1),
        "idempotency keys answered with two different cases": sorted(
            s.key for s in submissions
            if len(s.case_ids) > 1 or (s.key in case_of_key and s.case_ids and case_of_key[s.key] not in s.case_ids)
        ),
        # a message about a case that was never committed is an effect too many
        "e-mails about no committed case": sorted(c for c in o.emails_per_case if c not in o.cases),
        "alerts staged twice for one step and due time": sorted(
            f"{case_id}/{step}" for (case_id, step, _), n in o.alerts.items() if n > 1
        ),
    }
    resent = [c for c in verdict.duplicated["cases with more than one e-mail"] if len(set(o.message_ids[c])) == 1]
    if resent:
        verdict.notes.append(
            f"{len(resent)} of the repeated e-mails carry one Message-ID (the documented window between "
            "the SMTP server's acceptance and the delivery row marked sent)"
        )
    return verdict
