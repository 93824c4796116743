"""EmailSink through a real SMTP server on loopback (aiosmtpd): plain, STARTTLS, TLS, AUTH."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.alerting_helpers import SleepRecorder, alert, all_text, resolved, wait_for
from tests.conftest import free_port
from xnai_core.alerting import EmailSink

PASSWORD = "mail-Pa55word-7f3c9e"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


@dataclass
class Mailbox:
    """What the SMTP server received, and who logged in."""

    mails: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.mails.append(parsed)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword) and data.password == PASSWORD.encode():
            self.logins.append(data.login.decode())
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, made for this test run."""
    directory = tmp_path_factory.mktemp("smtp-tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return Certificate(cert, key)


@dataclass
class Server:
    mailbox: Mailbox
    port: int


def serve(mailbox: Mailbox, **options: Any) -> Iterator[Server]:
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield Server(mailbox, port)
    finally:
        controller.stop()


@pytest.fixture
def plain_server() -> Iterator[Server]:
    """No TLS, no AUTH."""
    yield from serve(Mailbox())


def serve_with_auth(**options: Any) -> Iterator[Server]:
    """A server that requires AUTH (the password above), with the TLS ``options`` given."""
    mailbox = Mailbox()
    yield from serve(mailbox, auth_required=True, authenticator=mailbox.authenticate, **options)


@pytest.fixture
def starttls_server(certificate: Certificate) -> Iterator[Server]:
    """STARTTLS required, then AUTH required."""
    yield from serve_with_auth(
        tls_context=certificate.server_context(), require_starttls=True, auth_require_tls=True
    )


@pytest.fixture
def tls_server(certificate: Certificate) -> Iterator[Server]:
    """TLS from the first byte (SMTPS), AUTH required."""
    # aiosmtpd sees TLS only when it came by STARTTLS; here the socket itself is TLS.
    yield from serve_with_auth(ssl_context=certificate.server_context(), auth_require_tls=False)


def mail_sink(port: int, **options: Any) -> EmailSink:
    """An EmailSink to the loopback server on ``port``, from and to ops.example."""
    options.setdefault("mail_from", "xnai@ops.example")
    options.setdefault("to", "oncall@ops.example")
    return EmailSink("127.0.0.1", port, **options)


def parts(mail: EmailMessage) -> tuple[str, str]:
    plain = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    assert plain is not None
    assert html is not None
    return plain.get_content(), html.get_content()


async def test_plain_mail_has_text_and_html_and_threads_the_resolve(plain_server: Server) -> None:
    """One mail per raise and per resolve; the resolve replies to the raise."""
    sink = EmailSink(
        "127.0.0.1",
        plain_server.port,
        security="none",
        mail_from="xnai@ops.example",
        to=["oncall@ops.example", "lead@ops.example"],
    )
    raised = alert(message="rag_api is unhealthy: <refused>", details={"status": "unhealthy"})
    sink.submit(raised)
    sink.submit(resolved(raised))
    await sink.aclose()
    first, second = plain_server.mailbox.mails
    assert first["Subject"] == (
        "[xnai-core] FIRING [critical] rag_api: rag_api is unhealthy: <refused>"
    )
    assert second["Subject"].startswith("[xnai-core] RESOLVED [critical] rag_api: resolved:")
    assert second["In-Reply-To"] == first["Message-ID"] == second["References"]
    assert first["X-Xnai-Alert-Key"] == "rag_api:status"
    text, html = parts(first)
    assert "rag_api is unhealthy: <refused>" in text
    assert "Service: rag_api" in text
    assert "&lt;refused&gt;" in html
    assert "<refused>" not in html
    assert plain_server.mailbox.envelopes[0] == (
        "xnai@ops.example",
        ["oncall@ops.example", "lead@ops.example"],
    )


async def test_starttls_and_auth_with_the_password_from_the_environment(
    starttls_server: Server,
    certificate: Certificate,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """STARTTLS, then AUTH with the password read from the named variable; never logged."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("XNAI_TEST_SMTP_PASSWORD", PASSWORD)
    sink = mail_sink(
        starttls_server.port,
        username="alerts",
        password_env="XNAI_TEST_SMTP_PASSWORD",
        tls_context=certificate.client_context(),
    )
    sink.submit(alert())
    await sink.aclose()
    assert len(starttls_server.mailbox.mails) == 1
    assert starttls_server.mailbox.logins == ["alerts"]
    assert sink.stats().sent == 1
    assert PASSWORD not in repr(sink) + str(sink.stats()) + all_text(caplog.records)


# aiosmtpd warns because it counts only STARTTLS as TLS; this server's socket is TLS itself.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_implicit_tls_and_auth(tls_server: Server, certificate: Certificate) -> None:
    """security="ssl": TLS from the first byte, then AUTH."""
    sink = mail_sink(
        tls_server.port,
        security="ssl",
        username="alerts",
        password=PASSWORD,
        tls_context=certificate.client_context(),
    )
    sink.submit(alert())
    await sink.aclose()
    assert len(tls_server.mailbox.mails) == 1
    assert tls_server.mailbox.logins == ["alerts"]


async def test_a_wrong_password_is_rejected_not_retried(
    starttls_server: Server, certificate: Certificate, caplog: pytest.LogCaptureFixture
) -> None:
    """535 is final: one attempt, dropped as rejected, the password nowhere in the logs."""
    caplog.set_level(logging.DEBUG)
    sink = mail_sink(
        starttls_server.port,
        username="alerts",
        password="not-the-Password-91",
        tls_context=certificate.client_context(),
        sleep=SleepRecorder(),
    )
    sink.submit(alert())
    await sink.aclose()
    stats = sink.stats()
    assert starttls_server.mailbox.mails == []
    assert (stats.sent, stats.retried, stats.dropped_by_reason["rejected"]) == (0, 0, 1)
    assert stats.last_error == "smtp: SMTPAuthenticationError 535"
    assert "not-the-Password-91" not in repr(sink) + str(stats) + all_text(caplog.records)


async def test_starttls_refused_by_the_server_sends_nothing_in_clear(plain_server: Server) -> None:
    """security="starttls" against a server without STARTTLS: rejected, no mail sent."""
    sink = mail_sink(
        plain_server.port,
        sleep=SleepRecorder(),
    )
    sink.submit(alert())
    await sink.aclose()
    assert plain_server.mailbox.mails == []
    assert sink.stats().dropped_by_reason["rejected"] == 1


async def test_an_untrusted_certificate_is_refused(starttls_server: Server) -> None:
    """The system CAs do not trust the test's self-signed certificate: nothing is sent."""
    sink = mail_sink(
        starttls_server.port,
        username="alerts",
        password=PASSWORD,
        sleep=SleepRecorder(),
    )
    sink.submit(alert())
    await sink.aclose()
    assert starttls_server.mailbox.mails == []
    assert sink.stats().dropped == 1


class StallingGoodbye(Mailbox):
    """Takes the mail, then never answers QUIT."""

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(30)
        return "221 Bye"


async def test_a_server_that_stalls_after_taking_the_mail_gets_it_once() -> None:
    """The server accepted the mail and then hangs on QUIT: the mail is sent, once, and
    aclose() does not wait for the goodbye (before: the goodbye timed the attempt out, the
    mail went out three times and was logged as given up)."""
    mailbox = StallingGoodbye()
    for server in serve(mailbox):
        sink = mail_sink(
            server.port, security="none", timeout=1.0, max_attempts=3, sleep=SleepRecorder()
        )
        sink.submit(alert())
        await sink.drain()
        stats = sink.stats()
        await sink.aclose(timeout=0.5)
        assert len(mailbox.mails) == 1
        assert (stats.sent, stats.retried, stats.dropped) == (1, 0, 0)
        assert not sink._goodbyes


async def test_a_server_that_is_down_is_retried() -> None:
    """Connection refused is temporary: retried up to max_attempts."""
    sleep = SleepRecorder()
    sink = mail_sink(
        free_port(),
        security="none",
        max_attempts=3,
        sleep=sleep,
    )
    sink.submit(alert())
    await sink.aclose()
    assert len(sleep.delays) == 2
    assert sink.stats().dropped_by_reason["gave_up"] == 1


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"security": "none", "username": "u", "password": "p"}, "would cross the network"),
        ({"password_env": "XNAI_TEST_UNSET_VARIABLE", "username": "u"}, "which is not set"),
        ({"password": "p"}, "'password' needs a 'username'"),
        ({"password": "p", "password_env": "X", "username": "u"}, "not both"),
        ({"security": "tls"}, "'security' must be one of"),
        ({"port": 0}, "'port' must be an int in 1..65535: 0"),
    ],
)
def test_bad_settings_are_refused(options: dict[str, Any], text: str) -> None:
    """Each refusal names the problem, never the password."""
    with pytest.raises(ValueError, match=text) as caught:
        EmailSink("127.0.0.1", mail_from="a@b.example", to="c@d.example", **options)
    assert "'p'" not in str(caught.value)


