"""Times are instants, on PostgreSQL and on SQLite alike: an incident time sent
with its offset (Peru -05:00, Bolivia -04:00) is the same instant when read
back, and the clinical clock and the quarter end count from it."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, select
from sqlalchemy.exc import StatementError

from servicekit.types import NaiveDatetimeError, UtcDateTime
from tests.support.api import edit

LIMA = timezone(timedelta(hours=-5))  # America/Lima: no daylight saving time
LA_PAZ = timezone(timedelta(hours=-4))  # America/La_Paz: none either
# 2026-11-20 22:00 in Lima and 23:00 in La Paz are both 03:00 UTC on the 21st
INSTANT = datetime(2026, 11, 21, 3, 0, tzinfo=timezone.utc)


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- the column type ------------------------------------------------------------

@pytest.fixture
def probe(backend_engines):
    """A throwaway table with one ``UtcDateTime`` column in the referrals database."""
    engine = backend_engines["referrals"]
    metadata = MetaData()
    table = Table(f"instants_probe_{uuid.uuid4().hex[:8]}", metadata,
                  Column("id", Integer, primary_key=True), Column("at", UtcDateTime(), nullable=True))
    metadata.create_all(engine)
    yield engine, table
    metadata.drop_all(engine)


def test_the_type_refuses_a_naive_datetime(probe):
    engine, table = probe

    with engine.begin() as conn, pytest.raises(StatementError) as raised:
        conn.execute(table.insert().values(id=1, at=datetime(2026, 11, 20, 22, 0)))

    assert isinstance(raised.value.orig, NaiveDatetimeError)
    with engine.connect() as conn:
        assert conn.execute(select(table)).all() == []


def test_the_type_stores_the_instant_and_reads_it_back_in_utc(probe):
    engine, table = probe
    with engine.begin() as conn:
        conn.execute(table.insert(), [
            {"id": 1, "at": datetime(2026, 11, 20, 22, 0, tzinfo=LIMA)},
            {"id": 2, "at": datetime(2026, 11, 20, 23, 0, tzinfo=LA_PAZ)},
            {"id": 3, "at": datetime(2026, 11, 21, 2, 59, 59, 999999, tzinfo=timezone.utc)},
            {"id": 4, "at": None},
        ])

    with engine.connect() as conn:
        rows = dict(conn.execute(select(table.c.id, table.c.at)).all())
        # a bound with an offset compares as the instant it is
        before = conn.execute(
            select(table.c.id).where(table.c.at < datetime(2026, 11, 20, 22, 0, tzinfo=LIMA)).order_by(table.c.id)
        ).scalars().all()

    assert rows[1] == rows[2] == INSTANT
    assert rows[1].tzinfo is timezone.utc and rows[2].tzinfo is timezone.utc
    assert rows[3] == INSTANT - timedelta(microseconds=1) and rows[3].tzinfo is timezone.utc
    assert rows[4] is None
    assert before == [3]


def test_the_type_reads_utc_whatever_the_session_time_zone(probe, backend):
    """PostgreSQL answers in the session's time zone; the type hands back UTC."""
    engine, table = probe
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, at=datetime(2026, 11, 20, 22, 0, tzinfo=LIMA)))

    with engine.connect() as conn:
        if backend == "postgresql":
            conn.exec_driver_sql("SET TIME ZONE 'America/La_Paz'")
        at = conn.execute(select(table.c.at)).scalar()

    assert at == INSTANT and at.tzinfo is timezone.utc and at.isoformat() == "2026-11-21T03:00:00+00:00"


@pytest.mark.parametrize("service", ["cases", "notifications", "referrals", "identity"])
def test_the_tables_match_their_migrations(backend_engines, service):
    """Only the Python side of the timestamp columns changed: Alembic, which
    compares types, sees no difference between the tables and the migrations."""
    import importlib

    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    metadata = importlib.import_module(f"services.{service}.adapters.orm").metadata
    with backend_engines[service].connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


# -- through the API --------------------------------------------------------------

@pytest.fixture
def people(any_stack):
    any_stack.start_all()
    lima = any_stack.organization("CEC", timezone="America/Lima")
    la_paz = any_stack.organization("BOL", timezone="America/La_Paz")
    return any_stack, lima, la_paz


def test_an_incident_time_with_its_offset_reads_back_as_the_same_instant(people):
    stack, lima, la_paz = people

    peru = stack.post_case(lima["focal_point"]["token"],
                           {"age_group": "18-25", "incident_at": "2026-11-20T22:00:00-05:00"})
    bolivia = stack.post_case(la_paz["focal_point"]["token"],
                              {"age_group": "18-25", "incident_at": "2026-11-20T23:00:00-04:00"})
    assert peru.status_code == 201, peru.text
    assert bolivia.status_code == 201, bolivia.text

    for org, opened in ((lima, peru.json()), (la_paz, bolivia.json())):
        assert instant(opened["incident_at"]) == INSTANT
        read = stack.get_case(org["president"]["token"], opened["id"]).json()
        assert instant(read["incident_at"]) == INSTANT, read["incident_at"]
        assert read["incident_at"] == "2026-11-21T03:00:00+00:00"
        listed = stack.api("GET", "/cases", org["president"]["token"]).json()["items"]
        assert [instant(c["incident_at"]) for c in listed] == [INSTANT]

    # an edit with an offset is the same instant too
    case = peru.json()
    edited = edit(stack, "PATCH", f"/cases/{case['id']}", lima["president"]["token"],
                       {"incident_at": "2026-11-19T20:30:00-05:00"}, case["version"])
    assert edited.status_code == 200, edited.text
    read = stack.get_case(lima["president"]["token"], case["id"]).json()
    assert instant(read["incident_at"]) == datetime(2026, 11, 20, 1, 30, tzinfo=timezone.utc)


