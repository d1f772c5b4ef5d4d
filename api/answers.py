"""The API's answers about people's training, serialised from the stored answers of the rule.

Answers come from ``stored_status``, the one store of training status (:mod:`training.status_store`),
read here with one query per lookup on the thread's plain connection (:attr:`db.reader`). A stored
answer is served only while it counts: the person's and the policy's revisions are those it was
computed at, and ``fresh_until`` has not passed. Anyone asked about whose answer does not count is
handed to the store, which asks the rule, stores the answer and announces any change; a lookup
therefore answers even when nothing was stored before.

Each answer is a typed document (:class:`AnswerDoc`), decoded straight from the store's JSON
columns and encoded with one reusable encoder; a check's whole answer is encoded in one call.
Fields are in alphabetical order: the documents are those the API always served (sorted keys).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec
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


# --- the API's documents ---------------------------------------------------------------------
# Fields in alphabetical order: the documents are encoded as they were with ``sort_keys=True``.


class PersonDoc(msgspec.Struct, gc=False):
    active: bool
    email: str
    id: int
    name: str
    roles: list[str]


class PolicyDoc(msgspec.Struct, gc=False):
    slug: str
    version: str


class ModuleDoc(msgspec.Struct, gc=False):
    completed_at: str | None
    slug: str
    status: str
    title: str


class MissingDoc(msgspec.Struct, gc=False):
    """Also how a stored answer's ``missing`` entries are read: the API shows them as stored."""

    module: str | None
    reason: str


class AnswerDoc(msgspec.Struct, gc=False):
    missing: list[MissingDoc]
    modules: list[ModuleDoc]
    person: PersonDoc
    policy: PolicyDoc
    trained: bool
    valid_until: str | None


class PersonIdDoc(msgspec.Struct, gc=False):
    id: int


class StatusOnlyDoc(msgspec.Struct, gc=False):
    """An answer as a ``training:status`` token sees it."""

    person: PersonIdDoc
    policy: PolicyDoc
    trained: bool
    valid_until: str | None


class CheckDoc(msgspec.Struct, gc=False):
    """A check's answer: each result an :class:`AnswerDoc`, a :class:`StatusOnlyDoc` or
    :func:`not_found`."""

    all_trained: bool
    results: list[Any]


def not_found(ref: Any) -> msgspec.Raw:
    """A check's result for a ref that matches nobody. Encoded by the standard library, which
    escapes what UTF-8 cannot carry (a ref may hold a lone surrogate, as JSON allows)."""
    return msgspec.Raw(dumps({"ref": ref, "error": "not_found"}))


class _StoredModule(msgspec.Struct, gc=False):
    """What the API reads of a stored answer's ``modules`` entries (the rest is left unread)."""

    slug: str
    title: str
    state: str
    completed_at: str | None


_read_modules = msgspec.json.Decoder(list[_StoredModule]).decode
_read_missing = msgspec.json.Decoder(list[MissingDoc]).decode
_encoder = msgspec.json.Encoder()
encode = _encoder.encode


class Answer(NamedTuple):
    person_id: int
    trained: bool
    doc: AnswerDoc

    @property
    def body(self) -> str:
        """The answer as JSON text."""
        return encode(self.doc).decode()


def policies() -> list[PolicyRef]:
    """Every policy, by slug (a handful of rows)."""
    return [PolicyRef(*row) for row in db.reader.all(_POLICIES)]


def is_id(ref: str) -> bool:
    """A person id: ASCII digits only (str.isdigit() alone also accepts '²', which int() refuses)."""
    return ref.isascii() and ref.isdigit() and len(ref) <= 10 and int(ref) <= 2**31 - 1


def _can_match(ref: str) -> bool:
    """False for a NUL or a lone surrogate (JSON allows both): they match nobody, and PostgreSQL
    refuses them."""
    if "\x00" in ref:
        return False
    if ref.isascii():
        return True
    try:
        ref.encode()
    except UnicodeEncodeError:
        return False
    return True


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _stored_iso(value: str | None) -> str | None:
    """A time as the store wrote it (:func:`training.status_store.utc_iso`), as the API shows it."""
    if value is None:
        return None
    if value.endswith("+00:00"):
        return value[:-6] + "Z"
    return _iso(datetime.fromisoformat(value))  # not written by today's store: convert it


