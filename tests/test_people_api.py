"""Identity over HTTP: an admin manages her organisation's people (and sees
no case), everybody reads who she is and manages her own tokens, and the
console's login is throttled."""
from __future__ import annotations

import pytest
import requests
from sqlalchemy.orm import Session

from services.identity.service_layer import handlers as identity
from tests.conftest import table_counts


@pytest.fixture
def gateway(stack):
    stack.start("gateway")
    made = stack.organization()
    admin = stack.user("CEC", "admin")
    stack.organization("SMP")
    return stack, made, admin


def call(stack, method, path, token=None, body=None, **headers):
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, f"{stack.url}/api/v1{path}", json=body, headers=headers, timeout=15)


def test_an_admin_adds_changes_and_deactivates_people_with_if_match(gateway):
    stack, made, admin = gateway
    added = call(stack, "POST", "/people", admin["token"], {
        "name": "Lucía", "email": "lucia@cec.test.invalid", "phone": "+51987654321", "language": "es",
        "roles": ["case_lead", "president"]})
    assert added.status_code == 201, added.text
    person = added.json()
    assert added.headers["ETag"] == '"1"' and person["roles"] == ["case_lead", "president"]
    assert added.headers["Cache-Control"] == "no-store"
    path = f"/people/{person['id']}"

    assert call(stack, "PATCH", path, admin["token"], {"phone": "+51911111111"}).status_code == 428
    stale = call(stack, "PATCH", path, admin["token"], {"phone": "+51911111111"}, **{"If-Match": '"7"'})
    assert stale.status_code == 412 and stale.headers["ETag"] == '"1"'
    changed = call(stack, "PATCH", path, admin["token"], {"phone": "+51911111111"}, **{"If-Match": '"1"'})
    assert changed.status_code == 200 and changed.json()["phone"] == "+51911111111"
    assert changed.headers["ETag"] == '"2"'

    roles = call(stack, "PUT", path + "/roles", admin["token"], {"roles": ["case_lead"]}, **{"If-Match": '"2"'})
    assert roles.status_code == 200 and roles.json()["roles"] == ["case_lead"]

    with Session(stack._engine("identity")) as session:
        _, token, _ = identity.issue_token(session, person["id"])
        session.commit()
    assert call(stack, "GET", "/me", token).status_code == 200
    gone = call(stack, "POST", path + "/deactivation", admin["token"], **{"If-Match": '"3"'})
    assert gone.status_code == 200 and gone.json()["active"] is False
    assert call(stack, "GET", "/me", token).status_code == 401

    listed = call(stack, "GET", "/people", made["president"]["token"])
    assert listed.status_code == 200 and person["id"] in [p["id"] for p in listed.json()["items"]]


@pytest.mark.parametrize("body, field", [
    ({"name": "Ana", "phone": "987654321", "language": "es", "roles": ["case_lead"]}, "phone"),
    ({"name": "Ana", "language": "fr", "roles": ["case_lead"]}, "language"),
    ({"name": "Ana", "language": "es", "roles": ["admin", "president"]}, "roles"),
    ({"name": "Ana", "language": "es", "roles": ["queen"]}, "roles"),
    ({"name": "Ana", "email": "no address", "language": "es", "roles": ["case_lead"]}, "email"),
    ({"name": "Ana", "language": "es", "roles": ["case_lead"], "password": "x"}, "password"),
    ({"language": "es", "roles": ["case_lead"]}, "name"),
])
def test_a_person_who_breaks_a_rule_gets_422_with_the_field_and_nothing_is_written(gateway, body, field):
    stack, _, admin = gateway
    before = table_counts(stack._engine("identity"))
    refused = call(stack, "POST", "/people", admin["token"], body)
    assert refused.status_code == 422, refused.text
    assert field in refused.json()["error"]["fields"]
    assert table_counts(stack._engine("identity")) == before


def test_only_an_admin_manages_people_and_an_admin_sees_no_case(gateway):
    stack, made, admin = gateway
    president = made["president"]["token"]
    new = {"name": "Ana", "language": "es", "roles": ["case_lead"]}
    assert call(stack, "POST", "/people", president, new).status_code == 403
    assert call(stack, "GET", "/cases", admin["token"]).status_code == 403
    assert call(stack, "GET", "/statistics", admin["token"]).status_code == 403
    other = stack.user("SMP", "case_lead")
    assert call(stack, "GET", f"/people/{other['id']}", admin["token"]).status_code == 404
    assert call(stack, "PATCH", f"/people/{other['id']}", admin["token"], {"name": "x"},
                **{"If-Match": '"1"'}).status_code == 404
    assert call(stack, "GET", "/people", made["focal_point"]["token"]).status_code == 403


def test_a_person_manages_her_own_tokens_and_a_read_token_cannot_make_one_that_writes(gateway):
    stack, made, _ = gateway
    token = made["president"]["token"]
    me = call(stack, "GET", "/me", token)
    assert me.status_code == 200 and me.json()["roles"] == ["president"] and me.json()["scope"] == "read_write"
    issued = call(stack, "POST", "/me/tokens", token, {"scope": "read", "days": 7, "label": "phone"})
    assert issued.status_code == 201, issued.text
    reader = issued.json()
    listed = call(stack, "GET", "/me/tokens", token)
    assert reader["id"] in [t["id"] for t in listed.json()["items"]]
    assert reader["token"] not in listed.text and token not in listed.text
    assert call(stack, "POST", "/me/tokens", reader["token"], {"scope": "read_write"}).status_code == 403
    assert call(stack, "POST", "/people", reader["token"], {}).status_code == 403
    revoked = call(stack, "DELETE", f"/me/tokens/{reader['id']}", token)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert call(stack, "GET", "/me", reader["token"]).status_code == 401
    assert call(stack, "DELETE", f"/me/tokens/{reader['id']}", made["focal_point"]["token"]).status_code == 404


def test_the_console_login_gives_a_token_and_is_throttled(gateway):
    stack, made, _ = gateway
    with Session(stack._engine("identity")) as session:
        identity.set_password(session, made["president"]["id"], "correct horse battery")
        session.commit()
    ok = call(stack, "POST", "/sessions", body={"email": "presidenta@cec.test.invalid",
                                                "password": "correct horse battery"})
    assert ok.status_code == 201, ok.text
    assert call(stack, "GET", "/me", ok.json()["token"]).json()["id"] == made["president"]["id"]
    assert "correct horse" not in ok.text

    for _ in range(5):
        wrong = call(stack, "POST", "/sessions", body={"email": "presidenta@cec.test.invalid", "password": "nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_credentials"
    locked = call(stack, "POST", "/sessions", body={"email": "presidenta@cec.test.invalid",
                                                    "password": "correct horse battery"})
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    unknown = call(stack, "POST", "/sessions", body={"email": "nobody@cec.test.invalid", "password": "x"})
    assert unknown.status_code == 401 and unknown.json() == wrong.json()
