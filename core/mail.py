"""Sending email when SMTP is configured."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import Any


def smtp_configured(config: Any) -> bool:
    return bool(config.get("SMTP_HOST"))


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
