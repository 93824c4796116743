"""Alerts by e-mail over SMTP: one mail per raise, per reminder and per resolve.

The driver is ``aiosmtplib`` (the ``xnai-core[email]`` extra), not ``smtplib``
in a thread: a mail server that accepts and then stalls would hold a worker
thread of the loop's default executor until the socket timeout, a thread
cannot be cancelled when ``aclose()``'s deadline comes, and a few such threads
starve everything else that uses the executor (DNS lookups among them). An
asyncio client is cancelled like any other await and costs no thread.
"""

from __future__ import annotations

import asyncio
import email.policy
import html
import importlib
import os
import re
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate
from types import ModuleType
from typing import Any, ClassVar, Literal, Unpack

from ._mask import mask_details, mask_text
from ._model import DeliveryError, Notification, iso_utc
from ._secret import Secret
from ._sink import AlertSink, SinkOptions, fingerprint, logger

Security = Literal["starttls", "ssl", "none"]
_DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
_LINE_BREAKS = re.compile(r"[\r\n]+")
_SUBJECT_MAX = 200
_CLOSE_POLLS = 100
_CLOSE_POLL_INTERVAL = 0.01
_GOODBYE_GRACE = 1.0  # at aclose(), for goodbyes still under way
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+")
# SMTP's CRLF, and headers folded only past 998 characters (RFC 5322's hard limit): the
# default 78 makes the folder push a long subject whole onto a continuation line.
_POLICY = email.policy.SMTP.clone(max_line_length=998)


def _driver() -> ModuleType:
    try:
        return importlib.import_module("aiosmtplib")
    except ImportError:
        raise ImportError("EmailSink needs aiosmtplib: pip install 'xnai-core[email]'") from None


async def _goodbye(client: Any) -> None:
    """QUIT, so the server closes too, then wait (briefly) until the connection is gone.

    A TLS connection takes a few more turns of the loop to close (close_notify
    both ways); a loop that ends before then (a service shutting down right
    after ``aclose()``) would leave the socket open. The protocol drops its
    transport when the connection is lost; that is polled, bounded.
    """
    protocol = client.protocol
    try:
        await client.quit()
    except Exception:
        client.close()
    except asyncio.CancelledError:
        client.close()
        raise
    for _ in range(_CLOSE_POLLS):
        if getattr(protocol, "transport", None) is None:
            return
        await asyncio.sleep(_CLOSE_POLL_INTERVAL)


def _one_line(text: str) -> str:
    """A header value: line breaks would let text inject headers."""
    return _LINE_BREAKS.sub(" ", text).strip()


def _check_address(field: str, value: object) -> str:
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value.strip()):
        raise ValueError(f"'{field}' must be an e-mail address: {value!r}")
    return value.strip()


