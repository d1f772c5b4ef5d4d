"""Sending email when SMTP is configured."""

from __future__ import annotations

import logging
import smtplib
import threading
from email.message import EmailMessage
from typing import Any

log = logging.getLogger("countersign.mail")


def smtp_configured(config: Any) -> bool:
    return bool(config.get("SMTP_HOST"))


def send_mail_later(config: Any, to: str, subject: str, body: str) -> None:
    """Send without making the request wait, so response times say nothing about the address."""
    settings = dict(config)

    def run() -> None:
        try:
            send_mail(settings, to, subject, body)
        except OSError as exc:
            log.warning("could not send email to %s: %s", to, exc)

    threading.Thread(target=run, name="countersign-mail", daemon=True).start()


def send_mail(config: Any, to: str, subject: str, body: str) -> None:
    message = EmailMessage()
    message["From"] = config.get("SMTP_FROM") or config.get("SMTP_USERNAME") or "countersign"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    with smtplib.SMTP(config["SMTP_HOST"], int(config["SMTP_PORT"]), timeout=15) as smtp:
        if config.get("SMTP_STARTTLS"):
            smtp.starttls()
        if config.get("SMTP_USERNAME"):
            smtp.login(config["SMTP_USERNAME"], config["SMTP_PASSWORD"])
        smtp.send_message(message)
