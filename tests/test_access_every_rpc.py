"""Access on every layer: each RPC of cases, notifications and referrals,
called straight over the broker with a properly signed caller (as if the
gateway's own check had let it through), refuses a caller of another
organisation and a caller of every role that may not do it, and writes
nothing when it refuses. The one question a service asks for itself (who is
excluded from a case) is refused to every person and answered to the
notifications service about its own organisation's cases only."""
from __future__ import annotations

import uuid

from nameko.exceptions import RemoteError
from nameko.standalone.rpc import ClusterRpcProxy

from contracts.rpc import ROLES
from servicekit.callers import CallerKeys
from tests.conftest import CALLER_KEYS, table_counts, wait_until

KEYS = CallerKeys.parse(CALLER_KEYS)
REFUSALS = {"Forbidden", "NotFound"}
CASE_ROLES = {"focal_point", "case_lead", "president", "supervisor"}
# calls that answer anyone about her own organisation (her cases, her figures, deliveries
# of her organisation's cases): asked from another organisation they reveal nothing of ours
ANSWER_OWN_ORGANISATION = {"cases.list_cases", "cases.statistics", "cases.weekly_figures",
                           "notifications.case_notifications"}


def signed(organization_id: str, *roles: str, user_id: str | None = None, supervised=()) -> dict:
    return KEYS.sign({"user_id": user_id or str(uuid.uuid4()), "organization_id": organization_id,
                      "roles": list(roles), "supervised_organization_ids": list(supervised)})


def refusal_of(call) -> str | None:
    """The class of error a call was refused with, or None if it was answered."""
    try:
        call()
    except Exception as err:  # nameko raises our own error classes, or RemoteError
        return err.exc_type if isinstance(err, RemoteError) else type(err).__name__
    return None