# hours between incident and report → when the medical referral (R3) is due, and whether urgently
CLINICAL_EDGES = [
    # inside the PEP window: never after incident + 72 h
    (71, lambda incident, opened: incident + timedelta(hours=72), True),
    # PEP window closed, emergency contraception open: 2 h after opening, before incident + 120 h
    (73, lambda incident, opened: opened + timedelta(hours=2), True),
    # 1 h left of the emergency-contraception window: never after incident + 120 h
    (119, lambda incident, opened: incident + timedelta(hours=120), True),
    # both windows closed: 24 h after registration (not yet done: after the opening), not urgent
    (121, lambda incident, opened: opened + timedelta(hours=24), False),
]


@pytest.mark.parametrize("offset", [LIMA, LA_PAZ], ids=["-05:00", "-04:00"])
def test_the_medical_referral_is_due_inside_the_clinical_window(people, offset):
    """The plan of a rape case is computed again when it is classified, from
    the incident time as stored: five hours lost there moved the due time
    past the PEP window."""
    stack, lima, la_paz = people
    org = lima if offset is LIMA else la_paz
    now = datetime.now(timezone.utc).replace(microsecond=0)
    for hours, expected, urgent in CLINICAL_EDGES:
        incident = now - timedelta(hours=hours)
        opened = stack.post_case(org["focal_point"]["token"],
                                 {"age_group": "18-25", "incident_at": incident.astimezone(offset).isoformat()})
        assert opened.status_code == 201, opened.text
        case = opened.json()
        classified = edit(stack, "POST", f"/cases/{case['id']}/classification", org["president"]["token"],
                               {"incident_type": "rape"}, case["version"])
        assert classified.status_code == 200, classified.text

        detail = stack.get_case(org["president"]["token"], case["id"]).json()
        r3 = next(s for s in detail["plan"]["steps"] if s["step_id"] == "R3")
        opened_at = instant(detail["opened_at"])
        assert instant(detail["incident_at"]) == incident
        assert instant(r3["due_at"]) == expected(incident, opened_at), (hours, r3["due_at"])
        assert r3["urgent"] is urgent, hours
        if urgent:
            window = timedelta(hours=72 if hours <= 72 else 120)
            assert instant(r3["due_at"]) <= incident + window


# -- rules in local time ------------------------------------------------------------

@pytest.mark.parametrize("opened_at,month,quarter_end", [
    # New Year's Eve, 22:00 in Lima, already 2027 in UTC: the report is due at the end of 2026 in Lima
    (datetime(2027, 1, 1, 3, 0, tzinfo=timezone.utc), "2026-12",
     datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=LIMA)),
    # the first hours of April in UTC are still March in Lima
    (datetime(2027, 4, 1, 4, 59, tzinfo=timezone.utc), "2027-03",
     datetime(2027, 3, 31, 23, 59, 59, 999999, tzinfo=LIMA)),
    (datetime(2027, 4, 1, 5, 0, tzinfo=timezone.utc), "2027-04",
     datetime(2027, 6, 30, 23, 59, 59, 999999, tzinfo=LIMA)),
])
def test_the_quarterly_report_and_the_statistics_month_are_in_the_organisations_time_zone(
    backend_engines, opened_at, month, quarter_end
):
    from cryptography.fernet import Fernet
    from sqlalchemy.orm import Session

    from services.cases.adapters.crypto import KeyRing
    from services.cases.domain.access import Caller
    from services.cases.service_layer import handlers
    from services.cases.service_layer.unit_of_work import UnitOfWork

    engine = backend_engines["cases"]
    organization = str(uuid.uuid4())
    with Session(engine) as session:
        handlers.register_organization(UnitOfWork(session), organization_id=organization, code="CEC",
                                       timezone_name="America/Lima")
    focal_point = Caller(str(uuid.uuid4()), organization, frozenset({"focal_point"}))
    with Session(engine) as session:
        case = handlers.open_case(UnitOfWork(session), KeyRing([Fernet.generate_key().decode()]), focal_point,
                                  {"age_group": "18-25"}, now=opened_at)

    with Session(engine) as session:
        uow = UnitOfWork(session)
        stored = uow.cases.get(case.id)
        r10 = next(s for s in uow.plans.steps(case.id) if s.step_id == "R10")

    assert stored.opened_at == opened_at and stored.opened_at.tzinfo is timezone.utc
    assert stored.opened_month == month
    assert r10.due_at == quarter_end
    assert r10.due_at.tzinfo is timezone.utc
    assert r10.urgent is False
