"""The audit trail (servicekit.audit in the cases service), on PostgreSQL and
SQLite, through the service layer and the `warmi` command: a removed tail is
found against an anchor, an altered entry by its MAC, a rotated key still
verifies, operators' commands are recorded, reads of one organisation's
cases do not wait on one another and leave every chain valid."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import eventlet
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text
from sqlalchemy.orm import sessionmaker

from services.cases.adapters import orm
from services.cases.adapters.crypto import KeyRing
from services.cases.domain.access import Caller
from services.cases.domain.audit import OPERATORS
from services.cases.service_layer import handlers, queries
from services.cases.service_layer.unit_of_work import UnitOfWork, cases_audit_trail
from servicekit.audit import AuditKeys
from servicekit.database import make_engine
from warmi import cli

ROOT = Path(__file__).resolve().parent.parent

NARRATIVE = "relato de prueba que no debe salir"


class Organisation:
    """One organisation of the cases service, worked through its service layer."""

    def __init__(self, engine):
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.ring_key = Fernet.generate_key().decode()
        self.ring = KeyRing([self.ring_key])
        self.id = str(uuid.uuid4())
        self.focal_point = Caller(str(uuid.uuid4()), self.id, frozenset({"focal_point"}))
        self.president = Caller(str(uuid.uuid4()), self.id, frozenset({"president"}))
        with self.sessions() as session:
            handlers.register_organization(self.uow(session), organization_id=self.id, code="CEC",
                                           timezone_name="America/Lima")

    def uow(self, session) -> UnitOfWork:
        return UnitOfWork(session, audit_trail=cases_audit_trail(AuditKeys.configured()))

    def open_case(self) -> str:
        with self.sessions() as session:
            return handlers.open_case(self.uow(session), self.ring, self.focal_point,
                                      {"age_group": "18-25", "narrative": NARRATIVE}).id

    def read(self, case_id: str) -> None:
        with self.sessions() as session:
            queries.case_detail(self.uow(session), self.ring, self.president, case_id)

    def chain(self, chain: str) -> list:
        with self.sessions() as session:
            return self.uow(session).audit_trail.entries(session, chain)


@pytest.fixture
def organisation(backend_engines, backend):
    made = make_engine(str(backend_engines["cases"].url.render_as_string(hide_password=False)))
    yield Organisation(made)
    made.dispose()


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_removing_the_last_entries_and_rewriting_the_head_is_found_against_the_anchor(organisation, capsys,
                                                                                       tmp_path):
    case_id = organisation.open_case()
    for _ in range(3):
        organisation.read(case_id)
    code, anchor, err = run_cli(capsys, "audit", "anchor")
    assert code == 0, err
    (tmp_path / "anchor.json").write_text(anchor)
    assert run_cli(capsys, "audit", "verify", "--anchor", str(tmp_path / "anchor.json"))[0] == 0
    organisation.read(case_id)  # entries after the anchor are fine

    # whoever can write the database removes the last three entries of the case and moves its head back
    with organisation.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE chain = :c AND position > 1"), {"c": case_id})
        conn.execute(text("UPDATE audit_heads SET position = 1, mac = (SELECT mac FROM audit_log "
                          "WHERE chain = :c AND position = 1) WHERE chain = :c"), {"c": case_id})

    # what is there is consistent: only the anchor shows what is gone
    assert run_cli(capsys, "audit", "verify")[0] == 0
    code, out, err = run_cli(capsys, "audit", "verify", "--anchor", str(tmp_path / "anchor.json"))
    assert code == 1
    problem = json.loads(out.splitlines()[0])
    assert problem["chain"] == case_id and problem["position"] == 4
    assert "anchored entries were removed" in problem["problem"]
    assert "entries were removed" in err
    # the anchor given as a string does the same
    assert run_cli(capsys, "audit", "verify", "--anchor", anchor.strip())[0] == 1


def test_a_chain_removed_whole_or_a_forged_anchor_is_found(organisation, capsys):
    first, second = organisation.open_case(), organisation.open_case()
    organisation.read(first)
    anchor = run_cli(capsys, "audit", "anchor")[1].strip()
    with organisation.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE chain = :c"), {"c": second})
        conn.execute(text("DELETE FROM audit_heads WHERE chain = :c"), {"c": second})
    assert run_cli(capsys, "audit", "verify")[0] == 0
    code, out, _ = run_cli(capsys, "audit", "verify", "--anchor", anchor)
    assert code == 1 and "it was removed" in out and second in out

    body = json.loads(anchor)
    body["trails"]["cases"][second] = [1, "0" * 64]  # an anchor edited to suit the database
    code, _, err = run_cli(capsys, "audit", "verify", "--anchor", json.dumps(body))
    assert code == 2 and "signature does not verify" in err
    code, _, err = run_cli(capsys, "audit", "verify", "--anchor", "/nonexistent/anchor.json")
    assert code == 2 and "no anchor file" in err


def test_an_entry_altered_in_place_is_found(organisation, capsys):
    case_id = organisation.open_case()
    organisation.read(case_id)
    organisation.read(case_id)
    with organisation.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET detail = '[\"summary\"]' WHERE chain = :c AND position = 2"),
                     {"c": case_id})
    code, out, err = run_cli(capsys, "audit", "verify")
    assert code == 1 and "the audit trail was altered" in err
    problem = json.loads(out.splitlines()[0])
    assert (problem["chain"], problem["position"]) == (case_id, 2)
    assert "does not match its hash-based MAC" in problem["problem"]
    # an anchor is not made of an altered trail
    code, out, err = run_cli(capsys, "audit", "anchor")
    assert code == 1 and "not anchored" in err


def test_entries_signed_before_and_after_a_new_audit_key_verify(organisation, capsys, monkeypatch, tmp_path):
    keys = tmp_path / "audit.keys"
    keys.write_text(os.environ["AUDIT_KEYS"] + "\n")
    monkeypatch.delenv("AUDIT_KEYS")
    monkeypatch.setenv("AUDIT_KEYS_FILE", str(keys))
    case_id = organisation.open_case()
    organisation.read(case_id)
    old_id = AuditKeys.configured().newest_id

    code, out, err = run_cli(capsys, "audit", "add-key", "--by", "ana.quispe")
    assert code == 0, err
    new_id = AuditKeys.configured().newest_id
    assert new_id != old_id and AuditKeys.configured().ids == [new_id, old_id]
    organisation.read(case_id)

    assert [e.key_id for e in organisation.chain(case_id)] == [old_id, old_id, new_id]
    added = [e for e in organisation.chain(OPERATORS) if e.action == "audit_key_add"]
    assert [(e.actor_id, json.loads(e.detail)) for e in added] == [("ana.quispe", {"key_id": new_id})]
    assert run_cli(capsys, "audit", "verify")[0] == 0

    # without the old key, its entries can no longer be vouched for
    keys.write_text(keys.read_text().split()[0] + "\n")
    code, out, _ = run_cli(capsys, "audit", "verify")
    assert code == 1 and f"signed with audit key {old_id}, which is not configured" in out


def test_key_rotation_and_other_operators_commands_are_recorded(organisation, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CASES_ENCRYPTION_KEYS", f"{Fernet.generate_key().decode()},{organisation.ring_key}")
    monkeypatch.setenv("WARMI_HOME", str(tmp_path / "home"))
    organisation.open_case()

    assert run_cli(capsys, "keys", "rotate", "--by", "ana.quispe")[0] == 0
    assert run_cli(capsys, "keys", "add", "--by", "ana.quispe")[0] == 2  # keys from the environment: refused, but recorded
    monkeypatch.setenv("USER", "operador")
    monkeypatch.setenv("LOGNAME", "operador")
    assert run_cli(capsys, "audit", "verify")[0] == 0  # (verifying is not an operator's change)

    entries = organisation.chain(OPERATORS)
    assert [(e.actor_id, e.action) for e in entries] == [("ana.quispe", "keys_rotate"), ("ana.quispe", "keys_add")]
    assert all(e.subjects["case_id"] is None for e in entries)
    with organisation.engine.connect() as conn:
        everything = str(conn.execute(text("SELECT * FROM audit_log")).all())
    assert NARRATIVE not in everything

    # the operating system's user, when --by is not given
    assert run_cli(capsys, "keys", "rotate")[0] == 0
    assert organisation.chain(OPERATORS)[-1].actor_id == "operador"
    assert run_cli(capsys, "audit", "verify")[0] == 0


def test_an_operators_command_that_cannot_be_recorded_does_not_run(organisation, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CASES_ENCRYPTION_KEYS", f"{Fernet.generate_key().decode()},{organisation.ring_key}")
    case_id = organisation.open_case()
    with organisation.engine.connect() as conn:
        before = conn.execute(select(orm.cases.c.narrative_enc).where(orm.cases.c.id == case_id)).scalar()

    code, _, err = run_cli(capsys, "keys", "rotate", "--by", "x; DROP TABLE audit_log")
    assert code == 2 and "by" in json.loads(err)["error"]["fields"]
    key = os.environ["AUDIT_KEYS"]
    monkeypatch.delenv("AUDIT_KEYS")
    monkeypatch.setenv("AUDIT_KEYS_FILE", str(tmp_path / "missing.keys"))
    code, _, err = run_cli(capsys, "keys", "rotate", "--by", "ana")
    assert code == 2 and "could not be recorded in the audit trail" in err
    monkeypatch.setenv("AUDIT_KEYS", key)

    with organisation.engine.connect() as conn:
        after = conn.execute(select(orm.cases.c.narrative_enc).where(orm.cases.c.id == case_id)).scalar()
    assert after == before  # not re-encrypted
    assert organisation.chain(OPERATORS) == []


def test_dead_letters_are_listed_and_replayed_on_the_record(organisation, capsys, monkeypatch, vhost):
    monkeypatch.setenv("AMQP_URI", vhost)
    assert run_cli(capsys, "dead-letters", "list", "--by", "ana")[0] == 0
    assert run_cli(capsys, "dead-letters", "replay", "--id", "m-1", "--by", "ana")[0] == 0
    entries = organisation.chain(OPERATORS)
    assert [(e.actor_id, e.action, json.loads(e.detail)) for e in entries] == [
        ("ana", "dead_letters_list", {}), ("ana", "dead_letters_replay", {"message_id": "m-1"}),
    ]


# -- reads in parallel ---------------------------------------------------------------


def test_reading_one_case_does_not_wait_for_another_cases_chain(organisation, backend):
    """On PostgreSQL a read locks its own case's head row only: while one read
    of case A is uncommitted, a read of case B of the same organisation goes
    through, and a second read of A waits (here: gives up at lock_timeout)."""
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time: see the parallel reads below")
    a, b = organisation.open_case(), organisation.open_case()
    holder = organisation.sessions()
    queries_uow = organisation.uow(holder)
    queries_uow.audit(case_id=a, organization_id=organisation.id, actor_id=organisation.president.user_id,
                      action="read", fields=["summary"])  # not committed: A's head row stays locked
    try:
        with organisation.sessions() as session:
            session.execute(text("SET LOCAL lock_timeout = '5s'"))
            queries.case_detail(organisation.uow(session), organisation.ring, organisation.president, b)
        with organisation.sessions() as session:
            session.execute(text("SET LOCAL lock_timeout = '100ms'"))
            with pytest.raises(Exception, match="lock timeout"):
                queries.case_detail(organisation.uow(session), organisation.ring, organisation.president, a)
    finally:
        holder.rollback()
        holder.close()


# one more process reading cases through the service layer, as a second
# process of the service would
PARALLEL_READER = """
import sys
from sqlalchemy.orm import sessionmaker
from servicekit.audit import AuditKeys
from servicekit.database import make_engine
from services.cases.adapters.crypto import KeyRing
from services.cases.domain.access import Caller
from services.cases.service_layer import queries
from services.cases.service_layer.unit_of_work import UnitOfWork, cases_audit_trail

