"""What happens after a change: the one store of training status, and the one step that keeps it.

Domain functions that write evidence, roles, people or content call :func:`touch` with the people
they touched (or :func:`touch_everyone`, for a new version). After the transaction commits, one
step (:func:`after_commit`) asks the rule once for each touched person and policy whose stored
answer is out of date, stores the answer (``stored_status``), and, when the person's standing
changed, writes one ``status.changed`` message to the outbox (:mod:`core.outbox`), with the old and
the new standing. Webhooks, certificates, grades, xAPI and reminders consume that message; none of
them runs the rule again. A change to everyone is left to the worker, so publishing returns at once.

The stored answer is trusted only while it cannot be stale: database triggers bump
``person.status_rev`` and ``policy.status_rev`` in the same transaction as any change to what the
rule reads (migration 0006), and ``fresh_until`` is when time alone changes the answer. So even a
change made by code that forgot to :func:`touch` (or by hand, in SQL) is noticed: the stored row no
longer counts, the next reader or the worker's sweep asks the rule again, and the change is
announced then. Everything here that writes the store goes through :func:`refresh`, the only place
that compares old and new and announces the difference.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta
from typing import Any

from flask import Flask, current_app
from sqlalchemy import and_, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, joinedload

from core import outbox
from core.db import utcnow, writing
from people.models import Person
from training.marks import EVERYONE, TOUCHED, touch, touch_everyone
from training.models import Policy, PolicyVersion, StoredStatus
from training.publishing import next_takeover
from training.status import Missing, ModuleStatus, Status, statuses_for

log = logging.getLogger("countersign.status")
__all__ = ["touch", "touch_everyone"]  # marking lives in training.marks; offered here too

STATUS_CHANGED = "status.changed"
SWEEP = "status.sweep"
BATCH = 500


# --- converting between the rule's answer and the stored row -----------------------------------


def _iso(value: datetime | None) -> str | None:
    """A time as stored in the JSON columns and events: ISO 8601 in UTC, ending ``+00:00``.

    The API serves these strings without parsing them again, so the form is fixed here.
    """
    return value.astimezone(UTC).isoformat() if value else None


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value).astimezone(UTC) if value else None


def as_status(row: StoredStatus) -> Status:
    """The rule's answer as it was stored: the same :class:`Status` the rule gave."""
    return Status(
        person_id=row.person_id,
        active=row.active,
        policy_version_id=row.policy_version_id,
        version=row.version,
        trained=row.trained,
        valid_until=row.valid_until,
        modules=tuple(
            ModuleStatus(
                m["slug"],
                m["title"],
                m["module_version_id"],
                m["state"],
                _when(m["completed_at"]),
                m["reason"],
            )  # fmt: skip
            for m in row.modules
        ),
        missing=tuple(Missing(m["module"], m["reason"]) for m in row.missing),
        acknowledged_at=row.acknowledged_at,
        expired_at=row.expired_at,
        changes_at=row.changes_at,
        acknowledgement_id=row.acknowledgement_id,
    )


def _values(status: Status) -> dict[str, Any]:
    return {
        "policy_version_id": status.policy_version_id,
        "version": status.version,
        "active": status.active,
        "trained": status.trained,
        "standing": status.standing,
        "completed": status.completed_count,
        "required": len(status.modules),
        "valid_until": status.valid_until,
        "acknowledged_at": status.acknowledged_at,
        "acknowledgement_id": status.acknowledgement_id,
        "expired_at": status.expired_at,
        "changes_at": status.changes_at,
        "modules": [
            {
                "slug": m.slug,
                "title": m.title,
                "module_version_id": m.module_version_id,
                "state": m.state,
                "completed_at": _iso(m.completed_at),
                "reason": m.reason,
            }
            for m in status.modules
        ],  # fmt: skip
        "missing": [{"module": m.module, "reason": m.reason} for m in status.missing],
    }


