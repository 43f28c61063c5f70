"""Case work through the gateway, against the real services and broker, on
PostgreSQL and on SQLite: classification, plans, consent, closure, audit,
statistics."""
import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from tests.conftest import table_counts
from tests.support.api import edit
from warmi import cli

NOW = datetime.now(timezone.utc)


@pytest.fixture
def team(any_stack):
    """An organisation with its president, focal point, case lead and supervisor,
    on each database in turn."""
    stack = any_stack
    stack.start_all()
    org = stack.organization()
    people = {
        "president": org["president"]["token"],
        "focal_point": org["focal_point"]["token"],
        "case_lead": stack.user("CEC", "case_lead")["token"],
        "supervisor": stack.user("CEC", "supervisor", supervises=["CEC"])["token"],
    }
    return stack, org, people


def open_case(stack, people, **body):
    response = stack.post_case(people["focal_point"], {"age_group": "18-25", **body})
    assert response.status_code == 201, response.text
    return response.json()


def known_provider(engines) -> str:
    """A provider of CEC's directory, once the cases service has heard of it."""
    from tests.conftest import wait_until
    from warmi.admin import create_provider

    provider = create_provider(org_code="CEC", name="Posta de salud Ananea", kind="health_post")
    with engines["cases"].connect() as conn:
        wait_until(lambda: conn.execute(text("SELECT 1 FROM providers WHERE id = :id"), {"id": provider["id"]}).first(),
                   message="the provider to reach the cases service")
    return provider["id"]


def current(stack, people, case):
    response = stack.api("GET", f"/cases/{case['id']}", people["president"])
    assert response.status_code == 200, response.text
    return response.json()


def step(detail, step_id):
    return next((s for s in detail["plan"]["steps"] if s["step_id"] == step_id), None)


def test_a_rape_case_gets_its_medical_referral_within_the_clinical_window(team):
    stack, org, people = team
    case = open_case(stack, people, incident_at=(NOW - timedelta(hours=10)).isoformat())
    detail = current(stack, people, case)
    assert step(detail, "R3") is None  # not classified yet

    classified = edit(stack, "POST", f"/cases/{case['id']}/classification", people["president"], {
        "answers": {"rape": True, "sexual_assault": False, "physical_assault": False, "forced_marriage": False,
                    "denial_of_resources": False, "psychological_abuse": False},
    }, detail["version"])

    assert classified.status_code == 200, classified.text
    detail = current(stack, people, case)
    assert detail["incident_type"] == "rape"
    opened = datetime.fromisoformat(detail["opened_at"])
    incident = datetime.fromisoformat(detail["incident_at"])
    r3 = step(detail, "R3")
    assert datetime.fromisoformat(r3["due_at"]) == min(opened + timedelta(hours=2), incident + timedelta(hours=72))
    assert r3["urgent"] and r3["status"] == "open"
    assert step(detail, "M1") is None
    assert [s["step_id"] for s in detail["plan"]["steps"]][:5] == ["R0", "R1", "R2", "R3", "R4"]


def test_a_minor_is_flagged_and_gets_the_mandatory_report_step(team):
    stack, org, people = team
    case = open_case(stack, people, age_group="12-17")
    detail = current(stack, people, case)
    assert detail["minor"] and detail["mandatory_report"]
    assert step(detail, "M1")["responsible"] == ["case_lead", "president"]


@pytest.mark.parametrize("body,field", [
    ({"answers": {"rape": False}}, "sexual_assault"),
    ({"answers": {"rape": "yes"}}, "rape"),
    ({"answers": {"rape": True}, "incident_type": "rape"}, "answers"),
    ({"answers": {"kidnapping": True}}, "answers"),
    ({"incident_type": "theft"}, "incident_type"),
    ({}, "answers"),
])
def test_invalid_classification_answers_are_refused_and_change_nothing(team, backend_engines, body, field):
    stack, org, people = team
    case = open_case(stack, people)
    version = current(stack, people, case)["version"]
    before = table_counts(backend_engines["cases"])

    response = edit(stack, "POST", f"/cases/{case['id']}/classification", people["president"],
                         {**body}, version)

    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["fields"]
    after = table_counts(backend_engines["cases"])
    assert {k: v for k, v in after.items() if k not in ("audit_log",)} == \
        {k: v for k, v in before.items() if k not in ("audit_log",)}


