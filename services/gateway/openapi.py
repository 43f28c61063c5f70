"""The OpenAPI 3 document of the API, made from the route table
(``services.gateway.routes``) with apispec and its marshmallow plugin."""
from __future__ import annotations

import functools
import json

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from services.gateway import schemas
from services.gateway.routes import ROUTES, Route

TITLE = "Warmi API"
VERSION = "1"

STATUS_TEXT = {
    400: "The body is not JSON (broken, NaN, not UTF-8)",
    401: "No valid bearer token",
    403: "Your role or your token's scope does not allow this",
    404: "No such resource, or one you may not see",
    409: "The case is closed, or the request conflicts with what was done before",
    411: "A chunked body: send it with a Content-Length",
    412: "If-Match does not name the case's current version; ETag holds the current one",
    413: "The body is over 64 KiB",
    415: "The body is not application/json",
    422: "Invalid fields, each with its messages",
    428: "An edit without If-Match",
    429: "Too many requests for this token (or this address, without one); wait Retry-After seconds",
    503: "A service is unavailable for a moment; try again after Retry-After seconds",
}

ETAG = {
    "description": 'The version of the case, a strong entity tag ("3"): send it back as If-Match to edit. '
                   "Other resources: a tag of the representation's bytes.",
    "schema": {"type": "string"},
}
RETRY_AFTER = {"description": "Seconds to wait", "schema": {"type": "integer"}}
IF_MATCH = {
    "in": "header", "name": "If-Match", "required": True,
    "description": "The ETag of the case as last read (e.g. \"3\"). Missing: 428. Another version: 412.",
    "schema": {"type": "string"},
}
IDEMPOTENCY_KEY = {
    "in": "header", "name": "Idempotency-Key", "required": False,
    "description": "Sent again with the same request, it returns the case first opened instead of a second one",
    "schema": {"type": "string", "minLength": 1, "maxLength": 100},
}
PATH_PARAMETER = {
    "case_id": {"type": "string", "format": "uuid"},
    "consent_id": {"type": "string", "format": "uuid"},
    "step_id": {"type": "string", "minLength": 1, "maxLength": 16, "pattern": "^[A-Za-z0-9_-]+$"},
    "person_id": {"type": "string", "format": "uuid"},
    "token_id": {"type": "string", "format": "uuid"},
}


def _error(status: int) -> dict:
    response = {
        "description": STATUS_TEXT[status],
        "content": {"application/json": {"schema": "Error"}},
    }
    if status in (429, 503):
        response["headers"] = {"Retry-After": RETRY_AFTER}
    if status == 412:
        response["headers"] = {"ETag": ETAG}
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def _success(route: Route) -> dict:
    if route.name == "openapi":
        return {"description": "The OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}
    content = {"application/json": {"schema": route.output}}
    if route.name == "statistics":
        content["text/csv"] = {"schema": {"type": "string"}}
    headers = {}
    if route.method == "GET" or route.version_of:
        headers["ETag"] = ETAG
    if route.name == "open_case":
        headers["Location"] = {"description": "The new case", "schema": {"type": "string"}}
    if route.name == "list_cases":
        headers["Link"] = {"description": 'The next page, rel="next"; absent on the last page',
                           "schema": {"type": "string"}}
    response = {"description": route.summary, "content": content}
    if headers:
        response["headers"] = headers
    return response


def _operation(route: Route) -> dict:
    parameters = [
        {"in": "path", "name": name, "required": True, "schema": PATH_PARAMETER[name]}
        for name in route.path_parameters
    ]
    if route.query is not None:
        parameters.append({"in": "query", "schema": route.query})
    parameters.extend(route.query_extra)
    if route.edit:
        parameters.append(IF_MATCH)
    if route.idempotency_key:
        parameters.append(IDEMPOTENCY_KEY)
    operation = {
        "operationId": route.name,
        "summary": route.summary,
        "tags": list(route.tags),
        "responses": {str(route.status): _success(route), **{str(s): _error(s) for s in route.statuses()}},
    }
    if route.roles is not None:
        operation["security"] = [{"bearer": []}]
        operation["description"] = "Roles: " + ", ".join(sorted(route.roles)) + (
            ". Writes: a token of scope read gets 403." if route.writes else ".")
    else:
        operation["security"] = []
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.body}}}
    return operation


def document(routes=ROUTES) -> dict:
    spec = APISpec(
        title=TITLE, version=VERSION, openapi_version="3.0.3", plugins=[MarshmallowPlugin()],
        info={"description": (
            "Case work of gender-equality committees. Every error is JSON: "
            '{"error": {"code", "message", "fields"}}. Edits of a case take If-Match with the ETag last read; '
            "the version is never sent in a body."
        )},
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Error", schema=schemas.ErrorSchema)
    paths: dict[str, dict] = {}
    for route in routes:
        paths.setdefault(route.openapi_path, {})[route.method.lower()] = _operation(route)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return _portable(spec.to_dict())


def _portable(node, parameter: bool = False):
    """What apispec writes from the schemas, made valid for every OpenAPI
    tool: Python's end anchor ``\\Z`` becomes ``$`` (marshmallow matches from
    the start, so ``^`` is added), and a query parameter has no ``null``."""
    if isinstance(node, list):
        return [_portable(item, parameter) for item in node]
    if not isinstance(node, dict):
        return node
    is_parameter = node.get("in") in ("query", "path", "header")
    out = {}
    for key, value in node.items():
        if key == "pattern" and isinstance(value, str) and value.endswith("\\Z"):
            value = "^" + value[:-2].lstrip("^") + "$"
        if parameter and key in ("nullable",) or (parameter and key == "default" and value is None):
            continue
        out[key] = _portable(value, parameter or is_parameter)
    return out


@functools.lru_cache(maxsize=1)
def document_bytes() -> bytes:
    return json.dumps(document(), ensure_ascii=False, sort_keys=True).encode("utf-8")
