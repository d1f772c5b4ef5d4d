"""Sending email when SMTP is configured, over a connection whose certificate has been checked.

Reset and invitation links travel by email, so a mail server that cannot prove who it is must never
see them, nor the SMTP password: STARTTLS and implicit TLS (port 465, or ``SMTP_SSL``) verify the
certificate and host name against the system's trust store, or against ``SMTP_CA_FILE`` for a
school's own CA. Credentials go over an unencrypted connection only to this machine (loopback),
and so do messages, unless ``SMTP_ALLOW_PLAINTEXT`` says a relay on a trusted network may have them
in clear (the app then warns at every start).
A failure is logged and kept in ``mail_failure`` so administrators see it on the people page.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formataddr
from typing import Any

from flask import Flask, current_app, has_app_context
from sqlalchemy import Integer, String, insert, select
from sqlalchemy.orm import Mapped, mapped_column

from core.config import is_loopback
from core.db import Base, UTCDateTime, db, utcnow

log = logging.getLogger("countersign.mail")

# What an administrator should check for each kind of failure (shown on the people page).
ADVICE = {
    "tls_certificate": "The mail server's certificate could not be verified. Check "
    "COUNTERSIGN_SMTP_HOST is the name on its certificate, or set COUNTERSIGN_SMTP_CA_FILE to "
    "your organisation's CA.",
    "tls": "A secure connection to the mail server could not be made. Check COUNTERSIGN_SMTP_PORT "
    "and COUNTERSIGN_SMTP_SSL (465 is implicit TLS; 587 uses STARTTLS).",
    "starttls_unsupported": "The mail server does not offer STARTTLS. Use its TLS port, or a "
    "server that supports encryption.",
    "insecure_credentials": "A password would have been sent unencrypted. Turn on "
    "COUNTERSIGN_SMTP_STARTTLS or COUNTERSIGN_SMTP_SSL.",
    "plaintext": "Email would have crossed the network unencrypted. Turn on "
    "COUNTERSIGN_SMTP_STARTTLS or COUNTERSIGN_SMTP_SSL; only for a relay on a network you trust, "
    "set COUNTERSIGN_SMTP_ALLOW_PLAINTEXT=true.",
    "auth": "The mail server refused the user name or password. Check COUNTERSIGN_SMTP_USERNAME "
    "and COUNTERSIGN_SMTP_PASSWORD.",
    "refused": "The mail server refused the message. Check COUNTERSIGN_SMTP_FROM and the "
    "server's logs.",
    "connect": "The mail server could not be reached. Check COUNTERSIGN_SMTP_HOST and "
    "COUNTERSIGN_SMTP_PORT.",
}
RECENT = timedelta(days=7)


class MailFailure(Base):
    """A failed send: when, which kind, and a short explanation that never holds a secret."""

    __tablename__ = "mail_failure"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    reason: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str] = mapped_column(String(300))

    @property
    def advice(self) -> str:
        return ADVICE.get(self.reason, "")


class MailError(OSError):
    """Email was not sent; ``reason`` is one of :data:`ADVICE`'s keys."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def smtp_configured(config: Any) -> bool:
    return bool(config.get("SMTP_HOST"))


def _flag(value: Any, default: bool = False) -> bool:
    """A boolean setting, whether it came from the environment as text or from a mapping."""
    if value is None or value == "":
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return bool(value)


def _encrypted(config: Any) -> bool:
    return (
        _flag(config.get("SMTP_SSL"))
        or int(config.get("SMTP_PORT") or 0) == 465
        or _flag(config.get("SMTP_STARTTLS"), default=True)
    )


def plaintext_to_network(config: Any) -> bool:
    """Whether the settings would send mail unencrypted to another machine."""
    return (
        smtp_configured(config)
        and not _encrypted(config)
        and not is_loopback(str(config["SMTP_HOST"]))
    )


def warn_about_plaintext(app: Flask) -> None:
    """At start, say so when links would cross the network in clear, or would not be sent."""
    if not plaintext_to_network(app.config):
        return
    if _flag(app.config.get("SMTP_ALLOW_PLAINTEXT")):
        log.warning(
            "COUNTERSIGN_SMTP_ALLOW_PLAINTEXT is on: reset, invitation and connect links go to %s "
            "unencrypted. Turn on COUNTERSIGN_SMTP_STARTTLS or COUNTERSIGN_SMTP_SSL instead.",
            app.config["SMTP_HOST"],
        )
    else:
        log.warning(
            "COUNTERSIGN_SMTP_STARTTLS and COUNTERSIGN_SMTP_SSL are off and %s is another "
            "machine: no email will be sent. Turn on TLS.",
            app.config["SMTP_HOST"],
        )


def tls_context(config: Any) -> ssl.SSLContext:
    """Certificate and host-name checks on, trusting the system store or ``SMTP_CA_FILE``."""
    return ssl.create_default_context(cafile=config.get("SMTP_CA_FILE") or None)


