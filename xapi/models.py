from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime, utcnow


class XapiStatement(Base):
    """An xAPI statement waiting for, or already accepted by, the Learning Record Store.

    ``event_key`` names the evidence the statement reports (a read receipt, a quiz submission, an
    acknowledgement, or a person becoming trained on a policy version), so the same event can never
    be queued twice. ``statement_id`` is the statement's own id: the LRS keeps one statement per id,
    which makes a resend after a lost answer harmless.
    """

    __tablename__ = "xapi_statement"
    __table_args__ = (
        Index("ix_xapi_statement_due", "sent_at", "gave_up_at", "next_attempt_at"),
        Index("ix_xapi_statement_person", "person_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    statement_id: Mapped[str] = mapped_column(String(36), unique=True)
    event_key: Mapped[str] = mapped_column(String(120), unique=True)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("person.id", ondelete="SET NULL"))
    verb: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    gave_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