def _from_status(person: Person, policy_slug: str, status: Status) -> AnswerDoc:
    return AnswerDoc(
        missing=[MissingDoc(m.module, m.reason) for m in status.missing],
        modules=[ModuleDoc(_iso(m.completed_at), m.slug, m.state, m.title)
                 for m in status.modules],
        person=PersonDoc(person.active, person.email, person.id, person.name, list(person.roles)),
        policy=PolicyDoc(policy_slug, status.version),
        trained=status.trained,
        valid_until=_iso(status.valid_until),
    )  # fmt: skip


def status_json(person: Person, policy_slug: str, status: Status) -> dict[str, Any]:
    """The API's answer for a person, from the rule's :class:`Status`, as plain data."""
    return msgspec.to_builtins(_from_status(person, policy_slug, status))


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def status_only(doc: AnswerDoc) -> StatusOnlyDoc:
    """An answer cut down for a ``training:status`` token: the person's id and the verdict, never
    their name, email, roles or module-by-module progress."""
    return StatusOnlyDoc(PersonIdDoc(doc.person.id), doc.policy, doc.trained, doc.valid_until)


_UNSEEN: Any = object()
_POLICIES = Sql("SELECT id, slug, status_rev FROM policy ORDER BY slug")

# One query: each person asked about, their roles, and their answer when a valid one is stored.
# The JSON columns are read as text (PostgreSQL would otherwise parse them into dicts first; SQLite
# keeps them as text, and a CAST there only copies them): the API decodes them into its own types.
_LOOKUP = """
    SELECT p.id, p.email, p.name, p.active, {roles},
           s.person_id, s.version, s.trained, s.valid_until,
           {modules}, {missing}
    FROM person p
    LEFT JOIN stored_status s
      ON s.person_id = p.id AND s.policy_id = :policy_id
     AND s.person_rev = p.status_rev AND s.policy_rev = :policy_rev
     AND s.computed_at <= :now AND (s.fresh_until IS NULL OR s.fresh_until > :now)
    WHERE p.id {{in :ids integer}} OR p.email {{in :emails text}}
"""
_LOOKUP_SQLITE = Sql(
    _LOOKUP.format(
        roles="(SELECT group_concat(role, ',') FROM person_role r WHERE r.person_id = p.id)",
        modules="s.modules",
        missing="s.missing",
    )
)
_LOOKUP_POSTGRESQL = Sql(
    _LOOKUP.format(
        roles="(SELECT string_agg(role, ',') FROM person_role r WHERE r.person_id = p.id)",
        modules="CAST(s.modules AS text)",
        missing="CAST(s.missing AS text)",
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
        if _can_match(ref):
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
    # Many people share a version and an expiry: each distinct one is converted once.
    policy_docs: dict[str, PolicyDoc] = {}
    times: dict[Any, str | None] = {None: None}
    slug = policy.slug
    for row in rows:
        if row[5] is None:  # nothing stored that counts
            wanted.append(row[0])
            continue
        pid, email, name, active, roles, _, version, trained, valid_until, modules, missing = row
        policy_doc = policy_docs.get(version)
        if policy_doc is None:
            policy_doc = policy_docs[version] = PolicyDoc(slug, version)
        until = times.get(valid_until, _UNSEEN)
        if until is _UNSEEN:
            until = times[valid_until] = _iso(reader.datetime(valid_until))
        trained = bool(trained)
        doc = AnswerDoc(
            _read_missing(missing),
            [ModuleDoc(_stored_iso(m.completed_at), m.slug, m.state, m.title)
             for m in _read_modules(modules)],
            PersonDoc(bool(active), email, pid, name, sorted(roles.split(",")) if roles else []),
            policy_doc, trained, until,
        )  # fmt: skip
        answers[pid] = Answer(pid, trained, doc)
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
            docs = {p.id: _from_status(p, policy.slug, statuses[p.id]) for p in people}
    except OperationalError:  # busy: answer without storing; the next lookup stores it
        log.warning("could not store %d training statuses", len(person_ids), exc_info=True)
        people = status_store.load_people(session, person_ids)
        from training.status import statuses_for

        statuses = statuses_for(session, people, policy, now)
        docs = {p.id: _from_status(p, policy.slug, statuses[p.id]) for p in people}
    return {pid: Answer(pid, statuses[pid].trained, doc) for pid, doc in docs.items()}


def refresh(person_ids: list[int] | None = None, now: datetime | None = None) -> int:
    """Bring stored answers up to date (these people's, or everyone's); how many were computed."""
    return status_store.bring_up_to_date(db.session, person_ids, now)