def standing_of(values: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a ``status.changed`` event carries of an answer: enough for every consumer."""
    if values is None:
        return None
    return {
        "standing": values["standing"],
        "trained": values["trained"],
        "active": values["active"],
        "version": values["version"],
        "valid_until": _iso(values["valid_until"]),
        "acknowledgement_id": values["acknowledgement_id"],
        "completed": values["completed"],
        "required": values["required"],
    }


# --- the one step ----------------------------------------------------------------------------


def refresh(
    session: Session, people: list[Person], policy: Policy, now: datetime | None = None,
    revs: dict[int, int] | None = None, policy_rev: int | None = None,
) -> dict[int, Status]:  # fmt: skip
    """Ask the rule once for each of ``people``, store the answers, and queue one
    ``status.changed`` message for each person whose standing differs from the stored one.

    Revisions are read before the evidence (or given, as read by the caller), so an answer
    computed while a change commits is labelled with the older revision and never trusted. The
    caller commits. Raises LookupError when the policy has no published version.
    """
    now = now or utcnow()
    ids = [p.id for p in people]
    if not ids:
        return {}
    if revs is None:
        rows = session.execute(select(Person.id, Person.status_rev).where(Person.id.in_(ids)))
        revs = {pid: rev for pid, rev in rows}
    if policy_rev is None:
        policy_rev = session.scalar(select(Policy.status_rev).where(Policy.id == policy.id))
    statuses = statuses_for(session, people, policy, now)
    takeover = next_takeover(session, policy, now.date())
    version_changes = datetime.combine(takeover, time(), UTC) if takeover else None
    stored = {
        row.person_id: row
        for row in session.scalars(
            select(StoredStatus).where(
                StoredStatus.policy_id == policy.id, StoredStatus.person_id.in_(ids)
            )
        )
    }
    rows: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    for person in people:
        status = statuses[person.id]
        values = _values(status)
        moments = [m for m in (status.changes_at, version_changes) if m is not None]
        rows.append(
            {"person_id": person.id, "policy_id": policy.id, "person_rev": revs[person.id],
             "policy_rev": policy_rev, "fresh_until": min(moments, default=None),
             "computed_at": now, **values}
        )  # fmt: skip
        old = stored.get(person.id)
        before = standing_of(_values(as_status(old))) if old is not None else None
        after = standing_of(values)
        if before != after:
            changes.append(
                _announcement(person.id, policy, before, after, now, revs[person.id], policy_rev)
            )
    _store(session, rows)
    outbox.enqueue_many(session, STATUS_CHANGED, changes)
    return statuses


def _announcement(
    person_id: int, policy: Policy, before: dict | None, after: dict, now: datetime,
    person_rev: int, policy_rev: int,
) -> dict[str, Any]:  # fmt: skip
    # The same change seen by two processes at once is one message (the key is unique).
    key = (
        f"{STATUS_CHANGED}:{person_id}:{policy.id}:{person_rev}:{policy_rev}:"
        f"{after['standing']}:{after['valid_until']}:{after['version']}"
    )
    return {
        "payload": {"person_id": person_id, "policy_id": policy.id, "policy": policy.slug,
                    "old": before, "new": after, "at": now.isoformat()},
        "key": key[:200],
        "person_id": person_id,
    }  # fmt: skip


def _store(session: Session, rows: list[dict[str, Any]]) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(StoredStatus)
    columns = [c.name for c in StoredStatus.__table__.columns if not c.primary_key]
    stmt = stmt.on_conflict_do_update(
        index_elements=["person_id", "policy_id"],
        set_={name: stmt.excluded[name] for name in columns},
    )
    session.execute(stmt, rows)


def load_people(session: Session, ids: Iterable[int]) -> list[Person]:
    return list(
        session.scalars(
            select(Person)
            .where(Person.id.in_(list(ids)))
            .options(joinedload(Person.role_rows))
            .execution_options(populate_existing=True)  # never details from an earlier transaction
            .order_by(Person.id)
        ).unique()
    )


def _valid(now: datetime, policy: Policy, policy_rev: Any = None) -> Any:
    """An answer that counts: for the revisions the person and the policy have now (the policy's
    as loaded, unless ``policy_rev`` says where to read it)."""
    return and_(
        StoredStatus.policy_id == policy.id,
        StoredStatus.person_rev == Person.status_rev,
        StoredStatus.policy_rev == (policy.status_rev if policy_rev is None else policy_rev),
        StoredStatus.computed_at <= now,  # an answer says nothing about the time before it
        or_(StoredStatus.fresh_until.is_(None), StoredStatus.fresh_until > now),
    )


def out_of_date(
    session: Session, policy: Policy, person_ids: Iterable[int] | None = None,
    now: datetime | None = None, limit: int | None = None,
) -> list[int]:  # fmt: skip
    """The people (of these, or everyone) whose stored answer for ``policy`` does not count."""
    return list(_out_of_date_revs(session, policy, person_ids, now, limit)[0])


def _out_of_date_revs(
    session: Session, policy: Policy, person_ids: Iterable[int] | None = None,
    now: datetime | None = None, limit: int | None = None,
) -> tuple[dict[int, int], int | None]:  # fmt: skip
    """:func:`out_of_date`, with each person's revision and the policy's, as this transaction
    reads them now (before any evidence is): one query."""
    now = now or utcnow()
    policy_rev = select(Policy.status_rev).where(Policy.id == policy.id).scalar_subquery()
    query = (
        select(Person.id, Person.status_rev, policy_rev)
        .outerjoin(
            StoredStatus,
            and_(StoredStatus.person_id == Person.id, _valid(now, policy, policy_rev)),
        )
        .where(StoredStatus.person_id.is_(None))
        .order_by(Person.id)
    )
    if person_ids is not None:
        query = query.where(Person.id.in_(list(person_ids)))
    if limit:
        query = query.limit(limit)
    rows = session.execute(query).all()
    return {pid: rev for pid, rev, _ in rows}, (rows[0][2] if rows else None)


def bring_up_to_date(
    session: Session, person_ids: Iterable[int] | None = None, now: datetime | None = None,
    batch: int = BATCH,
) -> int:  # fmt: skip
    """Refresh every out-of-date answer (of these people, or everyone), a batch per transaction,
    each committed. Returns how many answers the rule gave."""
    now = now or utcnow()
    wanted = None if person_ids is None else sorted(set(person_ids))
    count = 0
    for policy in _policies(session):
        while True:
            with writing(session):
                # The revisions are read first, in the transaction that stores the answers.
                revs, policy_rev = _out_of_date_revs(session, policy, wanted, now, limit=batch)
                if not revs:
                    break
                people = load_people(session, revs)
                count += len(refresh(session, people, policy, now, revs, policy_rev))
            if wanted is not None and len(revs) < batch:
                break
    return count


def _policies(session: Session) -> list[Policy]:
    """Policies with a version to answer for (the rule answers nothing for the others): any
    version, since until the first takes effect the newest is the one shown."""
    published = select(PolicyVersion.id).where(PolicyVersion.policy_id == Policy.id).exists()
    return list(session.scalars(select(Policy).where(published).order_by(Policy.id)))


def stored(session: Session, person: Person, policy: Policy, now: datetime) -> Status | None:
    """The stored answer when it still counts, else None."""
    return _stored_many(session, [person.id], policy, now).get(person.id)


def _stored_many(
    session: Session, ids: list[int], policy: Policy, now: datetime
) -> dict[int, Status]:
    rows = session.scalars(
        select(StoredStatus)
        .join(Person, Person.id == StoredStatus.person_id)
        .where(StoredStatus.person_id.in_(ids), _valid(now, policy))
        .execution_options(populate_existing=True)
    )
    return {row.person_id: as_status(row) for row in rows}


def current_many(
    session: Session, people: list[Person], policy: Policy, now: datetime | None = None
) -> dict[int, Status]:
    """Are these people trained on ``policy`` now? Stored answers where they count, the rule's
    for the rest (stored, and announced when the standing changed, in the caller's transaction).
    Raises LookupError when the policy has no published version."""
    now = now or utcnow()
    found = _stored_many(session, [p.id for p in people], policy, now)
    rest = [p for p in people if p.id not in found]
    if rest:
        found.update(refresh(session, rest, policy, now))
    return found


def current(
    session: Session, person: Person, policy: Policy, now: datetime | None = None
) -> Status:
    """:func:`current_many` for one person."""
    return current_many(session, [person], policy, now)[person.id]


def for_page(session: Session, person: Person, policy: Policy) -> Status:
    """:func:`current` for a page that only reads: when the answer must be computed, it is stored
    in a short write transaction of its own, so reading a page never upgrades a read into a write
    (on SQLite that can fail at once under load instead of waiting)."""
    now = utcnow()
    found = stored(session, person, policy, now)
    if found is not None:
        return found
    with writing(session):
        return refresh(session, [person], policy, now)[person.id]


# --- after the commit ------------------------------------------------------------------------


def _still_open(session: Session) -> bool:
    """True when the event is a savepoint's: the outermost transaction is still active."""
    root = session.get_transaction()
    return root is not None and root.is_active


def after_commit(session: Session) -> None:
    """Bring the people the committed transaction touched up to date, in a session of its own
    (the one that committed cannot run SQL now). Never fails the change itself: what cannot be
    done now is done by the next reader or by the worker's sweep, because the triggers have
    already made the old answers stop counting."""
    if _still_open(session):
        return  # a savepoint was released: the transaction itself has not committed yet
    touched = session.info.pop(TOUCHED, None)
    everyone = session.info.pop(EVERYONE, False)
    if not touched and not everyone:
        return
    factory = current_app.extensions["countersign.db"]
    with factory() as own:
        try:
            if touched:
                bring_up_to_date(own, touched)
            if everyone:
                with writing(own):
                    outbox.enqueue(own, SWEEP, {})
                outbox.wake()
        except OperationalError:
            own.rollback()
            log.warning("status of %s people left for the worker", len(touched or ()),
                        exc_info=True)  # fmt: skip
        except LookupError:
            own.rollback()  # no published version yet: nothing to answer


def _after_rollback(session: Session) -> None:
    if _still_open(session):
        return  # back to a savepoint: what was marked before it still stands
    session.info.pop(TOUCHED, None)
    session.info.pop(EVERYONE, None)


def _sweep(session: Session, message: Any) -> None:
    bring_up_to_date(session)


def _sweep_periodic(session: Session, now: datetime) -> None:
    bring_up_to_date(session, now=now)


def init_app(app: Flask) -> None:
    from sqlalchemy import event

    factory = app.extensions["countersign.db"]
    event.listen(factory, "after_commit", after_commit)
    event.listen(factory, "after_rollback", _after_rollback)
    outbox.topic(app, SWEEP, _sweep, remote=True)
    # Time alone changes answers (training expires, a version takes effect): catch up each minute.
    outbox.periodic(app, SWEEP, _sweep_periodic, timedelta(minutes=1))
