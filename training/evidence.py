"""Announcing new evidence: the domain functions that record it say so themselves.

A read receipt, a quiz submission or an acknowledgement, once really inserted (a double submit
inserts nothing and announces nothing), is announced by the function that inserted it as one
``evidence.recorded`` event in the outbox (:mod:`core.outbox`), in the same transaction, so the
event exists exactly when the evidence does. The event names the kind of evidence and its row;
a subscriber (xAPI) reads the row itself in the worker. No package subscribes: nothing is queued.

Whether a person became trained is not this event's business: that is ``status.changed``
(:mod:`training.status_store`).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from core import outbox

EVIDENCE_RECORDED = "evidence.recorded"
READ = "read"  # a read_receipt row
QUIZ = "quiz"  # a quiz_submission row (``attempt_id`` names its attempt)
ACKNOWLEDGEMENT = "ack"  # an acknowledgement row


def announce(session: Session, kind: str, row_id: int, person_id: int, **ids: int) -> bool:
    """Announce one new piece of evidence (``kind``, its row id, whose it is, and any further ids
    a subscriber needs). Once per row: the event's key is the row's. False when nothing was
    queued (no subscriber, or already announced)."""
    payload = {"kind": kind, "id": row_id, "person_id": person_id, **ids}
    return outbox.publish(
        session, EVIDENCE_RECORDED, payload, key=f"{EVIDENCE_RECORDED}:{kind}:{row_id}",
        person_id=person_id,
    )  # fmt: skip
