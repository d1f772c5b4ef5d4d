"""Question versions: what an attempt asked, stored once and referenced, never copied.

A question version holds everything a learner is shown and graded by (type, prompt, scenario,
options with their texts and which are correct, explanation, clause) and is addressed by the
SHA-256 of a canonical JSON form of exactly that, so the same question drawn a million times, or
repeated unchanged in a corrected bank, is one row; a corrected question is a new row, and the
attempts made before the correction keep pointing at the old one.

An attempt stores, per question drawn, ``[version id, question id, key, [option ids as shown]]``
(the question id and key are the bank's, which the version does not hold: one text may serve under
two keys). :func:`rebuild` turns those references back into exactly the list of question dicts that
:func:`quizzes.attempts.draw` returned, which is what grading, reviews, the personal-data download
and the evidence digests (:mod:`audit.evidence`) read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from core.db import insert_ignoring_conflict
from quizzes.models import QuestionVersion

# The fields of a drawn question that its version holds; the rest (question_id, key) are the
# attempt's reference, and the options' order is the attempt's too.
CONTENT = ("type", "prompt", "scenario", "options", "explanation", "clause")
DRAWN_KEYS = ("question_id", "key", *CONTENT)
OPTION_KEYS = ("id", "text", "correct")


class NotAQuestion(ValueError):
    """A drawn question that is not in the shape :func:`quizzes.attempts.draw` makes."""


def content_of(question: Mapping[str, Any]) -> dict[str, Any]:
    """What a version holds of a drawn question: its content, options in order of their ids."""
    if set(question) != set(DRAWN_KEYS):
        raise NotAQuestion(f"a drawn question has the keys {sorted(question)}")
    options = question["options"]
    shapes = {tuple(sorted(o)) for o in options}
    if shapes - {tuple(sorted(OPTION_KEYS))} or len({o["id"] for o in options}) != len(options):
        raise NotAQuestion(f"question {question['key']!r} has options in another shape")
    content = {name: question[name] for name in CONTENT}
    content["options"] = [
        {name: o[name] for name in OPTION_KEYS} for o in sorted(options, key=lambda o: o["id"])
    ]
    return content


def content_hash(content: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, ASCII, no spaces) of a version's content."""
    text = json.dumps(
        {name: content[name] for name in CONTENT},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def ensure_versions(session: Session, drawn: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """The version id of each of these questions' content, by content hash; versions not yet
    stored are inserted (a version another transaction inserts at the same moment is used)."""
    contents = {}
    for question in drawn:
        content = content_of(question)
        contents[content_hash(content)] = content
    table = QuestionVersion.__table__
    found = _ids_by_hash(session, list(contents))
    for digest in sorted(set(contents) - set(found)):
        insert_ignoring_conflict(session, table, {"content_hash": digest, **contents[digest]})
    if len(found) < len(contents):
        found = _ids_by_hash(session, list(contents))
    return found


def _ids_by_hash(session: Session, hashes: list[str]) -> dict[str, int]:
    t = QuestionVersion.__table__
    rows = session.execute(select(t.c.content_hash, t.c.id).where(t.c.content_hash.in_(hashes)))
    return {content_hash: version_id for content_hash, version_id in rows}


def bank_versions(session: Session, questions: Iterable[Any]) -> dict[int, int]:
    """The version id of each of a bank's questions (``Question`` rows, or objects with the same
    attributes), by question id; versions not yet stored are inserted."""
    drawn = [
        {
            "question_id": q.id,
            "key": q.key,
            **{name: getattr(q, name) for name in CONTENT},
        }
        for q in questions
    ]
    ids = ensure_versions(session, drawn)
    return {q["question_id"]: ids[content_hash(content_of(q))] for q in drawn}


def references(drawn: Sequence[Mapping[str, Any]], ids: Mapping[str, int]) -> list[list]:
    """An attempt's compact record of ``drawn``, given the version ids by content hash."""
    return [
        [
            ids[content_hash(content_of(q))],
            q["question_id"],
            q["key"],
            [o["id"] for o in q["options"]],
        ]
        for q in drawn
    ]


def store_drawn(session: Session, drawn: Sequence[Mapping[str, Any]]) -> list[list]:
    """Store the versions of the questions drawn (those not stored yet); their references."""
    return references(drawn, ensure_versions(session, drawn))


def load_versions(bind: Session | Connection, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The content of these versions by id (plain rows: no ORM objects, for large checks too)."""
    wanted = sorted(set(ids))
    t = QuestionVersion.__table__
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(wanted), 1000):
        rows = bind.execute(
            select(t.c.id, *(t.c[name] for name in CONTENT)).where(
                t.c.id.in_(wanted[start : start + 1000])
            )
        )
        for row in rows:
            found[row.id] = {name: row._mapping[name] for name in CONTENT}
    return found


class MissingVersion(LookupError):
    """An attempt names a question version the database does not hold (removed by hand)."""


def rebuild(refs: Sequence[Sequence[Any]], versions: Mapping[int, Mapping[str, Any]]) -> list[dict]:
    """The questions an attempt drew, exactly as :func:`quizzes.attempts.draw` returned them."""
    drawn = []
    for version_id, question_id, key, order in refs:
        version = versions.get(version_id)
        if version is None:
            raise MissingVersion(f"question version {version_id} is missing")
        by_id = {o["id"]: o for o in version["options"]}
        drawn.append(
            {
                "question_id": question_id,
                "key": key,
                "type": version["type"],
                "prompt": version["prompt"],
                "scenario": version["scenario"],
                "options": [dict(by_id[option_id]) for option_id in order],
                "explanation": version["explanation"],
                "clause": version["clause"],
            }
        )
    return drawn


def drawn_of(bind: Session | Connection, refs_list: Sequence[Sequence[Any]]) -> list[list[dict]]:
    """The questions of several attempts (their ``question_refs``), reading each version once."""
    versions = load_versions(bind, {ref[0] for refs in refs_list for ref in refs})
    return [rebuild(refs, versions) for refs in refs_list]


def version_problems(bind: Session | Connection, batch: int = 1000) -> list[int]:
    """Versions whose content no longer hashes to their content hash (edited by hand), by id."""
    t = QuestionVersion.__table__
    wrong, after = [], 0
    while True:
        rows = bind.execute(
            select(t.c.id, t.c.content_hash, *(t.c[name] for name in CONTENT))
            .where(t.c.id > after)
            .order_by(t.c.id)
            .limit(batch)
        ).all()
        if not rows:
            return wrong
        for row in rows:
            if content_hash(row._mapping) != row.content_hash:
                wrong.append(row.id)
        after = rows[-1].id
