"""Question banks as published, and quiz attempts as evidence.

An attempt is inserted when it starts, holding a snapshot of exactly the questions drawn, in the
order shown; its submission is a separate row, inserted once (a unique constraint makes a second
submission of the same attempt impossible). Neither is ever updated, so the record of what a person
was asked and answered cannot change after the fact.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

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
    # The questions drawn, as shown: [{"question_id", "key", "type", "prompt", "scenario",
    # "options": [{"id", "text", "correct"}] in display order, "explanation", "clause"}]
    drawn: Mapped[list] = mapped_column(JSON)

    submission: Mapped[QuizSubmission | None] = relationship(back_populates="attempt")


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
