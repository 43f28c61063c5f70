"""Hostile or mistaken requests get a clear 4xx and change nothing anywhere."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests

from tests.conftest import handled, table_counts, wait_until

GOOD = {"age_group": "18-25"}
FUTURE = (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()

CASES = [
    # name, body (dict or raw bytes), headers, status, error code, field named
    ("missing field", {"sex": "female"}, {}, 422, "invalid_input", "age_group"),
    ("mistyped field", {"age_group": 18}, {}, 422, "invalid_input", "age_group"),
    ("value out of the list", {"age_group": "18-25", "sex": "tall"}, {}, 422, "invalid_input", "sex"),
    ("not a date", {"age_group": "18-25", "incident_at": "last tuesday"}, {}, 422, "invalid_input", "incident_at"),
    ("date without a zone", {"age_group": "18-25", "incident_at": "2026-11-01T10:00:00"}, {}, 422, "invalid_input", "incident_at"),
    ("incident in the future", {"age_group": "18-25", "incident_at": FUTURE}, {}, 422, "invalid_input", "incident_at"),
    ("unknown field", {"age_group": "18-25", "nombre": "x"}, {}, 422, "invalid_input", "nombre"),
    ("narrative too long", {"age_group": "18-25", "narrative": "x" * 20001}, {}, 422, "invalid_input", "narrative"),
    ("unknown organisation", {"age_group": "18-25", "organization_id": str(uuid.uuid4())}, {}, 422, "invalid_input", "organization_id"),
    ("organisation not a uuid", {"age_group": "18-25", "organization_id": "CEC"}, {}, 422, "invalid_input", "organization_id"),
    ("a list, not an object", b'[{"age_group": "18-25"}]', {"Content-Type": "application/json"}, 422, "invalid_input", "_schema"),
    ("not JSON", b'{"age_group": ', {"Content-Type": "application/json"}, 400, "invalid_json", None),
    ("not UTF-8", b'{"age_group": "\xff"}', {"Content-Type": "application/json"}, 400, "invalid_json", None),
    ("form, not JSON", b"age_group=18-25", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type", None),
    ("body over the limit", b'{"narrative": "' + b"x" * 70000 + b'"}', {"Content-Type": "application/json"}, 413, "body_too_large", None),
    ("key in the body", {"age_group": "18-25", "idempotency_key": "k"}, {}, 422, "invalid_input", "idempotency_key"),
]


@pytest.fixture
def running(stack):
    stack.start_all()
    return stack, stack.organization()


def everything(stack, engines):
    return {name: table_counts(engine) for name, engine in engines.items()}


@pytest.mark.parametrize("name,body,headers,status,code,field", CASES, ids=[c[0] for c in CASES])
def test_bad_case_request_is_refused_with_field_messages_and_writes_nothing(
    running, clean_databases, name, body, headers, status, code, field
):
    stack, org = running
    before = everything(stack, clean_databases)

    if isinstance(body, bytes):
        response = stack.post_case(org["focal_point"]["token"], data=body, headers=headers)
    else:
        response = stack.post_case(org["focal_point"]["token"], body, headers=headers)

    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    if field:
        assert field in error["fields"], error
    assert everything(stack, clean_databases) == before
    assert stack.smtp.messages() == []


@pytest.mark.parametrize(
    "authorization", [None, "Bearer not-a-token", "Basic Zm9vOmJhcg==", "Bearer ", "Bearer " + "x" * 500]
)
def test_a_missing_or_wrong_token_is_refused_and_writes_nothing(running, clean_databases, authorization):
    stack, _ = running
    before = everything(stack, clean_databases)
    headers = {"Authorization": authorization} if authorization else {}

    response = requests.post(f"{stack.url}/api/v1/cases", json=GOOD, headers=headers, timeout=10)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthenticated"
    assert everything(stack, clean_databases) == before


def test_a_case_of_another_organisation_cannot_be_opened_or_read(running, clean_databases):
    stack, org = running
    other = stack.organization("SMP", timezone="America/Bogota")
    case = stack.post_case(other["focal_point"]["token"], GOOD).json()
    wait_until(lambda: stack.smtp.messages(), message="the other president's e-mail")
    wait_until(lambda: handled(clean_databases["notifications"], "handle_case_opened") == 1)
    before = everything(stack, clean_databases)

    opened = stack.post_case(org["focal_point"]["token"], {**GOOD, "organization_id": other["organization"]["id"]})
    read = stack.get_case(org["president"]["token"], case["id"])

    assert opened.status_code == 403
    assert read.status_code == 404  # not even its existence is told
    assert everything(stack, clean_databases) == before


def test_a_focal_point_reads_only_the_cases_she_opened(running):
    stack, org = running
    mine = stack.post_case(org["focal_point"]["token"], GOOD).json()

    assert stack.get_case(org["focal_point"]["token"], mine["id"]).status_code == 200
    assert stack.get_case(org["focal_point"]["token"], str(uuid.uuid4())).status_code == 404
    assert stack.get_case(org["focal_point"]["token"], "not-a-uuid").status_code == 404


def test_unknown_paths_and_methods_answer_in_the_api_error_format(running):
    stack, _ = running

    missing = requests.get(f"{stack.url}/api/v1/nothing-here", timeout=10)
    wrong_method = requests.delete(f"{stack.url}/api/v1/cases", timeout=10)

    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong_method.headers["Allow"]