def test_a_header_cannot_be_injected_through_an_alert() -> None:
    """Line breaks in a message never start a new header."""
    sink = EmailSink("127.0.0.1", security="none", mail_from="a@b.example", to="c@d.example")
    from xnai_core.alerting import Notification

    raised = alert(message="down\r\nBcc: victim@example.com")
    mail = sink.message(Notification(alert=raised, raised=raised, event="firing"))
    assert mail["Bcc"] is None
    assert "\n" not in mail["Subject"]


class StallingMail(Mailbox):
    """Greets and answers EHLO, then never answers MAIL FROM."""

    mail_seen: bool = False

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        self.mail_seen = True
        await asyncio.sleep(30)
        envelope.mail_from = address
        return "250 OK"


async def test_a_server_that_stalls_before_taking_the_mail_does_not_hold_aclose() -> None:
    """A server that stalls after EHLO: ``aclose(timeout=0.5)`` waited out the sink's own
    ``timeout`` (30 s here), because the cancelled attempt first said goodbye politely
    (QUIT, and waited for the answer of a server that answers nothing). A cancelled
    attempt now cuts the connection; the mail is dropped at shutdown, as documented."""
    mailbox = StallingMail()
    for server in serve(mailbox):
        sink = mail_sink(server.port, security="none", timeout=30.0, sleep=SleepRecorder())
        sink.submit(alert())
        await wait_for(lambda: mailbox.mail_seen)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await sink.aclose(timeout=0.5)
        # A deadline with room for a loaded machine: it took the 30 s of `timeout`.
        assert loop.time() - started < 10
        assert sink.stats().dropped_by_reason["shutdown"] == 1
        assert mailbox.mails == []
