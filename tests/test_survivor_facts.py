"""Survivor facts at rest and in answers: the place, the perpetrator
relationship, the classification answers and the members excluded from a case
are ciphertext in the database (both databases), exclusions still work in
lists and after a key rotation, a database error shows no value in the logs,
statistics cannot be subtracted into a withheld count, and revision 0008
converts the rows stored before it."""
import itertools
import json
import logging
import os
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, insert, inspect, text
from sqlalchemy.orm import Session

from contracts.errors import InvalidInput, NotFound
from services.cases.adapters import orm
from services.cases.adapters.crypto import KeyRing, bind
from services.cases.domain.access import Caller
from services.cases.service_layer import handlers, keys, queries
from services.cases.service_layer.unit_of_work import UnitOfWork
from tests.conftest import PG_SERVER, RUN

PLACE, RELATIONSHIP = "processing_plant", "buyer_trader"


def _uow(session, keyring):
    bind(session, keyring)
    return UnitOfWork(session)


def _dump(engine) -> str:
    """Every row of every table, as plain SQL reads it."""
    with engine.connect() as conn:
        return "\n".join(str(conn.execute(text(f'SELECT * FROM "{table}"')).all())
                         for table in inspect(conn).get_table_names())


def _organization(engine, keyring):
    organization = str(uuid.uuid4())
    with Session(engine) as s:
        handlers.register_organization(_uow(s, keyring), organization_id=organization, code="CEC",
                                       timezone_name="America/Lima")
    return organization


def _version(engine, keyring, case_id):
    with Session(engine) as s:
        return _uow(s, keyring).cases.get(case_id).version


def test_facts_and_exclusions_are_ciphertext_at_rest_and_exclusions_hold_through_rotation(backend, backend_engines):
    engine = backend_engines["cases"]
    old = KeyRing([old_key := Fernet.generate_key().decode()])
    organization = _organization(engine, old)
    president = Caller(str(uuid.uuid4()), organization, frozenset({"president"}))
    conflicted = Caller(str(uuid.uuid4()), organization, frozenset({"president"}))  # named by the survivor
    with Session(engine) as s:
        case = handlers.open_case(_uow(s, old), old, president, {
            "age_group": "26-40", "place": PLACE, "perpetrator_relationship": RELATIONSHIP})
    with Session(engine) as s:
        handlers.classify_case(_uow(s, old), president, case.id, {
            "answers": {"rape": False, "sexual_assault": False, "physical_assault": True},
            "version": _version(engine, old, case.id)})
    with Session(engine) as s:
        handlers.exclude_user(_uow(s, old), president, case.id, {
            "user_id": conflicted.user_id, "version": _version(engine, old, case.id)})
    # a second case with other codes: the ciphertexts must not differ in length
    with Session(engine) as s:
        other = handlers.open_case(_uow(s, old), old, president, {"age_group": "26-40", "place": "camp",
                                                                  "perpetrator_relationship": "partner"})

    dump = _dump(engine)
    # (the incident type itself stays in the clear: the plan and the statistics read it)
    for plaintext in (PLACE, RELATIONSHIP, conflicted.user_id, '"rape"', '"sexual_assault"'):
        assert plaintext not in dump, plaintext
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(text(
            "SELECT id, place_enc, perpetrator_relationship_enc, classification_answers_enc FROM cases"))}
        exclusion = conn.execute(text("SELECT user_digest, user_id_enc FROM case_exclusions")).one()
    assert rows[case.id].place_enc and rows[case.id].classification_answers_enc
    assert rows[case.id].place_enc not in (PLACE, "camp")
    assert "assault" not in rows[case.id].classification_answers_enc
    assert len(rows[case.id].place_enc) == len(rows[other.id].place_enc)  # processing_plant is longer than camp
    assert len(rows[case.id].perpetrator_relationship_enc) == len(rows[other.id].perpetrator_relationship_enc)
    assert exclusion.user_digest != conflicted.user_id and conflicted.user_id not in exclusion.user_id_enc

    def visible(keyring, caller):
        with Session(engine) as s:
            found, _ = queries.list_cases(_uow(s, keyring), caller, {"page": 1, "per_page": 25})
        return {c.id for c in found}

    def shown(keyring, caller):
        with Session(engine) as s:
            return queries.case_detail(_uow(s, keyring), keyring, caller, case.id)

    detail = shown(old, president)
    assert (detail["case"].place, detail["case"].perpetrator_relationship) == (PLACE, RELATIONSHIP)
    assert detail["case"].classification_answers == {"rape": False, "sexual_assault": False,
                                                     "physical_assault": True}
    assert visible(old, president) == {case.id, other.id}
    assert visible(old, conflicted) == {other.id}  # the list filters by the keyed digest
    with pytest.raises(NotFound):
        shown(old, conflicted)

    # a new newest key: rows written under the old one still exclude, before and after rotation
    both = KeyRing([new_key := Fernet.generate_key().decode(), old_key])
    assert visible(both, conflicted) == {other.id}
    with Session(engine) as s:  # already excluded under the old key: no second row under the new one
        _uow(s, both).cases.exclude(case.id, conflicted.user_id, president.user_id, datetime.now(timezone.utc))
        s.commit()
    with Session(engine) as s:
        assert not keys.retirable(s, KeyRing([new_key]))
        keys.rotate(s, both)
        assert keys.retirable(s, KeyRing([new_key]))
    newest = KeyRing([new_key])
    assert visible(newest, conflicted) == {other.id}
    assert shown(newest, president)["case"].place == PLACE
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM case_exclusions")).scalar() == 1