class EmailSink(AlertSink):
    """Sends alerts through an SMTP server.

    ``security``: ``"starttls"`` (default; the server must offer STARTTLS, or
    nothing is sent), ``"ssl"`` (TLS from the first byte, port 465) or
    ``"none"`` (plain text; refused together with a password, which would
    cross the network readable). ``port`` defaults to 587, 465 or 25 to match.
    ``password_env`` names the environment variable holding the password (read
    once, here); ``password`` takes it directly. ``tls_context`` replaces the
    default context (system CAs, hostname checked), e.g. to trust a private CA.
    A reminder and a resolve are replies to the first mail of their alert
    (``In-Reply-To``), so mail clients thread them.
    """

    kind: ClassVar[str] = "email"

    def __init__(
        self,
        host: str,
        port: int | None = None,
        *,
        mail_from: str,
        to: str | Sequence[str],
        security: Security = "starttls",
        username: str | None = None,
        password: str | None = None,
        password_env: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        subject_prefix: str = "[xnai-core]",
        dashboard_url: str | None = None,
        **options: Unpack[SinkOptions],
    ) -> None:
        super().__init__(**options)
        self._smtp = _driver()
        if not isinstance(host, str) or not host:
            raise TypeError(f"'host' must be a non-empty str: {host!r}")
        if security not in _DEFAULT_PORTS:
            raise ValueError(f"'security' must be one of {tuple(_DEFAULT_PORTS)}: {security!r}")
        if port is not None and (
            not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536
        ):
            raise ValueError(f"'port' must be an int in 1..65535: {port!r}")
        self.host = host
        self.port = _DEFAULT_PORTS[security] if port is None else port
        self.security: Security = security
        self.mail_from = _check_address("mail_from", mail_from)
        recipients = [to] if isinstance(to, str) else list(to)
        if not recipients:
            raise ValueError("'to' must name at least one recipient: []")
        self.to = [_check_address(f"to[{i}]", r) for i, r in enumerate(recipients)]
        if password is not None and password_env is not None:
            raise ValueError("give 'password' or 'password_env', not both")
        if password_env is not None:
            value = os.environ.get(password_env)
            if not value:
                raise ValueError(f"'password_env' names {password_env!r}, which is not set")
            password = value
        if password is not None and username is None:
            raise ValueError("'password' needs a 'username'")
        if username is not None and security == "none":
            raise ValueError(
                "'username' needs security='starttls' or 'ssl': the password would cross "
                "the network in plain text"
            )
        self.username = username
        self._password = None if password is None else Secret(password)
        self._tls_context = tls_context
        self.subject_prefix = _one_line(subject_prefix)
        self._dashboard_url = dashboard_url
        self._domain = self.mail_from.rpartition("@")[2]
        self._goodbyes: set[asyncio.Task[None]] = set()

    def secrets(self) -> tuple[str, ...]:
        return () if self._password is None else (self._password.reveal(),)

    def _farewell(self, client: Any) -> None:
        task = asyncio.ensure_future(_goodbye(client))
        self._goodbyes.add(task)
        task.add_done_callback(self._goodbyes.discard)

    async def release(self) -> None:
        """Let the last goodbyes end (briefly, within aclose()'s deadline), then cut the rest."""
        pending = list(self._goodbyes)
        if pending:
            grace = _GOODBYE_GRACE
            if self._close_deadline is not None:
                left = self._close_deadline - asyncio.get_running_loop().time()
                grace = max(0.0, min(grace, left))
            await asyncio.wait(pending, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def destination(self) -> str:
        return fingerprint(
            self.kind, self.host, self.port, self.mail_from, self.to, *self.secrets()
        )

    def describe(self) -> str:
        auth = ", auth=True" if self.username else ""
        return f"host={self.host!r}, port={self.port}, security={self.security!r}{auth}"

    def message(self, note: Notification) -> EmailMessage:
        """The mail for ``note``: plain text and HTML alternatives, threaded per alert."""
        raised = note.raised
        resolved = note.event == "resolved"
        text = mask_text((note.alert if resolved else raised).message, self.secrets())
        if resolved:
            state = "RESOLVED"
        elif note.repeat:
            state = f"STILL FIRING (reminder {note.repeat})"
        else:
            state = "FIRING"
        subject = f"{self.subject_prefix} {state} [{raised.severity}] {raised.service}: {text}"
        mail = EmailMessage(policy=_POLICY)
        mail["Subject"] = _one_line(subject)[:_SUBJECT_MAX]
        mail["From"] = self.mail_from
        mail["To"] = ", ".join(self.to)
        mail["Date"] = formatdate(self._wall_clock(), usegmt=True)
        thread = f"<{note.episode_id}@{self._domain}>"
        if note.event == "firing" and not note.repeat:
            mail["Message-ID"] = thread
        else:
            mail["Message-ID"] = f"<{note.delivery_id}@{self._domain}>"
            mail["In-Reply-To"] = thread
            mail["References"] = thread
        mail["X-Xnai-Alert-Key"] = _one_line(raised.key)
        mail["Auto-Submitted"] = "auto-generated"

        rows = [
            ("Status", state.lower()),
            ("Service", raised.service),
            ("Severity", raised.severity),
            ("Alert", raised.key),
            ("Started", iso_utc(raised.timestamp)),
        ]
        if resolved:
            rows.append(("Resolved", iso_utc(note.alert.timestamp)))
        link = (
            self._dashboard_url.replace("{service}", raised.service)
            if self._dashboard_url
            else None
        )
        if link:
            rows.append(("Dashboard", link))
        details = mask_details(raised.details, self.secrets())
        plain = [text, ""]
        plain += [f"{name}: {value}" for name, value in rows]
        plain += [f"{name}: {value}" for name, value in sorted(details.items())]
        mail.set_content("\n".join(plain) + "\n")

        cells = "".join(
            f"<tr><th align='left'>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>"
            for name, value in rows + sorted(details.items())
        )
        anchor = f"<p><a href='{html.escape(link)}'>Open dashboard</a></p>" if link else ""
        body = (
            f"<html><body><p><strong>{html.escape(text)}</strong></p>"
            f"<table>{cells}</table>{anchor}</body></html>"
        )
        mail.add_alternative(body, subtype="html")
        return mail

    async def send(self, note: Notification) -> None:
        mail = self.message(note)
        smtp = self._smtp
        client = smtp.SMTP(
            hostname=self.host,
            port=self.port,
            use_tls=self.security == "ssl",
            start_tls=self.security == "starttls",
            tls_context=self._tls_context,
            timeout=self.timeout,
        )
        try:
            await client.connect()
            try:
                if self.username is not None and self._password is not None:
                    await client.login(self.username, self._password.reveal())
                # Flattened here, with our policy: the driver's own folds at 78.
                refused, _ = await client.sendmail(self.mail_from, self.to, mail.as_bytes())
            except asyncio.CancelledError:
                # The attempt's deadline or aclose(): cut the connection, no goodbye. A
                # QUIT awaited here waited for a stalled server for the driver's whole
                # timeout, holding aclose() past its deadline (and the attempt past its).
                client.close()
                raise
            except BaseException:
                # Refused: the goodbye is no part of the attempt either (bounded at aclose()).
                self._farewell(client)
                raise
            # The mail is accepted: a server that then stalls on QUIT cannot undo that, so
            # the goodbye is no part of the attempt (it timed the attempt out, and the mail
            # was sent again).
            self._farewell(client)
        except smtp.SMTPRecipientsRefused as error:
            codes = [refusal.code for refusal in error.recipients]
            raise DeliveryError(
                f"smtp: every recipient refused ({', '.join(map(str, codes))})",
                retryable=all(400 <= code < 500 for code in codes),
            ) from None
        except smtp.SMTPResponseException as error:
            # SMTP's 4xx is "try again later", 5xx is final (unlike HTTP).
            raise DeliveryError(
                f"smtp: {type(error).__name__} {error.code}", retryable=400 <= error.code < 500
            ) from None
        except smtp.SMTPNotSupported:
            raise DeliveryError(
                "smtp: the server does not support what was asked (STARTTLS or AUTH)",
                retryable=False,
            ) from None
        except ssl.SSLCertVerificationError:
            raise DeliveryError("smtp: TLS certificate not trusted", retryable=False) from None
        except OSError as error:
            # Refused, reset, timed out, disconnected (aiosmtplib's connection errors
            # are ConnectionError and TimeoutError too): the server may be back soon.
            raise DeliveryError(f"smtp: {type(error).__name__}", retryable=True) from None
        except smtp.SMTPException:
            # The driver's own refusals ("no suitable authentication method"):
            # the settings and the server disagree; repeating cannot help.
            raise DeliveryError(
                "smtp: the server cannot do what the settings ask", retryable=False
            ) from None
        if refused:
            # The others have it: a retry would send them a second copy.
            codes = sorted({code for code, _ in refused.values()})
            logger.warning(
                "%s: %d of %d recipient(s) refused %s (%s)",
                self.name,
                len(refused),
                len(self.to),
                note.identity(),
                ", ".join(map(str, codes)),
                extra={"xnai.sink": self.name, "xnai.alert_key": note.key},
            )
