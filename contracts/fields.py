"""Input fields that take what they say and nothing else.

marshmallow's defaults coerce: ``"yes"`` is a true boolean, ``3.5`` the
integer 3. For case work that is dangerous (``"minor": "yes"`` would open a
minor's case from a typo), so every input schema of ``contracts/`` uses these
instead: a boolean is ``true`` or ``false``, an integer a JSON integer, a
string a string that can be stored, a time an instant with its offset.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from marshmallow import fields

# PostgreSQL cannot store NUL in text, and a lone surrogate cannot be encoded
# as UTF-8: either would fail deep in a service instead of at the boundary.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
EARLIEST = datetime(1900, 1, 1, tzinfo=timezone.utc)


class StrictBoolean(fields.Boolean):
    """``true`` or ``false``; not ``"yes"``, ``1`` or ``"true"``."""

    def _deserialize(self, value, attr, data, **kwargs) -> bool:
        if value is True or value is False:
            return value
        raise self.make_error("invalid")


class StrictInteger(fields.Integer):
    """A JSON integer; not ``3.5``, ``"3"`` or ``true``."""

    def __init__(self, **kwargs):
        super().__init__(strict=True, **kwargs)


class StrictString(fields.String):
    """A string with nothing in it that the databases or UTF-8 refuse."""

    default_error_messages = {"unstorable": "Contains a character that cannot be stored (NUL or a lone surrogate)."}

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if UNSTORABLE.search(text):
            raise self.make_error("unstorable")
        return text


class StrictList(fields.List):
    """A JSON list of at most ``max_items`` items."""

    default_error_messages = {"too_long": "At most {max_items} items."}

    def __init__(self, inner, *, max_items: int, **kwargs):
        super().__init__(inner, **kwargs)
        self.max_items = max_items

    def _deserialize(self, value, attr, data, **kwargs) -> list:
        if not isinstance(value, list):
            raise self.make_error("invalid")
        if len(value) > self.max_items:
            raise self.make_error("too_long", max_items=self.max_items)
        return super()._deserialize(value, attr, data, **kwargs)


class Instant(fields.AwareDateTime):
    """An ISO 8601 time with its offset (a time without one names no instant),
    returned in UTC: the offset a phone sent says where it was, not when."""

    default_error_messages = {"too_early": "Must be after 1900."}

    def _deserialize(self, value, attr, data, **kwargs) -> datetime:
        if not isinstance(value, str):
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE)
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            moment = moment.astimezone(timezone.utc)
        except OverflowError:  # year 1 or 9999 with an offset falls off the calendar
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE) from None
        if moment < EARLIEST:
            raise self.make_error("too_early")
        return moment