url, ring_key, organization_id, user_id, *case_ids = sys.argv[1:]
engine = make_engine(url)
sessions = sessionmaker(engine, expire_on_commit=False)
ring, trail = KeyRing([ring_key]), cases_audit_trail(AuditKeys.configured())
president = Caller(user_id, organization_id, frozenset({"president"}))
for _ in range(5):
    for case_id in case_ids:
        with sessions() as session:
            queries.case_detail(UnitOfWork(session, audit_trail=trail), ring, president, case_id)
engine.dispose()
"""


def test_parallel_reads_of_one_organisation_leave_every_chain_valid(organisation, backend, capsys):
    """Eight readers of different cases of one organisation at once: green
    threads on one engine as in a service, plus two more processes (on SQLite
    they contend for its single writer: no "database is locked")."""
    cases = [organisation.open_case() for _ in range(8)]
    url = organisation.engine.url.render_as_string(hide_password=False)
    ring_key = organisation.ring_key
    engine = make_engine(url, green=True)
    sessions = sessionmaker(engine, expire_on_commit=False)
    trail = cases_audit_trail(AuditKeys.configured())

    def reader(case_id):
        for _ in range(5):
            with sessions() as session:
                queries.case_detail(UnitOfWork(session, audit_trail=trail), organisation.ring,
                                    organisation.president, case_id)

    others = [
        subprocess.Popen([sys.executable, "-c", PARALLEL_READER, url, ring_key, organisation.id,
                          organisation.president.user_id, *cases[n::2]], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for n in range(2)
    ]
    pool = eventlet.GreenPool()
    for case_id in cases:
        pool.spawn(reader, case_id)
    pool.waitall()
    for process in others:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()[-2000:]
    engine.dispose()

    for case_id in cases:
        entries = organisation.chain(case_id)
        # open, then 5 reads here and 5 in one of the other processes
        assert [e.position for e in entries] == list(range(1, 12))
        assert sum(e.action == "read" for e in entries) == 10
    assert run_cli(capsys, "audit", "verify")[0] == 0


def test_a_statistics_export_is_recorded_before_the_figures_are_shown(organisation, capsys):
    from warmi.admin import create_organization

    made = create_organization(code="CEC", name="Cooperativa CEC", timezone_name="America/Lima", locale="es",
                               president_name="Presidenta", president_email="presidenta@cec.test.invalid",
                               focal_point_name="Punto focal")
    code, out, err = run_cli(capsys, "statistics", "--org", "CEC", "--by", "ana")
    assert code == 0, err
    entries = organisation.chain(OPERATORS)
    assert [(e.actor_id, e.action, e.subjects["organization_id"]) for e in entries] == [
        ("ana", "statistics_export", made["organization"]["id"])]
    assert json.loads(entries[0].detail)["recount"] is False

    code, _, err = run_cli(capsys, "statistics", "--org", "CEC", "--by", "")
    assert code == 2 and len(organisation.chain(OPERATORS)) == 1

    # identity's trail (the organisation's creation) is verified and anchored with cases'
    code, anchor, err = run_cli(capsys, "audit", "anchor")
    assert code == 0, err
    assert set(json.loads(anchor)["trails"]) == {"cases", "identity"}
    assert json.loads(anchor)["trails"]["identity"]
    assert run_cli(capsys, "audit", "verify", "--anchor", anchor)[0] == 0


def test_warmi_run_makes_a_local_audit_key_once(monkeypatch, tmp_path):
    monkeypatch.delenv("AUDIT_KEYS")
    monkeypatch.delenv("CASES_ENCRYPTION_KEYS", raising=False)
    monkeypatch.setenv("WARMI_HOME", str(tmp_path))
    cli._init_keys()  # what `warmi run` and `warmi keys init` do first
    made = (tmp_path / "audit.keys").read_text()
    assert (tmp_path / "audit.keys").stat().st_mode & 0o777 == 0o600
    assert len(AuditKeys.configured().ids) == 1
    cli._init_keys()
    assert (tmp_path / "audit.keys").read_text() == made  # never replaced


OPERATOR_WRITER = """
import sys
from sqlalchemy.orm import sessionmaker
from servicekit.audit import AuditKeys
from servicekit.database import make_engine
from services.cases.service_layer.unit_of_work import UnitOfWork, cases_audit_trail

