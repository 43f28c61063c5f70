"""The gateway: the HTTP API committee members use. It authenticates the
caller, then asks the services, which check access again themselves.

Its entrypoints are made from the route table (``services.gateway.routes``),
one per route, all through ``_dispatch``."""
from __future__ import annotations

import json
import uuid
from urllib.parse import urlencode

from servicekit.rpc import RpcProxy
from werkzeug.wrappers import Request, Response

from servicekit.callers import Callers
from servicekit.database import Database
from servicekit.telemetry import Telemetry
from services.gateway import acknowledge, identity, openapi, query, routes
from services.gateway.api import (
    HttpError, RpcUnavailable, ask_all, call, case_etag, content_etag, endpoint, if_match, read_json, route,
    unavailable_response,
)
from services.gateway.limits import RateLimit, address_key, token_key
from services.gateway.routes import ROUTES, Route
from services.identity.service_layer import people
from services.identity.service_layer.handlers import LoginRefused

READY_TIMEOUT_SECONDS = 2.0


class GatewayService:
    name = "gateway"

    db = Database()
    callers = Callers()
    telemetry = Telemetry()
    rate_limit = RateLimit()
    sms_replies = acknowledge.SmsReplies()
    access_log = acknowledge.HideLinkTokens()
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
        return self.callers.sign(principal.as_caller())

    def _dispatch(self, spec: Route, request: Request, path: dict) -> Response:
        """Every route of the table: the caller admitted (token, rate limit,
        role and scope), the input read, the service asked, the answer made."""
        principal = self._admit(spec, request)
        if spec.operation is None:
            return self._respond(spec, request, getattr(self, spec.present)(request))
        if spec.operation.startswith("identity."):
            return self._respond(spec, request, self._identity(spec, request, principal, path))
        caller = self._caller(principal)
        args: list = [caller, *(path[name] for name in spec.path_parameters)]
        if spec.query is not None:
            args.append(_query(request, spec))
        expected = if_match(request) if spec.edit else None
        if spec.body is not None:
            body = read_json(request)
            if spec.prepare:
                getattr(self, spec.prepare)(request, principal, body)
            args.append(body)
        if spec.edit:
            args.append(expected)
        service, method = spec.operation.split(".")
        result = call(getattr(getattr(self, service), method), *args)
        if spec.present:
            result = getattr(self, spec.present)(request, result, caller)
        return self._respond(spec, request, result)

    def _identity(self, spec: Route, request: Request, principal, path: dict):
        """A route identity answers, in this process, on its own database."""
        operation = getattr(people, spec.operation.split(".", 1)[1])
        args: list = [self.db.session] + ([] if principal is None else [principal])
        args += [path[name] for name in spec.path_parameters]
        expected = if_match(request) if spec.edit else None
        if spec.body is not None:
            args.append(read_json(request))
        if spec.public:  # the login: throttled per address too
            args.append(request.remote_addr or "unknown")
        if spec.edit:
            args.append(expected)
        try:
            result = operation(*args)
        except LoginRefused as err:
            if err.retry_after:
                raise HttpError(429, "too_many_attempts", "too many failed logins; try again later",
                                headers={"Retry-After": str(err.retry_after)}) from None
            raise HttpError(401, "invalid_credentials",
                            "the e-mail address or the password is wrong, or the account is not active") from None
        finally:
            self.db.close()
        schema = spec.output() if isinstance(spec.output, type) else spec.output
        return schema.dump(result)

    def _admit(self, spec: Route, request: Request) -> identity.Principal | None:
        if spec.public:
            self._limit(address_key(request.remote_addr))
            return None
        try:
            principal = self._principal(request)
        except HttpError as err:
            if err.status == 401:  # guesses are counted against the address they come from
                self._limit(address_key(request.remote_addr))
            raise
        self._limit(token_key(request.headers.get("Authorization", "")))
        try:
            routes.authorize(spec, principal.roles, principal.scope)
        except routes.Refused as err:
            raise HttpError(403, "forbidden", str(err)) from None
        return principal

    def _limit(self, key: str) -> None:
        wait = self.rate_limit.take(key)
        if wait:
            raise HttpError(429, "too_many_requests", f"too many requests; try again in {wait} s",
                            headers={"Retry-After": str(wait)})

    def _respond(self, spec: Route, request: Request, result) -> Response:
        if isinstance(result, Response):
            return result
        body, headers = result if isinstance(result, tuple) else (result, {})
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        if spec.version_of and isinstance(body, dict) and isinstance(body.get(spec.version_of), int):
            headers["ETag"] = case_etag(body[spec.version_of])
        elif spec.method == "GET":
            headers["ETag"] = content_etag(data)
        if spec.name == "open_case":
            headers["Location"] = f"/api/v1/cases/{body['id']}"
        return Response(data, status=spec.status, headers=headers, content_type="application/json; charset=utf-8")

    # -- what the gateway checks or adds itself, named by the route table ------
    def _health(self, request: Request):
        return {"status": "ok"}

    def _ready(self, request: Request):
        """Whether every service answers: for readiness probes and for
        ``warmi run`` to say when Warmi is up. ``/health`` only says the
        gateway itself is alive."""
        answered = ask_all(
            {name: getattr(self, name).health for name in ("cases", "notifications", "referrals")},
            timeout=READY_TIMEOUT_SECONDS,
        )
        if all(answered.values()):
            return {"status": "ok", "services": {name: "ok" for name in answered}}
        silent = {name: ["did not answer"] for name, ok in answered.items() if not ok}
        return unavailable_response("not every service answers", silent)

    def _openapi(self, request: Request):
        data = openapi.document_bytes()
        return Response(data, status=200, headers={"ETag": content_etag(data)},
                        content_type="application/json; charset=utf-8")

    def _check_new_case(self, request: Request, principal: identity.Principal, body: dict) -> None:
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

    def _check_case_lead(self, request: Request, principal: identity.Principal, body: dict) -> None:
        lead = body.get("case_lead_id")
        if isinstance(lead, str) and _is_uuid(lead):
            ok = identity.member_with_role(self.db.session, principal.organization_id, lead, "case_lead")
            self.db.close()
            if not ok:
                raise HttpError(422, "invalid_input", "not a case lead of your organisation",
                                {"case_lead_id": ["not a case lead of your organisation"]})

    def _check_member(self, request: Request, principal: identity.Principal, body: dict) -> None:
        user = body.get("user_id")
        if isinstance(user, str) and _is_uuid(user):
            ok = identity.member(self.db.session, principal.organization_id, user)
            self.db.close()
            if not ok:
                raise HttpError(422, "invalid_input", "not a member of your organisation",
                                {"user_id": ["not a member of your organisation"]})

    def _page(self, request: Request, result: dict, caller: dict):
        """A page of cases with the link to the next one (none on the last):
        in the body and as a ``Link`` header."""
        links, headers = {}, {}
        if result["page"] * result["per_page"] < result["total"]:
            params = [(k, v) for k, v in request.args.items(multi=True) if k not in ("page", "per_page")]
            params += [("page", str(result["page"] + 1)), ("per_page", str(result["per_page"]))]
            links["next"] = f"{request.path}?{urlencode(params)}"
            headers["Link"] = f'<{links["next"]}>; rel="next"'
        return {**result, "links": links}, headers

    def _with_notifications(self, request: Request, case: dict, caller: dict):
        try:
            case["notifications"] = call(self.notifications.case_notifications, caller, case["id"], timeout=3)
        except RpcUnavailable:
            # the case is there; only the delivery state cannot be told right now
            case["notifications"] = {"status": "unknown", "deliveries": []}
        return case

    def _providers(self, request: Request, providers: list, caller: dict):
        return {"items": providers}

    def _statistics(self, request: Request, result: dict, caller: dict):
        if request.args.get("format") == "csv":
            data = result["csv"].encode("utf-8")
            return Response(data, status=200, content_type="text/csv; charset=utf-8", headers={
                "Content-Disposition": 'attachment; filename="warmi-statistics.csv"', "ETag": content_etag(data)})
        return result["figures"]

    # -- outside the route table: the acknowledgement page and the SMS provider's
    # replies (services/gateway/acknowledge.py); not JSON, not in the API document
    @route("GET", acknowledge.PAGE)
    def acknowledgement_page(self, request: Request, token: str) -> Response:
        """What an acknowledgement link is about, and its button; never acknowledges."""
        return acknowledge.page(request, token, self.notifications.acknowledgement, self.rate_limit)

    @route("POST", acknowledge.PAGE)
    def acknowledgement_tap(self, request: Request, token: str) -> Response:
        """The button of an acknowledgement link: acknowledged once."""
        return acknowledge.tap(request, token, self.notifications.acknowledge, self.rate_limit)

    @route("GET", acknowledge.ASSET)
    def acknowledgement_asset(self, request: Request, name: str) -> Response:
        return acknowledge.asset(name)

    @route("POST", acknowledge.INBOUND_SMS)
    @endpoint
    def inbound_sms(self, request: Request) -> Response:
        """A reply to an SMS, forwarded and signed by the SMS provider."""
        return acknowledge.inbound_sms(request, self.sms_replies, self.notifications.sms_reply)


def _entrypoint(spec: Route):
    def handle(self, request: Request, **path) -> Response:
        return self._dispatch(spec, request, path)

    handle.__name__ = handle.__qualname__ = spec.name
    handle.__doc__ = spec.summary
    return route(spec.method, spec.path)(endpoint(handle))


for _spec in ROUTES:
    setattr(GatewayService, _spec.name, _entrypoint(_spec))


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _query(request: Request, spec: Route) -> dict:
    """The query string in the types of the route's schema; the service's
    schema then checks names and values."""
    extra = {p["name"]: p for p in spec.query_extra}
    for name, parameter in extra.items():
        value = request.args.get(name)
        if value is not None and value not in parameter["schema"]["enum"]:
            choices = ", ".join(parameter["schema"]["enum"])
            raise HttpError(422, "invalid_input", "some query parameters are not valid",
                            {name: [f"Must be one of: {choices}."]})
    try:
        return query.parameters(request.args, **query.kinds(spec.query), drop=tuple(extra))
    except query.BadQuery as err:
        raise HttpError(422, "invalid_input", str(err), err.fields) from None
