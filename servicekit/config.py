"""Configuration: one ``config.yaml`` per service, ``${VAR:default}`` substitution
(nameko's convention), and the rules that turn it into database URLs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import make_url

SERVICES_DIR = Path(__file__).resolve().parent.parent / "services"


def _install_env_var_parser() -> None:
    from nameko.cli.main import setup_yaml_parser

    setup_yaml_parser()


def load_config(service: str) -> dict[str, Any]:
    """Read ``services/<service>/config.yaml`` with environment substitution."""
    _install_env_var_parser()
    path = SERVICES_DIR / service / "config.yaml"
    with open(path) as fh:
        return yaml.safe_load(fh) or {}


def home() -> Path:
    """Where a local installation keeps its SQLite files, mail and keys."""
    path = Path(os.environ.get("WARMI_HOME") or "var").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


# the gateway keeps no data of its own: it hosts identity, and uses its database
_DATABASE_OF = {"gateway": "identity"}


def database_url(service: str, environ: dict | None = None) -> str:
    """The database a service owns.

    ``<SERVICE>_DATABASE_URL`` wins; otherwise ``DATABASE_URL`` names a server
    and the service gets its own database on it, ``<name>_<service>``;
    otherwise a SQLite file per service under ``WARMI_HOME``.
    """
    env = os.environ if environ is None else environ
    service = _DATABASE_OF.get(service, service)
    own = env.get(f"{service.upper()}_DATABASE_URL")
    if own:
        return own
    shared = env.get("DATABASE_URL")
    if shared:
        url = make_url(shared)
        if url.get_backend_name() == "sqlite":
            db = url.database or "warmi.db"
            stem = db[:-3] if db.endswith(".db") else db
            return url.set(database=f"{stem}_{service}.db").render_as_string(hide_password=False)
        base = url.database or "warmi"
        return url.set(database=f"{base}_{service}").render_as_string(hide_password=False)
    return f"sqlite:///{home() / (service + '.db')}"
