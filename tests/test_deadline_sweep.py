"""The deadline sweep on PostgreSQL with two replicas at once."""
import json
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import eventlet
from sqlalchemy import insert, text
from sqlalchemy.orm import sessionmaker

from servicekit.database import make_engine
from services.cases.adapters import orm
from services.cases.domain.deadlines import AlertPolicy, alert_time
from services.cases.service_layer.sweep import sweep
from tests.conftest import wait_until

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
            {"case_id": cid, "organization_id": organization, "step_id": step_id, "responsible": "case_lead",
             "due_at": due + shift, "urgent": True, "status": "open", "alert_stage": 0,
             "next_alert_at": alert_time(0, due + shift, POLICY)}
            for cid in ids for step_id, due in STEPS.items()
        ])


def test_two_replicas_sweeping_10000_cases_emit_each_alert_exactly_once(database_urls, clean_databases):
    seed(clean_databases["cases"])
    replicas = [make_engine(database_urls["cases"], green=True) for _ in range(2)]

    pool = eventlet.GreenPool()
    staged = list(pool.imap(lambda engine: sweep(sessionmaker(engine), POLICY, now=NOW, batch=500), replicas))

    assert sum(staged) == CASES * EXPECTED_PER_CASE
    assert all(staged), f"one replica did nothing: {staged}"  # they really swept side by side
    with clean_databases["cases"].connect() as conn:
        bodies = conn.execute(text("SELECT body FROM outbox")).scalars().all()
    keys = Counter()
    for body in bodies:
        event = json.loads(body)
        keys[(event["case_id"], event["data"]["step_id"], event["type"], event["data"].get("rung"))] += 1
    assert len(keys) == CASES * EXPECTED_PER_CASE
    assert set(keys.values()) == {1}
    kinds = Counter(k[2] for k in keys)
    assert kinds == {"step_due_soon": 2 * CASES, "step_overdue": 2 * CASES, "step_escalated": 2 * CASES}

    # a later sweep finds nothing new until the next rung falls due
    assert sweep(sessionmaker(replicas[0]), POLICY, now=NOW + timedelta(minutes=5)) == 0
    for engine in replicas:
        engine.dispose()


def test_the_sweep_timer_of_the_running_service_sends_due_alerts(stack, clean_databases):
    stack.start_all(cases={"DEADLINES": {"SWEEP_INTERVAL_SECONDS": 0.2, "DUE_SOON_HOURS": 2}})
    org = stack.organization()
    case = stack.post_case(org["focal_point"]["token"], {"age_group": "18-25"}).json()

    def alerts():
        with clean_databases["cases"].connect() as conn:
            return conn.execute(text(
                "SELECT body FROM outbox WHERE routing_key = 'step_due_soon'")).scalars().all()

    from prometheus_client import REGISTRY

    before = REGISTRY.get_sample_value("warmi_step_alerts_total", {"kind": "due_soon"}) or 0
    # R0 is due within one hour of opening: inside the two-hour lead time at once
    found = wait_until(alerts, message="the due-soon alert of R0")
    wait_until(lambda: (REGISTRY.get_sample_value("warmi_step_alerts_total", {"kind": "due_soon"}) or 0) > before,
               message="the alert to be counted")
    assert REGISTRY.get_sample_value("warmi_plan_steps_overdue", {"service": "cases"}) == 0
    event = json.loads(found[0])
    assert event["case_id"] == case["id"] and event["data"]["step_id"] == "R0"
    assert event["data"]["responsible"] == ["focal_point"]


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
                "SELECT count(*) FROM (SELECT body::json->>'case_id' AS c, body::json->'data'->>'step_id' AS s, "
                "routing_key, body::json->'data'->>'rung' AS r FROM outbox "
                "GROUP BY 1, 2, 3, 4 HAVING count(*) > 1) AS twice")).scalar()
            assert repeats == 0
    finally:
        pool = eventlet.GreenPool()
        for replica in replicas:
            pool.spawn(replica.stop)
        pool.waitall()
