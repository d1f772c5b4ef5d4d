"""The API's answers about people's training, precomputed so that a lookup is one query.

An answer is the JSON the API returns for a person and a policy, produced by the one rule in
:mod:`training.status` and stored in ``precomputed_status``. It is served only while it cannot be
stale:

- the person's and the policy's ``status_rev`` are still those it was computed at. Database triggers
  bump them in the same transaction as any change to evidence, roles, personal details or content,
  so an answer stops counting the moment the change commits, whichever code made it;
- ``fresh_until`` has not passed: the moment time alone changes the answer (training expires, or a
  version published ahead takes effect).

Revisions are read before the evidence, so an answer computed while a change commits is labelled
with the older revision and never served. Anything missing or out of date is computed, returned and
stored; storing is an optimisation, and a lookup answers even when it cannot store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any, NamedTuple

from flask import Flask
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, selectinload

from api.models import PrecomputedStatus
from core.db import Sql, db, utcnow, writing
from people.models import Person
from training.models import Policy
from training.publishing import next_takeover
from training.status import Status, statuses_for

log = logging.getLogger("countersign.api")


class PolicyRef(NamedTuple):
    id: int
    slug: str
    rev: int


@dataclass(frozen=True)
class Answer:
    person_id: int
    trained: bool
    body: str  # the JSON object, serialised


def policies() -> list[PolicyRef]:
    """Every policy, by slug (a handful of rows)."""
    return [PolicyRef(*row) for row in db.reader.all(_POLICIES)]


def is_id(ref: str) -> bool:
    """A person id: ASCII digits only (str.isdigit() alone also accepts '²', which int() refuses)."""
    return ref.isascii() and ref.isdigit() and len(ref) <= 10 and int(ref) <= 2**31 - 1


def status_json(person: Person, policy_slug: str, status: Status) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat().replace("+00:00", "Z") if value else None

    return {
        "person": {
            "id": person.id,
            "name": person.name,
            "email": person.email,
            "roles": person.roles,
            "active": person.active,
        },
        "policy": {"slug": policy_slug, "version": status.version},
        "trained": status.trained,
        "valid_until": iso(status.valid_until),
        "modules": [
            {
                "slug": m.slug,
                "title": m.title,
                "status": m.state,
                "completed_at": iso(m.completed_at),
            }
            for m in status.modules
        ],
        "missing": [{"module": m.module, "reason": m.reason} for m in status.missing],
    }


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def status_only(body: str) -> str:
    """An answer cut down for a ``training:status`` token: the person's id and the verdict, never
    their name, email, roles or module-by-module progress."""
    full = json.loads(body)
    return dumps(
        {
            "person": {"id": full["person"]["id"]},
            "policy": full["policy"],
            "trained": full["trained"],
            "valid_until": full["valid_until"],
        }
    )


_POLICIES = Sql("SELECT id, slug, status_rev FROM policy ORDER BY slug")

# One query: each person asked about, with their answer when a valid one is stored.
_LOOKUP = Sql(
    """
    SELECT p.id, p.email, p.status_rev, s.trained, s.body
    FROM person p
    LEFT JOIN precomputed_status s
      ON s.person_id = p.id AND s.policy_id = :policy_id
     AND s.person_rev = p.status_rev AND s.policy_rev = :policy_rev
     AND (s.fresh_until IS NULL OR s.fresh_until > :now)
    WHERE p.id {in :ids integer} OR p.email {in :emails text}
    """
)


def find_answers(
    policy: PolicyRef, refs: Iterable[str], now: datetime | None = None
) -> dict[str, Answer]:
    """Answers for people named by id or email, keyed by the ref that found them.

    Refs that match nobody are left out. Raises LookupError when the policy has no version.
    Stored answers are read with :attr:`db.reader`; the rule runs in :attr:`db.session`.
    """
    now = now or utcnow()
    # Each ref as the person id or the email address it names.
    keys: dict[str, int | str] = {}
    for ref in refs:
        if "\x00" not in ref:  # can match nobody, and PostgreSQL refuses it
            keys[ref] = int(ref) if is_id(ref) else ref.strip().lower()
    ids = sorted({k for k in keys.values() if isinstance(k, int)})
    emails = sorted({k for k in keys.values() if isinstance(k, str)})
    if not keys:
        return {}
    rows = db.reader.all(
        _LOOKUP, policy_id=policy.id, policy_rev=policy.rev, now=now, ids=ids, emails=emails
    )
    answers: dict[int, Answer] = {}
    revs: dict[int, int] = {}
    for person_id, _, rev, trained, body in rows:
        if body is None:
            revs[person_id] = rev
        else:
            answers[person_id] = Answer(person_id, bool(trained), body)
    if revs:
        answers.update(_compute(db.session, policy, revs, now))
    person_for: dict[int | str, int] = {row[0]: row[0] for row in rows}
    person_for.update((row[1], row[0]) for row in rows)
    found: dict[str, Answer] = {}
    for ref, key in keys.items():
        person_id = person_for.get(key)
        if person_id is not None and person_id in answers:
            found[ref] = answers[person_id]
    return found


def _compute(
    session: Session, policy_ref: PolicyRef, revs: dict[int, int], now: datetime
) -> dict[int, Answer]:
    """Run the rule for these people, store the answers labelled with ``revs``, return them."""
    policy = session.get(Policy, policy_ref.id)
    if policy is None:
        raise LookupError(f"policy {policy_ref.slug!r} does not exist")
    people = session.scalars(
        select(Person)
        .where(Person.id.in_(list(revs)))
        .options(selectinload(Person.role_rows))
        .execution_options(populate_existing=True)  # never details from an earlier transaction
    ).all()
    statuses = statuses_for(session, list(people), policy, now)
    takeover = next_takeover(session, policy, now.date())
    version_changes = datetime.combine(takeover, time(), UTC) if takeover else None
    answers: dict[int, Answer] = {}
    rows: list[dict[str, Any]] = []
    for person in people:
        status = statuses[person.id]
        body = dumps(status_json(person, policy.slug, status))
        answers[person.id] = Answer(person.id, status.trained, body)
        moments = [m for m in (status.changes_at, version_changes) if m is not None]
        rows.append(
            {
                "person_id": person.id,
                "policy_id": policy.id,
                "person_rev": revs[person.id],
                "policy_rev": policy_ref.rev,
                "trained": status.trained,
                "standing": status.standing,
                "completed": status.completed_count,
                "required": len(status.modules),
                "valid_until": status.valid_until,
                "body": body,
                "fresh_until": min(moments, default=None),
                "computed_at": now,
            }
        )
    _store(session, rows)
    return answers


def _store(session: Session, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(PrecomputedStatus)
    stmt = stmt.on_conflict_do_update(
        index_elements=["person_id", "policy_id"],
        set_={
            name: stmt.excluded[name]
            for name in (
                "person_rev",
                "policy_rev",
                "trained",
                "standing",
                "completed",
                "required",
                "valid_until",
                "body",
                "fresh_until",
                "computed_at",
            )
        },
    )
    try:
        with writing(session):
            session.execute(stmt, rows)
    except OperationalError:  # busy: the answer stands; it is computed again next time
        log.warning("could not store %d precomputed statuses", len(rows), exc_info=True)


_OUT_OF_DATE = Sql(
    """
    SELECT p.id FROM person p
    LEFT JOIN precomputed_status s
      ON s.person_id = p.id AND s.policy_id = :policy_id
     AND s.person_rev = p.status_rev AND s.policy_rev = :policy_rev
     AND (s.fresh_until IS NULL OR s.fresh_until > :now)
    WHERE s.person_id IS NULL
    ORDER BY p.id
    """
)


def refresh(
    person_ids: list[int] | None = None, batch: int = 1000, now: datetime | None = None
) -> int:
    """Make sure these people's answers (everyone's when None) are stored and valid.

    Returns how many answers were checked: those still valid are left as they are.
    """
    now = now or utcnow()
    count = 0
    for policy in policies():
        if person_ids is None:  # only those out of date: one query finds them
            params = {"policy_id": policy.id, "policy_rev": policy.rev, "now": now}
            wanted = [row[0] for row in db.reader.all(_OUT_OF_DATE, **params)]
        else:
            wanted = person_ids
        for start in range(0, len(wanted), batch):
            chunk = [str(i) for i in wanted[start : start + batch]]
            try:
                count += len(find_answers(policy, chunk, now))
            except LookupError:
                break  # a policy without a version has nothing to answer
    return count


def init_app(app: Flask) -> None:
    """After a change to some people's status, store their new answers straight away."""
    from core.events import status_may_change

    def on_change(sender: Flask, person_ids: list[int] | None, **_: Any) -> None:
        if sender is not app or person_ids is None:
            return  # everyone: answers are computed as they are asked for
        try:
            refresh(person_ids)
        except Exception:  # the change itself is committed; answers are computed on demand
            log.exception("could not precompute training status")

    status_may_change.connect(on_change, weak=False)
