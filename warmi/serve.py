"""``warmi serve SERVICE``: one service in this process, under eventlet."""
from __future__ import annotations

import eventlet

eventlet.monkey_patch()  # before anything opens a socket  # noqa: E402

import logging  # noqa: E402

from servicekit import logs  # noqa: E402
from servicekit.config import load_config  # noqa: E402
from warmi.registry import process_classes  # noqa: E402


def serve(name: str) -> None:
    config = load_config(name)
    logs.configure(str(config.get("LOG_LEVEL") or "INFO"))
    from nameko.cli.run import run

    logging.getLogger(__name__).info("starting", extra={"service": name})
    run(process_classes(name), config)
