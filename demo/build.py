"""Build the demo federation: plan people, replay their training, insert it in bulk.

The rows are those the app itself writes (see :mod:`demo.learning` for how each is checked against
the rule at its moment); they are inserted with SQLAlchemy Core in batches because going through
the learner functions one request at a time would take minutes for ten thousand people. Everything
but publishing the content is one transaction: it is all there, or none of it is.
"""

from __future__ import annotations

import random
import secrets
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import Table, func, insert, select
from sqlalchemy.orm import Session
from werkzeug.security import generate_password_hash

from approvals.models import AccountApplication, Decision
from approvals.rules import register
from audit import evidence
from audit.log import Entry, record_many
from demo.accounts import make_accounts
from demo.history import HistoryError, load_timeline, prepare_history
from demo.learning import Draft
from demo.population import (
    CAST,
    MIN_ORDINARY,
    SIGN_IN,
    cast_email,
    demo_people,
    live,
    plan,
)
from people.models import Person, PersonRole, PersonSchool
from people.service import set_password
from quizzes.models import QuizAttempt, QuizSubmission
from training.loader import Federation
from training.models import (
    Acknowledgement,
    AcknowledgementModule,
    ModuleVisit,
    Policy,
    ReadReceipt,
)
from training.publishing import published_policies
from training.status import STANDINGS, statuses_for

BATCH = 1000  # people played out and inserted at a time, so memory stays bounded
FEDERATION_WIDE = "federation-wide"


@dataclass
class DemoResult:
    existing: int  # demo people before this run
    added: int = 0
    receipts: int = 0
    attempts: int = 0
    failed: int = 0
    acknowledgements: int = 0
    notes: list[str] = field(default_factory=list)


def count_people(session: Session) -> tuple[int, int, str | None]:
    """(demo people, other people, an example of the others' addresses)."""
    demo = session.scalar(select(func.count()).select_from(Person).where(demo_people()))
    others = session.scalar(select(func.count()).select_from(Person).where(~demo_people()))
    example = session.scalar(select(Person.email).where(~demo_people()).order_by(Person.id))
    return demo or 0, others or 0, example


def build(
    session: Session,
    *,
    target: int,
    seed: int,
    now: datetime,
    content_dir: Path,
    federation: Federation,
    backdate: bool,
) -> DemoResult:
    """Bring the number of demo people up to ``target``: add the missing ones, never change or
    remove anyone already there (their records are evidence like any other)."""
    taken = set(session.scalars(select(Person.email).where(demo_people())))
    result = DemoResult(existing=len(taken))
    if result.existing >= target:
        return result
    timelines = []
    for policy in session.scalars(select(Policy).order_by(Policy.title)).all():
        try:
            note = prepare_history(session, policy, content_dir, now, backdate)
        except HistoryError as exc:  # the demo goes ahead, without anyone on an earlier version
            note = str(exc)
        if note:
            result.notes.append(note)
        timeline = load_timeline(session, policy, now)
        if timeline.current is not None:
            timelines.append(timeline)
    count = target - result.existing
    with_cast = cast_email("admin") not in taken and count >= len(CAST) + MIN_ORDINARY
    if cast_email("admin") not in taken and not with_cast:
        result.notes.append(
            f"Too few people added for the social media accounts' cast (at least "
            f"{len(CAST) + MIN_ORDINARY} are needed); no accounts were made."
        )
    schools = [s.code for s in federation.schools]
    drafts = plan(count, result.existing, seed, schools, taken, with_cast, timelines, now)
    # One hash of a random password nobody knows, for everyone who has signed in: hashing one per
    # person would take minutes (scrypt is slow by design), and demo people are not meant to be
    # signed in as, apart from the accounts printed at the end.
    unknown = generate_password_hash(secrets.token_urlsafe(24))
    cast: dict[str, Draft] = {}
    ids: dict[str, int] = {}
    while drafts:  # a batch at a time, each let go once inserted
        batch, drafts = drafts[:BATCH], drafts[BATCH:]
        for draft in batch:
            live(draft, timelines, federation.name, now)
        person_ids = _insert(session, batch, unknown, result)
        for draft, person_id in zip(batch, person_ids, strict=True):
            if draft.key:
                cast[draft.key], ids[draft.key] = draft, person_id
    result.added = count
    if with_cast:
        rng = random.Random(f"countersign-demo:{seed}:accounts")
        result.notes += make_accounts(session, cast, ids, federation, now, rng)
    session.flush()
    return result