# -- a database error with a survivor's value in a bound parameter ----------------

def test_a_database_error_shows_no_bound_value_in_the_logs(backend, backend_urls_engines, captured_logs):
    """Bound values stay out of errors (``hide_parameters``) and PostgreSQL's
    own message loses the values it quotes; SQLAlchemy logs no statement or
    row whatever the root logger's level."""
    from servicekit.database import make_engine

    url, _ = backend_urls_engines
    marker = "QXW-superviviente-5521"
    engine = make_engine(url)
    log = logging.getLogger("tests.survivor_facts")
    failures = []
    try:
        with engine.begin() as conn:
            conn.execute(insert(orm.organizations).values(id=str(uuid.uuid4()), code=marker[:10], timezone=marker,
                                                          created_at=datetime.now(timezone.utc)))
            conn.execute(text("SELECT timezone FROM organizations")).all()  # a row with the value, at DEBUG
        statements = [
            (insert(orm.organizations).values(id=str(uuid.uuid4()), code=marker[:10], timezone="UTC",
                                              created_at=datetime.now(timezone.utc)), {}),  # the code twice
            (text("SELECT CAST(:v AS integer)"), {"v": marker}),  # a value the database cannot read
        ]
        for statement, values in statements:
            try:
                with engine.begin() as conn:
                    conn.execute(statement, values)
            except Exception as error:
                failures.append(error)
                log.exception("the statement failed")  # as nameko logs a worker's error, traceback and all
    finally:
        engine.dispose()
    assert len(failures) == (2 if backend == "postgresql" else 1)  # SQLite casts anything to an integer
    assert any("parameters hidden" in str(error) for error in failures)
    assert any("the statement failed" in line for line in captured_logs)
    assert [line for line in captured_logs if marker in line or marker[:10] in line] == []


@pytest.fixture
def backend_urls_engines(request, backend, backend_engines):
    urls = request.getfixturevalue("database_urls" if backend == "postgresql" else "sqlite_database_urls")
    return urls["cases"], backend_engines


def test_an_rpc_that_meets_a_database_error_tells_no_value_to_the_caller_or_the_logs(
        vhost, database_urls, clean_databases, captured_logs):
    """nameko logs the worker's error with its traceback and sends its text
    back to the caller: neither holds the value."""
    from nameko.containers import ServiceContainer
    from nameko.exceptions import RemoteError
    from nameko.rpc import rpc
    from nameko.standalone.rpc import ClusterRpcProxy

    from servicekit.database import Database

    marker = "QXW-relato-8812"

    class Failing:
        name = "failing_for_test"
        db = Database()

        @rpc
        def store(self, value):
            self.db.session.execute(text("INSERT INTO providers (id, organization_id, kind) VALUES "
                                         "(:id, :org, CAST(:kind AS integer))"),
                                    {"id": str(uuid.uuid4()), "org": str(uuid.uuid4()), "kind": value})

    container = ServiceContainer(Failing, {"AMQP_URI": vhost, "DATABASE_URL": database_urls["cases"]})
    container.start()
    try:
        with ClusterRpcProxy({"AMQP_URI": vhost}, timeout=10) as proxy:
            with pytest.raises(RemoteError) as raised:
                proxy.failing_for_test.store(marker)
    finally:
        container.stop()
    assert "DataError" in str(raised.value) and marker not in str(raised.value)
    assert any("Traceback" in line for line in captured_logs)  # nameko logged the error
    assert [line for line in captured_logs if marker in line] == []


# -- statistics: no two answers subtract into a withheld count --------------------

