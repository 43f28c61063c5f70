"""E-mail through SMTP. ``SMTP_URL``: smtp://[user:password@]host:port, or
smtps:// for TLS from the first byte; ``?starttls=1`` upgrades a plain one.

What holds:

- **One message, built once, sent as bytes.** ``build_message`` writes the
  headers and the quoted-printable parts itself (no ``EmailMessage``, no
  re-parsing by ``send_message``): text/plain alone, or, when the message has
  an HTML part, multipart/alternative with text/plain first and text/html
  second (a reader shows the last part it can). Its ``Message-ID`` is derived
  from the delivery's key, so a repeat of one delivery carries the same id and
  a receiving system can drop it. A sender, address or subject holding a line
  break is refused (``ValueError`` when building, ``PermanentRejection`` from
  ``send``): no header can be injected.
- **Two kinds of failure** (``base``). The server refused the recipient or
  the message for good (5xx): ``PermanentRejection`` with the SMTP code. It
  refused for now (4xx), refused the sender (the installation's to fix), or
  the connection failed or timed out: ``TransientFailure`` with the SMTP code
  or the exception's class name.
- **Connections are reused.** The workers of a container share one sender and
  its ``ConnectionPool``: a send takes an open connection (or opens one),
  sends, and gives it back. STARTTLS, TLS and login happen once per
  connection. A connection that failed is closed and never given back; one
  whose message the server refused (4xx/5xx, after which ``sendmail`` has
  sent ``RSET``) is given back. A connection idle for longer than
  ``IDLE_SECONDS`` is closed rather than used.
- **A server that hung up on an idle connection is not a failed delivery.** If
  a reused connection turns out closed before the message was handed over (the
  server disconnected, or answered 421, before ``DATA``), the send is tried
  once more at once on a fresh connection. Any other error is raised: the
  caller records the delivery as failed and the event is tried again later.
  A connection lost after ``DATA`` is never retried here, as the server may
  have accepted the message.
"""
from __future__ import annotations

import binascii
import smtplib
import threading
import time
import uuid
from email.header import Header
from email.utils import formataddr, formatdate, parseaddr
from typing import Callable
from urllib.parse import parse_qs, unquote, urlparse

from services.notifications.adapters.channels.base import Outgoing, PermanentRejection, Receipt, TransientFailure

SMTP_TIMEOUT = 10.0
QUIT_TIMEOUT = 1.0
IDLE_SECONDS = 30.0  # servers drop idle clients (often after 60 s or more); close ours first
MAX_LINE = 998  # bytes of a line, without CRLF (RFC 5322)


# -- the message ----------------------------------------------------------------

def message_id(key: str) -> str:
    """Stable per delivery, so a receiving system can drop a rare repeat."""
    return f"<{uuid.uuid5(uuid.NAMESPACE_URL, key)}@warmi>"


def build_message(from_header: str, to: str, message: Outgoing, *, key: str, date: str | None = None) -> bytes:
    """The whole message, CRLF line ends, ready for ``sendmail``: UTF-8
    parts, each quoted-printable unless it is short-lined ASCII, and a
    subject encoded per RFC 2047 when it is not plain ASCII. One text/plain
    part, or multipart/alternative (text/plain, then text/html) when
    ``message.html`` is set. Raises ``LineBreak`` (a ``ValueError``) when a
    header value holds CR or LF."""
    for name, value in (("sender", from_header), ("address", to), ("subject", message.subject)):
        refuse_line_breaks(name, value)
    head = (
        f"From: {from_header}\r\n"
        f"To: {to}\r\n"
        f"Subject: {encode_subject(message.subject)}\r\n"
        f"Date: {date or formatdate(localtime=False)}\r\n"
        f"Message-ID: {message_id(key)}\r\n"
        "MIME-Version: 1.0\r\n"
    ).encode("utf-8")
    if message.html is None:
        return head + part("plain", message.text)
    parts = [part("plain", message.text), part("html", message.html)]
    boundary = f"=_warmi_{uuid.uuid4().hex}"
    while any(boundary.encode() in p for p in parts):  # a 7bit part could hold anything ("=_" is not quoted-printable)
        boundary = f"=_warmi_{uuid.uuid4().hex}"
    delimiter = f"--{boundary}\r\n".encode()
    return (
        head
        + f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode()
        + b"".join(delimiter + p + b"\r\n" for p in parts)
        + f"--{boundary}--\r\n".encode()
    )


def part(subtype: str, content: str) -> bytes:
    """A text/``subtype`` entity: its two content headers, a blank line and
    the encoded content."""
    data, transfer_encoding = encode_body(content)
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {transfer_encoding}\r\n"
        "\r\n"
    ).encode() + data


