"""Input is taken as it is typed, or refused: no ``"yes"`` for true, no 3.5
for 3, no text a database cannot store, no nesting that exhausts the parser.
Every refusal names the field, and nothing is written on any database."""
import json

import pytest
import requests

from tests.conftest import handled, table_counts, wait_until

CASE = {"age_group": "18-25"}
DEEP = 40  # levels: past the gateway's 32
VERY_DEEP = 5000  # past Python's recursion limit: used to be a 500


@pytest.fixture
def running(any_stack):
    """A stack on either database with one open case, once everything it set
    off (the president's e-mail) has settled."""
    stack = any_stack
    stack.start_all()
    org = stack.organization()
    opened = stack.post_case(org["focal_point"]["token"], CASE)
    assert opened.status_code == 201, opened.text
    wait_until(lambda: handled(stack.engines["notifications"], "handle_case_opened") == 1,
               message="the case_opened event to be handled")
    wait_until(lambda: stack.smtp.messages(), message="the president's e-mail")
    return stack, org, opened.json()


def everything(stack) -> dict:
    return {name: table_counts(engine) for name, engine in stack.engines.items()}


def send(stack, method: str, path: str, token: str, body) -> requests.Response:
    """``body`` as JSON, or as the raw bytes given; an edit made on version 1,
    where the fixture's case is and stays (``If-Match``, ignored elsewhere)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.request(method, f"{stack.url}/api/v1{path}", data=raw, timeout=15,
                            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                                     "If-Match": '"1"'})


def assert_refused(response: requests.Response, status: int, code: str, field: str | None, label: str) -> None:
    assert response.status_code == status, (label, response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json"), label
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"}, (label, error)
    assert error["code"] == code and error["message"], (label, error)
    if field is not None:
        assert error["fields"].get(field), (label, error)


def refused_without_a_trace(stack, requests_: list) -> None:
    """Send each (label, method, path, token, body, status, code, field) and
    check it is refused as said, every table of every database unchanged."""
    before = everything(stack)
    for label, method, path, token, body, status, code, field in requests_:
        assert_refused(send(stack, method, path, token, body), status, code, field, label)
        assert everything(stack) == before, label
    assert len(stack.smtp.messages()) == 1


def test_wrong_types_are_refused_not_coerced(running):
    stack, org, case = running
    focal, president = org["focal_point"]["token"], org["president"]["token"]
    path = f"/cases/{case['id']}"
    v = case["version"]
    refused_without_a_trace(stack, [
        # booleans are true or false
        ("minor as a word", "POST", "/cases", focal, {**CASE, "minor": "yes"}, 422, "invalid_input", "minor"),
        ("minor as a number", "POST", "/cases", focal, {**CASE, "minor": 1}, 422, "invalid_input", "minor"),
        ("minor as a string", "POST", "/cases", focal, {**CASE, "minor": "true"}, 422, "invalid_input", "minor"),
        ("disability as a word", "PATCH", path, president, {"disability": "no"}, 422, "invalid_input",
         "disability"),
        ("assent as a word", "POST", f"{path}/consents", president,
         {"purpose": "case_management", "given_by": "caregiver", "child_assent": "yes"}, 422, "invalid_input",
         "child_assent"),
        ("an answer as a word", "POST", f"{path}/classification", president,
         {"answers": {"rape": "yes"}}, 422, "invalid_input", "rape"),
        ("an answer after the first yes as a number", "POST", f"{path}/classification", president,
         {"answers": {"rape": True, "sexual_assault": 1}}, 422, "invalid_input", "sexual_assault"),
        # the version an edit was made on is the If-Match header, never a body field, in any type
        ("a version in the body", "PATCH", path, president, {"version": v, "minor": True}, 422, "invalid_input",
         "version"),
        ("a version as a string in the body", "POST", f"{path}/risk", president,
         {"version": str(v), "risk_level": "low"}, 422, "invalid_input", "version"),
        # strings are strings
        ("narrative as a number", "POST", "/cases", focal, {**CASE, "narrative": 5}, 422, "invalid_input",
         "narrative"),
        ("note as a list", "POST", f"{path}/steps/R0/completion", focal, {"note": ["x"]}, 422, "invalid_input",
         "note"),
        ("reason with a line break", "POST", f"{path}/reopening", president, {"reason": "asked\n"},
         422, "invalid_input", "reason"),
        ("survivor name too long", "POST", "/cases", focal, {**CASE, "survivor_name": "x" * 201}, 422,
         "invalid_input", "survivor_name"),
        # lists are lists, of bounded size
        ("context flags as a string", "POST", "/cases", focal, {**CASE, "context_flags": "workplace_harassment"}, 422,
         "invalid_input", "context_flags"),
        ("context flags as an object", "PATCH", path, president, {"context_flags": {"a": 1}}, 422,
         "invalid_input", "context_flags"),
        ("too many context flags", "POST", "/cases", focal, {**CASE, "context_flags": ["workplace_harassment"] * 4},
         422, "invalid_input", "context_flags"),
        ("data shared as a string", "POST", f"{path}/consents", president,
         {"purpose": "case_management", "given_by": "survivor", "data_shared": "contact"}, 422, "invalid_input",
         "data_shared"),
        # times are instants with an offset, in the calendar
        ("incident in year 1", "POST", "/cases", focal, {**CASE, "incident_at": "0001-01-01T00:00:00+05:00"}, 422,
         "invalid_input", "incident_at"),
        ("incident before 1900", "POST", "/cases", focal, {**CASE, "incident_at": "1850-01-01T00:00:00Z"}, 422,
         "invalid_input", "incident_at"),
        ("incident as a number", "POST", "/cases", focal, {**CASE, "incident_at": 1763700000}, 422, "invalid_input",
         "incident_at"),
    ])
    # the case is as it was: still version 1, not a minor's case
    detail = stack.get_case(president, case["id"]).json()
    assert detail["version"] == v and detail["minor"] is False and detail["disability"] is None


def test_bodies_a_service_could_not_store_or_parse_are_refused(running):
    stack, org, case = running
    focal, president = org["focal_point"]["token"], org["president"]["token"]
    path = f"/cases/{case['id']}"

    def nested(levels: int) -> bytes:
        return b'{"age_group": "18-25", "context_flags": ' + b"[" * levels + b"]" * levels + b"}"

    refused_without_a_trace(stack, [
        ("nested past the limit", "POST", "/cases", focal, nested(DEEP), 422, "invalid_input", "context_flags"),
        ("nested past the parser", "POST", "/cases", focal, nested(VERY_DEEP), 422, "invalid_input", "context_flags"),
        ("a deep list for a body", "POST", "/cases", focal, b"[" * DEEP + b"]" * DEEP, 422, "invalid_input",
         "_schema"),
        ("answers nested past the limit", "POST", f"{path}/classification", president,
         b'{"answers": {"rape": ' + b"[" * DEEP + b"]" * DEEP + b"}}", 422, "invalid_input", "answers"),
        ("a lone surrogate escaped", "POST", "/cases", focal, b'{"age_group": "18-25", "narrative": "a\\ud800b"}',
         422, "invalid_input", "narrative"),
        ("a lone surrogate in a note", "POST", f"{path}/steps/R0/completion", focal, b'{"note": "\\udfff"}', 422,
         "invalid_input", "note"),
        ("a lone surrogate as raw bytes", "POST", "/cases", focal,
         b'{"age_group": "18-25", "survivor_name": "a\xed\xa0\x80b"}', 400, "invalid_json", "survivor_name"),
        ("bytes that are not UTF-8", "POST", "/cases", focal, b'{"age_group": "18-25", "narrative": "\xff"}', 400,
         "invalid_json", "narrative"),
        ("a lone surrogate in a name", "POST", "/cases", focal, b'{"age_group": "18-25", "\\ud800": 1}', 422,
         "invalid_input", "\\ud800"),
        ("a NUL in the narrative", "POST", "/cases", focal, b'{"age_group": "18-25", "narrative": "a\\u0000b"}', 422,
         "invalid_input", "narrative"),
        ("a NUL in a reason", "POST", f"{path}/reopening", president, b'{"reason": "x\\u0000"}', 422,
         "invalid_input", "reason"),
        ("a field given twice", "POST", "/cases", focal, b'{"age_group": "18-25", "minor": false, "minor": true}',
         422, "invalid_input", "minor"),
        ("NaN is not JSON", "PATCH", path, president, b'{"minor": NaN}', 400, "invalid_json", None),
        ("Infinity is not JSON", "PATCH", path, president, b'{"minor": Infinity}', 400, "invalid_json", None),
    ])


def test_query_parameters_are_as_strict(running):
    stack, org, case = running
    president = org["president"]["token"]
    before = everything(stack)
    for label, path, field in [
        ("overdue as a word", "/cases?overdue=yes", "overdue"),
        ("overdue as a number", "/cases?overdue=1", "overdue"),
        ("overdue in capitals", "/cases?overdue=TRUE", "overdue"),
        ("page with a fraction", "/cases?page=3.5", "page"),
        ("page with a sign", "/cases?page=+3", "page"),
        ("page zero", "/cases?page=0", "page"),
        ("per page as a word", "/cases?per_page=ten", "per_page"),
        ("per page over the limit", "/cases?per_page=1000", "per_page"),
        ("page twice", "/cases?page=1&page=2", "page"),
        ("an unknown parameter", "/cases?sort=newest", "sort"),
        ("a NUL in a filter", "/cases?status=open%00", "status"),
        ("a quarter that is not one", "/statistics?from=2026-Q5&to=2026-Q4", "from"),
        ("a month, not a whole quarter", "/statistics?from=2026-01&to=2026-Q4", "from"),
        ("a quarter with a line break", "/statistics?from=2026-Q1%0A&to=2026-Q4", "from"),
        ("a range that ends before it starts", "/statistics?from=2026-Q3&to=2026-Q2", "to"),
        ("a range with one end", "/statistics?from=2026-Q1", "to"),
        ("an unknown format", "/statistics?format=xml", "format"),
        ("a quarter twice", "/statistics?from=2026-Q1&from=2026-Q2", "from"),
    ]:
        response = stack.api("GET", path, president)
        assert_refused(response, 422, "invalid_input", field, label)
        assert everything(stack) == before, label

    # the strict forms still work
    listed = stack.api("GET", "/cases?overdue=false&page=1&per_page=10", president)
    assert listed.status_code == 200, listed.text
    assert [c["id"] for c in listed.json()["items"]] == [case["id"]]
    assert stack.api("GET", "/cases?overdue=true", president).json()["items"] == []
    assert stack.api("GET", "/statistics?from=2026-Q1&to=2026-Q4&format=json", president).status_code == 200
