"""The API against its own document: the route table, the OpenAPI document
made from it, ETag and If-Match on every edit, roles and token scope checked
before any service is asked, pagination links, the rate limit and the
headers every answer carries."""
from __future__ import annotations

import os
import uuid

import pytest
import requests

from services.gateway import routes
from services.gateway.routes import ROUTES
from services.gateway.identity import Principal

EDITS = [r for r in ROUTES if r.edit and "cases" in r.tags]  # edits of a case (people: test_people_api.py)
WRITES = [r for r in ROUTES if r.writes]
MAX_EXAMPLES = int(os.environ.get("WARMI_API_EXAMPLES", "12"))


def send(stack, method, path, token=None, body=None, headers=None, **kwargs):
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"
    if body is not None:
        kwargs["json"] = body
    return requests.request(method, f"{stack.url}{path}", headers=sent, timeout=20, **kwargs)


def concrete(route, case_id, step_id="R0", consent_id=None) -> str:
    return route.openapi_path.format(case_id=case_id, step_id=step_id, consent_id=consent_id or str(uuid.uuid4()),
                                     person_id=str(uuid.uuid4()), token_id=str(uuid.uuid4()))


# a body each edit takes (valid, so that only the precondition decides)
BODIES = {
    "update_case": {"place": "camp"},
    "classify_case": {"incident_type": "physical_assault"},
    "set_risk": {"risk_level": "medium"},
    "assign_case_lead": None,  # needs a case lead's id: filled in by the test
    "exclude_user": None,
    "record_consent": {"purpose": "case_management", "given_by": "survivor"},
    "complete_step": {"outcome": "done"},
    "close_case": {"reason": "survivor_agreed"},
    "reopen_case": {"reason": "new_incident"},
}
# who may make each edit on an open case
EDITOR = {"approve_step": "supervisor", "approve_closure": "supervisor"}


def assert_secure_headers(response):
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


# -- the table and its check, without a stack ----------------------------------------