def recent_failures(limit: int = 3, now: datetime | None = None) -> list[MailFailure]:
    """The latest send failures of the past week, newest first, for the administrators' warning."""
    since = (now or utcnow()) - RECENT
    query = select(MailFailure).where(MailFailure.at >= since)
    return list(db.session.scalars(query.order_by(MailFailure.id.desc()).limit(limit)))


def _remember(app: Flask | None, error: MailError) -> None:
    """Keep the failure on its own connection, so the caller's transaction is not involved."""
    if app is None:
        return
    try:
        with app.app_context(), db.engine.begin() as conn:
            conn.execute(
                insert(MailFailure).values(
                    at=utcnow(), reason=error.reason, detail=error.detail[:300]
                )
            )
    except Exception:  # the log line already says what failed
        log.exception("could not record the email failure")


# The name of every thread that sends mail or records a failure to send it.
MAIL_THREAD = "countersign-mail"


def _current_app() -> Flask | None:
    return current_app._get_current_object() if has_app_context() else None  # type: ignore[attr-defined]


def send_mail_later(config: Any, to: str, subject: str, body: str) -> None:
    """Send without making the request wait, so response times say nothing about the address."""
    settings = dict(config)
    app = _current_app()

    def run() -> None:
        try:
            _send(settings, to, subject, body)
        except MailError as exc:
            _remember(app, exc)

    threading.Thread(target=run, name=MAIL_THREAD, daemon=True).start()


def send_mail(
    config: Any, to: str, subject: str, body: str, *, html: str | None = None,
    sender_name: str | None = None,
) -> None:  # fmt: skip
    """Send now; raises :class:`MailError` (an ``OSError``) when the message was not sent.

    With ``html``, the message is multipart/alternative (``body`` is its plain-text part); with
    ``sender_name``, the From header shows that name beside ``SMTP_FROM``."""
    try:
        _send(config, to, subject, body, html=html, sender_name=sender_name)
    except MailError as exc:
        # Recorded from another thread: a write lock held by the caller must not block it.
        threading.Thread(
            target=_remember, args=(_current_app(), exc), name=MAIL_THREAD, daemon=True
        ).start()
        raise


def _send(config: Any, to: str, subject: str, body: str, **extra: Any) -> None:
    try:
        _deliver(config, to, subject, body, **extra)
    except MailError as exc:
        error = exc
    except ssl.SSLCertVerificationError as exc:
        error = MailError("tls_certificate", f"certificate not accepted: {exc.verify_message}")
    except ssl.SSLError as exc:
        error = MailError("tls", f"TLS failed: {exc.reason or 'handshake error'}")
    except smtplib.SMTPNotSupportedError:
        error = MailError("starttls_unsupported", "the server does not offer STARTTLS")
    except smtplib.SMTPAuthenticationError as exc:
        error = MailError("auth", f"sign-in refused (SMTP {exc.smtp_code})")
    except smtplib.SMTPResponseException as exc:
        error = MailError("refused", f"the server answered SMTP {exc.smtp_code}")
    except smtplib.SMTPException as exc:
        error = MailError("refused", type(exc).__name__)
    except OSError as exc:
        error = MailError("connect", f"could not connect ({type(exc).__name__})")
    else:
        return
    # The server's name and the reason are enough to investigate: no recipient (personal data;
    # the caller logs the person's id) and never the credentials.
    log.error("email not sent via %s: %s", config.get("SMTP_HOST"), error.detail)
    raise error


def _deliver(
    config: Any, to: str, subject: str, body: str, html: str | None = None,
    sender_name: str | None = None,
) -> None:  # fmt: skip
    host, port = str(config["SMTP_HOST"]), int(config["SMTP_PORT"])
    implicit = _flag(config.get("SMTP_SSL")) or port == 465
    starttls = _flag(config.get("SMTP_STARTTLS"), default=True)
    username = config.get("SMTP_USERNAME")
    if username and not (implicit or starttls) and not is_loopback(host):
        raise MailError(
            "insecure_credentials",
            "refused to send the SMTP password over an unencrypted connection",
        )
    if plaintext_to_network(config) and not _flag(config.get("SMTP_ALLOW_PLAINTEXT")):
        # The message holds a link that signs someone in or sets their password.
        raise MailError("plaintext", "refused to send email over an unencrypted connection")
    message = EmailMessage()
    sender = config.get("SMTP_FROM") or username or "countersign"
    message["From"] = formataddr((sender_name, sender)) if sender_name else sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    try:
        context = tls_context(config) if implicit or starttls else None
    except (OSError, ssl.SSLError):
        raise MailError("tls", "COUNTERSIGN_SMTP_CA_FILE could not be read as PEM") from None
    if implicit:
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=15, context=context)
    else:
        smtp = smtplib.SMTP(host, port, timeout=15)
    with smtp:
        if starttls and not implicit:
            smtp.starttls(context=context)
        if username:
            smtp.login(username, config.get("SMTP_PASSWORD") or "")
        smtp.send_message(message)