def _seed_cells(engine, organization, counts):
    with engine.begin() as conn:
        conn.execute(insert(orm.statistics_cells), [
            {"organization_id": organization, "opened_month": month, "incident_type": kind, "age_group": "18-25",
             "minor": False, "context_flags": "", "n": n}
            for (month, kind), n in counts.items()])


def _flatten(answer) -> dict:
    """(quarter, dimension, value) -> figure; figures over a range, should an
    answer ever carry one, under the quarter "all"."""
    flat = {}
    for quarter in answer["quarters"]:
        flat[(quarter["quarter"], "total", "all")] = quarter["total"]
        for dimension in ("by_type", "by_age_group", "by_context"):
            for value, n in quarter[dimension].items():
                flat[(quarter["quarter"], dimension, value)] = n
    for key, value in answer.items():
        if key not in ("quarters", "suppressed_below"):
            for inner, n in (value.items() if isinstance(value, dict) else [("all", value)]):
                flat[("all", key, inner)] = n
    return flat


def test_no_pair_of_statistics_answers_over_a_year_gives_away_a_withheld_count(backend, backend_engines):
    """2026 with two rape cases in January (withheld) among larger counts:
    every range of whole quarters is asked for, and for every pair of
    answers, whatever one figure minus the other would give for the quarter
    that one covers and the other not must be a figure already shown."""
    engine = backend_engines["cases"]
    organization = str(uuid.uuid4())
    counts = {("2026-01", "rape"): 2, ("2026-01", "physical_assault"): 9, ("2026-02", "physical_assault"): 7,
              ("2026-03", "psychological_abuse"): 6}
    for month in ("2026-04", "2026-05", "2026-07", "2026-08", "2026-10", "2026-12"):
        counts[(month, "physical_assault")] = 5
        counts[(month, "rape")] = 6
    _seed_cells(engine, organization, counts)
    caller = Caller(str(uuid.uuid4()), organization, frozenset({"programme"}))
    quarters = [f"2026-Q{q}" for q in range(1, 5)]

    answers = {}
    with Session(engine) as s:
        uow = UnitOfWork(s)
        for i, j in itertools.combinations_with_replacement(range(4), 2):
            answers[(i, j)] = _flatten(queries.statistics(uow, caller, {"from": quarters[i], "to": quarters[j]}))
        answers[None] = _flatten(queries.statistics(uow, caller, {}))
        for month_range in ({"from": "2026-01", "to": "2026-03"}, {"from": "2026-Q1"},
                            {"from": "2026-Q3", "to": "2026-Q2"}):
            with pytest.raises(InvalidInput):
                queries.statistics(uow, caller, month_range)

    from contracts import rpc as contract

    for query, field in (({"from": "2026-01", "to": "2026-Q4"}, "from"), ({"from": "2026-Q1", "to": "2026-03"}, "to"),
                         ({"from": "2026-Q5", "to": "2026-Q4"}, "from")):
        with pytest.raises(InvalidInput) as refused:  # what the API and the RPC load the query through
            contract.load(contract.StatisticsFilterSchema(), query)
        assert refused.value.fields[field] == ["a calendar quarter, e.g. 2026-Q1"]

    withheld = {(q, d, v) for a in answers.values() for (q, d, v), n in a.items() if n is None}
    assert ("2026-Q1", "by_type", "rape") in withheld
    shown = {}
    for answer in answers.values():
        for key, n in answer.items():
            assert shown.setdefault(key, n) == n, f"{key} differs between two answers"
    covered = {key: {q for (q, _, _) in a} - {"all"} for key, a in answers.items()}

    def over(answer, dimension, value):
        """The figure over the whole answer, if it can be had: a range figure
        it shows, or the sum of its quarters' when none is withheld."""
        if ("all", dimension, value) in answer:
            return answer[("all", dimension, value)]
        figures = [n for (q, d, v), n in answer.items() if q != "all" and (d, v) == (dimension, value)]
        return None if any(n is None for n in figures) else sum(figures)

    dimensions = {(d, v) for a in answers.values() for (_, d, v) in a}
    for (ka, a), (kb, b) in itertools.permutations(answers.items(), 2):
        extra = covered[ka] - covered[kb]
        if not covered[kb] <= covered[ka] or len(extra) != 1:
            continue
        [quarter] = extra
        for dimension, value in dimensions:
            big, small = over(a, dimension, value), over(b, dimension, value)
            if big is None or small is None:
                continue
            difference = big - small
            if (quarter, dimension, value) in withheld:
                raise AssertionError(f"{ka} minus {kb} gives the withheld {quarter} {dimension} {value}")
            assert difference == shown.get((quarter, dimension, value), 0)


