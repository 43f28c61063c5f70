"""A local SMTP server that keeps every message as a file, for running Warmi
on one machine without a real mail server."""
from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

from aiosmtpd.controller import Controller


class FolderHandler:
    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server, session, envelope):
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
        tmp = self.folder / (name + ".part")
        tmp.write_bytes(envelope.original_content or envelope.content)
        tmp.rename(self.folder / name)  # readers never see half a message
        return "250 Message accepted for delivery"


def run_sink(folder: Path, host: str = "127.0.0.1", port: int = 8025, handler_cls=FolderHandler) -> None:
    controller = Controller(handler_cls(folder), hostname=host, port=port)
    controller.start()
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"mail sink on {host}:{port}, writing to {folder}", flush=True)
    try:
        loop.run_until_complete(stop.wait())
    finally:
        controller.stop()
        loop.close()
