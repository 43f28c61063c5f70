"""HTTP plumbing of the API: JSON in and out, and the one error mapping."""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from typing import Callable

import eventlet
from nameko.exceptions import RemoteError, UnknownService
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import WebServer, WsgiApp
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from contracts.errors import Conflict, Forbidden, InvalidInput, NotFound, Stale, WarmiError
from services.gateway import strict_json
from servicekit.amqp import LOST_CONNECTION

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
STATUS = {InvalidInput: 422, NotFound: 404, Forbidden: 403, Conflict: 409}
RETRY_AFTER_SECONDS = "5"
# a service's own way of saying "not now": its database or a dependency is away
UNAVAILABLE_REMOTE = frozenset({"Unavailable", "ServiceUnavailable", "OperationalError", "DisconnectionError"})
# on every answer: case data is neither sniffed into another type nor kept in a cache
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store"))
# If-Match as the API answers ETag: one strong tag naming the case's version
_VERSION_TAG = re.compile(r'[ \t]*"([0-9]{1,10})"[ \t]*\Z')
MAX_VERSION = 2**31 - 1


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: dict | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields = fields or {}
        self.headers = headers or {}


class RpcUnavailable(Exception):
    pass


def json_response(status: int, body, headers: dict | None = None) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False), status=status, headers=headers, content_type="application/json; charset=utf-8"
    )


def error_response(status: int, code: str, message: str, fields: dict | None = None, headers=None) -> Response:
    return json_response(status, {"error": {"code": code, "message": message, "fields": fields or {}}}, headers)


def unavailable_response(message: str, fields: dict | None = None) -> Response:
    return error_response(503, "unavailable", message, fields, headers={"Retry-After": RETRY_AFTER_SECONDS})


def case_etag(version: int) -> str:
    """A case's entity tag: its version, strong, since every edit of what the
    case says makes a new version (``"3"``)."""
    return f'"{version}"'


def content_etag(data: bytes) -> str:
    """The entity tag of a representation without a version: its bytes."""
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def if_match(request: Request) -> int:
    """The version an edit was made on, from ``If-Match``. Missing: 428. A
    value that is not one of the case's tags (``*``, a weak tag, a list, a
    tag of another kind) names no version: 0, which the service answers as
    stale (412, with the current ETag)."""
    value = request.headers.get("If-Match")
    if value is None or not value.strip():
        raise HttpError(428, "precondition_required",
                        "send If-Match with the ETag of the case as you last read it",
                        {"If-Match": ["required: the ETag of the case, e.g. \"3\""]})
    match = _VERSION_TAG.match(value)
    if match is None:
        return 0
    version = int(match.group(1))
    return version if version <= MAX_VERSION else 0


def read_json(request: Request) -> dict:
    """The request body as a JSON object, or an HttpError saying what is wrong."""
    length = request.content_length
    if length is None and request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        raise HttpError(411, "length_required", "send the body with a Content-Length")
    if length is not None and length > MAX_BODY_BYTES:
        raise HttpError(413, "body_too_large", f"the body may be at most {MAX_BODY_BYTES} bytes")
    mimetype = request.mimetype or ""
    if mimetype != "application/json":
        raise HttpError(415, "unsupported_media_type", "send the body as application/json")
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY_BYTES:
        raise HttpError(413, "body_too_large", f"the body may be at most {MAX_BODY_BYTES} bytes")
    try:
        body = strict_json.parse(raw)
    except strict_json.NotJson as err:
        raise HttpError(400, "invalid_json", str(err), err.fields) from None
    except strict_json.Refused as err:
        raise HttpError(422, "invalid_input", str(err), err.fields) from None
    if not isinstance(body, dict):
        raise HttpError(422, "invalid_input", "the body must be a JSON object", {"_schema": ["expected an object"]})
    return body


