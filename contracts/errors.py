"""Errors that cross the RPC boundary and come back as themselves.

nameko turns any other exception into a ``RemoteError``; these are registered
so that the gateway receives the same class, with its arguments, and can map it
to an HTTP status in one place.
"""
from __future__ import annotations

from nameko.exceptions import deserialize_to_instance


class WarmiError(Exception):
    """Base of the errors a caller is expected to handle."""

    code = "error"

    def __init__(self, message: str = "", fields: dict | None = None):
        super().__init__(message, fields or {})
        self.message = message
        self.fields = fields or {}

    def __str__(self) -> str:
        return self.message


@deserialize_to_instance
class InvalidInput(WarmiError):
    code = "invalid_input"


@deserialize_to_instance
class NotFound(WarmiError):
    code = "not_found"


@deserialize_to_instance
class Forbidden(WarmiError):
    code = "forbidden"


@deserialize_to_instance
class Conflict(WarmiError):
    code = "conflict"


@deserialize_to_instance
class Stale(WarmiError):
    """An edit made on another version of the case than the one stored (the
    HTTP API's 412). ``current_version`` is the version stored, so that the
    caller can be told what to read again."""

    code = "precondition_failed"

    def __init__(self, message: str = "", fields: dict | None = None, current_version: int | None = None):
        super().__init__(message, fields)
        # the arguments travel over RPC and rebuild the error on the other side
        self.args = (message, self.fields, current_version)
        self.current_version = current_version


EXPECTED = (InvalidInput, NotFound, Forbidden, Conflict, Stale)