class LineBreak(ValueError):
    """A header value held a line break; ``field`` names which."""

    def __init__(self, field: str):
        super().__init__(f"the {field} of an e-mail may not hold a line break")
        self.field = field


def refuse_line_breaks(name: str, value: str) -> None:
    """A header value must stay on its line. The message names the field
    only: a subject carries a survivor code, which no log may show."""
    if "\r" in value or "\n" in value:
        raise LineBreak(name)


def encode_subject(subject: str) -> str:
    """Plain ASCII as it is; anything else (accents, or text that would read
    as an encoded word) as RFC 2047 encoded words, folded."""
    if subject.isascii() and "=?" not in subject and len(subject) <= 900:
        return subject
    return Header(subject, "utf-8", header_name="Subject").encode(linesep="\r\n")


def encode_body(body: str) -> tuple[bytes, str]:
    """The body with CRLF line ends and its Content-Transfer-Encoding: 7bit
    for ASCII text whose lines are short enough, else quoted-printable
    (every line then under 77 bytes)."""
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    if text.isascii() and max(map(len, text.split("\n"))) <= MAX_LINE:
        data, encoding = text.encode("ascii"), "7bit"
    else:
        data, encoding = binascii.b2a_qp(text.encode("utf-8"), istext=True), "quoted-printable"
    return data.replace(b"\n", b"\r\n"), encoding


# -- connections ----------------------------------------------------------------

class _TracksHandover:
    """Knows whether the current message was handed over (``DATA`` sent):
    before that, a failure cannot have delivered anything."""

    handed_over = False

    def data(self, msg):
        self.handed_over = True
        return super().data(msg)


class _Smtp(_TracksHandover, smtplib.SMTP):
    pass


class _SmtpSsl(_TracksHandover, smtplib.SMTP_SSL):
    pass


def _close(connection: smtplib.SMTP) -> None:
    try:
        connection.close()
    except OSError:
        pass


class ConnectionPool:
    """Idle SMTP connections, last given back first taken (the warmest).

    A connection is with one worker at a time: taken, used, given back. At
    most ``size`` are kept idle (the container's workers); more are closed.
    A connection idle for longer than ``idle_seconds`` is closed when found,
    and so are all older ones below it. Nothing here blocks or does I/O
    under the lock, so greenthreads and threads alike may share the pool.
    """

    def __init__(self, size: int, idle_seconds: float = IDLE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.size = max(1, size)
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._idle: list[tuple[float, smtplib.SMTP]] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> smtplib.SMTP | None:
        """A connection idle for less than ``idle_seconds``, or None."""
        found, stale = None, []
        with self._lock:
            if self._idle:
                since, connection = self._idle.pop()
                if self.clock() - since <= self.idle_seconds:
                    found = connection
                else:  # the rest were given back earlier still
                    stale = [connection] + [c for _, c in self._idle]
                    self._idle.clear()
        for connection in stale:
            _close(connection)
        return found

    def give_back(self, connection: smtplib.SMTP) -> None:
        """Keep a connection that works; close it if the pool is full or closed."""
        with self._lock:
            if not self._closed and connection.sock is not None and len(self._idle) < self.size:
                self._idle.append((self.clock(), connection))
                return
        _close(connection)

    def idle(self) -> int:
        return len(self._idle)

    def close(self, *, polite: bool = True) -> None:
        """Close every idle connection (with QUIT when ``polite``) and keep
        none given back from now on."""
        with self._lock:
            self._closed = True
            connections = [c for _, c in self._idle]
            self._idle.clear()
        for connection in connections:
            if polite:
                try:
                    connection.sock.settimeout(QUIT_TIMEOUT)  # a stop never waits long on a silent server
                    connection.quit()
                    continue
                except (OSError, smtplib.SMTPException):
                    pass
            _close(connection)


class _ServerHungUp(Exception):
    """A reused connection was found closed before the message was handed over."""


def _hung_up_before_handover(connection: smtplib.SMTP, exc: BaseException) -> bool:
    if getattr(connection, "handed_over", True):
        return False
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code == 421:
        return True  # "closing connection", e.g. after an idle timeout
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return any(code == 421 for code, _ in exc.recipients.values())
    return isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException)


def _refused_but_usable(connection: smtplib.SMTP, exc: BaseException) -> bool:
    """The server refused this message and ``sendmail`` has sent RSET: the
    connection can carry the next one. A 421 means the server is closing."""
    if connection.sock is None:
        return False
    if isinstance(exc, (smtplib.SMTPSenderRefused, smtplib.SMTPDataError)):
        return exc.smtp_code != 421
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code != 421 for code, _ in exc.recipients.values())
    return False