def test_every_rpc_refuses_another_organisation_and_every_role_that_may_not(stack):
    stack.start_all()
    cec, smp = stack.organization("CEC"), stack.organization("SMP")
    a, b = cec["organization"]["id"], smp["organization"]["id"]
    president = signed(a, "president", user_id=cec["president"]["id"])
    lead = stack.user("CEC", "case_lead")
    member = stack.user("CEC", "focal_point")

    with ClusterRpcProxy({"AMQP_URI": stack.amqp_uri}, timeout=30) as rpc:
        case = rpc.cases.open_case(signed(a, "focal_point", user_id=cec["focal_point"]["id"]),
                                   {"age_group": "26-40"})
        case_id = case["id"]
        consent = rpc.cases.record_consent(president, case_id, {"purpose": "case_management", "given_by": "survivor"},
                                           rpc.cases.get_case(president, case_id)["version"])
        detail = rpc.cases.get_case(president, case_id)
        step = next(s for s in detail["plan"]["steps"] if s["status"] == "open")["step_id"]
        wait_until(lambda: stack.smtp.messages(), message="the new-case e-mail")
        stack.smtp.settled()
        version = detail["version"]

        # (name, call, roles of a member of the case's organisation who may do it; None: the
        # call answers every role of the organisation, and the test checks what it reveals)
        calls = [
            ("cases.get_case", lambda who: rpc.cases.get_case(who, case_id), {"president"}),
            ("cases.audit_trail", lambda who: rpc.cases.audit_trail(who, case_id), {"president"}),
            ("cases.update_case", lambda who: rpc.cases.update_case(who, case_id, {"sex": "female"}, version),
             {"president"}),
            ("cases.classify_case", lambda who: rpc.cases.classify_case(
                who, case_id, {"incident_type": "physical_assault"}, version), {"president"}),
            ("cases.set_risk", lambda who: rpc.cases.set_risk(who, case_id, {"risk_level": "high"}, version),
             {"president"}),
            ("cases.assign_case_lead", lambda who: rpc.cases.assign_case_lead(
                who, case_id, {"case_lead_id": lead["id"]}, version), {"president"}),
            ("cases.exclude_user", lambda who: rpc.cases.exclude_user(
                who, case_id, {"user_id": member["id"]}, version), {"president"}),
            ("cases.record_consent", lambda who: rpc.cases.record_consent(
                who, case_id, {"purpose": "aggregate_reporting", "given_by": "survivor"}, version), {"president"}),
            ("cases.withdraw_consent", lambda who: rpc.cases.withdraw_consent(who, case_id, consent["id"], version),
             {"president"}),
            ("cases.complete_step", lambda who: rpc.cases.complete_step(
                who, case_id, step, {"outcome": "done"}, version), {"president"}),
            ("cases.approve_step", lambda who: rpc.cases.approve_step(who, case_id, step, version), set()),
            ("cases.approve_closure", lambda who: rpc.cases.approve_closure(who, case_id, version), set()),
            ("cases.close_case", lambda who: rpc.cases.close_case(
                who, case_id, {"reason": "survivor_agreed"}, version), {"president"}),
            ("cases.reopen_case", lambda who: rpc.cases.reopen_case(
                who, case_id, {"reason": "new_incident"}, version), {"president"}),
            ("cases.open_case", lambda who: rpc.cases.open_case(who, {"age_group": "26-40", "organization_id": a}),
             {"president", "case_lead", "focal_point"}),
            ("cases.list_cases", lambda who: rpc.cases.list_cases(who, {}), CASE_ROLES),
            ("cases.statistics", lambda who: rpc.cases.statistics(who, {}), {"president", "programme", "supervisor"}),
            ("cases.weekly_figures", lambda who: rpc.cases.weekly_figures(who), {"president"}),
            ("notifications.case_notifications", lambda who: rpc.notifications.case_notifications(who, case_id),
             CASE_ROLES),
            ("referrals.list_providers", lambda who: rpc.referrals.list_providers(who, a), CASE_ROLES),
            # the notifications service's question: no person may ask it
            ("cases.excluded_among", lambda who: rpc.cases.excluded_among(who, case_id, [member["id"]]), set()),
        ]
        before = {name: table_counts(engine) for name, engine in stack.database_engines().items()}
        refused, answered = [], []
        for name, call, allowed in calls:
            for role in ROLES:
                for where, caller in (("another organisation", signed(b, role)), ("this organisation", signed(a, role))):
                    if where == "this organisation" and role in allowed:
                        continue  # may do it: the role matrix test covers what she may do
                    try:
                        result = call(caller)
                    except Exception as err:  # nameko raises our own error classes, or RemoteError
                        kind = err.exc_type if isinstance(err, RemoteError) else type(err).__name__
                        assert kind in REFUSALS, (name, role, where, kind)
                        refused.append((name, role, where))
                        continue
                    answered.append((name, role, where))
                    # only a question about her own organisation may be answered: it reveals
                    # nothing of this case
                    assert where == "another organisation" and name in ANSWER_OWN_ORGANISATION, (name, role, where)
                    assert case_id not in str(result) and "CEC-" not in str(result), (name, role, where)
        after = {name: table_counts(engine) for name, engine in stack.database_engines().items()}
        assert after == before, "a refused call wrote something"
        assert rpc.cases.get_case(president, case_id)["version"] == version

        # the service itself, about its organisation's case: who of those asked is excluded, nothing else
        service = signed(a, "notifications")
        assert rpc.cases.excluded_among(service, case_id, [member["id"], lead["id"]]) == []
        rpc.cases.exclude_user(president, case_id, {"user_id": member["id"]}, version)
        assert rpc.cases.excluded_among(service, case_id, [member["id"], lead["id"]]) == [member["id"]]
        assert rpc.cases.excluded_among(service, case_id, [member["id"].upper()]) == [member["id"].upper()]
        for who, asked, ids, refusal in (
            (signed(b, "notifications"), case_id, [member["id"]], "Forbidden"),  # another organisation's case
            (signed(a, "notifications", "president"), case_id, [member["id"]], "Forbidden"),  # the role alone
            (service, str(uuid.uuid4()), [member["id"]], "NotFound"),
            (service, case_id, [member["id"]] * 1001, "InvalidInput"),
            (service, case_id, ["not-an-id"], "InvalidInput"),
            (service, case_id, member["id"], "InvalidInput"),
        ):
            assert refusal_of(lambda: rpc.cases.excluded_among(who, asked, ids)) == refusal, (who["roles"], refusal)

    assert {name for name, _, _ in refused} == {name for name, _, _ in calls}
    assert len(refused) > 150
