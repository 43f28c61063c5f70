"""The deadline sweep with two replicas at once, on PostgreSQL and on
SQLite, and re-planning racing the sweep."""
import json
import secrets
import subprocess
import sys
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import eventlet
import pytest
from sqlalchemy import insert, text
from sqlalchemy.orm import Session, sessionmaker

from servicekit.database import make_engine
from services.cases.adapters import orm
from services.cases.domain.deadlines import AlertPolicy, alert_time
from services.cases.service_layer.sweep import sweep
from tests.conftest import ROOT, wait_until

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
POLICY = AlertPolicy()
CASES = 10_000
# per case: one step overdue by 2 hours (due soon, overdue) and one by 100 hours
# (due soon, overdue, escalated to the president, escalated to the supervisor)
STEPS = {"R0": NOW - timedelta(hours=2), "R4": NOW - timedelta(hours=100)}
EXPECTED_PER_CASE = 6


def seed(engine, now: datetime = NOW) -> None:
    """CASES open cases, each with the two steps of STEPS, due as seen from ``now``."""
    shift = now - NOW
    organization = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(insert(orm.organizations).values(id=organization, code="CEC", timezone="America/Lima",
                                                      created_at=NOW))
        ids = [str(uuid.uuid4()) for _ in range(CASES)]
        conn.execute(insert(orm.cases), [
            {"id": cid, "organization_id": organization, "survivor_code": f"CEC-2026-{n:05d}", "status": "open",
             "age_group": "18-25", "sex": "female", "opened_at": NOW - timedelta(days=5), "opened_by": organization,
             "version": 1, "protocol_id": "smp-gbv", "protocol_version": 1}
            for n, cid in enumerate(ids)
        ])
        conn.execute(insert(orm.plan_steps), [
            {"case_id": cid, "organization_id": organization, "step_id": step_id, "ref": secrets.token_hex(8),
             "responsible": "case_lead",
             "due_at": due + shift, "urgent": True, "status": "open", "alert_stage": 0,
             "next_alert_at": alert_time(0, due + shift, POLICY)}
            for cid in ids for step_id, due in STEPS.items()
        ])


def assert_each_alert_staged_once(engine) -> None:
    with engine.connect() as conn:
        bodies = conn.execute(text("SELECT body FROM outbox")).scalars().all()
    keys = Counter()
    for body in bodies:
        event = json.loads(body)
        keys[(event["case_id"], event["data"]["step_ref"], event["type"], event["data"].get("rung"))] += 1
    assert len(keys) == CASES * EXPECTED_PER_CASE
    assert set(keys.values()) == {1}, "an alert was staged twice"
    kinds = Counter(k[2] for k in keys)
    assert kinds == {"step_due_soon": 2 * CASES, "step_overdue": 2 * CASES, "step_escalated": 2 * CASES}


def step_ids(engine) -> dict:
    """Each step's protocol id by its reference: the events name only the reference."""
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT ref, step_id FROM plan_steps")).all())


def organization_with_focal_point(engine) -> tuple:
    """A registered organisation and its focal point."""
    from services.cases.domain.access import Caller
    from services.cases.service_layer import handlers
    from services.cases.service_layer.unit_of_work import UnitOfWork

    organization = str(uuid.uuid4())
    with Session(engine) as session:
        handlers.register_organization(UnitOfWork(session), organization_id=organization, code="CEC",
                                       timezone_name="America/Lima")
    return organization, Caller(str(uuid.uuid4()), organization, frozenset({"focal_point"}))


def open_case_at(engine, focal_point, opened_at: datetime):
    """Open a case through the service layer, as of ``opened_at``."""
    from cryptography.fernet import Fernet

    from services.cases.adapters.crypto import KeyRing
    from services.cases.service_layer import handlers
    from services.cases.service_layer.unit_of_work import UnitOfWork

    with Session(engine) as session:
        return handlers.open_case(UnitOfWork(session), KeyRing([Fernet.generate_key().decode()]), focal_point,
                                  {"age_group": "18-25"}, now=opened_at, policy=POLICY)


