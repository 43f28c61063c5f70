"""Acknowledgement tokens: 32 url-safe characters that only our keys sign."""
import base64
import re
from datetime import datetime, timedelta, timezone

import pytest

from services.notifications.domain.acks import AckKeys, AckRefused, issue, verify


def key_line(key_id: int, fill: int) -> str:
    return f"{key_id}:" + base64.urlsafe_b64encode(bytes([fill]) * 32).decode().rstrip("=")


OLD = AckKeys.parse(key_line(1, 0xA1))
NEW_THEN_OLD = AckKeys.parse(key_line(2, 0xB2) + "," + key_line(1, 0xA1))
ACK = bytes.fromhex("0123456789abcdef")
NOW = datetime(2026, 11, 20, 14, 5, tzinfo=timezone.utc)
LATER = NOW + timedelta(days=7)


def refused(keys: AckKeys, token, now: datetime = NOW) -> str:
    with pytest.raises(AckRefused) as caught:
        verify(keys, token, now)
    return caught.value.reason


def reencoded(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_a_token_comes_back_as_its_ack_id():
    token = issue(OLD, ACK, LATER)
    assert len(token) == 32 and re.fullmatch(r"[A-Za-z0-9_-]{32}", token)
    assert verify(OLD, token, NOW) == ACK


def test_a_token_holds_version_key_id_ack_id_and_expiry_in_minutes():
    raw = base64.urlsafe_b64decode(issue(NEW_THEN_OLD, ACK, LATER))
    assert raw[:2] == bytes([1, 2]) and raw[2:10] == ACK
    assert int.from_bytes(raw[10:14], "big") * 60 == int(LATER.timestamp())
    assert len(raw) == 24


@pytest.mark.parametrize("index", range(24))
def test_every_tampered_byte_is_refused(index):
    raw = bytearray(base64.urlsafe_b64decode(issue(NEW_THEN_OLD, ACK, LATER)))
    raw[index] ^= 0x01
    expected = {0: "malformed", 1: "unknown_key"}.get(index, "bad_signature")  # key id 2 -> 3: no such key
    assert refused(NEW_THEN_OLD, reencoded(bytes(raw))) == expected


def test_a_token_of_another_key_with_the_same_id_is_refused():
    other = AckKeys.parse(key_line(1, 0xC3))
    assert refused(OLD, issue(other, ACK, LATER)) == "bad_signature"


def test_a_token_of_a_key_id_we_do_not_hold_is_refused():
    assert refused(OLD, issue(AckKeys.parse(key_line(9, 0xA1)), ACK, LATER)) == "unknown_key"


def test_a_token_expires_at_its_minute():
    token = issue(OLD, ACK, LATER)
    assert verify(OLD, token, LATER - timedelta(seconds=1)) == ACK
    assert refused(OLD, token, LATER) == "expired"
    # rounded down to the minute: never valid after the expiry asked for
    rounded = issue(OLD, ACK, LATER + timedelta(seconds=59))
    assert refused(OLD, rounded, LATER) == "expired"


@pytest.mark.parametrize("token", [
    "", "A" * 31, "A" * 33, "A" * 30 + "==", "A" * 31 + "=", "A" * 31 + "+", "A" * 31 + "/", "A" * 31 + ".",
    "A" * 31 + "\n", "A" * 31 + "é", b"A" * 32, None,
])
def test_anything_but_32_url_safe_characters_is_malformed(token):
    assert refused(OLD, token) == "malformed"


def test_a_token_of_the_old_key_verifies_after_a_new_one_is_added_ahead_of_it():
    old_token = issue(OLD, ACK, LATER)
    assert verify(NEW_THEN_OLD, old_token, NOW) == ACK
    new_token = issue(NEW_THEN_OLD, ACK, LATER)
    assert base64.urlsafe_b64decode(new_token)[1] == 2
    assert refused(OLD, new_token) == "unknown_key"  # a replica that does not have the new key yet


def test_keys_are_read_from_lines_or_commas_with_comments():
    text = "# rotated 2026-11\n" + key_line(2, 0xB2) + "\n\n" + key_line(1, 0xA1) + "\n"
    assert AckKeys.parse(text) == NEW_THEN_OLD
    assert AckKeys.parse(" " + key_line(2, 0xB2) + " , " + key_line(1, 0xA1) + "==") == NEW_THEN_OLD


@pytest.mark.parametrize("text", [
    "", "# only a comment", "1" + key_line(1, 0xA1)[1:].replace(":", ""), "256" + key_line(1, 0xA1)[1:],
    "x" + key_line(1, 0xA1)[1:], "1:" + base64.urlsafe_b64encode(b"k" * 31).decode(),
    key_line(1, 0xA1) + "," + key_line(1, 0xB2), "1:not+base64/at-all", "1:AAAAA",
])
def test_bad_key_lines_are_refused(text):
    with pytest.raises(ValueError):
        AckKeys.parse(text)


def test_issue_needs_an_eight_byte_ack_id_and_an_aware_expiry():
    for ack_id, expires in ((b"1234567", LATER), (b"123456789", LATER), (ACK, LATER.replace(tzinfo=None)),
                            (ACK, datetime(1969, 12, 31, tzinfo=timezone.utc))):
        with pytest.raises(ValueError):
            issue(OLD, ack_id, expires)
