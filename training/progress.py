"""What a learner does: open a module, confirm reading it, sign the acknowledgement.

Each function checks the rule first and records evidence only when it changes something, so repeating
an action (a double click, a resubmitted form) records nothing more.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from audit.log import record_evidence
from core.db import insert_ignoring_conflict, utcnow
from people.models import Person
from training import evidence
from training.models import (
    Acknowledgement,
    AcknowledgementModule,
    ModuleVersion,
    ModuleVisit,
    Policy,
    ReadReceipt,
)
from training.status import QUIZ_NOT_PASSED, Status
from training.status_store import current, touch

DECLARATION = (
    "I confirm that I have read and understood the {title} (version {version}) of the {federation}, "
    "and that I will follow it."
)


class TrainingError(Exception):
    """A learner action the rules do not allow; the message is shown to the person."""


class NotReadyToSign(TrainingError):
    def __init__(self, status: Status) -> None:
        self.status = status
        super().__init__("Finish every module before signing.")


class AlreadySigned(TrainingError):
    def __init__(self, status: Status) -> None:
        self.status = status
        super().__init__("You have already signed this version of the policy.")


class NameMismatch(TrainingError):
    pass


@dataclass(frozen=True)
class AckRequest:
    typed_name: str
    declaration: str
    ip: str
    user_agent: str


def _lock_person(session: Session, person: Person) -> None:
    """Serialise one person's writes: the rule is read and the evidence written as one step.

    On PostgreSQL this row lock makes a second, simultaneous submit wait and then see the first
    one's result; SQLite's BEGIN IMMEDIATE already serialises writers.
    """
    # FOR NO KEY UPDATE: it still serialises the person's writes, but lets other transactions
    # insert rows that refer to the person (a foreign key check takes KEY SHARE), such as the
    # status store's answer written after another submit's commit; FOR UPDATE would deadlock them.
    session.execute(select(Person.id).where(Person.id == person.id).with_for_update(key_share=True))


def record_visit(session: Session, person: Person, module_version: ModuleVersion) -> None:
    """Remember that the person opened this module version (progress, updated in place)."""
    touch(session, [person.id])
    now = utcnow()
    inserted = insert_ignoring_conflict(
        session,
        ModuleVisit.__table__,
        {
            "person_id": person.id,
            "module_version_id": module_version.id,
            "first_at": now,
            "last_at": now,
        },
    )
    if not inserted:
        session.execute(
            update(ModuleVisit)
            .where(
                ModuleVisit.person_id == person.id,
                ModuleVisit.module_version_id == module_version.id,
            )
            .values(last_at=now)
        )


def record_read(
    session: Session, person: Person, policy: Policy, module_version: ModuleVersion
) -> bool:
    """Record "I have read this module"; False when it already counted (nothing recorded)."""
    _lock_person(session, person)
    status = current(session, person, policy)
    entry = next((m for m in status.modules if m.module_version_id == module_version.id), None)
    if entry is not None and (entry.complete or entry.reason == QUIZ_NOT_PASSED):
        return False  # already read in this cycle
    seq = session.scalar(
        select(func.count())
        .select_from(ReadReceipt)
        .where(
            ReadReceipt.person_id == person.id, ReadReceipt.module_version_id == module_version.id
        )
    )
    inserted = insert_ignoring_conflict(
        session,
        ReadReceipt.__table__,
        {
            "person_id": person.id,
            "module_version_id": module_version.id,
            "seq": seq,
            "at": utcnow(),
        },
    )
    if inserted:
        receipt_id = session.scalar(
            select(ReadReceipt.id).where(
                ReadReceipt.person_id == person.id,
                ReadReceipt.module_version_id == module_version.id,
                ReadReceipt.seq == seq,
            )
        )
        record_evidence(
            session, "module.read", "read_receipt", [receipt_id], actor_id=person.id,
            detail={"module_version": module_version.id},
        )  # fmt: skip
        evidence.announce(session, evidence.READ, receipt_id, person.id)
        touch(session, [person.id])
    return inserted


def normalise_name(name: str) -> str:
    """Compare names as people type them: ignoring case, spacing, accents and punctuation."""
    decomposed = unicodedata.normalize("NFKD", name)
    kept = "".join(c if c.isalnum() else " " for c in decomposed if not unicodedata.combining(c))
    return " ".join(kept.split()).casefold()


def acknowledge(
    session: Session,
    person: Person,
    policy: Policy,
    request: AckRequest,
    now: datetime | None = None,
) -> Acknowledgement:
    """Sign the current policy version. Refused unless every required module is complete.

    The typed name must match the person's name (ignoring case and spacing): it is their signature.
    """
    _lock_person(session, person)
    status = current(session, person, policy, now)
    if status.trained:
        raise AlreadySigned(status)
    if not status.ready_to_sign:
        raise NotReadyToSign(status)
    if normalise_name(request.typed_name) != normalise_name(person.name):
        raise NameMismatch(f"Type your full name exactly as it appears here: {person.name}")
    seq = session.scalar(
        select(func.count())
        .select_from(Acknowledgement)
        .where(
            Acknowledgement.person_id == person.id,
            Acknowledgement.policy_version_id == status.policy_version_id,
        )
    )
    values = {
        "person_id": person.id,
        "policy_version_id": status.policy_version_id,
        "seq": seq,
        "declaration": request.declaration,
        "typed_name": " ".join(request.typed_name.split())[:200],
        "at": now or utcnow(),
        "ip": request.ip[:45],
        "user_agent": request.user_agent[:500],
    }
    if not insert_ignoring_conflict(session, Acknowledgement.__table__, values):
        # A simultaneous submit of the same form won: that acknowledgement stands.
        raise AlreadySigned(status)
    ack = session.scalars(
        select(Acknowledgement).where(
            Acknowledgement.person_id == person.id,
            Acknowledgement.policy_version_id == status.policy_version_id,
            Acknowledgement.seq == seq,
        )
    ).one()
    for module in status.modules:
        session.add(
            AcknowledgementModule(
                acknowledgement_id=ack.id, module_version_id=module.module_version_id
            )
        )
    session.flush()
    # The digest covers the row and the module versions (with their text hashes) it was signed for.
    record_evidence(
        session, "acknowledgement.signed", "acknowledgement", [ack.id], actor_id=person.id,
        detail={"policy_version": status.policy_version_id},
    )  # fmt: skip
    evidence.announce(session, evidence.ACKNOWLEDGEMENT, ack.id, person.id)
    touch(session, [person.id])
    return ack


def declaration_for(policy_title: str, version: str, federation: str) -> str:
    return DECLARATION.format(title=policy_title, version=version, federation=federation)
