"""A caller forged on the broker: every service refuses a caller the
gateway did not sign, one signed with another key, one tampered with after
signing, and one too old, before it reads or writes anything."""
from __future__ import annotations

import time

import pytest
from nameko.exceptions import RemoteError
from nameko.standalone.rpc import ClusterRpcProxy

from servicekit.callers import MAX_AGE_SECONDS, CallerKeys, new_key_line
from tests.conftest import CALLER_KEYS, table_counts, wait_until


def _forgeries(caller: dict) -> dict:
    ours = CallerKeys.parse(CALLER_KEYS)
    theirs = CallerKeys.parse(new_key_line())
    tampered = ours.sign(caller)
    tampered["roles"] = ["president", "supervisor"]
    renamed = ours.sign(caller)
    renamed["key_id"] = theirs.keys[0][0]
    return {
        "unsigned": dict(caller),
        "another key": theirs.sign(caller),
        "another key under our key's name": {**theirs.sign(caller), "key_id": ours.keys[0][0]},
        "tampered roles": tampered,
        "unknown key id": renamed,
        "too old": ours.sign(caller, now=time.time() - MAX_AGE_SECONDS - 5),
        "from the future": ours.sign(caller, now=time.time() + 3600),
        "signature of another type": {**ours.sign(caller), "signature": 12345},
        "not an object": ["president"],
    }


def test_every_service_refuses_a_caller_the_gateway_did_not_sign(stack):
    stack.start_all()
    made = stack.organization()
    president = {"user_id": made["president"]["id"], "organization_id": made["organization"]["id"],
                 "roles": ["president"], "supervised_organization_ids": []}
    opened = stack.post_case(made["focal_point"]["token"], {"age_group": "18-25"})
    assert opened.status_code == 201, opened.text
    case_id = opened.json()["id"]
    wait_until(lambda: stack.smtp.messages(), message="the new-case e-mail")  # what the opening sets off is done
    stack.smtp.settled()

    calls = {
        "cases.get_case": lambda rpc, who: rpc.cases.get_case(who, case_id),
        "cases.list_cases": lambda rpc, who: rpc.cases.list_cases(who, {}),
        "cases.audit_trail": lambda rpc, who: rpc.cases.audit_trail(who, case_id),
        "cases.open_case": lambda rpc, who: rpc.cases.open_case(who, {"age_group": "18-25"}),
        "notifications.case_notifications": lambda rpc, who: rpc.notifications.case_notifications(who, case_id),
        "referrals.list_providers": lambda rpc, who: rpc.referrals.list_providers(who),
    }
    with ClusterRpcProxy({"AMQP_URI": stack.amqp_uri}, timeout=30) as rpc:
        # the real thing, signed with the key the stack shares, works
        assert rpc.cases.get_case(CallerKeys.parse(CALLER_KEYS).sign(president), case_id)["id"] == case_id
        before = {name: table_counts(engine) for name, engine in stack.database_engines().items()}
        for forgery, caller in _forgeries(president).items():
            for name, call in calls.items():
                with pytest.raises(RemoteError) as refused:
                    call(rpc, caller)
                assert refused.value.exc_type == "BadCaller", (forgery, name, refused.value.exc_type)
    after = {name: table_counts(engine) for name, engine in stack.database_engines().items()}
    assert after == before  # no audit entry, no case, no delivery, nothing
