"""The API's one route table.

Each route is declared once: method, path, what it takes (body, query),
what it answers, the roles that may call it, whether it writes, and the
service operation behind it. The gateway's entrypoints, its role and scope
check, its error mapping, the metrics' route label (the path template) and
the OpenAPI document (``services.gateway.openapi``) are all made from it.

The role check here is the first of two: the services check the caller
again against the case itself (``services/cases/domain/access.py``); the
roles below are the ones that rule can ever let through.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from marshmallow import Schema

from contracts import rpc as contract
from contracts.rpc import ROLES
from services.gateway import schemas
from services.identity.service_layer import people

# who works on cases; ``admin`` manages people and never sees a case, and
# ``programme`` and ``operator`` see aggregates only
SEES_CASES = frozenset({"focal_point", "case_lead", "president", "supervisor"})
EDITS_FACTS = frozenset({"case_lead", "president"})
CLOSES = frozenset({"case_lead", "president", "supervisor"})
ANY_MEMBER = frozenset(ROLES) - {"admin"}

V1 = "/api/v1"
CASE = V1 + "/cases/<string:case_id>"


@dataclass(frozen=True)
class Route:
    name: str  # the entrypoint's name and the document's operationId
    method: str
    path: str  # werkzeug's rule: the metrics' route label
    summary: str
    roles: frozenset | None  # None: no token needed
    operation: str | None = None  # "service.rpc_method"; None: answered by the gateway itself
    body: type[Schema] | None = None
    query: type[Schema] | None = None
    output: object = None  # a schema class or instance
    status: int = 200
    writes: bool = False  # a token of scope "read" may not call it
    edit: bool = False  # an edit of a case: takes If-Match, answers the case's new ETag
    version_of: str | None = None  # the answer's field holding the case version (its ETag)
    idempotency_key: bool = False
    prepare: str | None = None  # a gateway check of the body before the call (a method of the service)
    present: str | None = None  # shapes the service's answer (a method of the service)
    tags: tuple = ("cases",)
    extra_errors: tuple = ()
    query_extra: tuple = field(default=())  # OpenAPI parameters the query schema does not hold

    @property
    def path_parameters(self) -> tuple[str, ...]:
        return tuple(re.findall(r"<(?:[a-z]+:)?([a-z_]+)>", self.path))

    @property
    def openapi_path(self) -> str:
        return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", self.path)

    @property
    def public(self) -> bool:
        return self.roles is None

    def statuses(self) -> tuple[int, ...]:
        """Every status this route can answer besides its success."""
        found = {429}
        if not self.public:
            found |= {401, 403}
        if self.operation:
            found.add(503)
        if self.body is not None:
            found |= {400, 411, 413, 415, 422}
        if self.query is not None or self.query_extra:
            found.add(422)
        if self.path_parameters:
            found.add(404)
        if self.edit:
            found |= {409, 412, 422, 428}
        found |= set(self.extra_errors)
        return tuple(sorted(found))


def _edit(name, method, path, summary, roles, operation, body=None, output=contract.CaseViewSchema,
          version_of="version", **kw) -> Route:
    return Route(name, method, path, summary, roles, operation, body=body, output=output, writes=True, edit=True,
                 version_of=version_of, **kw)


STATISTICS_FORMAT = {
    "in": "query", "name": "format", "required": False,
    "schema": {"type": "string", "enum": ["json", "csv"], "default": "json"},
    "description": "json (the default) or csv",
}

ROUTES: tuple[Route, ...] = (
    Route("health", "GET", V1 + "/health", "Whether the gateway lives", None, output=schemas.HealthSchema,
          tags=("operations",), present="_health"),
    Route("ready", "GET", V1 + "/ready", "Whether every service answers", None, output=schemas.ReadySchema,
          tags=("operations",), extra_errors=(503,), present="_ready"),
    Route("openapi", "GET", V1 + "/openapi.json", "This document", None, tags=("operations",),
          present="_openapi"),
    Route("open_case", "POST", V1 + "/cases", "Open a case under a new survivor code",
          frozenset({"focal_point", "case_lead", "president"}), "cases.open_case", body=contract.OpenCaseSchema,
          output=contract.CaseViewSchema, status=201, writes=True, version_of="version", idempotency_key=True,
          prepare="_check_new_case", extra_errors=(409,)),
    Route("list_cases", "GET", V1 + "/cases", "The cases you may see, newest first", SEES_CASES,
          "cases.list_cases", query=contract.ListFilterSchema, output=schemas.CasePageSchema, present="_page"),
    Route("get_case", "GET", CASE, "A case with narrative, plan, consents, history and notification state",
          SEES_CASES, "cases.get_case", output=schemas.CaseDetailSchema, version_of="version",
          present="_with_notifications"),
    _edit("update_case", "PATCH", CASE, "Edit profile and incident facts", EDITS_FACTS, "cases.update_case",
          contract.UpdateCaseSchema),
    _edit("classify_case", "POST", CASE + "/classification", "Classify the incident (GBVIMS)", EDITS_FACTS,
          "cases.classify_case", contract.ClassifySchema),
    _edit("set_risk", "POST", CASE + "/risk", "Set the risk level", EDITS_FACTS, "cases.set_risk",
          contract.RiskSchema),
    _edit("assign_case_lead", "POST", CASE + "/case-lead", "Assign the case lead", frozenset({"president"}),
          "cases.assign_case_lead", contract.AssignLeadSchema, prepare="_check_case_lead"),
    _edit("exclude_user", "POST", CASE + "/exclusions", "Exclude a member with a conflict of interest",
          frozenset({"president"}), "cases.exclude_user", contract.ExcludeSchema, prepare="_check_member"),
    _edit("record_consent", "POST", CASE + "/consents", "Record consent for a purpose", EDITS_FACTS,
          "cases.record_consent", contract.ConsentSchema, output=schemas.ConsentRecordedSchema, status=201,
          version_of="case_version"),
    _edit("withdraw_consent", "POST", CASE + "/consents/<string:consent_id>/withdrawal", "Withdraw a consent",
          EDITS_FACTS, "cases.withdraw_consent", output=schemas.ConsentWithdrawnSchema, version_of="case_version"),
    _edit("complete_step", "POST", CASE + "/steps/<string:step_id>/completion", "Complete a step of the plan",
          frozenset({"focal_point", "case_lead", "president"}), "cases.complete_step", contract.CompleteStepSchema),
    _edit("approve_step", "POST", CASE + "/steps/<string:step_id>/approval", "Approve a step (the action plan)",
          frozenset({"supervisor"}), "cases.approve_step"),
    _edit("approve_closure", "POST", CASE + "/closure-approval", "Approve closing a high-risk case",
          frozenset({"supervisor"}), "cases.approve_closure"),
    _edit("close_case", "POST", CASE + "/closure", "Close the case", CLOSES, "cases.close_case",
          contract.CloseSchema),
    _edit("reopen_case", "POST", CASE + "/reopening", "Reopen a closed case", CLOSES, "cases.reopen_case",
          contract.ReopenSchema),
    Route("audit_trail", "GET", CASE + "/audit", "Who read or changed what, when",
          frozenset({"president", "supervisor"}), "cases.audit_trail", output=schemas.AuditEntrySchema(many=True)),
    Route("list_providers", "GET", V1 + "/providers", "The organisation's provider directory", SEES_CASES,
          "referrals.list_providers", output=schemas.ProvidersSchema, tags=("referrals",),
          present="_providers"),
    Route("statistics", "GET", V1 + "/statistics", "Anonymous counts from cases with reporting consent",
          frozenset({"president", "supervisor", "programme"}), "cases.statistics",
          query=contract.StatisticsFilterSchema, output=schemas.StatisticsSchema, tags=("statistics",),
          present="_statistics", query_extra=(STATISTICS_FORMAT,)),
)

# identity's own routes: answered in the gateway's process by identity's code
# (services/identity/service_layer/people.py), which checks the principal again
PERSON = V1 + "/people/<string:person_id>"
EVERYONE = frozenset(ROLES)
ROUTES += (
    Route("login", "POST", V1 + "/sessions", "Log in to the console: a read-write token for 12 hours", None,
          "identity.login", body=people.LoginSchema, output=people.SessionSchema, status=201, tags=("identity",),
          extra_errors=(401,)),
    Route("me", "GET", V1 + "/me", "Who you are: your roles, language and your token's scope", EVERYONE,
          "identity.me", output=people.MeSchema, tags=("identity",)),
    Route("my_tokens", "GET", V1 + "/me/tokens", "Your tokens: scope, expiry, last use (never a secret)",
          EVERYONE, "identity.my_tokens", output=people.TokensSchema, tags=("identity",)),
    Route("issue_my_token", "POST", V1 + "/me/tokens", "A new token of yours (its secret shown once)", EVERYONE,
          "identity.issue_my_token", body=people.NewTokenSchema, output=people.IssuedTokenSchema, status=201,
          tags=("identity",)),
    Route("revoke_my_token", "DELETE", V1 + "/me/tokens/<string:token_id>", "Revoke one of your tokens",
          EVERYONE, "identity.revoke_my_token", output=people.TokenViewSchema, tags=("identity",)),
    Route("my_notification_settings", "GET", V1 + "/me/notification-settings",
          "Your notification settings: WhatsApp opt-in, quiet hours, digest, channels per kind", EVERYONE,
          "identity.my_notification_settings", output=people.NotificationSettingsViewSchema, version_of="revision",
          tags=("identity",)),
    _edit("set_my_notification_settings", "PUT", V1 + "/me/notification-settings",
          "Replace your notification settings", EVERYONE, "identity.set_my_notification_settings",
          people.NotificationSettingsSchema, output=people.NotificationSettingsViewSchema, version_of="revision",
          tags=("identity",)),
    Route("list_people", "GET", V1 + "/people", "The people of your organisation", frozenset({"admin", "president"}),
          "identity.list_people", output=people.PeopleSchema, tags=("identity",)),
    Route("add_person", "POST", V1 + "/people", "Add a person to your organisation", frozenset({"admin"}),
          "identity.add_person", body=people.NewPersonSchema, output=people.PersonViewSchema, status=201,
          writes=True, version_of="revision", tags=("identity",), extra_errors=(409,)),
    Route("get_person", "GET", PERSON, "A person of your organisation", frozenset({"admin", "president"}),
          "identity.get_person", output=people.PersonViewSchema, version_of="revision", tags=("identity",)),
    _edit("change_person", "PATCH", PERSON, "Change a person's name, contact points or language",
          frozenset({"admin"}), "identity.change_person", people.PersonChangeSchema, output=people.PersonViewSchema,
          version_of="revision", tags=("identity",)),
    _edit("set_roles", "PUT", PERSON + "/roles", "Set a person's roles", frozenset({"admin"}), "identity.set_roles",
          people.RolesSchema, output=people.PersonViewSchema, version_of="revision", tags=("identity",)),
    _edit("deactivate_person", "POST", PERSON + "/deactivation",
          "Deactivate a person: she cannot log in, every token she holds stops working", frozenset({"admin"}),
          "identity.deactivate", output=people.PersonViewSchema, version_of="revision", tags=("identity",)),
)

BY_NAME = {r.name: r for r in ROUTES}


class Refused(Exception):
    """The caller may not call this route (403), before any service is asked."""


def authorize(route: Route, roles, scope: str) -> None:
    """The gateway's check: one of the route's roles, and a token that may
    write for a route that writes."""
    if route.public:
        return
    if not route.roles & set(roles):
        raise Refused("your role does not allow this")
    if route.writes and scope != "read_write":
        raise Refused("this token may only read")
