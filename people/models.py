from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, UTCDateTime, utcnow


class Person(Base):
    """Someone who must be trained. Never deleted: a leaver is deactivated and keeps their records."""

    __tablename__ = "person"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Stored lower-cased, so uniqueness is case-insensitive on every backend.
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(default=True)
    # Bumped when a password changes or the person is deactivated: ends their other sessions.
    auth_version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deactivated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set when a leaver's personal data is erased after the retention period (people/privacy.py).
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Bumped by database triggers whenever anything that decides this person's training status
    # changes (see migration 0006); a precomputed status is trusted only at the same revision.
    status_rev: Mapped[int] = mapped_column(default=0, server_default="0")

    role_rows: Mapped[list[PersonRole]] = relationship(
        back_populates="person", cascade="all, delete-orphan", order_by="PersonRole.role"
    )
    school_rows: Mapped[list[PersonSchool]] = relationship(
        back_populates="person", cascade="all, delete-orphan", order_by="PersonSchool.school"
    )

    def __init__(self, **kwargs: object) -> None:
        # Column defaults apply only at INSERT; a new person is usable before then.
        kwargs.setdefault("active", True)
        kwargs.setdefault("auth_version", 1)
        super().__init__(**kwargs)

    @property
    def roles(self) -> list[str]:
        return [row.role for row in self.role_rows]

    @property
    def schools(self) -> list[str]:
        return [row.school for row in self.school_rows]

    def has_role(self, *roles: str) -> bool:
        return any(row.role in roles for row in self.role_rows)

    # Flask-Login's user interface.
    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return f"{self.id}:{self.auth_version}"


class PersonRole(Base):
    __tablename__ = "person_role"

    person_id: Mapped[int] = mapped_column(
        ForeignKey("person.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(20), primary_key=True)
    person: Mapped[Person] = relationship(back_populates="role_rows")


class PersonSchool(Base):
    """A school the person belongs to (a code from content/federation.yaml). None: federation-wide."""

    __tablename__ = "person_school"

    person_id: Mapped[int] = mapped_column(
        ForeignKey("person.id", ondelete="CASCADE"), primary_key=True
    )
    school: Mapped[str] = mapped_column(String(40), primary_key=True)
    person: Mapped[Person] = relationship(back_populates="school_rows")


class SignInAttempt(Base):
    """Sign-in attempts, kept in the database so throttling holds across every server worker."""

    __tablename__ = "sign_in_attempt"
    __table_args__ = (
        Index("ix_sign_in_attempt_email_at", "email", "at"),
        Index("ix_sign_in_attempt_ip_at", "ip", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    ip: Mapped[str] = mapped_column(String(45))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    succeeded: Mapped[bool]
