"""The e-mail channel against real SMTP servers: messages built by hand read
back as the ``email`` package reads them (text alone, or text and HTML), open
connections reused, replaced when the server hung up, and dropped after an
error, and each failure told apart as permanent or transient."""
import email
import email.policy
from dataclasses import replace
import socket
import subprocess
import sys
import textwrap
import uuid

import eventlet
import pytest

from services.notifications.adapters.channels.base import Outgoing, PermanentRejection, Receipt, TransientFailure
from services.notifications.adapters.channels.email import EmailSender, build_message
from tests.conftest import ROOT, free_port, wait_until

FROM = "Warmi <warmi@test.invalid>"
TO = "presidenta@cec.test.invalid"
LINK = "https://warmi.test.invalid/console/cases/1"
TEXTS = {
    "en": ("[Warmi] New case CEC-2026-0001",
           "A new case was logged with the committee: CEC-2026-0001.\n\nOpen it in the console:\n" + LINK + "\n"),
    "es": ("[Warmi] Nuevo caso CEC-2026-0001",
           "Se registró un nuevo caso en el comité: CEC-2026-0001.\n\nÁbralo en la consola:\n" + LINK + "\n"),
}


def rendered(locale: str) -> Outgoing:
    subject, text = TEXTS[locale]
    return Outgoing("email", subject, text, kind="case_opened", case_code="CEC-2026-0001", link=LINK)


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def body_of(parsed) -> str:
    return parsed.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")


# -- the message ---------------------------------------------------------------

def spanish() -> Outgoing:
    """The Spanish text, with an accent in the subject as well."""
    return replace(rendered("es"), subject=f"{rendered('es').subject}: atención")