def test_a_stale_update_is_refused(team):
    stack, org, people = team
    case = open_case(stack, people)
    version = current(stack, people, case)["version"]

    first = edit(stack, "PATCH", f"/cases/{case['id']}", people["president"], {"place": "mine_site"}, version)
    second = edit(stack, "PATCH", f"/cases/{case['id']}", people["president"], {"place": "camp"}, version)

    assert first.status_code == 200 and first.json()["version"] == version + 1
    assert first.headers["ETag"] == f'"{version + 1}"'
    assert second.status_code == 412 and "If-Match" in second.json()["error"]["fields"]
    assert second.headers["ETag"] == f'"{version + 1}"'
    assert current(stack, people, case)["place"] == "mine_site"


def test_an_incident_after_the_report_or_in_the_future_is_refused(team):
    stack, org, people = team
    case = open_case(stack, people)
    version = current(stack, people, case)["version"]
    later = (datetime.fromisoformat(case["opened_at"]) + timedelta(minutes=5)).isoformat()

    patched = edit(stack, "PATCH", f"/cases/{case['id']}", people["president"], {"incident_at": later}, version)
    opened = stack.post_case(people["focal_point"], {"age_group": "18-25",
                                                      "incident_at": (NOW + timedelta(days=1)).isoformat()})

    assert patched.status_code == 422 and "incident_at" in patched.json()["error"]["fields"]
    assert opened.status_code == 422 and "incident_at" in opened.json()["error"]["fields"]


def test_steps_are_completed_once_and_only_steps_of_the_protocol(team, backend_engines):
    stack, org, people = team
    case = open_case(stack, people)

    unknown = edit(stack, "POST", f"/cases/{case['id']}/steps/R99/completion", people["president"], {})
    done = edit(stack, "POST", f"/cases/{case['id']}/steps/R0/completion", people["focal_point"],
                     {"note": "ayuda de emergencia ofrecida"})
    again = edit(stack, "POST", f"/cases/{case['id']}/steps/R0/completion", people["president"], {})

    assert unknown.status_code == 404 and "step_id" in unknown.json()["error"]["fields"]
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "in_progress"
    assert again.status_code == 409
    r0 = step(current(stack, people, case), "R0")
    assert r0["status"] == "done" and r0["note"] == "ayuda de emergencia ofrecida"
    with backend_engines["cases"].connect() as conn:
        raw = conn.execute(text("SELECT note_enc FROM plan_steps WHERE step_id = 'R0'")).scalar()
    assert "emergencia" not in raw


def test_a_high_risk_case_closes_only_with_supervisor_approval_and_reopening_is_logged(team):
    stack, org, people = team
    case = open_case(stack, people)
    version = current(stack, people, case)["version"]
    assert edit(stack, "POST", f"/cases/{case['id']}/risk", people["president"],
                     {"risk_level": "high"}, version).status_code == 200
    version = current(stack, people, case)["version"]

    refused = edit(stack, "POST", f"/cases/{case['id']}/closure", people["president"],
                        {"reason": "survivor_agreed"}, version)
    assert refused.status_code == 422 and "approval" in refused.json()["error"]["fields"]

    assert edit(stack, "POST", f"/cases/{case['id']}/closure-approval", people["supervisor"]).status_code == 200
    version = current(stack, people, case)["version"]
    closed = edit(stack, "POST", f"/cases/{case['id']}/closure", people["president"],
                       {"reason": "survivor_agreed"}, version)
    assert closed.status_code == 200, closed.text
    assert closed.json()["status"] == "closed"
    edited = edit(stack, "PATCH", f"/cases/{case['id']}", people["president"], {"place": "camp"},
                  closed.json()["version"])
    assert edited.status_code == 409

    reopened = edit(stack, "POST", f"/cases/{case['id']}/reopening", people["president"],
                         {"reason": "new_incident"}, closed.json()["version"])
    assert reopened.status_code == 200, reopened.text
    detail = current(stack, people, case)
    assert [h["to"] for h in detail["history"]] == ["open", "closed", "reopened"]
    assert detail["history"][-1]["reason"] == "new_incident"
    assert step(detail, "R9")["status"] == "open"


def staged(engines, event_type: str) -> list[dict]:
    """The data of the events of ``event_type`` in the cases outbox, in the order staged."""
    with engines["cases"].connect() as conn:
        bodies = conn.execute(text("SELECT body FROM outbox WHERE routing_key = :type ORDER BY id"),
                              {"type": event_type}).scalars().all()
    return [json.loads(body)["data"] for body in bodies]


