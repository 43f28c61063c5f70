"""The event catalogue and the configuration rules."""
from datetime import datetime, timezone

import pytest
from marshmallow import ValidationError

from contracts.events import CATALOGUE, build_event, load_event
from servicekit.config import database_url
from servicekit.database import normalize_url


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_catalogued_example_loads(name):
    event = load_event(CATALOGUE[name].example, name)
    assert event["type"] == name and event["version"] == CATALOGUE[name].version


def test_an_event_refuses_data_its_schema_does_not_name():
    with pytest.raises(ValidationError):
        build_event(
            "case_opened", organization_id="0c9a3c1e-5f0b-4f7e-8d3a-6b2e1f4c9d70",
            data={"survivor_code": "CEC-2026-0001", "opened_by": "a3f9e2c1-7b4d-4c8e-9f1a-2d6b5e0c8f47",
                  "opened_at": datetime.now(timezone.utc), "narrative": "x"},
        )


def test_a_case_opened_staged_before_it_carried_a_risk_level_loads_without_one():
    example = CATALOGUE["case_opened"].example
    earlier = dict(example, data={k: v for k, v in example["data"].items() if k != "risk_level"})
    assert load_event(earlier, "case_opened")["data"]["risk_level"] is None
    with pytest.raises(ValidationError):
        load_event(dict(example, data=dict(example["data"], risk_level="severe")), "case_opened")


def test_a_case_without_a_lead_says_so_with_null_never_by_leaving_the_lead_out():
    example = CATALOGUE["case_lead_assigned"].example
    assert load_event(dict(example, data=dict(example["data"], case_lead_id=None)),
                      "case_lead_assigned")["data"]["case_lead_id"] is None
    with pytest.raises(ValidationError):
        load_event(dict(example, data={"assigned_by": example["data"]["assigned_by"]}), "case_lead_assigned")


def test_a_consumer_refuses_an_unknown_version():
    body = dict(CATALOGUE["case_opened"].example, version=99)
    with pytest.raises(ValidationError):
        load_event(body, "case_opened")


def test_each_service_gets_its_own_database():
    assert database_url("cases", {"CASES_DATABASE_URL": "postgresql://h/own"}) == "postgresql://h/own"
    assert database_url("cases", {"DATABASE_URL": "postgresql://u:p@h:5432/warmi"}) == "postgresql://u:p@h:5432/warmi_cases"
    assert database_url("identity", {"DATABASE_URL": "sqlite:///var/warmi.db"}) == "sqlite:///var/warmi_identity.db"
    # the gateway keeps no data of its own: its process hosts identity and uses identity's database
    assert database_url("gateway", {"IDENTITY_DATABASE_URL": "postgresql://h/id"}) == "postgresql://h/id"
    assert database_url("cases", {"WARMI_HOME": "/tmp/x"}).startswith("sqlite:///")


def test_postgresql_urls_use_psycopg2():
    assert normalize_url("postgresql://h/db").startswith("postgresql+psycopg2://")
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
