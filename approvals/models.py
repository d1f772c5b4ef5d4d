"""Business cases, decisions and the register of accounts.

Applications and decisions are evidence: a decision is inserted once per application (unique) with
a snapshot of every runner's training status at that moment, and never changed. The register's
runner rows keep their history: a transfer ends the old rows and adds new ones.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, UTCDateTime, utcnow
from people.models import Person


class AccountApplication(Base):
    __tablename__ = "account_application"

    id: Mapped[int] = mapped_column(primary_key=True)
    applicant_id: Mapped[int] = mapped_column(ForeignKey("person.id"))
    name: Mapped[str] = mapped_column(String(200))  # e.g. "Year 6 history Twitter account"
    platform: Mapped[str] = mapped_column(String(60))
    aim: Mapped[str] = mapped_column(Text)
    audience: Mapped[str] = mapped_column(Text)
    promotion: Mapped[str] = mapped_column(Text)
    visibility: Mapped[str] = mapped_column(String(10))  # "open" or "private"
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    applicant: Mapped[Person] = relationship(foreign_keys=[applicant_id])
    runner_rows: Mapped[list[ApplicationRunner]] = relationship(cascade="all, delete-orphan")
    decision: Mapped[Decision | None] = relationship(back_populates="application")
    account: Mapped[SocialAccount | None] = relationship(back_populates="application")

    @property
    def runners(self) -> list[Person]:
        return [row.person for row in self.runner_rows]

    @property
    def state(self) -> str:
        if self.decision is None:
            return "pending"
        return "approved" if self.decision.approved else "rejected"


class ApplicationRunner(Base):
    __tablename__ = "application_runner"

    application_id: Mapped[int] = mapped_column(
        ForeignKey("account_application.id"), primary_key=True
    )
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id"), primary_key=True)
    person: Mapped[Person] = relationship()


class Decision(Base):
    __tablename__ = "application_decision"

    id: Mapped[int] = mapped_column(primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("account_application.id"), unique=True)
    approved: Mapped[bool]
    reason: Mapped[str] = mapped_column(Text)
    decided_by_id: Mapped[int] = mapped_column(ForeignKey("person.id"))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Each runner as the rule saw them: [{"person_id", "name", "trained", "missing": [...]}]
    runners_snapshot: Mapped[list] = mapped_column(JSON)

    application: Mapped[AccountApplication] = relationship(back_populates="decision")
    decided_by: Mapped[Person] = relationship()


class SocialAccount(Base):
    """An approved account once created. Its password belongs in the federation's password manager,
    never here."""

    __tablename__ = "social_account"

    id: Mapped[int] = mapped_column(primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("account_application.id"), unique=True)
    platform: Mapped[str] = mapped_column(String(60))
    handle: Mapped[str] = mapped_column(String(300))  # handle or address
    recorded_by_id: Mapped[int] = mapped_column(ForeignKey("person.id"))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    closed_by_id: Mapped[int | None] = mapped_column(ForeignKey("person.id"))
    close_reason: Mapped[str | None] = mapped_column(Text)

    application: Mapped[AccountApplication] = relationship(back_populates="account")
    runner_rows: Mapped[list[AccountRunner]] = relationship(order_by="AccountRunner.added_at")

    @property
    def current_runners(self) -> list[Person]:
        return [row.person for row in self.runner_rows if row.removed_at is None]


class AccountRunner(Base):
    __tablename__ = "account_runner"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("social_account.id"))
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id"))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    added_by_id: Mapped[int] = mapped_column(ForeignKey("person.id"))
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    person: Mapped[Person] = relationship(foreign_keys=[person_id])
