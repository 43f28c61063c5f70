"""Each person's notification settings (WhatsApp opt-in, quiet hours, digest,
channels per kind) belong to identity: she reads and replaces them herself,
on the revision she read; each change is audited by name, never by value,
and every member event carries them to the notifications service."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest
import requests
from alembic import command
from marshmallow import ValidationError
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from contracts.errors import Forbidden, InvalidInput, Stale
from contracts.events import CATALOGUE, load_event
from servicekit.migrations import alembic_config, ensure_database
from services.identity.adapters import orm
from services.identity.adapters.audit import CHAIN, TRAIL
from services.identity.domain.model import Principal
from services.identity.service_layer import handlers as identity
from services.identity.service_layer import people
from tests.conftest import PG_SERVER, table_counts

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
SETTINGS = {"whatsapp_opt_in": True, "quiet_hours": {"start": "21:00", "end": "07:00"},
            "digest": {"weekday": 0, "hour": 8}, "preferences": {"step_due_soon": ["whatsapp", "sms"], "digest": []}}
NONE = {"whatsapp_opt_in": False, "quiet_hours": None, "digest": None, "preferences": {}}

# a body that breaks a rule, and the field the answer names
REFUSED = [
    ({**SETTINGS, "quiet_hours": {"start": "07:00", "end": "07:00"}}, "quiet_hours"),
    ({**SETTINGS, "quiet_hours": {"start": "24:00", "end": "07:00"}}, "quiet_hours"),
    ({**SETTINGS, "quiet_hours": {"start": "21:00"}}, "quiet_hours"),
    ({**SETTINGS, "digest": {"weekday": 7, "hour": 8}}, "digest"),
    ({**SETTINGS, "digest": {"weekday": 0, "hour": True}}, "digest"),
    ({**SETTINGS, "preferences": {"birthday": ["email"]}}, "preferences"),
    ({**SETTINGS, "preferences": {"case_opened": ["webhook"]}}, "preferences"),
    ({**SETTINGS, "preferences": {"case_opened": ["sms", "sms"]}}, "preferences"),
    ({**SETTINGS, "preferences": {"case_opened": "email"}}, "preferences"),
    ({**SETTINGS, "whatsapp_opt_in": False}, "preferences"),  # whatsapp for step_due_soon needs the opt-in
    ({**SETTINGS, "whatsapp_opt_in": "yes"}, "whatsapp_opt_in"),
    ({k: v for k, v in SETTINGS.items() if k != "digest"}, "digest"),
    ({**SETTINGS, "revision": 1}, "revision"),
]


def _member(session, *, whatsapp_opt_in: bool = False) -> Principal:
    organization_id = identity.register_organization(session, code="CEC", name="Cooperativa CEC", country="PE",
                                                     timezone_name="America/Lima", language="es")
    member_id = identity.add_member(session, organization_id=organization_id, name="Rosa", roles=["case_lead"],
                                    language="es", phone="+51987654321", whatsapp_opt_in=whatsapp_opt_in, now=T0)
    session.commit()
    return Principal(member_id, organization_id, ("case_lead",))


def _member_events(session, member_id: str) -> list[dict]:
    """Identity's staged events about her, oldest first, as consumers load them."""
    bodies = session.execute(select(orm.outbox.c.body).order_by(orm.outbox.c.id)).scalars().all()
    events = [json.loads(body) for body in bodies]
    return [load_event(e, e["type"]) for e in events if e["data"].get("member_id") == member_id]


def _trail(session) -> list:
    return [e for e in TRAIL.entries(session, CHAIN) if e.action == "notification_settings_changed"]


