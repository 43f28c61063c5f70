"""The directory of local service providers a committee refers survivors to."""
from __future__ import annotations

from dataclasses import dataclass

# health post, Centro Emergencia Mujer, police, prosecutor, legal aid,
# psychosocial support, shelter (domain.md)
KINDS = ("health_post", "cem", "police", "prosecutor", "legal_aid", "psychosocial", "shelter", "other")


class InvalidProvider(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Provider:
    id: str
    organization_id: str
    name: str
    kind: str
    active: bool = True


def new_provider(provider_id: str, organization_id: str, name: str, kind: str) -> Provider:
    if kind not in KINDS:
        raise InvalidProvider("kind", f"one of {', '.join(KINDS)}")
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise InvalidProvider("name", "required, at most 200 characters")
    return Provider(provider_id, organization_id, name, kind)
