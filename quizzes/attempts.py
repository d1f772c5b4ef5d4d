"""Taking a quiz: drawing questions, submitting answers, grading on the server.

The server keeps the questions it drew for each attempt and grades against that record, so nothing a
browser sends can change which questions count or what is right. The rules refuse, with a message
and without recording anything: answers to questions that were not drawn, unknown options, a second
submission of an attempt, another person's attempt, and an attempt that has expired.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.log import record_evidence
from core.db import insert_ignoring_conflict, utcnow
from people.models import Person
from quizzes.bank import QuizRules
from quizzes.models import Question, QuizAttempt, QuizBank, QuizSubmission
from quizzes.types import QUESTION_TYPES, Option, is_right
from quizzes.versions import store_drawn
from training import evidence
from training.status_store import touch

_random = random.SystemRandom()


class QuizError(Exception):
    """An action on a quiz that the rules refuse; the message is shown to the person."""


class AttemptNotFound(QuizError):
    """No such attempt for this person (another person's attempt is 'not found' too)."""


class AlreadySubmitted(QuizError):
    pass


class AttemptExpired(QuizError):
    pass


class BadAnswers(QuizError):
    """Answers that do not fit the questions drawn: tampering, or a form from elsewhere."""


class Unanswered(QuizError):
    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        super().__init__("Answer every question before submitting.")


class CoolingDown(QuizError):
    def __init__(self, until: datetime) -> None:
        self.until = until
        super().__init__("You have had several tries in a row. Re-read the module, then try again.")


class NotReadYet(QuizError):
    pass


# --- drawing -------------------------------------------------------------------------------------


def draw(
    questions: Sequence[Question], count: int, shuffle: bool, rng: random.Random = _random
) -> list[dict]:
    """``count`` distinct questions in random order, each with its options shuffled if asked."""
    chosen = rng.sample(list(questions), min(count, len(questions)))
    drawn = []
    for q in chosen:
        options = list(q.options)
        if shuffle and q.type != "true_false":  # True before False reads naturally
            rng.shuffle(options)
        drawn.append(
            {
                "question_id": q.id,
                "key": q.key,
                "type": q.type,
                "prompt": q.prompt,
                "scenario": q.scenario,
                "options": options,
                "explanation": q.explanation,
                "clause": q.clause,
            }
        )
    return drawn


def rules_of(bank: QuizBank) -> QuizRules:
    return QuizRules(**bank.rules)


# --- state ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuizState:
    """Where a person stands with one module version's quiz."""

    open_attempt: QuizAttempt | None  # started, not submitted, not expired
    passed: bool
    cooldown_until: datetime | None
    submissions: int


def quiz_state(
    session: Session, person: Person, module_version_id: int, rules: QuizRules, now: datetime
) -> QuizState:
    attempts = session.scalars(
        select(QuizAttempt)
        .where(
            QuizAttempt.person_id == person.id, QuizAttempt.module_version_id == module_version_id
        )
        .order_by(QuizAttempt.started_at, QuizAttempt.id)
    ).all()
    submitted = [a.submission for a in attempts if a.submission is not None]
    open_attempt = next(
        (a for a in reversed(attempts) if a.submission is None and a.expires_at > now), None
    )
    cooldown_until = None
    recent = submitted[-rules.attempts_before_cooldown :]
    if len(recent) == rules.attempts_before_cooldown and not any(s.passed for s in recent):
        until = recent[-1].submitted_at + timedelta(minutes=rules.cooldown_minutes)
        if until > now:
            cooldown_until = until
    return QuizState(open_attempt, any(s.passed for s in submitted), cooldown_until, len(submitted))


def start_attempt(
    session: Session,
    person: Person,
    module_version_id: int,
    bank: QuizBank,
    now: datetime | None = None,
) -> QuizAttempt:
    """Start (or carry on) an attempt. An unfinished attempt is resumed, never redrawn, so nobody
    can draw again and again until the questions they like come up."""
    now = now or utcnow()
    rules = rules_of(bank)
    # Queue behind this person's other quiz writes, so that a double click (two requests at once
    # on PostgreSQL) finds the attempt the first one started instead of drawing a second.
    session.execute(select(Person.id).where(Person.id == person.id).with_for_update(key_share=True))
    state = quiz_state(session, person, module_version_id, rules, now)
    if state.open_attempt is not None:
        return state.open_attempt
    if state.cooldown_until is not None:
        raise CoolingDown(state.cooldown_until)
    drawn = draw(bank.questions, rules.draw, rules.shuffle)
    attempt = QuizAttempt(
        public_id=secrets.token_urlsafe(16),
        person_id=person.id,
        module_version_id=module_version_id,
        bank_id=bank.id,
        started_at=now,
        expires_at=now + timedelta(minutes=rules.time_limit_minutes),
        pass_mark=rules.pass_mark,
        show_answers=rules.show_answers,
        question_refs=store_drawn(session, drawn),
    )
    session.add(attempt)
    session.flush()
    # Read back now, as for an attempt loaded from the database, so that it shows its questions
    # after the session has closed too.
    attempt.drawn  # noqa: B018
    # The questions drawn are evidence too: what the person was asked.
    record_evidence(
        session, "quiz.started", "quiz_attempt", [attempt.id], actor_id=person.id,
        detail={"module_version": module_version_id},
    )  # fmt: skip
    return attempt


def find_attempt(session: Session, person: Person, public_id: str) -> QuizAttempt:
    attempt = session.scalar(select(QuizAttempt).where(QuizAttempt.public_id == public_id[:32]))
    if attempt is None or attempt.person_id != person.id:
        raise AttemptNotFound("There is no such quiz attempt.")
    return attempt


# --- submitting ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grade:
    correct: int
    total: int
    score: int
    passed: bool


def grade(drawn: Sequence[Mapping], answers: Mapping[str, Sequence[str]], pass_mark: int) -> Grade:
    """All or nothing per question; the score is the percentage right, rounded down."""
    correct = sum(
        is_right([Option(**o) for o in q["options"]], set(answers.get(q["key"], ()))) for q in drawn
    )
    total = len(drawn)
    score = correct * 100 // total if total else 0
    return Grade(correct, total, score, score >= pass_mark)


def check_answers(drawn: Sequence[Mapping], answers: Mapping[str, Sequence[str]]) -> None:
    """Refuse answers that could not have come from this attempt's own form."""
    by_key = {q["key"]: q for q in drawn}
    extra = sorted(set(answers) - set(by_key))
    if extra:
        raise BadAnswers(
            "Your answers do not match the questions of this attempt. Nothing was saved."
        )
    for key, selected in answers.items():
        question = by_key[key]
        ids = {o["id"] for o in question["options"]}
        if len(set(selected)) != len(selected) or not set(selected) <= ids:
            raise BadAnswers("An answer was not one of the options offered. Nothing was saved.")
        if not QUESTION_TYPES[question["type"]].multiple_answers and len(selected) > 1:
            raise BadAnswers("Choose only one answer for each single-answer question.")
    unanswered = [q["key"] for q in drawn if not answers.get(q["key"])]
    if unanswered:
        raise Unanswered(unanswered)


def submit_attempt(
    session: Session,
    person: Person,
    public_id: str,
    answers: Mapping[str, Sequence[str]],
    now: datetime | None = None,
) -> QuizSubmission:
    now = now or utcnow()
    # One person's quiz writes queue behind each other, as reading and signing do.
    session.execute(select(Person.id).where(Person.id == person.id).with_for_update(key_share=True))
    attempt = find_attempt(session, person, public_id)
    if attempt.submission is not None:
        raise AlreadySubmitted("This attempt was already submitted; your first answers stand.")
    if attempt.expires_at <= now:
        raise AttemptExpired("This attempt has expired. Start the quiz again for new questions.")
    check_answers(attempt.drawn, answers)
    result = grade(attempt.drawn, answers, attempt.pass_mark)
    inserted = insert_ignoring_conflict(
        session,
        QuizSubmission.__table__,
        {
            "attempt_id": attempt.id,
            "submitted_at": now,
            "answers": {k: list(v) for k, v in answers.items()},
            "correct": result.correct,
            "total": result.total,
            "score": result.score,
            "passed": result.passed,
        },
    )
    if not inserted:
        raise AlreadySubmitted("This attempt was already submitted; your first answers stand.")
    session.expire(attempt, ["submission"])
    submission = attempt.submission
    # Every submission, passed or not, with its answers and score.
    record_evidence(
        session, "quiz.passed" if result.passed else "quiz.failed", "quiz_submission",
        [submission.id], actor_id=person.id, subject_type="quiz_attempt", subject_id=attempt.id,
        detail={"module_version": attempt.module_version_id, "score": result.score},
    )  # fmt: skip
    evidence.announce(session, evidence.QUIZ, submission.id, person.id, attempt_id=attempt.id)
    touch(session, [person.id])
    return submission
