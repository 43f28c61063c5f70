"""Query strings turned into the types the services' schemas take, refusing
what does not read as one: ``overdue=yes`` is an error, not ``false``, and
``page=+3`` or ``page=3.0`` are not page 3."""
from __future__ import annotations

import json
import re

from marshmallow import Schema, fields
from werkzeug.datastructures import MultiDict

from contracts.fields import UNSTORABLE

_INTEGER = re.compile(r"[0-9]{1,9}\Z")
_BOOLEANS = {"true": True, "false": False}


class BadQuery(ValueError):
    def __init__(self, fields: dict):
        super().__init__("some query parameters are not valid")
        self.fields = fields


def parameters(args: MultiDict, *, integers=(), booleans=(), drop=()) -> dict:
    """Each parameter once, as a string unless it is named as an integer or a
    boolean; the schema of the service then checks names and values."""
    errors: dict = {}
    out: dict = {}
    for name in args:
        values = args.getlist(name)
        shown = _printable(name)
        if len(values) > 1:
            errors[shown] = ["given more than once"]
            continue
        value = values[0]
        if UNSTORABLE.search(name) or UNSTORABLE.search(value):
            errors[shown] = ["contains a NUL or a character that is not valid UTF-8"]
        elif name in drop:
            continue
        elif name in integers:
            if _INTEGER.match(value):
                out[name] = int(value)
            else:
                errors[shown] = ["Not a valid integer."]
        elif name in booleans:
            if value in _BOOLEANS:
                out[name] = _BOOLEANS[value]
            else:
                errors[shown] = ["Not a valid boolean: true or false."]
        else:
            out[name] = value
    if errors:
        raise BadQuery(errors)
    return out


def kinds(schema: type[Schema]) -> dict:
    """Which parameters of ``schema`` are integers and which booleans, by
    the names they have in the query string."""
    made = schema()
    named = [(field.data_key or name, field) for name, field in made.fields.items()]
    return {
        "integers": tuple(n for n, f in named if isinstance(f, fields.Integer)),
        "booleans": tuple(n for n, f in named if isinstance(f, fields.Boolean)),
    }


def _printable(name: str) -> str:
    return json.dumps(name)[1:-1] if UNSTORABLE.search(name) else name