@pytest.mark.parametrize("language", ["english", "spanish"])
def test_a_message_reads_back_as_rendered_with_every_header(language):
    message = rendered("en") if language == "english" else spanish()
    data = build_message(FROM, TO, message, key="event:user:email")

    parsed = parse(data)
    assert parsed["From"] == FROM
    assert parsed["To"] == TO
    assert parsed["Subject"] == message.subject
    assert parsed["Date"].datetime is not None
    assert parsed["Message-ID"] == f"<{uuid.uuid5(uuid.NAMESPACE_URL, 'event:user:email')}@warmi>"
    assert parsed["MIME-Version"] == "1.0"
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() == "utf-8"
    assert body_of(parsed) == message.text
    assert data.isascii()  # accents travel encoded: any server takes the message
    assert all(len(line) < 998 for line in data.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    if language == "spanish":
        assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
        assert "=?utf-8?" in data.decode()  # the subject's accent, RFC 2047
    else:
        assert f"Subject: {message.subject}\r\n".encode() in data


def test_a_long_accented_subject_and_a_long_line_fold_and_read_back():
    message = Outgoing("email", "Nuevo caso — señal " * 12, "ñ" * 3000 + "\n.\n.una línea con punto\n")
    data = build_message(FROM, TO, message, key="k")

    parsed = parse(data)
    assert parsed["Subject"] == message.subject
    assert body_of(parsed) == message.text
    assert max(len(line) for line in data.split(b"\r\n")) <= 78


HTML = ('<p>Se registró un nuevo caso: <a href="https://warmi.test.invalid/console/cases/1">CEC-2026-0001</a>'
        "</p>\n<p>" + "Ábralo en la consola. " * 60 + "</p>\n")


def parts_of(parsed) -> list:
    return [(p.get_content_type(), p.get_content_charset(), p.get_content().replace("\r\n", "\n"))
            for p in parsed.iter_parts()]


@pytest.mark.parametrize("text, html", [
    (TEXTS["es"][1], HTML),
    (TEXTS["en"][1], "<p>A new case: CEC-2026-0001</p>\n"),
    ("sin salto final", "<p>sin salto final</p>"),
    ("--=_warmi_ a line that looks like a boundary\n", "<p>--=_warmi_</p>"),
])
def test_with_html_the_message_is_its_text_then_its_html_as_alternatives(text, html):
    message = replace(rendered("es"), text=text, html=html)
    data = build_message(FROM, TO, message, key="event:user:email")

    parsed = parse(data)
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed["Subject"] == message.subject and parsed["To"] == TO
    assert parsed["Message-ID"] == f"<{uuid.uuid5(uuid.NAMESPACE_URL, 'event:user:email')}@warmi>"
    assert parts_of(parsed) == [("text/plain", "utf-8", text), ("text/html", "utf-8", html)]
    assert parsed.get_body(preferencelist=("html", "plain")).get_content_type() == "text/html"
    assert not parsed.defects and not any(p.defects for p in parsed.iter_parts())
    assert data.isascii()
    assert all(len(line) < 998 for line in data.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_without_html_the_message_is_its_text_alone():
    parsed = parse(build_message(FROM, TO, rendered("es"), key="k"))
    assert parsed.get_content_type() == "text/plain" and not parsed.is_multipart()


def test_the_message_id_is_the_same_for_a_repeat_of_one_delivery():
    first = parse(build_message(FROM, TO, rendered("es"), key="e1:u1:email"))
    again = parse(build_message(FROM, TO, rendered("es"), key="e1:u1:email"))
    other = parse(build_message(FROM, TO, rendered("es"), key="e1:u2:email"))
    assert first["Message-ID"] == again["Message-ID"] != other["Message-ID"]


@pytest.mark.parametrize("field", ["address", "subject"])
@pytest.mark.parametrize("breaker", ["\r\n", "\n", "\r"])
def test_a_line_break_in_a_header_is_refused(field, breaker):
    injected = f"x{breaker}Bcc: everyone@test.invalid"
    address = injected if field == "address" else TO
    message = Outgoing("email", injected if field == "subject" else "[Warmi] ok", "hola\n")
    sender = EmailSender("smtp://127.0.0.1:9", FROM)  # nothing listens: it must fail before connecting

    with pytest.raises(PermanentRejection) as refused:
        sender.send(address, message, key="k")
    assert refused.value.code == ("bad-address" if field == "address" else "bad-header")
    assert "Bcc" not in str(refused.value)  # the error never repeats the value
    with pytest.raises(ValueError):
        build_message(FROM, address, message, key="k")


@pytest.mark.parametrize("breaker", ["\r\n", "\n", "\r"])
def test_a_line_break_in_the_sender_is_refused(breaker):
    with pytest.raises(ValueError):
        EmailSender("smtp://127.0.0.1:9", f"Warmi <warmi@test.invalid>{breaker}Bcc: x@test.invalid")


def test_an_accented_sender_name_is_encoded():
    sender = EmailSender("smtp://127.0.0.1:9", "Comité Warmi <warmi@test.invalid>")
    parsed = parse(build_message(sender.from_header, TO, rendered("es"), key="k"))
    assert parsed["From"].addresses[0].display_name == "Comité Warmi"
    assert sender.envelope_sender == "warmi@test.invalid"


# -- connections -----------------------------------------------------------------

SERVER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from aiosmtpd.controller import Controller
    from warmi.mailsink import FolderHandler

    folder, port, timeout = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    logins = folder.parent / "logins"

    def authenticator(server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult
        with logins.open("a") as f:
            f.write("login\\n")
        return AuthResult(success=auth_data.login == b"warmi" and auth_data.password == b"s3cret")

    controller = Controller(FolderHandler(folder), hostname="127.0.0.1", port=port, timeout=timeout,
                            authenticator=authenticator, auth_require_tls=False)
    controller.start()
    print("ready", flush=True)
    try:
        asyncio.new_event_loop().run_until_complete(asyncio.Event().wait())
    finally:
        controller.stop()
""")


class Server:
    """An aiosmtpd process that hangs up on a client idle for ``timeout``
    seconds and counts logins; it can be restarted on the same port."""

    def __init__(self, folder, timeout=300.0, port=None):
        self.folder, self.timeout = folder, timeout
        self.mail = folder / "mail"
        self.mail.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(self.mail), str(self.port), str(timeout)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self.process.stdout.readline()

    def messages(self):
        return [parse(p.read_bytes()) for p in sorted(self.mail.glob("*.eml"))]

    def logins(self) -> int:
        path = self.folder / "logins"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def server(tmp_path):
    made = Server(tmp_path / "server")
    yield made
    made.stop()


def idle_connection(sender):
    assert sender.pool.idle() == 1
    connection = sender.pool._idle[-1][1]
    return connection, connection.sock.getsockname()


def test_one_connection_carries_many_messages_and_logs_in_once(server):
    sender = EmailSender(f"smtp://warmi:s3cret@127.0.0.1:{server.port}", FROM)
    assert sender.send(TO, spanish(), key="e1:u:email") == Receipt("250")
    first, port = idle_connection(sender)

    for n in range(2, 6):
        sender.send(TO, rendered("en"), key=f"e{n}:u:email")

    assert idle_connection(sender) == (first, port)
    assert len(server.messages()) == 5
    assert server.logins() == 1
    received = [m for m in server.messages() if "atención" in m["Subject"]]
    assert [m["Subject"] for m in received] == [spanish().subject]
    assert body_of(received[0]) == spanish().text
    sender.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_message_goes_out(tmp_path):
    server = Server(tmp_path / "server", timeout=0.3)
    try:
        sender = EmailSender(f"smtp://127.0.0.1:{server.port}", FROM)
        sender.send(TO, rendered("es"), key="e1:u:email")
        first, _ = idle_connection(sender)
        eventlet.sleep(0.8)  # the server hangs up; the pool still holds the connection

        sender.send(TO, rendered("es"), key="e2:u:email")

        replacement, _ = idle_connection(sender)
        assert replacement is not first and first.sock is None
        assert len(server.messages()) == 2
    finally:
        server.stop()


def test_a_restarted_server_is_reached_on_a_new_connection(server, tmp_path):
    sender = EmailSender(f"smtp://127.0.0.1:{server.port}", FROM)
    sender.send(TO, rendered("es"), key="e1:u:email")
    server.stop()
    restarted = Server(server.folder, port=server.port)
    try:
        sender.send(TO, rendered("es"), key="e2:u:email")
        assert len(restarted.messages()) == 2  # the same folder
        assert sender.pool.idle() == 1
    finally:
        restarted.stop()


def test_a_connection_idle_too_long_is_closed_before_use(server):
    sender = EmailSender(f"smtp://127.0.0.1:{server.port}", FROM, idle_seconds=0.1)
    sender.send(TO, rendered("es"), key="e1:u:email")
    first, _ = idle_connection(sender)
    eventlet.sleep(0.3)

    sender.send(TO, rendered("es"), key="e2:u:email")

    assert first.sock is None
    assert idle_connection(sender)[0] is not first
    assert len(server.messages()) == 2


def test_a_message_refused_for_now_is_a_transient_failure_and_the_connection_carries_the_next(smtp):
    sender = EmailSender(smtp.url, FROM)
    sender.send(TO, rendered("es"), key="e1:u:email")
    first, port = idle_connection(sender)
    smtp.fail_next(1)

    with pytest.raises(TransientFailure) as failed:
        sender.send(TO, rendered("es"), key="e2:u:email")
    assert failed.value.code == "451"
    assert idle_connection(sender) == (first, port)  # after RSET

    sender.send(TO, rendered("es"), key="e2:u:email")
    assert idle_connection(sender) == (first, port)
    assert len(smtp.messages()) == 2


class Scripted:
    """A scripted SMTP server that answers MAIL, RCPT and DATA as told and
    counts the messages it took and the connections it accepted."""

    def __init__(self, mail=b"250 ok", rcpt=b"250 ok", data=b"250 taken"):
        self.answers = {b"MAIL": mail, b"RCPT": rcpt, b"DATA": data}
        self.listener = eventlet.listen(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.messages = self.connections = 0
        self.thread = eventlet.spawn(self.serve)

    def serve(self):
        while True:
            client, _ = self.listener.accept()
            self.connections += 1
            eventlet.spawn(self.session, client)

    def session(self, client):
        reader = client.makefile("rb")
        client.sendall(b"220 hello\r\n")
        for line in reader:
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                client.sendall(b"250 hi\r\n")
            elif verb in (b"MAIL", b"RCPT"):
                client.sendall(self.answers[verb] + b"\r\n")
            elif verb == b"DATA":
                client.sendall(b"354 go on\r\n")
                for data_line in reader:
                    if data_line == b".\r\n":
                        break
                if self.answers[b"DATA"].startswith(b"2"):
                    self.messages += 1
                client.sendall(self.answers[b"DATA"] + b"\r\n")
            elif verb == b"QUIT":
                client.sendall(b"221 bye\r\n")
                break
            else:
                client.sendall(b"250 ok\r\n")
            if self.answers.get(verb, b"").startswith(b"421"):
                break
        client.close()

    def close(self):
        self.thread.kill()
        self.listener.close()


@pytest.mark.parametrize("step, answer, failure, reused", [
    ("rcpt", b"550 5.1.1 no such mailbox", PermanentRejection, True),
    ("rcpt", b"553 5.1.3 bad address syntax", PermanentRejection, True),
    ("rcpt", b"452 4.2.2 mailbox full", TransientFailure, True),
    ("rcpt", b"421 4.3.2 closing", TransientFailure, False),
    ("data", b"554 5.7.1 refused as spam", PermanentRejection, True),
    ("data", b"452 4.3.1 out of storage", TransientFailure, True),
    ("mail", b"550 5.7.1 sender not allowed", TransientFailure, True),  # the installation's to fix
])
def test_each_refusal_is_permanent_or_transient_with_its_smtp_code(step, answer, failure, reused):
    server = Scripted(**{step: answer})
    try:
        sender = EmailSender(f"smtp://127.0.0.1:{server.port}", FROM)
        with pytest.raises(failure) as failed:
            sender.send(TO, rendered("es"), key="e1:u:email")
        assert type(failed.value) is failure
        assert failed.value.code == answer[:3].decode()
        assert str(failed.value) == failed.value.code  # never the address the server repeats
        assert failed.value.__cause__ is None and failed.value.__suppress_context__
        assert sender.pool.idle() == (1 if reused else 0)
        assert server.messages == 0 and server.connections == 1
    finally:
        server.close()


def test_a_server_without_smtputf8_can_never_take_a_non_ascii_address():
    server = Scripted()
    try:
        sender = EmailSender(f"smtp://127.0.0.1:{server.port}", FROM)
        with pytest.raises(PermanentRejection) as refused:
            sender.send("presidenta@comité.test.invalid", rendered("es"), key="e1:u:email")
        assert refused.value.code == "no-smtputf8"
        assert sender.pool.idle() == 1
    finally:
        server.close()


def test_an_html_message_reaches_the_server_as_alternatives(smtp):
    sender = EmailSender(smtp.url, FROM)
    sender.send(TO, replace(rendered("es"), html=HTML), key="e1:u:email")
    [received] = smtp.messages()
    assert received.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in received.get_payload()] == ["text/plain", "text/html"]
    sender.close()


class HangsUpAfterData:
    """A scripted SMTP server that takes the first message, then takes the
    second and hangs up before it answers: the client cannot know whether
    that one was delivered."""

    def __init__(self):
        self.listener = eventlet.listen(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.messages = 0
        self.thread = eventlet.spawn(self.serve)

    def serve(self):
        while True:
            client, _ = self.listener.accept()
            eventlet.spawn(self.session, client)

    def session(self, client):
        reader = client.makefile("rb")
        client.sendall(b"220 hello\r\n")
        for line in reader:
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                client.sendall(b"250 hi\r\n")
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                client.sendall(b"250 ok\r\n")
            elif verb == b"DATA":
                client.sendall(b"354 go on\r\n")
                for data_line in reader:
                    if data_line == b".\r\n":
                        break
                self.messages += 1
                if self.messages > 1:
                    break
                client.sendall(b"250 taken\r\n")
        client.shutdown(socket.SHUT_RDWR)
        client.close()

    def close(self):
        self.thread.kill()
        self.listener.close()


def test_a_connection_lost_after_the_message_was_handed_over_is_dropped_and_not_retried_at_once():
    server = HangsUpAfterData()
    try:
        sender = EmailSender(f"smtp://127.0.0.1:{server.port}", FROM)
        sender.send(TO, rendered("es"), key="e1:u:email")
        assert sender.pool.idle() == 1

        with pytest.raises(TransientFailure) as failed:
            sender.send(TO, rendered("es"), key="e2:u:email")
        assert failed.value.code == "SMTPServerDisconnected"
        assert server.messages == 2  # no second copy: the server may have taken it
        assert sender.pool.idle() == 0
    finally:
        server.close()


def test_no_server_is_a_transient_failure_that_names_no_address():
    sender = EmailSender(f"smtp://127.0.0.1:{free_port()}", FROM)
    with pytest.raises(TransientFailure) as failed:
        sender.send(TO, rendered("es"), key="e1:u:email")
    assert failed.value.code == "ConnectionRefusedError"
    assert failed.value.__cause__ is None and failed.value.__suppress_context__
    assert sender.pool.idle() == 0


def test_at_most_pool_size_connections_stay_open_and_close_ends_them(server):
    sender = EmailSender(f"smtp://127.0.0.1:{server.port}", FROM, pool_size=2)
    pool = eventlet.GreenPool()
    for n in range(6):
        pool.spawn(sender.send, TO, rendered("es"), key=f"e{n}:u:email")
    pool.waitall()
    assert len(server.messages()) == 6
    assert sender.pool.idle() <= 2
    kept = [c for _, c in sender.pool._idle]

    sender.close()

    assert sender.pool.idle() == 0 and all(c.sock is None for c in kept)
    sender.send(TO, rendered("es"), key="after:u:email")  # a late worker still sends
    assert sender.pool.idle() == 0  # but keeps nothing open
    wait_until(lambda: len(server.messages()) == 7)
