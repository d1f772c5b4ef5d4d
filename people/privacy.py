"""A person's own data, and erasing a leaver's personal data once the retention period has passed.

Under UK GDPR a person may have a copy of the personal data held about them (``personal_data``),
and data is kept only as long as its purpose needs (``erase_person``). The purpose here is
evidence: that a named person read and acknowledged a policy version before running a federation
account, for the senior leadership team's approvals and for inspection. Once a leaver is past the
retention period that purpose is spent for their name, but the federation still needs to show
*that* someone in a role and school was trained and signed. So erasure replaces who they were with
a pseudonym and keeps the evidence rows, tied to the pseudonymous id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, text
from sqlalchemy.orm import Session

from audit.evidence import NotAsRecorded, as_recorded
from audit.log import note_before_change, record, record_evidence, trusted_rows
from audit.models import ErasureMarker
from core.db import utcnow
from people.models import Person, SignInAttempt
from people.personal_data import Erasure, Export, iso, registry

log = logging.getLogger("countersign.privacy")

# Six years after leaving: the period school HR retention schedules keep staff training records
# for (the limitation period for claims), unless COUNTERSIGN_RETENTION_DAYS says otherwise.
DEFAULT_RETENTION_DAYS = 6 * 365

EXPORTED = "personal_data.exported"
ERASED = "person.erased"


class ErasureRefused(ValueError):
    """This person may not be erased (yet); the message says why."""


class ErasureTampered(ErasureRefused):
    """Evidence erasure would change no longer matches the audit log: erasing would re-record
    the change as if it were the application's. Nothing is changed; the mismatch is logged."""


def pseudonym(person_id: int) -> tuple[str, str]:
    """The name and email an erased person keeps: unique because the id is."""
    return f"Erased person #{person_id}", f"erased-{person_id}@erased.invalid"


# --- the person's own copy -----------------------------------------------------------------------


def personal_data(
    session: Session, person: Person, verify_url: Callable[[str], str], now: datetime | None = None
) -> dict[str, Any]:
    """Everything held about ``person``, as JSON-ready data: each registered part's section.

    Only their own records. Where a record involves other people (an application naming several
    runners) it gives only what the app already shows this person: the names of the runners they
    chose on their own applications, and, where someone else named them as a runner, the account
    and the decision, without anyone else's name or training status.
    """
    data: dict[str, Any] = {
        "format": "countersign-personal-data/1",
        "produced_at": iso(now or utcnow()),
    }
    request = Export(session, person, verify_url)
    for part in registry().ordered():
        if part.export is not None:
            data[part.name] = part.export(request)
    return data


def profile(request: Export) -> dict[str, Any]:
    """The person's own row, with roles and schools."""
    person = request.person
    return {
        "id": person.id,
        "name": person.name,
        "email": person.email,
        "roles": person.roles,
        "schools": person.schools,
        "active": person.active,
        "has_password": person.password_hash is not None,
        "created_at": iso(person.created_at),
        "deactivated_at": iso(person.deactivated_at),
    }


def sign_in_attempts(request: Export) -> list[dict[str, Any]]:
    return [
        {"at": iso(a.at), "ip_address": a.ip, "succeeded": a.succeeded}
        for a in request.session.scalars(
            select(SignInAttempt)
            .where(SignInAttempt.email == request.person.email)
            .order_by(SignInAttempt.at)
        )
    ]


def erase_sign_in_attempts(erasure: Erasure) -> None:
    erasure.session.execute(delete(SignInAttempt).where(SignInAttempt.email == erasure.old_email))


def record_export(session: Session, person: Person) -> None:
    record(session, EXPORTED, actor_id=person.id, subject_type="person", subject_id=person.id)


# --- erasure -------------------------------------------------------------------------------------


def erasure_refusal(person: Person, retention_days: int, now: datetime | None = None) -> str | None:
    """Why this person may not be erased now, in plain words; None when they may be."""
    if person.erased_at is not None:
        return "This person's personal data has already been erased."
    if person.active or person.deactivated_at is None:
        return "Only a deactivated person (a leaver) can be erased. Deactivate them first."
    due = person.deactivated_at + timedelta(days=retention_days)
    if (now or utcnow()) < due:
        return (
            f"Their records are kept for {retention_days} days after they left: they can be "
            f"erased from {due:%d %B %Y}."
        )
    return None