def test_two_replicas_sweeping_10000_cases_emit_each_alert_exactly_once(database_urls, clean_databases):
    seed(clean_databases["cases"])
    replicas = [make_engine(database_urls["cases"], green=True) for _ in range(2)]

    pool = eventlet.GreenPool()
    staged = list(pool.imap(lambda engine: sweep(sessionmaker(engine), POLICY, now=NOW, batch=500), replicas))

    assert sum(staged) == CASES * EXPECTED_PER_CASE  # how they shared it is the scheduler's business
    assert_each_alert_staged_once(clean_databases["cases"])

    # a later sweep finds nothing new until the next rung falls due
    assert sweep(sessionmaker(replicas[0]), POLICY, now=NOW + timedelta(minutes=5)) == 0
    for engine in replicas:
        engine.dispose()


def test_two_processes_sweeping_10000_cases_on_one_sqlite_file_stage_each_alert_once(
        sqlite_database_urls, sqlite_engines):
    """On SQLite, replicas are OS processes: the lock one of them waits for
    blocks its whole process, so green threads of one process cannot show it."""
    seed(sqlite_engines["cases"])
    sqlite_engines["cases"].dispose()  # the processes have the file to themselves
    command = [sys.executable, "-m", "tests.support.sweep_process", sqlite_database_urls["cases"],
               NOW.isoformat(), "100", "0.01"]
    processes = [subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
    try:
        for process in processes:  # both imported and connected: start them together
            assert process.stdout.readline().strip() == "ready"
        for process in processes:
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=90)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert [p.returncode for p in processes] == [0, 0], outputs
    staged = [json.loads(out.strip().splitlines()[-1])["staged"] for out in outputs]

    assert sum(staged) == CASES * EXPECTED_PER_CASE  # how they shared it is the operating system's business
    assert_each_alert_staged_once(sqlite_engines["cases"])
    assert sweep(sessionmaker(sqlite_engines["cases"]), POLICY, now=NOW + timedelta(minutes=5)) == 0


def test_a_due_time_moved_while_the_sweep_runs_neither_resends_alerts_nor_undoes_them(backend, backend_engines):
    """Re-planning reads a step's alert stage without a lock; the sweep
    advances it (and stages its alerts) before re-planning writes."""
    from services.cases.domain.access import Caller
    from services.cases.service_layer import handlers
    from services.cases.service_layer.unit_of_work import UnitOfWork

    engine = backend_engines["cases"]
    sessions = sessionmaker(engine)
    now = datetime.now(timezone.utc)
    organization, focal_point = organization_with_focal_point(engine)
    president = Caller(str(uuid.uuid4()), organization, frozenset({"president"}))
    # opened 100 hours ago and never swept: R4 (risk assessment) was due after 24 hours while
    # the risk is unknown (every one of its alerts has passed), after 72 hours once it is low
    case = open_case_at(engine, focal_point, now - timedelta(hours=100))

    swept = []
    with Session(engine) as session:
        uow = UnitOfWork(session)
        reschedule = uow.plans.reschedule

        def sweep_then_reschedule(row, **change):
            if not swept:  # the steps are read: now the sweep runs and commits
                swept.append(sweep(sessions, POLICY, now=now))
            return reschedule(row, **change)

        uow.plans.reschedule = sweep_then_reschedule
        handlers.set_risk(uow, president, case.id, {"risk_level": "low", "version": case.version}, POLICY)
    assert swept and swept[0] > 0, "the sweep did not run between re-planning's read and write"

    with engine.connect() as conn:
        r4 = conn.execute(text("SELECT due_at, alert_stage FROM plan_steps WHERE step_id = 'R4'")).one()
        bodies = conn.execute(text("SELECT body FROM outbox WHERE routing_key LIKE 'step_%'")).scalars().all()
    # R4 is now due 72 hours after opening: due soon, overdue and the president's
    # escalation hold for that time too; only the supervisor's is still ahead
    assert r4.alert_stage == 3
    ids = step_ids(engine)
    r4_alerts = sorted((e["type"], e["data"].get("rung") or "") for e in map(json.loads, bodies)
                       if ids[e["data"]["step_ref"]] == "R4")
    assert r4_alerts == [("step_due_soon", ""), ("step_escalated", "president"), ("step_escalated", "supervisor"),
                         ("step_overdue", "")]
    # and no sweep of the same moment sends any of them again, for R4 or any other step
    assert sweep(sessions, POLICY, now=now) == 0


