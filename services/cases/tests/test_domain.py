"""The cases domain without broker or database."""
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.fernet import Fernet
from hypothesis import given, strategies as st

from services.cases.adapters.crypto import KeyRing, KeyRingError
from services.cases.domain.access import Caller, may_open_case, may_view_case
from services.cases.domain.model import InvalidCase, Organization, open_case, survivor_code

NOW = datetime(2026, 11, 20, 14, 0, tzinfo=timezone.utc)
ORG = Organization("org-1", "CEC", "America/Lima")


def caller(roles, user="u-1", org="org-1"):
    return Caller(user, org, frozenset(roles))


def a_case(**overrides):
    values = dict(
        organization=ORG, caller=caller({"focal_point"}), code="CEC-2026-0001", now=NOW, age_group="18-25",
        sex="female", incident_at=None, narrative_ciphertext=None, survivor_name_ciphertext=None,
        idempotency_key=None,
    )
    values.update(overrides)
    return open_case(**values)


def test_survivor_code_names_organisation_year_and_a_four_digit_number():
    assert survivor_code("CEC", 2026, 42) == "CEC-2026-0042"
    assert survivor_code("SMP", 2027, 12345) == "SMP-2027-12345"


def test_an_incident_cannot_be_after_the_case_is_opened():
    with pytest.raises(InvalidCase) as err:
        a_case(incident_at=NOW + timedelta(minutes=1))
    assert err.value.field == "incident_at"


def test_an_incident_before_opening_is_kept():
    assert a_case(incident_at=NOW - timedelta(hours=10)).incident_at == NOW - timedelta(hours=10)


@pytest.mark.parametrize(
    "roles,user,org,allowed",
    [
        ({"president"}, "someone", "org-1", True),
        ({"president"}, "someone", "org-2", False),
        ({"focal_point"}, "u-1", "org-1", True),
        ({"focal_point"}, "u-2", "org-1", False),
        ({"programme"}, "u-1", "org-1", False),
        ({"operator"}, "u-1", "org-1", False),
    ],
)
def test_who_may_see_a_case(roles, user, org, allowed):
    assert may_view_case(caller(roles, user, org), a_case()) is allowed


def test_an_excluded_president_sees_nothing():
    case = a_case()
    case.excluded_users = frozenset({"p-1"})
    assert may_view_case(caller({"president"}, "p-1"), case) is False


def test_a_new_lead_is_told_once_and_the_same_lead_again_changes_nothing():
    case = a_case()
    assert case.assign_lead("l-1", actor_id="p-1", now=NOW) is True
    assert case.assign_lead("l-1", actor_id="p-1", now=NOW) is False
    assert case.assign_lead("l-2", actor_id="p-1", now=NOW) is True
    assert (case.case_lead_id, case.version) == ("l-2", 3)
    assert [data for kind, data in case.events if kind == "case_lead_assigned"] == [
        {"case_lead_id": "l-1", "assigned_by": "p-1"}, {"case_lead_id": "l-2", "assigned_by": "p-1"}]


def test_excluding_the_lead_leaves_the_case_without_one_and_she_cannot_lead_it_again():
    case = a_case()
    case.assign_lead("l-1", actor_id="p-1", now=NOW)
    case.events.clear()
    assert case.exclude("l-1", actor_id="p-1", now=NOW) == ["excluded_users", "case_lead_id"]
    assert case.case_lead_id is None
    assert case.events == [("case_updated", {"changed": ["team"]}),
                           ("case_lead_assigned", {"case_lead_id": None, "assigned_by": "p-1"})]
    with pytest.raises(InvalidCase) as err:
        case.assign_lead("l-1", actor_id="p-1", now=NOW)
    assert err.value.field == "case_lead_id"


def test_excluding_another_member_leaves_the_lead_and_tells_only_of_the_team():
    case = a_case()
    case.assign_lead("l-1", actor_id="p-1", now=NOW)
    case.events.clear()
    assert case.exclude("m-1", actor_id="p-1", now=NOW) == ["excluded_users"]
    assert (case.case_lead_id, case.excluded_users) == ("l-1", frozenset({"m-1"}))
    assert case.events == [("case_updated", {"changed": ["team"]})]


@pytest.mark.parametrize("roles,allowed", [({"focal_point"}, True), ({"president"}, True), ({"programme"}, False), ({"operator"}, False)])
def test_who_may_open_a_case(roles, allowed):
    assert may_open_case(caller(roles)) is allowed


@given(st.text(max_size=500))
def test_encrypted_text_reads_back_and_never_shows_in_the_ciphertext(plaintext):
    ring = KeyRing([Fernet.generate_key().decode()])
    ciphertext = ring.encrypt(plaintext)
    assert ring.decrypt(ciphertext) == plaintext
    if len(plaintext) >= 4:
        assert plaintext not in ciphertext


def test_a_rotated_ring_reads_old_fields_and_rewrites_them_with_the_new_key():
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    ciphertext = KeyRing([old]).encrypt("relato")
    rotated = KeyRing([new, old]).rotate(ciphertext)
    assert KeyRing([new]).decrypt(rotated) == "relato"
    with pytest.raises(KeyRingError):
        KeyRing([new]).decrypt(ciphertext)


def test_a_ring_without_keys_refuses_to_start():
    with pytest.raises(KeyRingError):
        KeyRing.from_settings(None, "/nonexistent/keys")
