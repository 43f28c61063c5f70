"""Revision 0009 of cases: the entries of the SHA-256 trail (one chain per
organisation) are checked, then re-signed with the audit key, each case's
entries as its chain; an altered old trail, or entries without a key, stop
the upgrade. On PostgreSQL and SQLite."""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from servicekit.audit import AuditKeys
from servicekit.migrations import alembic_config, ensure_database
from services.cases.service_layer.unit_of_work import cases_audit_trail
from tests.conftest import PG_SERVER

GENESIS = "0" * 64


def old_hash(prev: str, entry: dict) -> str:
    """The hash of the trail before 0009 (its services/cases/domain/audit.py)."""
    body = {"prev": prev, **{k: entry[k] for k in ("case_id", "organization_id", "actor_id", "action", "fields")},
            "at": entry["at"].astimezone(timezone.utc).isoformat()}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@pytest.fixture
def at_0008(backend, tmp_path):
    """A cases database at revision 0008, its own."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'cases.db'}"
    else:
        url = f"{PG_SERVER}/warmi_t_audit_{uuid.uuid4().hex[:8]}"
        ensure_database(url)
    command.upgrade(alembic_config("cases", url), "0008")
    engine = create_engine(url)
    yield url, engine
    engine.dispose()
    if backend == "postgresql":
        admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
        admin.dispose()


def write_old_trail(engine, entries: list[dict]) -> None:
    heads: dict[str, str] = {}
    with engine.begin() as conn:
        for entry in entries:
            prev = heads.get(entry["organization_id"], GENESIS)
            digest = old_hash(prev, entry)
            conn.execute(text("INSERT INTO audit_log (case_id, organization_id, actor_id, action, fields, at, "
                              "prev_hash, hash) VALUES (:case_id, :organization_id, :actor_id, :action, :fields, "
                              ":at, :prev, :hash)"), {**entry, "prev": prev, "hash": digest})
            heads[entry["organization_id"]] = digest
        for organization_id, digest in heads.items():
            conn.execute(text("INSERT INTO audit_heads (organization_id, last_hash) VALUES (:o, :h)"),
                         {"o": organization_id, "h": digest})


def old_entries() -> list[dict]:
    org_a, org_b = str(uuid.uuid4()), str(uuid.uuid4())
    cases = {org_a: [str(uuid.uuid4()), str(uuid.uuid4())], org_b: [str(uuid.uuid4())]}
    start = datetime(2026, 11, 20, 15, 0, 0, 123456, tzinfo=timezone.utc)
    made = []
    for n in range(9):
        org = org_a if n % 3 else org_b
        case_id = cases[org][n % len(cases[org])]
        made.append({"case_id": case_id, "organization_id": org, "actor_id": str(uuid.uuid4()),
                     "action": "open" if n < 3 else "read", "fields": json.dumps(["summary"]),
                     "at": start + timedelta(minutes=n)})
    return made


def test_the_old_entries_are_re_signed_in_their_cases_chains(at_0008):
    url, engine = at_0008
    entries = old_entries()
    write_old_trail(engine, entries)

    command.upgrade(alembic_config("cases", url), "head")

    keys = AuditKeys.configured()
    trail = cases_audit_trail(keys)
    with Session(engine) as session:
        assert trail.verify(session) == []
        for case_id in {e["case_id"] for e in entries}:
            chain = trail.entries(session, case_id)
            expected = [e for e in entries if e["case_id"] == case_id]
            assert [(c.position, c.action, c.actor_id, c.at, c.detail, c.key_id) for c in chain] == [
                (n, e["action"], e["actor_id"], e["at"], e["fields"], keys.newest_id)
                for n, e in enumerate(expected, 1)
            ]
        # and they are protected like new ones
        session.execute(text("UPDATE audit_log SET actor_id = 'someone-else' WHERE id = 4"))
        problems = trail.verify(session)
        assert len(problems) == 1 and "hash-based MAC" in problems[0].reason


def test_an_altered_old_trail_is_not_re_signed(at_0008):
    url, engine = at_0008
    write_old_trail(engine, old_entries())
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET action = 'list' WHERE id = 5"))

    with pytest.raises(RuntimeError, match="altered before this upgrade"):
        command.upgrade(alembic_config("cases", url), "head")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0008"
        assert conn.execute(text("SELECT count(*) FROM audit_log WHERE hash IS NOT NULL")).scalar() == 9


def test_old_entries_without_an_audit_key_stop_the_upgrade(at_0008, monkeypatch, tmp_path):
    url, engine = at_0008
    write_old_trail(engine, old_entries())
    key = os.environ["AUDIT_KEYS"]
    monkeypatch.delenv("AUDIT_KEYS")
    monkeypatch.setenv("AUDIT_KEYS_FILE", str(tmp_path / "none.keys"))

    with pytest.raises(RuntimeError, match="re-signed with it during this upgrade"):
        command.upgrade(alembic_config("cases", url), "head")

    monkeypatch.setenv("AUDIT_KEYS", key)
    command.upgrade(alembic_config("cases", url), "head")  # with a key, it goes through


def test_an_empty_trail_needs_no_key_and_downgrades(at_0008, monkeypatch, tmp_path):
    url, engine = at_0008
    monkeypatch.delenv("AUDIT_KEYS")
    monkeypatch.setenv("AUDIT_KEYS_FILE", str(tmp_path / "none.keys"))
    command.upgrade(alembic_config("cases", url), "head")
    command.downgrade(alembic_config("cases", url), "0008")
    command.upgrade(alembic_config("cases", url), "head")
