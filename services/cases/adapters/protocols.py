"""Protocol files: YAML validated by a schema, loaded into the domain's rules."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from contracts.events import ROLES as STEP_ROLES
from contracts.rpc import ROLES
from services.cases.domain.classification import IncidentType
from services.cases.domain.protocol import Due, DueKind, Protocol, StepRule

PROTOCOLS = Path(__file__).resolve().parent.parent / "protocols"
DEFAULT = ("smp-gbv", 1)
RISKS = ("low", "medium", "high")
CONSENTS = ("referral", "aggregate_reporting")


class DueSchema(Schema):
    class Meta:
        unknown = RAISE

    kind = fields.String(required=True, validate=validate.OneOf([k.value for k in DueKind]))
    hours = fields.Float(validate=validate.Range(min=0))
    by_risk = fields.Dict(keys=fields.String(validate=validate.OneOf(RISKS)), values=fields.Float(validate=validate.Range(min=0)))
    step = fields.String()
    late_hours = fields.Float(validate=validate.Range(min=0))

    @validates_schema
    def _complete(self, data, **kwargs):
        kind = data["kind"]
        if kind in ("after_opening", "after_step", "clinical") and ("hours" in data) == ("by_risk" in data):
            raise ValidationError("give either hours or by_risk")
        if "by_risk" in data and set(data["by_risk"]) != set(RISKS):
            raise ValidationError("by_risk needs low, medium and high", "by_risk")
        if kind in ("after_step", "clinical") and "step" not in data:
            raise ValidationError("name the step it counts from", "step")


class StepSchema(Schema):
    class Meta:
        unknown = RAISE

    id = fields.String(required=True, validate=validate.Regexp(r"^[A-Z][A-Z0-9]{0,7}$"))
    title = fields.Dict(keys=fields.String(validate=validate.OneOf(["es", "en"])), values=fields.String(), required=True)
    # the roles a step's alerts may name (contracts.events): a plan step is case work
    responsible = fields.List(fields.String(validate=validate.OneOf(STEP_ROLES)), required=True,
                              validate=validate.Length(min=1))
    due = fields.Nested(DueSchema, required=True)
    done_when = fields.String(required=True)
    types = fields.List(fields.String(validate=validate.OneOf([t.value for t in IncidentType])))
    minor_only = fields.Boolean(load_default=False)
    approver = fields.String(validate=validate.OneOf(ROLES))
    approver_if_high_risk = fields.String(validate=validate.OneOf(ROLES))
    consent = fields.String(validate=validate.OneOf(CONSENTS))


class ProtocolSchema(Schema):
    class Meta:
        unknown = RAISE

    id = fields.String(required=True, validate=validate.Regexp(r"^[a-z0-9-]+$"))
    version = fields.Integer(required=True, validate=validate.Range(min=1))
    steps = fields.List(fields.Nested(StepSchema), required=True, validate=validate.Length(min=1))

    @validates_schema
    def _references(self, data, **kwargs):
        seen: set[str] = set()
        for step in data["steps"]:
            if step["id"] in seen:
                raise ValidationError(f"step {step['id']} appears twice", "steps")
            ref = step["due"].get("step")
            if ref is not None and ref not in seen:
                raise ValidationError(f"step {step['id']} counts from {ref}, which must come before it", "steps")
            seen.add(step["id"])
            if "es" not in step["title"]:
                raise ValidationError(f"step {step['id']} needs a Spanish title", "steps")


def parse(text: str) -> Protocol:
    data = ProtocolSchema().load(yaml.safe_load(text))
    return Protocol(
        id=data["id"],
        version=data["version"],
        steps=tuple(
            StepRule(
                id=s["id"],
                title=s["title"],
                responsible=tuple(s["responsible"]),
                due=Due(
                    kind=DueKind(s["due"]["kind"]),
                    hours=s["due"].get("hours"),
                    by_risk=s["due"].get("by_risk"),
                    step=s["due"].get("step"),
                    late_hours=s["due"].get("late_hours"),
                ),
                done_when=s["done_when"],
                types=frozenset(IncidentType(t) for t in s["types"]) if "types" in s else None,
                minor_only=s["minor_only"],
                approver=s.get("approver"),
                approver_if_high_risk=s.get("approver_if_high_risk"),
                consent=s.get("consent"),
            )
            for s in data["steps"]
        ),
    )


@lru_cache(maxsize=32)
def load(protocol_id: str, version: int) -> Protocol:
    path = PROTOCOLS / f"{protocol_id}.v{version}.yaml"
    if not path.is_file():
        raise KeyError(f"{protocol_id} v{version}")
    return parse(path.read_text(encoding="utf-8"))
