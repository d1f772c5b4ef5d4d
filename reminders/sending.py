"""Turning a queued reminder into an email: plain text and HTML, one link, the school's name."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import current_app, render_template
from sqlalchemy.orm import Session

from core.db import db, utcnow
from core.mail import MailError, send_mail, smtp_configured
from core.outbox import BACKOFF, GiveUp, OutboxMessage, Retry
from core.web import federation
from people.models import Person
from reminders.models import Reminder
from reminders.rules import account_name, load_settings, next_allowed, still_applies
from training.models import Policy

NOT_NEEDED = 0  # recorded as the message's status when the reminder no longer applied

SUBJECTS = {
    "not_started": "Reminder: please complete your {policy} training",
    "expiring_30": "Your {policy} training expires in 30 days",
    "expiring_7": "Your {policy} training expires in 7 days",
    "expired": "Your {policy} training has expired",
    "account_at_risk": "An account you run is at risk: your {policy} training has lapsed",
    "digest": "Weekly training digest: {overdue} not trained, {expiring} expiring soon",
    "review_due": "{policy} is due for review on {review}",
}


def link(path: str = "/") -> str:
    return str(current_app.config["BASE_URL"]).rstrip("/") + path


def compose(session: Session, reminder: Reminder) -> tuple[str, str, str]:
    """Subject, plain text and HTML of ``reminder``'s email."""
    person = session.get_one(Person, reminder.person_id)
    policy = session.get(Policy, reminder.policy_id) if reminder.policy_id else None
    from training.models import StoredStatus

    status = session.get(StoredStatus, (reminder.person_id, reminder.policy_id)) if policy else None
    context: dict[str, Any] = {
        "kind": reminder.kind,
        "person": person,
        "policy": policy.title if policy else "",
        "status": status,
        "n": reminder.detail.get("n"),
        "account": account_name(session, reminder.detail["account_id"])
        if "account_id" in reminder.detail
        else None,
        "link": link("/"),
        "sender": federation().name,
    }
    values = {"policy": context["policy"]}
    template = "reminder"
    if reminder.kind == "digest":
        from reminders.digest import weekly_digest

        digest = weekly_digest(session, utcnow())
        context.update(digest=digest, link=link("/reports/"))
        values.update(overdue=digest.overdue_count, expiring=len(digest.expiring))
        template = "digest"
    elif reminder.kind == "review_due":
        from training.models import PolicyVersion

        version = session.get(PolicyVersion, reminder.detail.get("version_id"))
        review = (
            version.next_review.strftime("%-d %B %Y") if version and version.next_review else ""
        )
        context.update(version=version, review=review)
        values.update(review=review)
        template = "review"
    subject = SUBJECTS[reminder.kind].format(**values)
    text = render_template(f"reminders/email/{template}.txt", **context)
    html = render_template(f"reminders/email/{template}.html", subject=subject, **context)
    return subject, text, html


def send(session: Session, message: OutboxMessage) -> int:
    """The ``reminder.email`` handler (remote: no transaction is held while SMTP answers)."""
    reminder = session.get(Reminder, message.payload.get("reminder_id"))
    if reminder is None:
        raise GiveUp("the reminder no longer exists")
    if not still_applies(session, reminder):
        return NOT_NEEDED
    config = current_app.config
    if not smtp_configured(config):
        raise GiveUp("email is not set up (COUNTERSIGN_SMTP_HOST)")
    subject, text, html = compose(session, reminder)
    to = session.get_one(Person, reminder.person_id).email
    session.commit()  # nothing held open while the mail server answers
    try:
        send_mail(config, to, subject, text, html=html, sender_name=federation().name)
    except MailError as exc:
        # The next try, like the first, waits for the morning if it would fall at night.
        now = utcnow()
        wait = BACKOFF[min(message.attempts, len(BACKOFF) - 1)]
        after = max(next_allowed(load_settings(db.session), now + wait) - now, timedelta())
        raise Retry(f"email not sent ({exc.reason})", after=after or wait) from None
    return 250
