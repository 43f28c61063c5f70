"""Every role × every operation × own and other organisation, through the
gateway and the real services: allowed or refused, as need-to-know says."""
import pytest
from services.gateway.routes import BY_NAME
from tests.support.api import edit

ROLES = ("focal_point", "case_lead", "president", "supervisor", "programme", "operator")

# what each role may do with a case of its own organisation that it is connected to:
# the focal point who opened it, its assigned case lead, the president, a supervisor of the organisation
ALLOWED = {
    "read": {"focal_point", "case_lead", "president", "supervisor"},
    "list": {"focal_point", "case_lead", "president", "supervisor"},
    "update": {"case_lead", "president"},
    "classify": {"case_lead", "president"},
    "risk": {"case_lead", "president"},
    "consent": {"case_lead", "president"},
    "complete_R0": {"focal_point", "president"},
    "complete_R1": {"case_lead", "president"},
    "audit": {"president", "supervisor"},
    "close": {"case_lead", "president", "supervisor"},
    "statistics": {"president", "supervisor", "programme"},
    "open": {"focal_point", "case_lead", "president"},
    "assign": {"president"},
    "exclude": {"president"},
    "approve_closure": {"supervisor"},
    "reopen": {"case_lead", "president", "supervisor"},
    "withdraw_consent": {"case_lead", "president"},
}
SEES_CASES = {"focal_point", "case_lead", "president", "supervisor"}
# the gateway's route behind each operation: a role out of its table is refused there (403)
ROUTE = {
    "read": "get_case", "list": "list_cases", "update": "update_case", "classify": "classify_case",
    "risk": "set_risk", "consent": "record_consent", "complete_R0": "complete_step", "complete_R1": "complete_step",
    "audit": "audit_trail", "close": "close_case", "statistics": "statistics", "open": "open_case",
    "assign": "assign_case_lead", "exclude": "exclude_user", "approve_closure": "approve_closure",
    "reopen": "reopen_case", "withdraw_consent": "withdraw_consent",
}


@pytest.fixture
def world(stack):
    stack.start_all()
    tokens = {}
    for code in ("CEC", "SMP"):
        org = stack.organization(code, timezone="America/Lima" if code == "CEC" else "America/Bogota")
        tokens[code] = {
            "president": org["president"]["token"],
            "focal_point": org["focal_point"]["token"],
            "case_lead": stack.user(code, "case_lead")["token"],
            "supervisor": stack.user(code, "supervisor", supervises=[code])["token"],
            "programme": stack.user(code, "programme")["token"],
            "operator": stack.user(code, "operator")["token"],
        }
    return stack, tokens


def fresh_case(stack, team):
    """A case of ``team``'s organisation, opened by its focal point and led by its case lead."""
    case = stack.post_case(team["focal_point"], {"age_group": "18-25"}).json()
    version = stack.api("GET", f"/cases/{case['id']}", team["president"]).json()["version"]
    led = edit(stack, "POST", f"/cases/{case['id']}/case-lead", team["president"],
                    {"case_lead_id": stack.user_id(team["case_lead"])}, version)
    assert led.status_code == 200, led.text
    return led.json()


