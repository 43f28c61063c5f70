"""Parsing a request body as JSON that the services can take.

Python's ``json`` accepts more than a service can store or even survive:
``NaN``, a key given twice (the last one silently wins), nesting deep enough
to exhaust the interpreter's recursion, and strings holding a NUL or a lone
surrogate (``"\\ud800"``), which PostgreSQL and UTF-8 refuse only once a
service is already writing. Here each is refused at the door, naming the
field it is in.
"""
from __future__ import annotations

import json
import re

from contracts.fields import UNSTORABLE

MAX_DEPTH = 32  # an API object is three or four levels deep; 32 is generous

# strings and the punctuation that nests, to find the field of a body too deep to parse
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:]', re.DOTALL)


class NotJson(ValueError):
    """The body is not JSON text (RFC 8259: UTF-8, no NaN); ``fields`` says
    where, when the broken bytes sit inside a string."""

    def __init__(self, message: str, fields: dict | None = None):
        super().__init__(message)
        self.fields = fields or {}


class Refused(ValueError):
    """JSON, but not what a service can take; ``fields`` names where."""

    def __init__(self, message: str, fields: dict):
        super().__init__(message)
        self.fields = fields


class _Object(dict):
    """A JSON object that remembers the keys it was given more than once."""

    repeated: tuple = ()


def _object(pairs: list) -> _Object:
    made = _Object(pairs)
    if len(made) != len(pairs):
        seen: set = set()
        made.repeated = tuple(k for k, _ in pairs if k in seen or seen.add(k))
    return made


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse(raw: bytes):
    """The JSON value of ``raw``, or ``NotJson`` / ``Refused`` saying what is wrong."""
    try:
        text = raw.decode("utf-8")
        utf8 = True
    except UnicodeDecodeError:
        # keep going so the error can name the field; each bad byte becomes a lone surrogate
        text = raw.decode("utf-8", "surrogateescape")
        utf8 = False
    try:
        value = json.loads(text, object_pairs_hook=_object, parse_constant=_no_constant)
    except RecursionError:
        raise _too_deep(_field_of_deep(text)) from None
    except ValueError:
        raise NotJson("the body is not valid JSON") from None
    problem = _first_problem(value)
    if problem is None:
        return value
    field, message, kind = problem
    if not utf8:
        raise NotJson("the body is not valid UTF-8", {field: ["not valid UTF-8"]} if kind == "text" else None)
    if kind == "depth":
        raise _too_deep(field)
    raise Refused("some fields are not valid", {field: [message]})


def _too_deep(field: str) -> Refused:
    return Refused("the body is nested too deeply", {field: [f"nested deeper than {MAX_DEPTH} levels"]})


def _first_problem(value) -> tuple[str, str, str] | None:
    """(field, message, kind) of the first thing a service could not take."""
    stack = [(value, (), 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, (dict, list)) and depth > MAX_DEPTH:
            return _field(path), "", "depth"
        if isinstance(node, str):
            if UNSTORABLE.search(node):
                return _field(path), _where("contains a NUL or a lone surrogate, which cannot be stored", path), "text"
        elif isinstance(node, dict):
            for key in getattr(node, "repeated", ()):
                return _field(path + (key,)), _where("given more than once", path + (key,)), "repeated"
            for key, item in reversed(node.items()):
                if UNSTORABLE.search(key):
                    return _field(path + (key,)), _where("the name contains a NUL or a lone surrogate",
                                                         path + (key,)), "text"
                stack.append((item, path + (key,), depth + 1))
        elif isinstance(node, list):
            for index in reversed(range(len(node))):
                stack.append((node[index], path + (index,), depth + 1))
    return None


def _field(path: tuple) -> str:
    """The top-level field a problem is in, as the schema errors name fields."""
    if not path or not isinstance(path[0], str):
        return "_schema"
    return _printable(path[0])


def _where(message: str, path: tuple) -> str:
    if len(path) <= 1:
        return message
    return f"{message} (at {'.'.join(_printable(str(p)) for p in path)})"


def _printable(name: str) -> str:
    """A name as it can be written back in a JSON answer: broken characters escaped."""
    return json.dumps(name)[1:-1] if UNSTORABLE.search(name) else name


def _field_of_deep(text: str) -> str:
    """The top-level field holding nesting too deep for the parser to reach."""
    depth, last_string, key = 0, None, None
    for token in _TOKENS.finditer(text):
        piece = token.group()
        if piece.startswith('"'):
            last_string = piece
        elif piece == ":":
            if depth == 1:
                key = last_string
        elif piece in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                break
        else:
            depth -= 1
            if depth == 1:
                key = None
    if key is None:
        return "_schema"
    try:
        return _printable(json.loads(key))
    except ValueError:
        return "_schema"
