"""The API's answers about people's training, serialised from the stored answers of the rule.

Answers come from ``stored_status``, the one store of training status (:mod:`training.status_store`),
read here with one query per lookup on the thread's plain connection (:attr:`db.reader`). A stored
answer is served only while it counts: the person's and the policy's revisions are those it was
computed at, and ``fresh_until`` has not passed. Anyone asked about whose answer does not count is
handed to the store, which asks the rule, stores the answer and announces any change; a lookup
therefore answers even when nothing was stored before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.db import Sql, db, utcnow, writing
from people.models import Person
from training import status_store
from training.models import Policy
from training.status import Status

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


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def answer_json(
    person: tuple[int, str, str, list[str], bool], policy_slug: str, version: str,
    trained: bool, valid_until: datetime | None, modules: list[dict], missing: list[dict],
) -> dict[str, Any]:  # fmt: skip
    """The API's answer for a person, from the stored answer's columns."""
    person_id, name, email, roles, active = person
    return {
        "person": {
            "id": person_id,
            "name": name,
            "email": email,
            "roles": roles,
            "active": active,
        },  # fmt: skip
        "policy": {"slug": policy_slug, "version": version},
        "trained": trained,
        "valid_until": _iso(valid_until),
        "modules": [
            {
                "slug": m["slug"],
                "title": m["title"],
                "status": m["state"],
                "completed_at": _iso(_when(m["completed_at"])),
            }
            for m in modules
        ],  # fmt: skip
        "missing": [{"module": m["module"], "reason": m["reason"]} for m in missing],
    }


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def status_json(person: Person, policy_slug: str, status: Status) -> dict[str, Any]:
    """The API's answer for a person, from the rule's :class:`Status`."""
    return answer_json(
        (person.id, person.name, person.email, person.roles, person.active), policy_slug,
        status.version, status.trained, status.valid_until,
        [{"slug": m.slug, "title": m.title, "state": m.state,
          "completed_at": m.completed_at.isoformat() if m.completed_at else None}
         for m in status.modules],
        [{"module": m.module, "reason": m.reason} for m in status.missing],
    )  # fmt: skip


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

# One query: each person asked about, their roles, and their answer when a valid one is stored.
_LOOKUP = """
    SELECT p.id, p.email, p.name, p.active, {roles},
           s.person_id, s.version, s.trained, s.valid_until, s.modules, s.missing
    FROM person p
    LEFT JOIN stored_status s
      ON s.person_id = p.id AND s.policy_id = :policy_id
     AND s.person_rev = p.status_rev AND s.policy_rev = :policy_rev
     AND s.computed_at <= :now AND (s.fresh_until IS NULL OR s.fresh_until > :now)
    WHERE p.id {{in :ids integer}} OR p.email {{in :emails text}}
"""
_LOOKUP_SQLITE = Sql(
    _LOOKUP.format(
        roles="(SELECT group_concat(role, ',') FROM person_role r WHERE r.person_id = p.id)"
    )
)
_LOOKUP_POSTGRESQL = Sql(
    _LOOKUP.format(
        roles="(SELECT string_agg(role, ',') FROM person_role r WHERE r.person_id = p.id)"
    )
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
    reader = db.reader
    rows = reader.all(
        _LOOKUP_POSTGRESQL if reader.postgresql else _LOOKUP_SQLITE,
        policy_id=policy.id, policy_rev=policy.rev, now=now, ids=ids, emails=emails,
    )  # fmt: skip
    answers: dict[int, Answer] = {}
    wanted: list[int] = []
    for (
        pid,
        email,
        name,
        active,
        roles,
        stored,
        version,
        trained,
        valid_until,
        modules,
        missing,
    ) in rows:
        if stored is None:
            wanted.append(pid)
            continue
        person = (pid, name, email, sorted(roles.split(",")) if roles else [], bool(active))
        body = answer_json(
            person, policy.slug, version, bool(trained),
            reader.datetime(valid_until) if valid_until is not None else None,
            reader.json(modules), reader.json(missing),
        )  # fmt: skip
        answers[pid] = Answer(pid, bool(trained), dumps(body))
    if wanted:
        answers.update(_compute(db.session, policy, wanted, now))
    person_for: dict[int | str, int] = {row[0]: row[0] for row in rows}
    person_for.update((row[1], row[0]) for row in rows)
    found: dict[str, Answer] = {}
    for ref, key in keys.items():
        person_id = person_for.get(key)
        if person_id is not None and person_id in answers:
            found[ref] = answers[person_id]
    return found


def _compute(
    session: Session, policy_ref: PolicyRef, person_ids: list[int], now: datetime
) -> dict[int, Answer]:
    """Hand these people to the store: the rule runs once each, and each answer is stored (and
    any change announced) in a short transaction; a lookup answers even when it cannot store."""
    policy = session.get(Policy, policy_ref.id)
    if policy is None:
        raise LookupError(f"policy {policy_ref.slug!r} does not exist")
    try:
        with writing(session):
            policy = session.get_one(Policy, policy_ref.id)
            people = status_store.load_people(session, person_ids)
            statuses = status_store.refresh(session, people, policy, now)
            bodies = {p.id: dumps(status_json(p, policy.slug, statuses[p.id])) for p in people}
    except OperationalError:  # busy: answer without storing; the next lookup stores it
        log.warning("could not store %d training statuses", len(person_ids), exc_info=True)
        people = status_store.load_people(session, person_ids)
        from training.status import statuses_for

        statuses = statuses_for(session, people, policy, now)
        bodies = {p.id: dumps(status_json(p, policy.slug, statuses[p.id])) for p in people}
    return {pid: Answer(pid, statuses[pid].trained, body) for pid, body in bodies.items()}


def refresh(person_ids: list[int] | None = None, now: datetime | None = None) -> int:
    """Bring stored answers up to date (these people's, or everyone's); how many were computed."""
    return status_store.bring_up_to_date(db.session, person_ids, now)