def test_every_route_of_the_table_is_in_the_document_with_every_status_it_answers():
    from openapi_spec_validator import validate

    from services.gateway.openapi import document

    made = document()
    validate(made)
    for route in ROUTES:
        operation = made["paths"][route.openapi_path][route.method.lower()]
        assert operation["operationId"] == route.name
        assert set(operation["responses"]) == {str(route.status), *map(str, route.statuses())}
        names = {p.get("name") for p in operation.get("parameters", [])}
        assert ("If-Match" in names) == route.edit
        if route.edit:
            assert {"412", "428"} <= set(operation["responses"])
            assert "ETag" in operation["responses"]["412"]["headers"]
        assert bool(operation["security"]) == (not route.public)
    assert "Idempotency-Key" in {p["name"] for p in made["paths"]["/api/v1/cases"]["post"]["parameters"]}
    assert made["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    # an edit's body never carries the version: it is the If-Match header
    for route in EDITS:
        if route.body is not None:
            assert "version" not in route.body().fields


def principal(*roles, scope="read_write"):
    return Principal(str(uuid.uuid4()), str(uuid.uuid4()), tuple(roles), (), scope)


@pytest.mark.parametrize("route", [r for r in ROUTES if not r.public], ids=lambda r: r.name)
def test_the_table_lets_through_its_roles_only_and_a_read_token_never_writes(route):
    for role in ("focal_point", "case_lead", "president", "supervisor", "programme", "operator", "admin"):
        who = principal(role)
        if role in route.roles:
            routes.authorize(route, who.roles, who.scope)
            read_only = principal(role, scope="read")
            if route.writes:
                with pytest.raises(routes.Refused):
                    routes.authorize(route, read_only.roles, read_only.scope)
            else:
                routes.authorize(route, read_only.roles, read_only.scope)
        else:
            with pytest.raises(routes.Refused):
                routes.authorize(route, who.roles, who.scope)


# the domain operation of ``services/cases/domain/access.py`` behind each case route
OPERATION = {
    "get_case": "read", "update_case": "update", "classify_case": "classify", "set_risk": "set_risk",
    "record_consent": "consent", "withdraw_consent": "consent", "assign_case_lead": "assign",
    "exclude_user": "exclude", "approve_step": "approve", "approve_closure": "approve", "close_case": "close",
    "reopen_case": "reopen", "audit_trail": "audit_trail", "complete_step": "complete_step",
}


@pytest.mark.parametrize("name", sorted(OPERATION))
def test_the_tables_roles_are_those_the_cases_service_can_let_through(name):
    """The gateway's check is the first of two: a role in the table is one
    the cases service allows on some case, and a role out of it is one the
    service never allows."""
    from datetime import datetime, timezone

    from services.cases.domain.access import Caller, may
    from services.cases.domain.model import Case

    org = str(uuid.uuid4())
    allowed = set()
    for role in ("focal_point", "case_lead", "president", "supervisor", "programme", "operator", "admin"):
        user = str(uuid.uuid4())
        case = Case(id=str(uuid.uuid4()), organization_id=org, survivor_code="CEC-2026-0001", age_group="18-25",
                    sex="female", opened_at=datetime.now(timezone.utc), opened_by=user, case_lead_id=user)
        caller = Caller(user, org, frozenset({role}), frozenset({org}))
        if may(OPERATION[name], caller, case, step_roles=("focal_point", "case_lead")):
            allowed.add(role)
    assert set(routes.BY_NAME[name].roles) == allowed


# -- the gateway alone: its own checks come before any service ---------------------------

@pytest.fixture
def gateway_alone(stack):
    """The gateway without the services: whatever it answers, it answered itself."""
    stack.start("gateway")
    return stack, stack.organization()


def test_roles_out_of_the_table_get_403_before_any_service_is_asked(gateway_alone):
    stack, org = gateway_alone
    operator = stack.user("CEC", "operator")["token"]
    programme = stack.user("CEC", "programme")["token"]
    case_id = str(uuid.uuid4())
    for route in ROUTES:
        if route.public:
            continue
        for role, token in (("operator", operator), ("programme", programme)):
            if role in route.roles:
                continue
            body = {} if route.body is not None else None
            answer = send(stack, route.method, concrete(route, case_id), token, body, {"If-Match": '"1"'})
            assert answer.status_code == 403, (route.name, role, answer.text)
            assert answer.json()["error"]["code"] == "forbidden"
            assert_secure_headers(answer)


def test_read_only_tokens_get_403_on_every_writing_route(gateway_alone):
    from warmi import admin

    if not hasattr(admin, "issue_token"):
        pytest.skip("no command issues a token of scope read yet")
    stack, org = gateway_alone
    case_id = str(uuid.uuid4())
    for role in ("focal_point", "case_lead", "president", "supervisor"):
        user_id = stack.user_id(stack.user("CEC", role, supervises=["CEC"] if role == "supervisor" else ())["token"])
        token = admin.issue_token(user_id=user_id, scope="read", days=None, label="test")["token"]
        for route in WRITES:
            if role not in route.roles:
                continue
            answer = send(stack, route.method, concrete(route, case_id), token, {}, {"If-Match": '"1"'})
            assert answer.status_code == 403, (route.name, role, answer.text)
            assert "read" in answer.json()["error"]["message"]


def test_the_document_is_served_without_a_token_and_validates(gateway_alone):
    from openapi_spec_validator import validate

    stack, _ = gateway_alone
    answer = send(stack, "GET", "/api/v1/openapi.json")

    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["ETag"].startswith('"')
    assert_secure_headers(answer)
    validate(answer.json())
    assert set(answer.json()["paths"]) == {r.openapi_path for r in ROUTES}


def test_every_answer_carries_nosniff_and_no_store(gateway_alone):
    stack, org = gateway_alone
    for answer in (
        send(stack, "GET", "/api/v1/health"),
        send(stack, "GET", "/api/v1/nothing-here"),
        send(stack, "DELETE", "/api/v1/cases"),
        send(stack, "GET", "/api/v1/cases"),  # 401
        send(stack, "POST", "/api/v1/cases", org["focal_point"]["token"], data=b"x"),  # 415
    ):
        assert_secure_headers(answer)


def test_past_the_rate_limit_a_token_or_an_address_gets_429_with_retry_after(stack):
    stack.start("gateway", RATE_LIMIT_PER_MINUTE=3)
    org = stack.organization()
    operator = stack.user("CEC", "operator")["token"]

    # per token: the operator's 403s count, then the token is held back
    answers = [send(stack, "GET", "/api/v1/cases", operator) for _ in range(4)]
    assert [a.status_code for a in answers] == [403, 403, 403, 429]
    held = answers[-1]
    assert int(held.headers["Retry-After"]) >= 1
    assert held.json()["error"]["code"] == "too_many_requests"
    assert_secure_headers(held)
    # another token has its own bucket
    assert send(stack, "GET", "/api/v1/statistics", org["focal_point"]["token"]).status_code == 403

    # per address, without a token (bad tokens count there too)
    unauthenticated = [send(stack, "GET", "/api/v1/health").status_code for _ in range(3)]
    unauthenticated.append(send(stack, "GET", "/api/v1/cases", "not-a-token").status_code)
    assert unauthenticated == [200, 200, 200, 429]


# -- the whole stack -------------------------------------------------------------------

@pytest.fixture
def team(stack):
    stack.start_all()
    org = stack.organization()
    people = {
        "focal_point": org["focal_point"]["token"],
        "president": org["president"]["token"],
        "case_lead": stack.user("CEC", "case_lead")["token"],
        "supervisor": stack.user("CEC", "supervisor", supervises=["CEC"])["token"],
    }
    return stack, people


def etag_of(stack, token, case_id) -> str:
    answer = send(stack, "GET", f"/api/v1/cases/{case_id}", token)
    assert answer.status_code == 200, answer.text
    return answer.headers["ETag"]


def test_every_edit_needs_if_match_refuses_a_stale_one_with_the_current_etag(team):
    stack, people = team
    case = stack.post_case(people["focal_point"], {"age_group": "18-25"}).json()
    lead_id = stack.user_id(people["case_lead"])
    bodies = dict(BODIES, assign_case_lead={"case_lead_id": lead_id}, exclude_user={"user_id": lead_id})
    current = etag_of(stack, people["president"], case["id"])
    assert current == f'"{case["version"]}"'

    for route in EDITS:
        token = people[EDITOR.get(route.name, "president")]
        path = concrete(route, case["id"])
        body = bodies.get(route.name)
        missing = send(stack, route.method, path, token, body)
        assert missing.status_code == 428, (route.name, missing.text)
        assert "If-Match" in missing.json()["error"]["fields"]
        for stale in ('"99"', '"0"', "*", 'W/"1"', "garbage"):
            refused = send(stack, route.method, path, token, body, {"If-Match": stale})
            assert refused.status_code == 412, (route.name, stale, refused.text)
            assert refused.headers["ETag"] == current
            assert refused.json()["error"]["code"] == "precondition_failed"
        # a version in the body is not a second way to say it
        if body is not None:
            twice = send(stack, route.method, path, token, {**body, "version": 1}, {"If-Match": current})
            assert twice.status_code == 422 and "version" in twice.json()["error"]["fields"], route.name
    # nothing of it changed the case
    assert etag_of(stack, people["president"], case["id"]) == current


def test_every_successful_edit_answers_the_new_etag(team):
    stack, people = team
    president, supervisor = people["president"], people["supervisor"]
    case_id = stack.post_case(people["focal_point"], {"age_group": "18-25"}).json()["id"]
    lead_id = stack.user_id(people["case_lead"])
    other = stack.user_id(stack.user("CEC", "focal_point")["token"])
    seen = set()

    def edit(name, token, body=None, *, step_id="R0", consent_id=None, status=None):
        route = routes.BY_NAME[name]
        before = etag_of(stack, president, case_id)
        answer = send(stack, route.method, concrete(route, case_id, step_id, consent_id), token, body,
                      {"If-Match": before})
        assert answer.status_code == (status or route.status), (name, answer.text)
        assert answer.headers["ETag"] == f'"{int(before.strip(chr(34))) + 1}"', name
        assert etag_of(stack, president, case_id) == answer.headers["ETag"], name
        seen.add(name)
        return answer.json()

    edit("update_case", president, {"place": "camp"})
    edit("classify_case", president, {"incident_type": "physical_assault"})
    edit("set_risk", president, {"risk_level": "high"})
    edit("assign_case_lead", president, {"case_lead_id": lead_id})
    edit("exclude_user", president, {"user_id": other})
    consent = edit("record_consent", president, {"purpose": "aggregate_reporting", "given_by": "survivor"})
    edit("withdraw_consent", president, consent_id=consent["id"])
    detail = send(stack, "GET", f"/api/v1/cases/{case_id}", president).json()
    needs = [s for s in detail["plan"]["steps"] if s["status"] == "open" and s["needs_approval_by"] == "supervisor"]
    assert needs, "the plan has a step the supervisor approves"
    edit("approve_step", supervisor, step_id=needs[0]["step_id"])
    edit("complete_step", president, {"outcome": "done"}, step_id="R0")
    edit("approve_closure", supervisor)
    edit("close_case", president, {"reason": "survivor_agreed"})
    edit("reopen_case", president, {"reason": "new_incident"})
    assert seen == {r.name for r in EDITS}


def test_a_list_of_cases_links_to_the_next_page_until_the_last(team):
    stack, people = team
    for _ in range(3):
        assert stack.post_case(people["focal_point"], {"age_group": "18-25"}).status_code == 201

    first = send(stack, "GET", "/api/v1/cases?per_page=2&status=open", people["president"])
    assert first.status_code == 200 and first.headers["ETag"]
    body = first.json()
    assert len(body["items"]) == 2 and body["total"] == 3
    assert body["links"]["next"] == "/api/v1/cases?status=open&page=2&per_page=2"
    assert first.headers["Link"] == '</api/v1/cases?status=open&page=2&per_page=2>; rel="next"'

    last = send(stack, "GET", body["links"]["next"], people["president"])
    assert len(last.json()["items"]) == 1
    assert last.json()["links"] == {} and "Link" not in last.headers


def test_the_live_api_answers_only_what_its_document_says(team):
    """schemathesis against the running stack as a president: no 5xx, and
    every status, content type, header and body as documented.
    ``WARMI_API_EXAMPLES`` sets the examples per operation (12 by default)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance, response_headers_conformance, response_schema_conformance,
        status_code_conformance,
    )

    stack, people = team
    # a case of the president's, so that some generated requests find one
    stack.post_case(people["president"], {"age_group": "26-40"})
    schema = schemathesis.openapi.from_url(f"{stack.url}/api/v1/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance]
    auth = {"Authorization": f"Bearer {people['president']}"}
    failures, statuses = [], {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call(base_url=stack.url, headers=auth)
            statuses.setdefault(operation.definition.raw["operationId"], set()).add(response.status_code)
            case.validate_response(response, checks=checks)

        try:
            run()
        except Exception as err:  # noqa: BLE001 - gathered to report every operation at once
            failures.append(f"{operation.label}: {type(err).__name__}: {str(err)[:2000]}")
    assert not failures, "\n\n".join(failures)
    # every operation was tried, and the generated requests did get through
    # (the document itself is checked on its own, above)
    assert set(statuses) >= {r.name for r in ROUTES} - {"openapi"}, sorted(statuses)
    assert 201 in statuses["open_case"] and 200 in statuses["list_cases"] and 200 in statuses["statistics"]
