"""The reminders sent to a person, and their digest choice, in their data; erasure deletes both
(a reminder is not evidence: it only says an email was due)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select

from people.personal_data import Erasure, Export, iso
from reminders.models import DigestChoice, Reminder


def reminders(request: Export) -> dict[str, Any]:
    rows = request.session.scalars(
        select(Reminder).where(Reminder.person_id == request.person.id).order_by(Reminder.id)
    )
    choice = request.session.get(DigestChoice, request.person.id)
    return {
        "sent": [
            {"kind": r.kind, "queued_at": iso(r.created_at), "due_at": iso(r.due_at)} for r in rows
        ],  # fmt: skip
        "weekly_digest": choice.weekly_digest if choice else None,
    }


def erase_reminders(erasure: Erasure) -> None:
    erasure.session.execute(delete(Reminder).where(Reminder.person_id == erasure.person_id))
    erasure.session.execute(delete(DigestChoice).where(DigestChoice.person_id == erasure.person_id))