def erase_person(
    session: Session,
    person_id: int,
    *,
    actor_id: int | None,
    retention_days: int,
    now: datetime | None = None,
) -> Person:
    """Replace a leaver's personal data with a pseudonym, keeping the evidence of training.

    Runs in the caller's transaction and commits nothing: the caller commits once, so the erasure
    happens whole or not at all. Raises ErasureRefused for an active person, a leaver still within
    the retention period, or someone already erased. Each package's registered part erases its
    own rows (:mod:`people.personal_data`), in their registered order.
    """
    now = now or utcnow()
    # Locked and read afresh, so two administrators erasing at once cannot both pass the checks.
    person = session.scalar(
        select(Person)
        .where(Person.id == person_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if person is None:
        raise ErasureRefused("There is no such person.")
    refusal = erasure_refusal(person, retention_days, now)
    if refusal:
        raise ErasureRefused(refusal)
    old_name, old_email = person.name, person.email
    new_name, new_email = pseudonym(person.id)
    parts = registry().ordered()

    # Erasure re-records each changed evidence row's digest. Only over the digest the chain holds
    # for it: a row changed behind the application's back would otherwise pass as recorded. So
    # every row it will change is checked first, and nothing is changed if one does not match.
    checked: dict[str, list[int]] = {}
    for part in parts:
        if part.evidence is not None:
            checked.update(part.evidence(session, person.id, old_name, old_email))
    evidence_tables = list(checked)
    # The person's row too: that they left, and when, is what allows erasure at all, so it must
    # be what the chain recorded (a leaving date set behind the application's back erases no one).
    checked["person"] = [person.id]
    try:
        was = as_recorded(session, checked, trusted=trusted_rows(session))
    except NotAsRecorded as exc:
        log.error("person %s: not erased: %s", person.id, exc)
        raise ErasureTampered(
            "Their evidence does not match the audit log, so nothing was erased: "
            + "; ".join(exc.problems)
        ) from exc

    note_before_change(session, "person", [person.id])  # its erasure is recorded over this
    # The evidence tables refuse changes (migrations 0011, 0017) except the pseudonymising ones
    # to this person's rows while the marker exists; it is removed again below, before the
    # caller commits.
    _begin_erasure(session, person.id)
    erasure = Erasure(
        session, person.id, old_name, old_email, new_name, new_email,
        changed={t: set() for t in evidence_tables},
    )  # fmt: skip
    for part in parts:
        if part.erase is not None:
            part.erase(erasure)
    changed = erasure.changed

    person.name, person.email = new_name, new_email
    person.password_hash = None
    person.auth_version += 1
    person.erased_at = now
    session.flush()
    _end_erasure(session, person.id)
    unchecked = {f"{t} {i}" for t, ids in changed.items() for i in ids - set(checked.get(t, ()))}
    if unchecked:  # a row appeared meanwhile: the caller rolls back
        raise ErasureTampered(f"Evidence changed during erasure: {', '.join(sorted(unchecked))}")
    # The chain records each pseudonymised row's new digest, so verify checks it as it now is,
    # and the digest it had, so verify can tell it was re-recorded over the right one.
    for table, ids in changed.items():
        record_evidence(
            session, "evidence.pseudonymised", table, ids, actor_id=actor_id,
            detail={"person": person.id}, was=was[table],
        )  # fmt: skip
    # The person's row is digested too: the chain holds the pseudonym from now on.
    record_evidence(session, ERASED, "person", [person.id], actor_id=actor_id)
    return person


def _begin_erasure(session: Session, person_id: int) -> None:
    """Open this person's evidence rows to pseudonymising. On PostgreSQL only the owner's function
    may write the marker (migration 0017: the application role cannot); SQLite has no roles."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT countersign_erasure_begin(:p)"), {"p": person_id})
    else:
        session.execute(insert(ErasureMarker.__table__).values(person_id=person_id))


def _end_erasure(session: Session, person_id: int) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT countersign_erasure_end(:p)"), {"p": person_id})
    else:
        session.execute(delete(ErasureMarker).where(ErasureMarker.person_id == person_id))


def expired_leavers(
    session: Session, retention_days: int, now: datetime | None = None
) -> list[int]:
    """Ids of every leaver past the retention period and not yet erased."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    return list(
        session.scalars(
            select(Person.id)
            .where(
                Person.active.is_(False),
                Person.erased_at.is_(None),
                Person.deactivated_at.is_not(None),
                Person.deactivated_at <= cutoff,
            )
            .order_by(Person.id)
        )
    )


def retention_days(config: Any) -> int:
    """COUNTERSIGN_RETENTION_DAYS, or the default; a bad value is an error, never a silent zero."""
    value = config.get("RETENTION_DAYS", DEFAULT_RETENTION_DAYS)
    try:
        days = int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"COUNTERSIGN_RETENTION_DAYS must be a whole number of days, not {value!r}"
        )
    if days < 0:
        raise ValueError("COUNTERSIGN_RETENTION_DAYS cannot be negative")
    return days