def test_she_replaces_her_settings_on_her_revision_every_member_event_carries_them(backend_engines):
    with Session(backend_engines["identity"]) as session:
        rosa = _member(session)
        before = people.my_notification_settings(session, rosa)
        assert before == {**NONE, "whatsapp_opted_in_at": None, "timezone": "America/Lima", "revision": 1}

        view = people.set_my_notification_settings(session, rosa, SETTINGS, 1)
        assert {k: view[k] for k in SETTINGS} == SETTINGS and view["revision"] == 2
        given = view["whatsapp_opted_in_at"]
        assert given is not None and given > T0

        event = _member_events(session, rosa.user_id)[-1]
        assert event["type"] == "member_changed" and event["data"]["revision"] == 2
        assert {k: event["data"][k] for k in SETTINGS} == SETTINGS
        assert event["data"]["phone"] == "+51987654321" and event["data"]["roles"] == ["case_lead"]
        assert "whatsapp_opted_in_at" not in event["data"]  # kept in identity only

        (entry,) = _trail(session)
        assert entry.actor_id == rosa.user_id and entry.subjects["member_id"] == rosa.user_id
        assert entry.detail == "changed=whatsapp_opt_in,quiet_hours,digest,preferences"
        assert TRAIL.verify(session) == []

        # the same settings again: nothing changes, nothing is announced or audited
        events = len(_member_events(session, rosa.user_id))
        assert people.set_my_notification_settings(session, rosa, SETTINGS, 2)["revision"] == 2
        assert len(_member_events(session, rosa.user_id)) == events and len(_trail(session)) == 1

        # she withdraws her opt-in, and with it WhatsApp from her channels
        withdrawn = people.set_my_notification_settings(
            session, rosa, {**SETTINGS, "whatsapp_opt_in": False, "preferences": {"step_due_soon": ["sms"]}}, 2)
        assert withdrawn["whatsapp_opted_in_at"] is None and withdrawn["revision"] == 3
        assert _trail(session)[-1].detail == "changed=whatsapp_opt_in,preferences"

        # the settings ride on every member event, not only on their own changes
        identity.set_roles(session, rosa.user_id, ["case_lead", "president"])
        session.commit()
        roles = _member_events(session, rosa.user_id)[-1]
        assert roles["type"] == "member_roles_changed" and roles["data"]["revision"] == 4
        assert roles["data"]["quiet_hours"] == {"start": "21:00", "end": "07:00"}
        assert roles["data"]["preferences"] == {"step_due_soon": ["sms"]}


def test_settings_that_break_a_rule_or_an_old_revision_are_refused_and_nothing_is_written(backend_engines):
    with Session(backend_engines["identity"]) as session:
        rosa = _member(session)
        people.set_my_notification_settings(session, rosa, SETTINGS, 1)
    before = table_counts(backend_engines["identity"])
    with Session(backend_engines["identity"]) as session:
        for body, field in REFUSED:
            with pytest.raises(InvalidInput) as refused:
                people.set_my_notification_settings(session, rosa, body, 2)
            assert field in refused.value.fields, (body, refused.value.fields)
            session.rollback()
        with pytest.raises(Stale) as stale:
            people.set_my_notification_settings(session, rosa, NONE, 1)
        assert stale.value.current_version == 2
        session.rollback()
        reader = Principal(rosa.user_id, rosa.organization_id, rosa.roles, scope="read")
        with pytest.raises(Forbidden):
            people.set_my_notification_settings(session, reader, NONE, 2)
        assert people.my_notification_settings(session, reader)["quiet_hours"] == SETTINGS["quiet_hours"]
        session.rollback()
    assert table_counts(backend_engines["identity"]) == before


def test_an_operator_records_the_whatsapp_opt_in_of_a_new_person(backend_engines, vhost, monkeypatch, capsys):
    from warmi.admin import create_organization
    from warmi.cli import main

    monkeypatch.setenv("AMQP_URI", vhost)  # a broker where no service runs: nothing to wait for
    create_organization(code="CEC", name="Cooperativa", timezone_name="America/Lima", locale="es",
                        president_name="Rosa", president_email="rosa@cec.test.invalid", focal_point_name="Ana")
    capsys.readouterr()
    assert main(["create-user", "--org", "CEC", "--role", "case_lead", "--name", "Lu",
                 "--phone", "+51987654321", "--whatsapp"]) == 0
    lu = json.loads(capsys.readouterr().out)["id"]
    assert main(["create-user", "--org", "CEC", "--role", "focal_point", "--name", "Eva"]) == 0
    eva = json.loads(capsys.readouterr().out)["id"]
    with Session(backend_engines["identity"]) as session:
        added = {str(e["data"]["member_id"]): e["data"] for e in
                 (_member_events(session, lu)[0], _member_events(session, eva)[0])}
        assert added[lu]["whatsapp_opt_in"] is True and added[eva]["whatsapp_opt_in"] is False
        assert identity.notification_settings(session, lu)["whatsapp_opted_in_at"] is not None
        assert identity.notification_settings(session, eva)["whatsapp_opted_in_at"] is None
        assert [(e.subjects["member_id"], e.detail) for e in _trail(session)] == [(lu, "changed=whatsapp_opt_in")]


