"""A real SMTP server (aiosmtpd) for the tests, run as its own process.

Each accepted message is written to the folder given. Failures are injected
through files in that folder: ``fail_next`` holds how many messages to refuse
with a temporary error (451), ``fail_always`` refuses every message while it
exists.
"""
from __future__ import annotations

import sys
from pathlib import Path

from warmi.mailsink import FolderHandler, run_sink


class FlakyHandler(FolderHandler):
    async def handle_DATA(self, server, session, envelope):
        control = self.folder.parent
        if (control / "fail_always").exists():
            return "451 4.3.0 Mailbox temporarily unavailable"
        counter = control / "fail_next"
        if counter.exists():
            remaining = int(counter.read_text() or "0")
            if remaining > 0:
                counter.write_text(str(remaining - 1))
                return "451 4.3.0 Try again later"
        return await super().handle_DATA(server, session, envelope)


if __name__ == "__main__":
    folder, port = Path(sys.argv[1]), int(sys.argv[2])
    run_sink(folder, port=port, handler_cls=FlakyHandler)
