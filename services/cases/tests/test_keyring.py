"""The key ring's padding and keyed digests, and the codes shared with the contracts."""
from cryptography.fernet import Fernet

from contracts import events
from services.cases.adapters.crypto import KeyRing
from services.cases.domain import model
from services.cases.domain.classification import PLACES, PERPETRATOR_RELATIONSHIPS
from services.cases.domain.deadlines import alert_role


def test_padded_codes_all_encrypt_to_one_length_and_read_back():
    ring = KeyRing([Fernet.generate_key().decode()])
    sealed = {code: ring.encrypt(code, pad_to=32) for code in PLACES + PERPETRATOR_RELATIONSHIPS}
    assert len({len(c) for c in sealed.values()}) == 1
    assert {ring.decrypt(c, padded=True) for c in sealed.values()} == set(PLACES + PERPETRATOR_RELATIONSHIPS)
    assert len(ring.encrypt("camp")) != len(ring.encrypt("processing_plant"))  # what the padding is for


def test_a_digest_is_keyed_stable_and_found_under_an_older_key():
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    user = "a3f9e2c1-7b4d-4c8e-9f1a-2d6b5e0c8f47"
    assert KeyRing([old]).digest(user) == KeyRing([old]).digest(user)
    assert KeyRing([old]).digest(user) != KeyRing([new]).digest(user)
    assert KeyRing([new, old]).digests(user) == [KeyRing([new]).digest(user), KeyRing([old]).digest(user)]
    assert user not in KeyRing([old]).digest(user)


def test_reopening_codes_are_the_contracts_and_a_step_alert_names_one_role():
    assert model.REOPEN_REASONS == events.REOPEN_REASONS
    assert set(model.CHANGE_GROUPS.values()) <= set(events.CHANGES)
    assert alert_role("case_lead,president") == "case_lead"
    assert alert_role(("president",)) == "president"
