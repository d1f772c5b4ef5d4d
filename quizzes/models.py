"""Question banks as published, and quiz attempts as evidence.

An attempt is inserted when it starts, holding exactly the questions drawn, in the order shown: not
as a copy, but as references to immutable question versions (each stored once, addressed by the
hash of everything a learner is shown and graded by) with the order of each question's options.
Its submission is a separate row, inserted once (a unique constraint makes a second submission of
the same attempt impossible). None of these rows is ever updated, so the record of what a person
was asked and answered cannot change after the fact.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint, event
from sqlalchemy.orm import Mapped, mapped_column, object_session, relationship

from core.db import Base, UTCDateTime, utcnow


class QuizBank(Base):
    """One published edition of a module's questions and quiz rules."""

    __tablename__ = "quiz_bank"
    __table_args__ = (UniqueConstraint("module_id", "bank_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    module_id: Mapped[int] = mapped_column(ForeignKey("module.id"))
    bank_hash: Mapped[str] = mapped_column(String(64))
    rules: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    questions: Mapped[list[Question]] = relationship(
        order_by="Question.position", cascade="all, delete-orphan"
    )


class Question(Base):
    __tablename__ = "question"
    __table_args__ = (UniqueConstraint("bank_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    bank_id: Mapped[int] = mapped_column(ForeignKey("quiz_bank.id"))
    key: Mapped[str] = mapped_column(String(80))  # the author's id, stable across editions
    position: Mapped[int]
    type: Mapped[str] = mapped_column(String(20))
    prompt: Mapped[str] = mapped_column(Text)
    scenario: Mapped[str] = mapped_column(Text, default="")
    options: Mapped[list] = mapped_column(JSON)  # [{"id", "text", "correct"}]
    explanation: Mapped[str] = mapped_column(Text)
    clause: Mapped[str] = mapped_column(Text)


class QuestionVersion(Base):
    """A question exactly as learners were shown it and graded by it, stored once however many
    attempts drew it and however many editions of a bank repeat it; inserted, never changed
    (triggers refuse it, as for the evidence). Options are kept in order of their ids: the order a
    learner saw is the attempt's. See :mod:`quizzes.versions`."""

    __tablename__ = "question_version"

    id: Mapped[int] = mapped_column(primary_key=True)
    # SHA-256 of the canonical JSON of the columns below (quizzes.versions.content_hash).
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(20))
    prompt: Mapped[str] = mapped_column(Text)
    scenario: Mapped[str] = mapped_column(Text)
    options: Mapped[list] = mapped_column(JSON)  # [{"id", "text", "correct"}], by id
    explanation: Mapped[str] = mapped_column(Text)
    clause: Mapped[str] = mapped_column(Text)


class QuizAttempt(Base):
    __tablename__ = "quiz_attempt"
    __table_args__ = (Index("ix_quiz_attempt_person_module", "person_id", "module_version_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # Unguessable, so an attempt's address reveals nothing and cannot be enumerated.
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id"))
    module_version_id: Mapped[int] = mapped_column(ForeignKey("module_version.id"))
    bank_id: Mapped[int] = mapped_column(ForeignKey("quiz_bank.id"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    pass_mark: Mapped[int]
    show_answers: Mapped[bool]
    # The questions drawn, in the order shown: [[question version id, question id, key,
    # [option ids in the order shown]], ...]; ``drawn`` rebuilds what the learner saw.
    question_refs: Mapped[list] = mapped_column(JSON)

    submission: Mapped[QuizSubmission | None] = relationship(back_populates="attempt")

    @property
    def drawn(self) -> list[dict]:
        """The questions drawn, as shown: [{"question_id", "key", "type", "prompt", "scenario",
        "options": [{"id", "text", "correct"}] in display order, "explanation", "clause"}],
        rebuilt from the question versions (read once per attempt object, when it is loaded)."""
        cached = self.__dict__.get("_drawn")
        if cached is None or cached[0] is not self.question_refs:
            from quizzes.versions import load_versions, rebuild

            session = object_session(self)
            if session is None:
                raise LookupError("a detached quiz attempt cannot read its question versions")
            refs = self.question_refs
            # Versions never change: a transaction keeps those it has read for its next attempts
            # (not beyond it: a version inserted in a transaction rolled back was never stored).
            transaction = session.get_transaction()
            kept = session.info.get("countersign.question_versions")
            if kept is None or kept[0] is not transaction:
                kept = session.info["countersign.question_versions"] = (transaction, {})
            known = kept[1]
            missing = {ref[0] for ref in refs} - set(known)
            if missing:
                known.update(load_versions(session, missing))
            cached = self.__dict__["_drawn"] = (refs, rebuild(refs, known))
        return cached[1]


@event.listens_for(QuizAttempt, "load")
def _read_questions(attempt: QuizAttempt, context: Any) -> None:
    """Read an attempt's questions when the attempt is read, so that they are there after its
    session has closed, as the copies were (versions never change, so they never go stale)."""
    if "question_refs" in attempt.__dict__:
        with context.session.no_autoflush:
            attempt.drawn  # noqa: B018 (read for its effect: the questions are kept)


class QuizSubmission(Base):
    __tablename__ = "quiz_submission"

    id: Mapped[int] = mapped_column(primary_key=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("quiz_attempt.id"), unique=True)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    answers: Mapped[dict] = mapped_column(JSON)  # question key -> [option ids]
    correct: Mapped[int]
    total: Mapped[int]
    score: Mapped[int]  # percent, rounded down
    passed: Mapped[bool]

    attempt: Mapped[QuizAttempt] = relationship(back_populates="submission")
