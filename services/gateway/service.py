"""The gateway: the HTTP API committee members use. It authenticates the
caller, then asks the services, which check access again themselves."""
from __future__ import annotations

import uuid

from servicekit.rpc import RpcProxy
from werkzeug.wrappers import Request, Response

from servicekit.database import Database
from servicekit.telemetry import Telemetry
from services.gateway import identity, query
from services.gateway.api import (
    HttpError, RpcUnavailable, ask_all, call, endpoint, json_response, read_json, route, unavailable_response,
)

CASE = "/api/v1/cases/<string:case_id>"
READY_TIMEOUT_SECONDS = 2.0


class GatewayService:
    name = "gateway"

    db = Database()
    telemetry = Telemetry()
    cases = RpcProxy("cases")
    notifications = RpcProxy("notifications")
    referrals = RpcProxy("referrals")

    def _principal(self, request: Request) -> identity.Principal:
        # one read outside a transaction; the connection goes back to the
        # pool before the request waits on other services
        with self.db.read() as connection:
            principal = identity.authenticate(connection, request.headers.get("Authorization"))
        if principal is None:
            raise HttpError(
                401, "unauthenticated", "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )
        return principal

    def _caller(self, principal: identity.Principal) -> dict:
        """The caller every RPC takes first, as the services check it."""
        return principal.as_caller()

    def _case_command(self, request: Request, method: str, *args, body: bool = True) -> Response:
        principal = self._principal(request)
        payload = [read_json(request)] if body else []
        return json_response(200, call(getattr(self.cases, method), self._caller(principal), *args, *payload))

    @route("GET", "/api/v1/health")
    @endpoint
    def health(self, request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    @route("GET", "/api/v1/ready")
    @endpoint
    def ready(self, request: Request) -> Response:
        """Whether every service answers: for readiness probes and for
        ``warmi run`` to say when Warmi is up. ``/health`` only says the
        gateway itself is alive."""
        answered = ask_all(
            {name: getattr(self, name).health for name in ("cases", "notifications", "referrals")},
            timeout=READY_TIMEOUT_SECONDS,
        )
        if all(answered.values()):
            return json_response(200, {"status": "ok", "services": {name: "ok" for name in answered}})
        silent = {name: ["did not answer"] for name, ok in answered.items() if not ok}
        return unavailable_response("not every service answers", silent)

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
        case = call(self.cases.open_case, self._caller(principal), body)
        return json_response(201, case, {"Location": f"/api/v1/cases/{case['id']}"})

    @route("GET", "/api/v1/cases")
    @endpoint
    def list_cases(self, request: Request) -> Response:
        principal = self._principal(request)
        filters = _query(request, integers=("page", "per_page"), booleans=("overdue",))
        return json_response(200, call(self.cases.list_cases, self._caller(principal), filters))

    @route("GET", CASE)
    @endpoint
    def get_case(self, request: Request, case_id: str) -> Response:
        principal = self._principal(request)
        caller = self._caller(principal)
        case = call(self.cases.get_case, caller, case_id)
        try:
            case["notifications"] = call(self.notifications.case_notifications, caller, case["id"], timeout=3)
        except RpcUnavailable:
            # the case is there; only the delivery state cannot be told right now
            case["notifications"] = {"status": "unknown", "deliveries": []}
        return json_response(200, case)

    @route("PATCH", CASE)
    @endpoint
    def update_case(self, request: Request, case_id: str) -> Response:
        return self._case_command(request, "update_case", case_id)

    @route("POST", CASE + "/classification")
    @endpoint
    def classify_case(self, request: Request, case_id: str) -> Response:
        return self._case_command(request, "classify_case", case_id)

    @route("POST", CASE + "/risk")
    @endpoint
    def set_risk(self, request: Request, case_id: str) -> Response:
        return self._case_command(request, "set_risk", case_id)

    @route("POST", CASE + "/case-lead")
    @endpoint
    def assign_case_lead(self, request: Request, case_id: str) -> Response:
        principal = self._principal(request)
        body = read_json(request)
        lead = body.get("case_lead_id")
        if isinstance(lead, str) and _is_uuid(lead):
            ok = identity.member_with_role(self.db.session, principal.organization_id, lead, "case_lead")
            self.db.close()
            if not ok:
                raise HttpError(422, "invalid_input", "not a case lead of your organisation",
                                {"case_lead_id": ["not a case lead of your organisation"]})
        return json_response(200, call(self.cases.assign_case_lead, self._caller(principal), case_id, body))

    @route("POST", CASE + "/exclusions")
    @endpoint
    def exclude_user(self, request: Request, case_id: str) -> Response:
        principal = self._principal(request)
        body = read_json(request)
        user = body.get("user_id")
        if isinstance(user, str) and _is_uuid(user):
            ok = identity.member(self.db.session, principal.organization_id, user)
            self.db.close()
            if not ok:
                raise HttpError(422, "invalid_input", "not a member of your organisation",
                                {"user_id": ["not a member of your organisation"]})
        return json_response(200, call(self.cases.exclude_user, self._caller(principal), case_id, body))

    @route("POST", CASE + "/consents")
    @endpoint
    def record_consent(self, request: Request, case_id: str) -> Response:
        principal = self._principal(request)
        body = read_json(request)
        return json_response(201, call(self.cases.record_consent, self._caller(principal), case_id, body))

    @route("POST", CASE + "/consents/<string:consent_id>/withdrawal")
    @endpoint
    def withdraw_consent(self, request: Request, case_id: str, consent_id: str) -> Response:
        return self._case_command(request, "withdraw_consent", case_id, consent_id, body=False)

    @route("POST", CASE + "/steps/<string:step_id>/completion")
    @endpoint
    def complete_step(self, request: Request, case_id: str, step_id: str) -> Response:
        return self._case_command(request, "complete_step", case_id, step_id)

    @route("POST", CASE + "/steps/<string:step_id>/approval")
    @endpoint
    def approve_step(self, request: Request, case_id: str, step_id: str) -> Response:
        return self._case_command(request, "approve_step", case_id, step_id, body=False)

    @route("POST", CASE + "/closure-approval")
    @endpoint
    def approve_closure(self, request: Request, case_id: str) -> Response:
        return self._case_command(request, "approve_closure", case_id, body=False)

    @route("POST", CASE + "/closure")
    @endpoint
    def close_case(self, request: Request, case_id: str) -> Response:
        return self._case_command(request, "close_case", case_id)

    @route("POST", CASE + "/reopening")
    @endpoint
    def reopen_case(self, request: Request, case_id: str) -> Response:
        return self._case_command(request, "reopen_case", case_id)

    @route("GET", CASE + "/audit")
    @endpoint
    def audit_trail(self, request: Request, case_id: str) -> Response:
        return self._case_command(request, "audit_trail", case_id, body=False)

    @route("GET", "/api/v1/providers")
    @endpoint
    def list_providers(self, request: Request) -> Response:
        principal = self._principal(request)
        return json_response(200, {"items": call(self.referrals.list_providers, self._caller(principal))})

    @route("GET", "/api/v1/statistics")
    @endpoint
    def statistics(self, request: Request) -> Response:
        principal = self._principal(request)
        filters = _query(request, drop=("format",))
        if request.args.get("format", "json") not in ("json", "csv"):
            raise HttpError(422, "invalid_input", "some query parameters are not valid",
                            {"format": ["Must be one of: json, csv."]})
        result = call(self.cases.statistics, self._caller(principal), filters)
        if request.args.get("format") == "csv":
            return Response(result["csv"], status=200, content_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": 'attachment; filename="warmi-statistics.csv"'})
        return json_response(200, result["figures"])


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _query(request: Request, **kinds) -> dict:
    try:
        return query.parameters(request.args, **kinds)
    except query.BadQuery as err:
        raise HttpError(422, "invalid_input", str(err), err.fields) from None