def attempt(stack, operation, token, case, team, home):
    """``team``: the people of the case's organisation; ``home``: the caller's."""
    cid = case["id"]
    version = stack.api("GET", f"/cases/{cid}", team["president"]).json().get("version", 1)
    if operation == "read":
        return stack.api("GET", f"/cases/{cid}", token)
    if operation == "list":
        response = stack.api("GET", "/cases", token)
        if response.status_code == 200:
            return 200 if cid in [c["id"] for c in response.json()["items"]] else 404
        return response
    if operation == "update":
        return edit(stack, "PATCH", f"/cases/{cid}", token, {"place": "camp"}, version)
    if operation == "classify":
        return edit(stack, "POST", f"/cases/{cid}/classification", token, {"incident_type": "physical_assault"}, version)
    if operation == "risk":
        return edit(stack, "POST", f"/cases/{cid}/risk", token, {"risk_level": "medium"}, version)
    if operation == "consent":
        return edit(stack, "POST", f"/cases/{cid}/consents", token, {"purpose": "case_management", "given_by": "survivor"})
    if operation in ("complete_R0", "complete_R1"):
        return edit(stack, "POST", f"/cases/{cid}/steps/{operation[-2:]}/completion", token, {})
    if operation == "audit":
        return stack.api("GET", f"/cases/{cid}/audit", token)
    if operation == "close":
        return edit(stack, "POST", f"/cases/{cid}/closure", token, {"reason": "survivor_agreed"}, version)
    if operation == "statistics":
        return stack.api("GET", "/statistics", token)
    if operation == "open":
        return stack.post_case(token, {"age_group": "unknown"})
    if operation == "assign":
        return edit(stack, "POST", f"/cases/{cid}/case-lead", token,
                         {"case_lead_id": stack.user_id(home["case_lead"])}, version)
    if operation == "exclude":
        return edit(stack, "POST", f"/cases/{cid}/exclusions", token,
                         {"user_id": stack.user_id(home["operator"])}, version)
    if operation == "approve_closure":
        return edit(stack, "POST", f"/cases/{cid}/closure-approval", token)
    if operation == "reopen":
        closed = edit(stack, "POST", f"/cases/{cid}/closure", team["president"],
                           {"reason": "lost_contact"}, version)
        assert closed.status_code == 200, closed.text
        return edit(stack, "POST", f"/cases/{cid}/reopening", token,
                         {"reason": "new_incident"}, closed.json()["version"])
    if operation == "withdraw_consent":
        given = edit(stack, "POST", f"/cases/{cid}/consents", team["president"],
                          {"purpose": "aggregate_reporting", "given_by": "survivor"})
        assert given.status_code == 201, given.text
        return edit(stack, "POST", f"/cases/{cid}/consents/{given.json()['id']}/withdrawal", token)
    raise AssertionError(operation)


def status_of(result) -> int:
    return result if isinstance(result, int) else result.status_code


def test_role_matrix(world):
    """One running system for the whole matrix; every failure is reported at once."""
    stack, tokens = world
    wrong = {}
    for operation in sorted(ALLOWED):
        for role in ROLES:
            for where in ("own", "other"):
                owner = tokens["CEC"] if where == "own" else tokens["SMP"]
                case = fresh_case(stack, owner)  # a fresh case each time: no attempt sees another's effects
                status = status_of(attempt(stack, operation, tokens["CEC"][role], case, owner, tokens["CEC"]))
                allowed = role in ALLOWED[operation] and (where == "own" or operation in ("statistics", "open"))
                if allowed:
                    expected = (200, 201)
                elif role not in BY_NAME[ROUTE[operation]].roles:
                    expected = (403,)  # the gateway's check, before any service is asked
                elif operation in ("statistics", "open") or (operation == "list" and role not in SEES_CASES):
                    expected = (403,)
                elif where == "other" or role not in SEES_CASES:
                    expected = (404,)  # not even the case's existence is told
                else:
                    expected = (403,)
                if status not in expected:
                    wrong[(operation, role, where)] = status
    assert wrong == {}, f"unexpected statuses: {wrong}"


def test_statistics_of_another_organisation_are_never_mixed_in(world):
    stack, tokens = world
    for _ in range(5):
        case = stack.post_case(tokens["SMP"]["focal_point"], {"age_group": "18-25"}).json()
        edit(stack, "POST", f"/cases/{case['id']}/consents", tokens["SMP"]["president"],
                  {"purpose": "aggregate_reporting", "given_by": "survivor"})
    assert stack.api("GET", "/statistics", tokens["CEC"]["president"]).json()["quarters"] == []
    assert [q["total"] for q in stack.api("GET", "/statistics", tokens["SMP"]["president"]).json()["quarters"]] == [5]


def test_an_excluded_user_sees_nothing_of_the_case_not_even_that_it_exists(world):
    stack, tokens = world
    team = tokens["CEC"]
    case = fresh_case(stack, team)
    lead = stack.user_id(team["case_lead"])
    version = stack.api("GET", f"/cases/{case['id']}", team["president"]).json()["version"]

    excluded = edit(stack, "POST", f"/cases/{case['id']}/exclusions", team["president"],
                         {"user_id": lead}, version)

    assert excluded.status_code == 200, excluded.text
    assert excluded.json()["case_lead_id"] is None
    assert stack.api("GET", f"/cases/{case['id']}", team["case_lead"]).status_code == 404
    assert case["id"] not in [c["id"] for c in stack.api("GET", "/cases", team["case_lead"]).json()["items"]]
    again = edit(stack, "POST", f"/cases/{case['id']}/case-lead", team["president"],
                      {"case_lead_id": lead}, excluded.json()["version"])
    assert again.status_code == 422