def test_member_events_from_before_the_settings_load_with_the_defaults():
    old = {**CATALOGUE["member_changed"].example}
    old["data"] = {k: v for k, v in old["data"].items() if k not in SETTINGS}
    assert {k: load_event(old, "member_changed")["data"][k] for k in SETTINGS} == NONE
    assert {k: load_event(CATALOGUE["member_changed"].example, "member_changed")["data"][k] for k in SETTINGS} == {
        k: CATALOGUE["member_changed"].example["data"][k] for k in SETTINGS}


@pytest.mark.parametrize("settings, field", [
    ({"quiet_hours": {"start": "08:00", "end": "08:00"}}, "quiet_hours"),
    ({"digest": {"weekday": 0, "hour": 24}}, "digest"),
    ({"preferences": {"birthday": []}}, "preferences"),
    ({"preferences": {"digest": ["webhook"]}}, "preferences"),
])
def test_a_member_event_with_settings_out_of_range_does_not_load(settings, field):
    example = CATALOGUE["member_changed"].example
    with pytest.raises(ValidationError) as refused:
        load_event({**example, "data": {**example["data"], **settings}}, "member_changed")
    assert field in refused.value.messages["data"]


@pytest.fixture
def at_0002(backend, tmp_path):
    """An identity database of its own at revision 0002, before the settings."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'identity.db'}"
    else:
        url = f"{PG_SERVER}/warmi_t_settings_{uuid.uuid4().hex[:8]}"
        ensure_database(url)
    command.upgrade(alembic_config("identity", url), "0002")
    engine = create_engine(url)
    yield url, engine
    engine.dispose()
    if backend == "postgresql":
        admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
        admin.dispose()


def test_people_of_before_the_migration_have_no_settings_until_they_choose(at_0002):
    url, engine = at_0002
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO organizations (id, code, name, country, timezone, language, revision, "
                          "created_at, updated_at) VALUES ('o1', 'CEC', 'C', 'PE', 'America/Lima', 'es', 1, :t, :t)"),
                     {"t": T0})
        conn.execute(text("INSERT INTO people (id, organization_id, name, language, roles, active, revision, "
                          "created_at, updated_at) VALUES ('p1', 'o1', 'Rosa', 'es', 'case_lead', :yes, 3, :t, :t)"),
                     {"t": T0, "yes": True})
    command.upgrade(alembic_config("identity", url), "head")
    with Session(engine) as session:
        assert identity.notification_settings(session, "p1") == {
            **NONE, "whatsapp_opted_in_at": None, "timezone": "America/Lima", "revision": 3}


# -- through the gateway ----------------------------------------------------------------

def _call(stack, method, token, body=None, **headers):
    headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, f"{stack.url}/api/v1/me/notification-settings", json=body, headers=headers,
                            timeout=15)


def test_over_http_she_reads_and_replaces_her_settings_with_if_match(stack):
    from warmi.admin import issue_token

    stack.start("gateway")
    made = stack.organization()
    lead = stack.user("CEC", "case_lead")
    read = _call(stack, "GET", lead["token"])
    assert read.status_code == 200 and read.headers["ETag"] == '"1"', read.text
    assert read.json() == {**NONE, "whatsapp_opted_in_at": None, "timezone": "America/Lima", "revision": 1}

    assert _call(stack, "PUT", lead["token"], SETTINGS).status_code == 428
    stale = _call(stack, "PUT", lead["token"], SETTINGS, **{"If-Match": '"5"'})
    assert stale.status_code == 412 and stale.headers["ETag"] == '"1"'
    put = _call(stack, "PUT", lead["token"], SETTINGS, **{"If-Match": '"1"'})
    assert put.status_code == 200 and put.headers["ETag"] == '"2"', put.text
    assert {k: put.json()[k] for k in SETTINGS} == SETTINGS and put.json()["whatsapp_opted_in_at"]
    assert _call(stack, "GET", lead["token"]).json() == put.json()

    before = table_counts(stack._engine("identity"))
    for body, field in REFUSED:
        refused = _call(stack, "PUT", lead["token"], body, **{"If-Match": '"2"'})
        assert refused.status_code == 422, (body, refused.text)
        assert field in refused.json()["error"]["fields"], (body, refused.text)
    assert table_counts(stack._engine("identity")) == before

    reader = issue_token(user_id=lead["id"], scope="read", days=1, label="phone")
    assert _call(stack, "GET", reader["token"]).json()["revision"] == 2
    refused = _call(stack, "PUT", reader["token"], NONE, **{"If-Match": '"2"'})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"

    # anyone signed in has settings of her own, an admin and a president too
    assert _call(stack, "GET", made["president"]["token"]).json()["revision"] == 1