class EmailSender:
    channel = "email"

    def __init__(self, smtp_url: str, sender: str, *, pool_size: int = 10, idle_seconds: float = IDLE_SECONDS):
        url = urlparse(smtp_url)
        if url.scheme not in ("smtp", "smtps"):
            raise ValueError("SMTP_URL must start with smtp:// or smtps://")
        self.tls = url.scheme == "smtps"
        self.starttls = parse_qs(url.query).get("starttls", ["0"])[0] in ("1", "true", "yes")
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (465 if self.tls else 25)
        self.username = unquote(url.username) if url.username else None
        self.password = unquote(url.password) if url.password else None
        refuse_line_breaks("sender", sender)
        name, address = parseaddr(sender)
        if not address:
            raise ValueError("MAIL_FROM must hold an e-mail address")
        self.sender = sender
        self.envelope_sender = address
        self.from_header = formataddr((name, address), charset="utf-8")
        self.pool = ConnectionPool(pool_size, idle_seconds)

    def send(self, address: str, message: Outgoing, *, key: str) -> Receipt:
        """Hand one message to the SMTP server; returns once the server
        accepted it. Raises ``PermanentRejection`` or ``TransientFailure``
        (see the module's docstring), with a code and no cause attached: an
        SMTP error's text repeats the address."""
        try:
            data = build_message(self.from_header, address, message, key=key)
        except LineBreak as refused:
            raise PermanentRejection("bad-address" if refused.field == "address" else "bad-header") from None
        try:
            self._send(address, data)
        except Exception as exc:
            raise failure(exc) from None
        return Receipt("250")

    def _send(self, address: str, data: bytes) -> None:
        connection = self.pool.take()
        if connection is not None:
            try:
                self._transmit(connection, address, data, reused=True)
                return
            except _ServerHungUp:
                pass  # closed while idle: not a failed delivery, try a fresh connection
        self._transmit(self._connect(), address, data, reused=False)

    def close(self, *, polite: bool = True) -> None:
        """Close the idle connections; the container is stopping."""
        self.pool.close(polite=polite)

    def _connect(self) -> smtplib.SMTP:
        """A new connection, with TLS and login done."""
        connection = (_SmtpSsl if self.tls else _Smtp)(self.host, self.port, timeout=SMTP_TIMEOUT)
        try:
            if self.starttls:
                connection.starttls()
            if self.username:
                connection.login(self.username, self.password or "")
            connection.ehlo_or_helo_if_needed()
        except BaseException:
            _close(connection)
            raise
        return connection

    def _transmit(self, connection: smtplib.SMTP, address: str, data: bytes, *, reused: bool) -> None:
        """One ``sendmail`` on ``connection``, which then goes back to the pool
        or, if it failed, is closed. Raises ``_ServerHungUp`` for a reused
        connection found closed before the message was handed over."""
        options = ()
        if not (address.isascii() and self.envelope_sender.isascii()):
            if not connection.has_extn("smtputf8"):
                self.pool.give_back(connection)
                raise smtplib.SMTPNotSupportedError("the SMTP server does not take non-ASCII addresses")
            options = ("SMTPUTF8",)
        connection.handed_over = False
        try:
            connection.sendmail(self.envelope_sender, [address], data, options)
        except BaseException as exc:
            if _refused_but_usable(connection, exc):
                self.pool.give_back(connection)
                raise
            _close(connection)
            if reused and _hung_up_before_handover(connection, exc):
                raise _ServerHungUp() from exc
            raise
        self.pool.give_back(connection)


def failure(exc: Exception) -> PermanentRejection | TransientFailure:
    """What a failed send means for the delivery. A 5xx refusal of the
    recipient (RCPT) or of the message (DATA) is final, and so is a server
    without SMTPUTF8 for a non-ASCII address. Anything else may pass later:
    a 4xx, a refused sender or login (the installation's to fix), a
    connection refused, lost or timed out."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code = min(code for code, _ in exc.recipients.values())  # one recipient a message
        return (PermanentRejection if 500 <= code < 600 else TransientFailure)(str(code))
    if isinstance(exc, smtplib.SMTPDataError):
        return (PermanentRejection if 500 <= exc.smtp_code < 600 else TransientFailure)(str(exc.smtp_code))
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentRejection("no-smtputf8")
    if isinstance(exc, smtplib.SMTPResponseException):
        return TransientFailure(str(exc.smtp_code))
    return TransientFailure(type(exc).__name__)
