"""Notification texts, Spanish first, English second (Jinja2 files).

A template's first line is the subject. Templates receive ids, codes and links
only: nothing they could print says anything about a survivor."""
from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound

from services.notifications.domain.model import Message

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
FALLBACK_LOCALE = "es"


class Renderer:
    def __init__(self, directory: Path = TEMPLATES):
        self.env = Environment(
            loader=FileSystemLoader(str(directory)), undefined=StrictUndefined, autoescape=False,
            keep_trailing_newline=True,
        )

    def render(self, name: str, locale: str, **values) -> Message:
        try:
            template = self.env.get_template(f"{name}.{locale}.txt.j2")
        except TemplateNotFound:
            template = self.env.get_template(f"{name}.{FALLBACK_LOCALE}.txt.j2")
        subject, _, body = template.render(**values).partition("\n")
        return Message(subject=subject.strip(), body=body.lstrip("\n"))