def test_every_change_of_case_lead_is_staged_with_who_leads_now_and_who_decided(team, backend_engines):
    stack, org, people = team
    president = stack.user_id(people["president"])
    first = stack.user_id(people["case_lead"])
    second = stack.user_id(stack.user("CEC", "case_lead")["token"])
    case = open_case(stack, people)
    # opening cannot assess the risk: the case opens without a level
    assert [data["risk_level"] for data in staged(backend_engines, "case_opened")] == [None]
    url = f"/cases/{case['id']}"

    assigned = edit(stack, "POST", f"{url}/case-lead", people["president"], {"case_lead_id": first})
    again = edit(stack, "POST", f"{url}/case-lead", people["president"], {"case_lead_id": first})
    reassigned = edit(stack, "POST", f"{url}/case-lead", people["president"], {"case_lead_id": second})
    excluded = edit(stack, "POST", f"{url}/exclusions", people["president"], {"user_id": second})

    assert [r.status_code for r in (assigned, again, reassigned, excluded)] == [200] * 4, excluded.text
    assert again.json()["version"] == assigned.json()["version"]  # the same lead again changes nothing
    assert excluded.json()["case_lead_id"] is None
    assert staged(backend_engines, "case_lead_assigned") == [
        {"case_lead_id": first, "assigned_by": president},
        {"case_lead_id": second, "assigned_by": president},
        {"case_lead_id": None, "assigned_by": president},
    ]
    # the exclusion itself still travels as a change of the team, like each new lead
    assert staged(backend_engines, "case_updated") == [{"changed": ["team"]}] * 3


def test_withdrawing_referral_consent_cancels_the_referral_steps(team, backend_engines):
    stack, org, people = team
    case = open_case(stack, people, incident_at=(NOW - timedelta(hours=5)).isoformat())
    version = current(stack, people, case)["version"]
    edit(stack, "POST", f"/cases/{case['id']}/classification", people["president"],
              {"incident_type": "sexual_assault"}, version)
    provider = known_provider(backend_engines)
    given = edit(stack, "POST", f"/cases/{case['id']}/consents", people["president"], {
        "purpose": "referral", "given_by": "survivor", "provider_id": provider, "data_shared": ["medical"]})
    assert given.status_code == 201, given.text

    withdrawn = edit(stack, "POST", f"/cases/{case['id']}/consents/{given.json()['id']}/withdrawal", people["president"])

    assert withdrawn.status_code == 200, withdrawn.text
    detail = current(stack, people, case)
    assert step(detail, "R3")["status"] == "cancelled" and step(detail, "R6")["status"] == "cancelled"
    assert step(detail, "R4")["status"] == "open"
    again = edit(stack, "POST", f"/cases/{case['id']}/consents/{given.json()['id']}/withdrawal", people["president"])
    assert again.status_code == 409
    with backend_engines["cases"].connect() as conn:
        bodies = conn.execute(text("SELECT body FROM outbox WHERE routing_key = 'consent_withdrawn'")).scalars().all()
    # the event says which consent, not which steps went: R3 among them would tell sexual violence
    assert set(json.loads(bodies[0])["data"]) == {"consent_id", "purpose", "withdrawn_by"}


def test_a_minors_consent_needs_a_caregiver_and_the_childs_assent(team):
    stack, org, people = team
    case = open_case(stack, people, age_group="0-11")
    url = f"/cases/{case['id']}/consents"

    by_child = edit(stack, "POST", url, people["president"], {"purpose": "case_management", "given_by": "survivor"})
    no_assent = edit(stack, "POST", url, people["president"], {"purpose": "case_management", "given_by": "caregiver"})
    proper = edit(stack, "POST", url, people["president"], {"purpose": "case_management", "given_by": "caregiver",
                                                          "child_assent": True})

    assert by_child.status_code == 422 and "given_by" in by_child.json()["error"]["fields"]
    assert no_assent.status_code == 422 and "child_assent" in no_assent.json()["error"]["fields"]
    assert proper.status_code == 201


def test_every_read_is_audited_and_an_edited_entry_fails_verification(team, backend_engines, capsys):
    stack, org, people = team
    case = open_case(stack, people)
    current(stack, people, case)
    stack.api("GET", "/cases", people["focal_point"])

    trail = stack.api("GET", f"/cases/{case['id']}/audit", people["president"])

    assert trail.status_code == 200, trail.text
    actions = [entry["action"] for entry in trail.json()]
    assert actions[:3] == ["open", "read", "list"]
    assert all(set(entry) == {"id", "actor_id", "action", "fields", "at"} for entry in trail.json())
    assert cli.main(["audit", "verify"]) == 0

    with backend_engines["cases"].begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor_id = :who WHERE action = 'read'"), {"who": str(uuid.uuid4())})
    capsys.readouterr()

    assert cli.main(["audit", "verify"]) == 1
    assert "content does not match its hash" in capsys.readouterr().out