def call(method, *args, timeout: float = 10.0):
    """An RPC call that gives up after ``timeout`` seconds. Every way the
    broker or the service can be away comes out as ``RpcUnavailable``."""
    try:
        with eventlet.Timeout(timeout):
            return method(*args)
    except eventlet.Timeout:
        raise RpcUnavailable("timeout") from None
    except UnknownService:
        raise RpcUnavailable("unknown_service") from None
    except LOST_CONNECTION as err:
        raise RpcUnavailable(type(err).__name__) from None
    except RemoteError as err:
        if err.exc_type in UNAVAILABLE_REMOTE:
            raise RpcUnavailable(err.exc_type) from None
        raise


def ask_all(methods: dict, timeout: float) -> dict:
    """Call every method of ``methods`` (name -> bound RPC method) side by
    side; name -> whether it answered within ``timeout`` seconds."""
    replies, answered = {}, {name: False for name in methods}
    for name, method in methods.items():
        try:
            replies[name] = method.call_async()
        except (UnknownService, *LOST_CONNECTION):
            pass
    try:
        with eventlet.Timeout(timeout):
            for name, reply in replies.items():
                try:
                    reply.result()
                    answered[name] = True
                except Exception:
                    pass
    except eventlet.Timeout:
        pass
    return answered


def endpoint(fn: Callable) -> Callable:
    """Map everything a handler can raise to a JSON error; never leak internals."""

    @functools.wraps(fn)
    def wrapper(self, request: Request, **kwargs) -> Response:
        try:
            return fn(self, request, **kwargs)
        except HttpError as err:
            return error_response(err.status, err.code, err.message, err.fields, err.headers)
        except Stale as err:
            headers = {"ETag": case_etag(err.current_version)} if err.current_version else None
            shown = (f"the case is at version {err.current_version}; read it again"
                     if err.current_version else "the case changed meanwhile; read it again")
            return error_response(412, err.code, "the case changed since the version you edited",
                                  {"If-Match": [shown]}, headers)
        except WarmiError as err:
            if err.code == "unavailable":  # a service's own "not now"
                return unavailable_response(err.message or "a service is unavailable; try again")
            return error_response(STATUS.get(type(err), 400), err.code, err.message, err.fields)
        except RpcUnavailable as err:
            log.warning("a service is unavailable", extra={"reason": str(err)})
            return unavailable_response("a service did not answer in time; try again")
        except LOST_CONNECTION as err:
            # the broker went away under a call made without ``call``
            log.warning("a service is unavailable", extra={"reason": type(err).__name__})
            return unavailable_response("a service did not answer in time; try again")
        except SQLAlchemyOperationalError:
            log.warning("the gateway's database is unavailable")
            return unavailable_response("the service is unavailable for a moment; try again")
        except RemoteError as err:
            log.error("a service failed", extra={"remote_error": err.exc_type})
            return error_response(500, "internal", "something went wrong on our side")
        except Exception as err:
            log.error("request failed", extra={"error": type(err).__name__})
            return error_response(500, "internal", "something went wrong on our side")

    return wrapper


class _JsonErrorsApp(WsgiApp):
    """Unknown paths and wrong methods answer in the API's error format too."""

    def __call__(self, environ, start_response):
        def start(status, headers, exc_info=None):
            present = {name.lower() for name, _ in headers}
            headers = list(headers) + [(n, v) for n, v in SECURITY_HEADERS if n.lower() not in present]
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        return self._answer(environ, start)

    def _answer(self, environ, start_response):
        request = Request(environ, shallow=True)
        adapter = self.url_map.bind_to_environ(environ)
        try:
            provider, values = adapter.match()
        except HTTPException as exc:
            headers = {"Allow": ", ".join(exc.valid_methods)} if getattr(exc, "valid_methods", None) else None
            code = (exc.name or "error").lower().replace(" ", "_")
            response = error_response(exc.code or 400, code, exc.description or exc.name, headers=headers)
            return response(environ, start_response)
        request.path_values = values
        return provider.handle_request(request)(environ, start_response)


class ApiServer(WebServer):
    def get_wsgi_app(self):
        return _JsonErrorsApp(self)


class ApiRoute(HttpRequestHandler):
    """``@route(method, url)``: an HTTP entrypoint served by ``ApiServer``."""

    server = ApiServer()


route = ApiRoute.decorator