def test_the_sweep_timer_of_the_running_service_sends_due_alerts(stack, clean_databases):
    # R0 is due an hour after opening; a window of 59 min 58 s puts its
    # due-soon alert 2 s after the opening (one planned inside it gets none)
    stack.start_all(cases={"DEADLINES": {"SWEEP_INTERVAL_SECONDS": 0.2, "DUE_SOON_HOURS": 1 - 2 / 3600}})
    org = stack.organization()
    case = stack.post_case(org["focal_point"]["token"], {"age_group": "18-25"}).json()

    def alerts():
        with clean_databases["cases"].connect() as conn:
            return conn.execute(text(
                "SELECT body FROM outbox WHERE routing_key = 'step_due_soon'")).scalars().all()

    from prometheus_client import REGISTRY

    before = REGISTRY.get_sample_value("warmi_step_alerts_total", {"kind": "due_soon"}) or 0
    found = wait_until(alerts, message="the due-soon alert of R0")
    wait_until(lambda: (REGISTRY.get_sample_value("warmi_step_alerts_total", {"kind": "due_soon"}) or 0) > before,
               message="the alert to be counted")
    assert REGISTRY.get_sample_value("warmi_plan_steps_overdue", {"service": "cases"}) == 0
    event = json.loads(found[0])
    r0 = next(s for s in stack.get_case(org["president"]["token"], case["id"]).json()["plan"]["steps"]
              if s["step_id"] == "R0")
    assert event["case_id"] == case["id"] and event["data"]["step_ref"] == r0["ref"]
    assert event["data"]["responsible"] == "focal_point"


@pytest.mark.timeout(240)  # longer than its own wait for every alert
def test_two_running_cases_services_sweeping_10000_cases_stage_each_alert_once(stack, clean_databases):
    """The same, with two real replicas of the service and their timers."""
    from nameko.containers import ServiceContainer

    from services.cases.service import CasesService

    seed(clean_databases["cases"], now=datetime.now(timezone.utc))  # the replicas sweep as of the real time
    expected = CASES * EXPECTED_PER_CASE
    replicas = [
        ServiceContainer(CasesService, stack.config("cases", DEADLINES={"SWEEP_INTERVAL_SECONDS": 0.05}))
        for _ in range(2)
    ]
    for replica in replicas:
        replica.start()
    try:
        with clean_databases["cases"].connect() as conn:
            def staged():
                return conn.execute(text("SELECT count(*) FROM outbox")).scalar()

            wait_until(lambda: staged() >= expected, timeout=120, interval=0.5, message="every alert")
            eventlet.sleep(1.0)  # a few more sweeps by both replicas: nothing new may appear
            assert staged() == expected
            repeats = conn.execute(text(
                "SELECT count(*) FROM (SELECT body::json->>'case_id' AS c, body::json->'data'->>'step_ref' AS s, "
                "routing_key, body::json->'data'->>'rung' AS r FROM outbox "
                "GROUP BY 1, 2, 3, 4 HAVING count(*) > 1) AS twice")).scalar()
            assert repeats == 0
    finally:
        pool = eventlet.GreenPool()
        for replica in replicas:
            pool.spawn(replica.stop)
        pool.waitall()


def test_a_new_case_gets_no_due_soon_alert_for_a_step_already_inside_its_window(backend, backend_engines):
    """R0 is due an hour after the opening, inside the two-hour window at
    once: the president's notice of the new case covers it. Its overdue
    alert still comes; R1, R2 and R4 (due in 24 h) get their due-soon alerts."""
    engine = backend_engines["cases"]
    sessions = sessionmaker(engine)
    now = datetime.now(timezone.utc)
    _, focal_point = organization_with_focal_point(engine)
    case = open_case_at(engine, focal_point, now)

    def alerts_of(case_id):
        with engine.connect() as conn:
            bodies = conn.execute(text("SELECT body FROM outbox WHERE routing_key LIKE 'step_%'")).scalars().all()
        ids = step_ids(engine)
        return sorted((ids[e["data"]["step_ref"]], e["type"]) for e in map(json.loads, bodies)
                      if e["case_id"] == case_id)

    assert sweep(sessions, POLICY, now=now + timedelta(minutes=1)) == 0
    assert alerts_of(case.id) == []
    sweep(sessions, POLICY, now=now + timedelta(hours=1, minutes=1))
    assert alerts_of(case.id) == [("R0", "step_overdue")]
    sweep(sessions, POLICY, now=now + timedelta(hours=22, minutes=1))
    assert alerts_of(case.id) == [("R0", "step_overdue"), ("R1", "step_due_soon"), ("R2", "step_due_soon"),
                                  ("R4", "step_due_soon")]