def test_deleting_an_audit_entry_fails_verification(team, backend_engines):
    stack, org, people = team
    case = open_case(stack, people)
    current(stack, people, case)
    current(stack, people, case)
    with backend_engines["cases"].begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE id = (SELECT max(id) FROM audit_log)"))
    assert cli.main(["audit", "verify"]) == 1


def test_statistics_count_consented_cases_and_hide_small_cells(team):
    stack, org, people = team

    def consented_case(incident_type, consent=True):
        case = open_case(stack, people)
        version = current(stack, people, case)["version"]
        edit(stack, "POST", f"/cases/{case['id']}/classification", people["president"],
                  {"incident_type": incident_type}, version)
        if consent:
            assert edit(stack, "POST", f"/cases/{case['id']}/consents", people["president"],
                             {"purpose": "aggregate_reporting", "given_by": "survivor"}).status_code == 201

    for _ in range(6):
        consented_case("physical_assault")
    for _ in range(5):
        consented_case("psychological_abuse")
    consented_case("rape")
    consented_case("rape", consent=False)  # not counted at all

    figures = stack.api("GET", "/statistics", people["president"])
    as_csv = stack.api("GET", "/statistics?format=csv", people["president"])

    assert figures.status_code == 200, figures.text
    [quarter] = figures.json()["quarters"]  # every case was opened this quarter
    by_type = quarter["by_type"]
    assert by_type["rape"] is None  # one case: hidden
    assert by_type["psychological_abuse"] is None  # hidden too, or the total would give the rape case away
    assert by_type["physical_assault"] == 6
    assert quarter["total"] == 12
    assert f"{quarter['quarter']},type,rape,<5" in as_csv.text.splitlines()
    assert as_csv.headers["Content-Type"].startswith("text/csv")
    assert stack.api("GET", "/statistics", people["focal_point"]).status_code == 403


def test_statistics_cells_stay_equal_to_a_recount_through_every_kind_of_change(team, backend_engines):
    from sqlalchemy import select

    from services.cases.adapters import cells, orm
    from warmi.admin import session_for

    stack, org, people = team
    president = people["president"]
    ids = []
    for age in ("18-25", "12-17", "26-40"):
        case = open_case(stack, people, age_group=age)
        ids.append(case["id"])
        given = edit(stack, "POST", f"/cases/{case['id']}/consents", president,
                          {"purpose": "aggregate_reporting", "given_by": "caregiver" if age == "12-17" else "survivor",
                           **({"child_assent": True} if age == "12-17" else {})})
        assert given.status_code == 201, given.text
    first = current(stack, people, {"id": ids[0]})
    edit(stack, "POST", f"/cases/{ids[0]}/classification", president, {"incident_type": "rape"}, first["version"])
    second = current(stack, people, {"id": ids[1]})
    edit(stack, "PATCH", f"/cases/{ids[1]}", president, {"age_group": "0-11",
                                                       "context_flags": ["workplace_harassment"]}, second["version"])
    third = current(stack, people, {"id": ids[2]})
    consent_id = third["consents"][0]["id"]
    assert edit(stack, "POST", f"/cases/{ids[2]}/consents/{consent_id}/withdrawal", president).status_code == 200

    def snapshot(session):
        rows = session.execute(select(orm.statistics_cells).where(orm.statistics_cells.c.n > 0)).all()
        return sorted(tuple(r) for r in rows)

    with session_for("cases") as session:
        kept = snapshot(session)
        cells.recount(session)
        assert snapshot(session) == kept
        session.rollback()
    assert sum(row[-1] for row in kept) == 2


def test_a_referral_consent_names_a_provider_of_the_directory(team):
    from tests.conftest import wait_until
    from warmi.admin import create_provider

    stack, org, people = team
    case = open_case(stack, people)
    url = f"/cases/{case['id']}/consents"
    body = {"purpose": "referral", "given_by": "survivor", "data_shared": ["medical"]}

    unknown = edit(stack, "POST", url, people["president"], {**body, "provider_id": str(uuid.uuid4())})
    provider = create_provider(org_code="CEC", name="Centro Emergencia Mujer Puno", kind="cem")

    assert unknown.status_code == 422 and "provider_id" in unknown.json()["error"]["fields"]
    listed = stack.api("GET", "/providers", people["president"]).json()["items"]
    assert [p["id"] for p in listed] == [provider["id"]]
    given = wait_until(lambda: (r := edit(stack, "POST", url, people["president"],
                                               {**body, "provider_id": provider["id"]})).status_code == 201 and r,
                       message="the provider to reach the cases service")
    assert given.json()["purpose"] == "referral"