# -- revision 0008 on rows stored before it ------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def url_at_0007(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cases-0007.db'}"
        return
    name = f"warmi_t{RUN}_m0008"
    yield f"{PG_SERVER}/{name}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_revision_0008_encrypts_the_rows_stored_before_it(url_at_0007, monkeypatch, tmp_path):
    from alembic import command

    from servicekit.migrations import alembic_config, ensure_database

    ensure_database(url_at_0007)
    command.upgrade(alembic_config("cases", url_at_0007), "0007")
    engine = create_engine(url_at_0007)
    organization, case_id, excluded = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    at = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
    answers = {"rape": False, "sexual_assault": True}
    with engine.begin() as conn:
        conn.execute(insert(orm.organizations).values(id=organization, code="CEC", timezone="America/Lima",
                                                      created_at=at))
        conn.execute(text(
            "INSERT INTO cases (id, organization_id, survivor_code, status, age_group, sex, opened_at, opened_by, "
            "version, minor, place, perpetrator_relationship, context_flags, incident_type, classification_answers, "
            "protocol_id, protocol_version, opened_month, reporting_consent) VALUES (:id, :org, 'CEC-2026-0001', "
            "'open', '12-17', 'female', :at, :org, 1, true, :place, :rel, '', 'sexual_assault', :answers, "
            "'smp-gbv', 1, '2026-11', false)"),
            {"id": case_id, "org": organization, "at": at if "postgresql" in url_at_0007 else "2026-11-20 12:00:00",
             "place": PLACE, "rel": RELATIONSHIP, "answers": json.dumps(answers)})
        conn.execute(text("INSERT INTO case_exclusions (case_id, user_id, excluded_by, at) "
                          "VALUES (:case, :user, :org, :at)"),
                     {"case": case_id, "user": excluded, "org": organization,
                      "at": at if "postgresql" in url_at_0007 else "2026-11-20 12:00:00"})
        conn.execute(text(
            "INSERT INTO plan_steps (case_id, organization_id, step_id, responsible, due_at, urgent, status, "
            "alert_stage) VALUES (:case, :org, 'M1', 'case_lead,president', :at, true, 'open', 0)"),
            {"case": case_id, "org": organization, "at": at if "postgresql" in url_at_0007 else "2026-11-21 12:00:00"})

    # without a key it stops, and changes nothing
    monkeypatch.delenv("CASES_ENCRYPTION_KEYS", raising=False)
    monkeypatch.setenv("CASES_ENCRYPTION_KEYS_FILE", str(tmp_path / "no-such.keys"))
    with pytest.raises(RuntimeError, match="needs the cases key ring"):
        command.upgrade(alembic_config("cases", url_at_0007), "0008")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0007"
        assert conn.execute(text("SELECT place FROM cases")).scalar() == PLACE

    key = Fernet.generate_key().decode()
    monkeypatch.setenv("CASES_ENCRYPTION_KEYS", key)
    command.upgrade(alembic_config("cases", url_at_0007), "0008")

    dump = _dump(engine)
    for plaintext in (PLACE, RELATIONSHIP, excluded, '"sexual_assault": true'):
        assert plaintext not in dump, plaintext
    keyring = KeyRing([key])
    with Session(engine) as s:
        uow = _uow(s, keyring)
        case = uow.cases.get(case_id)
        [step] = uow.plans.steps(case_id)
    assert (case.place, case.perpetrator_relationship, case.classification_answers) == (PLACE, RELATIONSHIP, answers)
    assert case.excluded_users == frozenset({excluded})
    assert len(step.ref) == 16 and int(step.ref, 16) >= 0 and step.step_id == "M1"
    with engine.connect() as conn:
        digest = conn.execute(text("SELECT user_digest FROM case_exclusions")).scalar()
        exclusion_at = conn.execute(text("SELECT at FROM case_exclusions")).scalar()
    assert digest == keyring.digest(excluded)
    assert str(exclusion_at).startswith("2026-11-20 12:00:00")

    # and back: the plaintext columns return with their values
    command.downgrade(alembic_config("cases", url_at_0007), "0007")
    with engine.connect() as conn:
        row = conn.execute(text("SELECT place, perpetrator_relationship, classification_answers FROM cases")).one()
        assert conn.execute(text("SELECT user_id FROM case_exclusions")).scalar() == excluded
    assert (row.place, row.perpetrator_relationship, json.loads(row.classification_answers)) == (
        PLACE, RELATIONSHIP, answers)
    engine.dispose()
