"""Identity: tokens that expire and can be revoked, people who can be
deactivated, logins that are throttled, and what the other services learn
of it all through identity's events, never through its tables."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from contracts.errors import Conflict, InvalidInput, NotFound
from services.identity.adapters import orm
from services.identity.domain.model import ThrottlePolicy
from services.identity.service_layer import handlers as identity
from tests.conftest import table_counts, wait_until

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def _organization(session, code="CEC", **kwargs) -> str:
    return identity.register_organization(session, code=code, name=f"Cooperativa {code}", country="PE",
                                          timezone_name="America/Lima", language="es", **kwargs)


def _person(session, organization_id, roles=("president",), email=None, **kwargs) -> str:
    return identity.add_member(session, organization_id=organization_id, name="Rosa", roles=list(roles),
                               language="es", email=email, **kwargs)


def test_a_token_works_until_it_expires_is_revoked_or_its_holder_is_deactivated(backend_engines):
    with Session(backend_engines["identity"]) as session:
        org = _organization(session)
        rosa = _person(session, org, email="rosa@cec.test.invalid")
        _, short, expires = identity.issue_token(session, rosa, days=1, now=T0)
        revocable_id, revocable, _ = identity.issue_token(session, rosa, now=T0)
        _, kept, _ = identity.issue_token(session, rosa, scope="read", now=T0)
        session.commit()
        assert expires == T0 + timedelta(days=1)

        principal = identity.authenticate(session, f"Bearer {short}", now=T0 + timedelta(hours=23))
        assert principal.user_id == rosa and principal.roles == ("president",) and principal.scope == "read_write"
        assert identity.authenticate(session, f"Bearer {short}", now=T0 + timedelta(days=1)) is None
        assert identity.authenticate(session, f"Bearer {kept}", now=T0).scope == "read"

        assert identity.revoke_token(session, revocable_id, now=T0) is True
        session.commit()
        assert identity.authenticate(session, f"Bearer {revocable}", now=T0) is None
        assert identity.revoke_token(session, revocable_id, now=T0) is False

        assert identity.deactivate_member(session, rosa, now=T0) == 2  # short and kept; revocable was already
        session.commit()
        assert identity.authenticate(session, f"Bearer {kept}", now=T0) is None
        with pytest.raises(Conflict):
            identity.issue_token(session, rosa, now=T0)


def test_malformed_and_unknown_tokens_find_nobody(backend_engines):
    with Session(backend_engines["identity"]) as session:
        for header in (None, "", "Bearer", "Bearer ", "Basic abc", "bearer x", "Bearer " + "x" * 500,
                       "Bearer wmi_unknown", "Bearer \x00"):
            assert identity.authenticate(session, header) is None


def test_last_use_is_written_at_most_once_a_minute(backend_engines):
    with Session(backend_engines["identity"]) as session:
        rosa = _person(session, _organization(session))
        token_id, token, _ = identity.issue_token(session, rosa, now=T0)
        session.commit()

        def last_use():
            return session.execute(select(orm.api_tokens.c.last_used_at)
                                   .where(orm.api_tokens.c.id == token_id)).scalar()

        identity.authenticate(session, f"Bearer {token}", now=T0 + timedelta(seconds=1))
        assert last_use() == T0 + timedelta(seconds=1)
        identity.authenticate(session, f"Bearer {token}", now=T0 + timedelta(seconds=30))
        assert last_use() == T0 + timedelta(seconds=1)
        identity.authenticate(session, f"Bearer {token}", now=T0 + timedelta(seconds=61))
        assert last_use() == T0 + timedelta(seconds=61)


@pytest.mark.parametrize("field, kwargs", [
    ("phone", {"phone": "987654321"}),
    ("phone", {"phone": "+51 987 654 321"}),
    ("email", {"email": "not an address"}),
    ("language", {"language": "fr"}),
    ("roles", {"roles": ["president", "admin"]}),
    ("roles", {"roles": ["queen"]}),
    ("roles", {"roles": []}),
    ("name", {"name": ""}),
])
def test_a_person_who_breaks_a_rule_is_refused_with_the_field_and_nothing_written(backend_engines, field, kwargs):
    with Session(backend_engines["identity"]) as session:
        org = _organization(session)
        session.commit()
    before = table_counts(backend_engines["identity"])
    args = {"organization_id": org, "name": "Rosa", "roles": ["case_lead"], "language": "es", **kwargs}
    with Session(backend_engines["identity"]) as session:
        with pytest.raises(InvalidInput) as refused:
            identity.add_member(session, **args)
        session.rollback()
    assert field in refused.value.fields
    assert table_counts(backend_engines["identity"]) == before


@pytest.mark.parametrize("field, kwargs", [
    ("timezone", {"timezone_name": "Mars/Olympus"}),
    ("timezone", {"timezone_name": "../../etc/passwd"}),
    ("language", {"language": "qu"}),
    ("country", {"country": "Peru"}),
    ("code", {"code": "cec"}),
])
def test_an_organisation_that_breaks_a_rule_is_refused(backend_engines, field, kwargs):
    args = {"code": "CEC", "name": "Cooperativa", "country": "PE", "timezone_name": "America/Lima",
            "language": "es", **kwargs}
    with Session(backend_engines["identity"]) as session:
        with pytest.raises(InvalidInput) as refused:
            identity.register_organization(session, **args)
    assert field in refused.value.fields
    assert table_counts(backend_engines["identity"])["organizations"] == 0


def test_an_e_mail_address_belongs_to_one_person(backend_engines):
    with Session(backend_engines["identity"]) as session:
        org = _organization(session)
        _person(session, org, email="rosa@cec.test.invalid")
        with pytest.raises(Conflict):
            _person(session, org, email="ROSA@cec.test.invalid ")


def test_passwords_are_argon2id_and_logins_are_throttled_per_account_and_per_address(backend_engines):
    policy = ThrottlePolicy(account_limit=3, address_limit=5, window=timedelta(minutes=15), lock=timedelta(minutes=15))
    with Session(backend_engines["identity"]) as session:
        org = _organization(session)
        rosa = _person(session, org, email="rosa@cec.test.invalid")
        identity.set_password(session, rosa, "correct horse battery")
        session.commit()
        stored = session.execute(select(orm.people.c.password_hash).where(orm.people.c.id == rosa)).scalar()
        assert stored.startswith("$argon2id$") and "correct horse" not in stored

        token, principal = identity.login(session, email="Rosa@cec.test.invalid", password="correct horse battery",
                                          address="10.0.0.1", now=T0, throttle=policy)
        session.commit()
        assert principal.user_id == rosa and identity.authenticate(session, f"Bearer {token}", now=T0)

        for attempt in range(3):
            with pytest.raises(identity.LoginRefused):
                identity.login(session, email="rosa@cec.test.invalid", password="wrong", address="10.0.0.2",
                               now=T0 + timedelta(seconds=attempt), throttle=policy)
            session.commit()
        # the account is locked now, even with the right password, from any address
        with pytest.raises(identity.LoginRefused) as locked:
            identity.login(session, email="rosa@cec.test.invalid", password="correct horse battery",
                           address="10.0.0.3", now=T0 + timedelta(minutes=1), throttle=policy)
        assert 0 < locked.value.retry_after <= 15 * 60
        session.rollback()
        # once the lock is over, the right password works again
        identity.login(session, email="rosa@cec.test.invalid", password="correct horse battery", address="10.0.0.3",
                       now=T0 + timedelta(minutes=20), throttle=policy)
        session.commit()

        # one address trying many accounts is locked too
        for n in range(5):
            with pytest.raises(identity.LoginRefused):
                identity.login(session, email=f"nobody{n}@cec.test.invalid", password="x", address="10.0.0.9",
                               now=T0 + timedelta(minutes=30), throttle=policy)
            session.commit()
        with pytest.raises(identity.LoginRefused):
            identity.login(session, email="rosa@cec.test.invalid", password="correct horse battery",
                           address="10.0.0.9", now=T0 + timedelta(minutes=31), throttle=policy)
        session.rollback()


def test_a_deactivated_person_cannot_log_in(backend_engines):
    with Session(backend_engines["identity"]) as session:
        rosa = _person(session, _organization(session), email="rosa@cec.test.invalid")
        identity.set_password(session, rosa, "correct horse battery")
        identity.deactivate_member(session, rosa)
        session.commit()
        with pytest.raises(identity.LoginRefused):
            identity.login(session, email="rosa@cec.test.invalid", password="correct horse battery", address="a")


def test_tokens_list_shows_ids_scope_expiry_and_last_use_never_a_secret(backend_engines, capsys):
    from warmi import admin
    from warmi.cli import main

    made = admin.create_organization(code="CEC", name="Cooperativa", timezone_name="America/Lima", locale="es",
                                     president_name="Rosa", president_email="rosa@cec.test.invalid",
                                     focal_point_name="Ana")
    reader = admin.issue_token(user_id=made["president"]["id"], scope="read", days=7, label="phone")
    capsys.readouterr()
    assert main(["tokens", "list", "--org", "CEC"]) == 0
    out = capsys.readouterr()
    listed = json.loads(out.out)
    assert {t["id"] for t in listed} >= {reader["id"]}
    assert {t["scope"] for t in listed} == {"read", "read_write"}
    assert all({"id", "person_id", "scope", "expires_at", "last_used_at", "revoked_at", "label"} <= set(t)
               for t in listed)
    secrets = [made["president"]["token"], made["focal_point"]["token"], reader["token"]]
    for secret in secrets:
        assert secret not in out.out + out.err
        assert identity.hash_token(secret) not in out.out + out.err
        assert secret.split("_", 1)[1][:12] not in out.out + out.err

    assert main(["tokens", "revoke", "--id", reader["id"]]) == 0
    assert main(["tokens", "revoke", "--id", "not-a-token"]) == 2
    assert main(["users", "deactivate", "--user", made["focal_point"]["id"]]) == 0
    out = capsys.readouterr()
    assert all(secret not in out.out + out.err for secret in secrets)


def test_token_issue_revocation_and_deactivation_are_in_the_audit_trail(backend_engines):
    from services.identity.adapters.audit import CHAIN, TRAIL
    from warmi import admin

    made = admin.create_organization(code="CEC", name="Cooperativa", timezone_name="America/Lima", locale="es",
                                     president_name="Rosa", president_email="rosa@cec.test.invalid",
                                     focal_point_name="Ana")
    issued = admin.issue_token(user_id=made["president"]["id"], scope="read", days=7, label="phone")
    admin.revoke_token(issued["id"])
    admin.deactivate_user(made["focal_point"]["id"])
    with Session(backend_engines["identity"]) as session:
        entries = TRAIL.entries(session, CHAIN)
        assert TRAIL.verify(session) == []
    actions = [(e.action, e.subjects.get("token_id")) for e in entries]
    assert ("token_issued", issued["id"]) in actions and ("token_revoked", issued["id"]) in actions
    assert "member_deactivated" in [a for a, _ in actions]
    assert all(e.actor_id.startswith("operator:") for e in entries)


def test_unknown_ids_are_not_found(backend_engines):
    with Session(backend_engines["identity"]) as session:
        with pytest.raises(NotFound):
            identity.revoke_token(session, "3b9e1f7a-6c2d-4e80-b5a1-9d4c7e2f0a65")
        with pytest.raises(NotFound):
            identity.deactivate_member(session, "3b9e1f7a-6c2d-4e80-b5a1-9d4c7e2f0a65")


# -- through the gateway, with the services running ------------------------------

def test_expired_revoked_and_deactivated_tokens_get_401_at_the_next_request(stack):
    from warmi import admin

    stack.start("referrals")
    stack.start("gateway")
    made = stack.organization()
    president = made["president"]
    ok = stack.api("GET", "/providers", president["token"])
    assert ok.status_code == 200, ok.text

    revocable = admin.issue_token(user_id=president["id"], scope="read_write", days=1, label="lost phone")
    assert stack.api("GET", "/providers", revocable["token"]).status_code == 200
    admin.revoke_token(revocable["id"])
    refused = stack.api("GET", "/providers", revocable["token"])
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"
    assert refused.headers["WWW-Authenticate"] == "Bearer"

    expiring = admin.issue_token(user_id=president["id"], scope="read_write", days=1, label="soon")
    with Session(stack._engine("identity")) as session:
        session.execute(orm.api_tokens.update().where(orm.api_tokens.c.id == expiring["id"])
                        .values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        session.commit()
    assert stack.api("GET", "/providers", expiring["token"]).status_code == 401

    focal = made["focal_point"]
    assert stack.api("GET", "/providers", focal["token"]).status_code == 200
    admin.deactivate_user(focal["id"])
    assert stack.api("GET", "/providers", focal["token"]).status_code == 401


def test_notifications_learn_every_role_contact_point_and_supervision_from_identity_events(stack):
    from warmi.admin import session_for

    stack.start("notifications")
    stack.start("gateway")
    a = stack.organization("CEC")
    b = stack.organization("SMP", timezone="America/Bogota")
    both = stack.user("CEC", "case_lead", "president", email="lead@cec.test.invalid")
    supervisor = stack.user("SMP", "supervisor", email="sup@smp.test.invalid")
    with session_for("identity") as session:
        identity.grant_supervision(session, supervisor["id"], "CEC")
        session.commit()
    engine = stack._engine("notifications")

    def supervised():
        with engine.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT organization_id FROM supervisions WHERE user_id = %s" % _quote(supervisor["id"])).all()

    assert wait_until(supervised, message="the supervision in notifications")[0][0] == a["organization"]["id"]
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT roles, address, locale, active FROM recipients WHERE user_id = %s" % _quote(both["id"])).one()
        org = conn.exec_driver_sql(
            "SELECT timezone, language FROM organizations WHERE id = %s" % _quote(b["organization"]["id"])).one()
    assert row == ("case_lead,president", "lead@cec.test.invalid", "es", 1)
    assert org == ("America/Bogota", "es")

    with session_for("identity") as session:
        identity.end_supervision(session, supervisor["id"], "CEC")
        identity.deactivate_member(session, both["id"])
        session.commit()
    wait_until(lambda: not supervised(), message="the supervision to end in notifications")

    def inactive():
        with engine.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT active FROM recipients WHERE user_id = %s" % _quote(both["id"])).scalar() == 0

    wait_until(inactive, message="the deactivation in notifications")


def _quote(value: str) -> str:
    assert all(c in "0123456789abcdef-" for c in value)
    return f"'{value}'"


def test_a_case_lead_who_is_also_president_is_told_of_every_new_case(stack):
    stack.start_all()
    made = stack.organization()
    stack.user("CEC", "case_lead", "president", email="lead.president@cec.test.invalid")
    stack.user("CEC", "case_lead", email="lead@cec.test.invalid")
    opened = stack.post_case(made["focal_point"]["token"], {"age_group": "26-40"})
    assert opened.status_code == 201, opened.text
    wait_until(lambda: len(stack.smtp.messages()) >= 2, message="the new-case e-mails")
    told = sorted(message["To"] for message in stack.smtp.settled())
    assert told == ["lead.president@cec.test.invalid", "presidenta@cec.test.invalid"]
