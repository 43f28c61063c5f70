"""What the cases service's audit trail records, and in which chain.

The trail is a ``servicekit.audit`` trail: entries chained with an HMAC whose
key lives outside the database. Each case has a chain of its own (its
opening, every read, every change), so reading one case never waits on the
reads of the organisation's other cases; operators' commands (keys,
statistics exports, dead-letter replays) go in the ``operators`` chain.
An entry names who did what and which fields were shown or changed, never
their values.
"""
from __future__ import annotations

import json

TRAIL = "cases"
OPERATORS = "operators"  # the chain of operators' commands; a case's chain is its id


def case_chain(case_id: str) -> str:
    return str(case_id)


def field_names(fields) -> str:
    """The detail of a case entry: the names of the fields, as sorted JSON."""
    return json.dumps(sorted(fields))


def operator_detail(**facts) -> str:
    """The detail of an operator's entry: a few plain facts (counts, ids of
    messages or key ids), never survivor data."""
    return json.dumps({k: v for k, v in facts.items() if v is not None}, sort_keys=True)