def _insert(session: Session, drafts: list[Draft], unknown: str, result: DemoResult) -> list[int]:
    """Insert a batch of people with their evidence; returns their ids in order.

    Plain multi-row inserts, then one query for the ids they were given (looked up by what is
    unique about each row), which is much faster than returning ids row by row.
    """
    _insert_rows(
        session,
        Person.__table__,
        [
            {
                "email": d.email,
                "name": d.name,
                "password_hash": unknown if d.has_password else None,
                "active": d.active,
                # 1, then one more for setting a password and one for being deactivated.
                "auth_version": 1 + d.has_password + (not d.active),
                "created_at": d.created_at,
                "deactivated_at": d.deactivated_at,
            }
            for d in drafts
        ],
    )
    by_email = dict(
        session.execute(
            select(Person.email, Person.id).where(Person.email.in_([d.email for d in drafts]))
        ).all()
    )
    ids = [by_email[d.email] for d in drafts]
    people = list(zip(ids, drafts, strict=True))
    _insert_rows(
        session,
        PersonRole.__table__,
        [{"person_id": i, "role": r} for i, d in people for r in d.roles],
    )
    _insert_rows(
        session,
        PersonSchool.__table__,
        [{"person_id": i, "school": s} for i, d in people for s in d.schools],
    )
    _insert_rows(
        session,
        ModuleVisit.__table__,
        [
            {"person_id": i, "module_version_id": mv, "first_at": first, "last_at": last}
            for i, d in people
            for mv, (first, last) in d.visits.items()
        ],
    )
    receipts = [
        {"person_id": i, "module_version_id": mv, "seq": seq, "at": at}
        for i, d in people
        for mv, seq, at in d.receipts
    ]
    _insert_rows(session, ReadReceipt.__table__, receipts)
    result.receipts += len(receipts)
    # Each evidence row gets its audit row with its digest, as the app's own writes do.
    # Who each person is (email, name, roles, schools, left or not) first, then what they did.
    written: list[tuple[str, str, int, int | None]] = [
        ("person.created", "person", person_id, None) for person_id in ids
    ]
    for person_id, receipt_id in session.execute(
        select(ReadReceipt.person_id, ReadReceipt.id)
        .where(ReadReceipt.person_id.in_(ids))
        .order_by(ReadReceipt.id)
    ).all():
        written.append(("module.read", "read_receipt", receipt_id, person_id))

    attempts = [(i, a) for i, d in people for a in d.attempts]
    _insert_rows(session, QuizAttempt.__table__, [{"person_id": i, **a.row} for i, a in attempts])
    attempt_ids = dict(
        session.execute(
            select(QuizAttempt.public_id, QuizAttempt.id).where(QuizAttempt.person_id.in_(ids))
        ).all()
    )
    submissions = [
        {"attempt_id": attempt_ids[a.row["public_id"]], **a.submission}
        for _, a in attempts
        if a.submission is not None
    ]
    _insert_rows(session, QuizSubmission.__table__, submissions)
    attempt_people = dict(
        session.execute(
            select(QuizAttempt.id, QuizAttempt.person_id).where(QuizAttempt.person_id.in_(ids))
        ).all()
    )
    for attempt_id in sorted(attempt_people):
        written.append(("quiz.started", "quiz_attempt", attempt_id, attempt_people[attempt_id]))
    for submission_id, attempt_id, passed in session.execute(
        select(QuizSubmission.id, QuizSubmission.attempt_id, QuizSubmission.passed)
        .where(QuizSubmission.attempt_id.in_(list(attempt_people)))
        .order_by(QuizSubmission.id)
    ).all():
        event = "quiz.passed" if passed else "quiz.failed"
        written.append((event, "quiz_submission", submission_id, attempt_people[attempt_id]))
    result.attempts += len(attempts)
    result.failed += sum(not s["passed"] for s in submissions)

    acks = [(i, a, covered) for i, d in people for a, covered in d.acks]
    _insert_rows(session, Acknowledgement.__table__, [{"person_id": i, **a} for i, a, _ in acks])
    ack_ids = {
        (person_id, version_id, seq): ack_id
        for ack_id, person_id, version_id, seq in session.execute(
            select(
                Acknowledgement.id,
                Acknowledgement.person_id,
                Acknowledgement.policy_version_id,
                Acknowledgement.seq,
            ).where(Acknowledgement.person_id.in_(ids))
        )
    }
    _insert_rows(
        session,
        AcknowledgementModule.__table__,
        [
            {
                "acknowledgement_id": ack_ids[i, a["policy_version_id"], a["seq"]],
                "module_version_id": mv,
            }
            for i, a, covered in acks
            for mv in covered
        ],
    )
    result.acknowledgements += len(acks)
    for (person_id, _, _), ack_id in sorted(ack_ids.items(), key=lambda item: item[1]):
        written.append(("acknowledgement.signed", "acknowledgement", ack_id, person_id))
    _record_evidence(session, written)
    return ids


