"""The gateway: the HTTP API committee members use. It authenticates the
caller, then asks the services, which check access again themselves."""
from __future__ import annotations

import uuid

from nameko.rpc import RpcProxy
from werkzeug.wrappers import Request, Response

from servicekit.database import Database
from servicekit.telemetry import Telemetry
from services.gateway import identity
from services.gateway.api import HttpError, call, endpoint, json_response, read_json, route


class GatewayService:
    name = "gateway"

    db = Database()
    telemetry = Telemetry()
    cases = RpcProxy("cases")
    notifications = RpcProxy("notifications")

    def _principal(self, request: Request) -> identity.Principal:
        try:
            principal = identity.authenticate(self.db.session, request.headers.get("Authorization"))
        finally:
            self.db.close()  # hand the connection back before waiting on other services
        if principal is None:
            raise HttpError(
                401, "unauthenticated", "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )
        return principal

    @route("GET", "/api/v1/health")
    @endpoint
    def health(self, request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    @route("POST", "/api/v1/cases")
    @endpoint
    def open_case(self, request: Request) -> Response:
        principal = self._principal(request)
        body = read_json(request)
        if "idempotency_key" in body:
            raise HttpError(422, "invalid_input", "send the key as the Idempotency-Key header",
                            {"idempotency_key": ["unknown field"]})
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            body["idempotency_key"] = key
        org = body.get("organization_id")
        if isinstance(org, str) and org != principal.organization_id:
            # the service checks this too; the gateway answers without a round trip
            known = _is_uuid(org) and identity.organization_exists(self.db.session, org)
            self.db.close()
            if not known:
                raise HttpError(422, "invalid_input", "unknown organisation", {"organization_id": ["unknown organisation"]})
        case = call(self.cases.open_case, principal.as_caller(), body)
        return json_response(201, case, {"Location": f"/api/v1/cases/{case['id']}"})

    @route("GET", "/api/v1/cases/<string:case_id>")
    @endpoint
    def get_case(self, request: Request, case_id: str) -> Response:
        principal = self._principal(request)
        caller = principal.as_caller()
        case = call(self.cases.get_case, caller, case_id)
        case["notifications"] = call(self.notifications.case_notifications, caller, case["id"])
        return json_response(200, case)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