url, name = sys.argv[1:]
engine = make_engine(url)
sessions = sessionmaker(engine, expire_on_commit=False)
trail = cases_audit_trail(AuditKeys.configured())
for n in range(15):
    with sessions() as session:
        uow = UnitOfWork(session, audit_trail=trail)
        uow.audit_operator(operator=name, action="statistics_export", detail=str(n))
        uow.commit()
engine.dispose()
"""


def test_operators_commands_from_several_processes_at_once_chain_one_after_another(organisation, capsys):
    """Three processes append to the one operators' chain at once: each
    append waits for the chain's head (a row lock on PostgreSQL, the write
    lock on SQLite), none fails and the chain has no gap or fork."""
    url = organisation.engine.url.render_as_string(hide_password=False)
    writers = [subprocess.Popen([sys.executable, "-c", OPERATOR_WRITER, url, f"op{n}"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in range(3)]
    for process in writers:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()[-2000:]
    entries = organisation.chain(OPERATORS)
    assert [e.position for e in entries] == list(range(1, 46))
    assert sorted(e.actor_id for e in entries) == sorted(f"op{n}" for n in range(3) for _ in range(15))
    assert run_cli(capsys, "audit", "verify")[0] == 0


def test_the_cases_service_does_not_start_without_an_audit_key(stack, monkeypatch, tmp_path):
    from servicekit.audit import AuditKeyError

    monkeypatch.delenv("AUDIT_KEYS")
    monkeypatch.setenv("AUDIT_KEYS_FILE", str(tmp_path / "missing.keys"))
    with pytest.raises(AuditKeyError, match="no audit key"):
        stack.start("cases", AUDIT_KEYS="", AUDIT_KEYS_FILE="")
    stack.containers.pop("cases", None)