def _record_evidence(session: Session, written: list[tuple[str, str, int, int | None]]) -> None:
    """One audit row per evidence row (event, table, row id, person id), with its digest, as the
    app's own writes record them; in bulk, and under the person's id as the one who acted."""
    session.flush()
    found: dict[str, dict[int, str]] = {}
    for table in {table for _, table, _, _ in written}:
        found[table] = evidence.digests(session, table, [r for _, t, r, _ in written if t == table])
    record_many(
        session,
        [
            Entry(
                event,
                actor_id=person_id,
                subject_type=table,
                subject_id=row_id,
                detail=evidence.detail_for(table, row_id, found[table][row_id]),
            )  # fmt: skip
            for event, table, row_id, person_id in written
        ],
    )


def _insert_rows(session: Session, table: Table, rows: list[dict]) -> None:
    if rows:
        session.execute(insert(table), rows)


# --- after building --------------------------------------------------------------------------------


def sign_in_accounts(session: Session) -> list[tuple[str, Person, str]]:
    """Give the demo governor and administrator new passwords: (role, person, password).

    Only a hash is stored, so an earlier password cannot be shown again; each run sets new ones.
    """
    accounts = []
    for label, key in SIGN_IN:
        person = session.scalar(select(Person).where(Person.email == cast_email(key)))
        if person is not None and person.active:
            password = secrets.token_urlsafe(12)
            set_password(person, password)
            accounts.append((label, person, password))
    return accounts


@dataclass
class Standings:
    """Where everyone stands on one policy, by school."""

    title: str
    version: str
    columns: list[str]  # school codes, then FEDERATION_WIDE
    counts: dict[str, Counter[str]]  # standing -> column -> people
    totals: Counter[str]  # standing -> people


class Someone(NamedTuple):
    """What the rule reads about a person (``statuses_for`` needs no more than this), loaded
    without the ORM's cost per object, plus their schools for the table."""

    id: int
    active: bool
    roles: list[str]
    schools: list[str]


def standings(session: Session, federation: Federation) -> list[Standings]:
    """Ask the rule about everyone in the database, a batch at a time."""
    columns = [s.code for s in federation.schools] + [FEDERATION_WIDE]
    ids = list(session.scalars(select(Person.id).order_by(Person.id)))
    batches = [
        _someones(session, ids[start : start + BATCH]) for start in range(0, len(ids), BATCH)
    ]
    answers = []
    for policy, version in published_policies(session):
        table = Standings(policy.title, version.label, columns,
                          {s: Counter() for s in STANDINGS}, Counter())  # fmt: skip
        for people in batches:
            statuses = statuses_for(session, people, policy)  # type: ignore[arg-type]
            for person in people:
                standing = statuses[person.id].standing
                table.totals[standing] += 1
                for column in person.schools or [FEDERATION_WIDE]:
                    table.counts[standing][column] += 1
        answers.append(table)
    return answers


def _someones(session: Session, ids: list[int]) -> list[Someone]:
    roles: dict[int, list[str]] = {i: [] for i in ids}
    schools: dict[int, list[str]] = {i: [] for i in ids}
    for person_id, role in session.execute(
        select(PersonRole.person_id, PersonRole.role).where(PersonRole.person_id.in_(ids))
    ):
        roles[person_id].append(role)
    for person_id, school in session.execute(
        select(PersonSchool.person_id, PersonSchool.school).where(PersonSchool.person_id.in_(ids))
    ):
        schools[person_id].append(school)
    rows = session.execute(select(Person.id, Person.active).where(Person.id.in_(ids)))
    return [Someone(i, active, sorted(roles[i]), sorted(schools[i])) for i, active in rows]


@dataclass(frozen=True)
class AccountsSummary:
    on_register: int
    attention: list[str]  # "account: problem; problem"
    waiting: int


def accounts_summary(session: Session) -> AccountsSummary:
    entries = register(session)
    waiting = session.scalar(
        select(func.count())
        .select_from(AccountApplication)
        .where(~AccountApplication.id.in_(select(Decision.application_id)))
    )
    attention = [
        f"{e.account.application.name}: {'; '.join(e.problems)}" for e in entries if e.flagged
    ]
    return AccountsSummary(len(entries), attention, waiting or 0)
