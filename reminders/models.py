"""The reminder settings, and the record of every reminder queued.

A ``reminder`` row is written in the same transaction as the outbox message that emails it, and
its unique (person, kind, cycle) is what makes each reminder at most once per training cycle: two
workers running the job at once, or the job run twice, insert one row and queue one email. The
record is kept in its own table rather than only as the outbox message's key because finished
outbox messages are pruned after ``OUTBOX_KEEP_DAYS``, and an expired person must not be told
again every three months.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime, utcnow

# The kinds of reminder, as administrators see them.
KINDS: dict[str, str] = {
    "not_started": "Training not done",
    "expiring_30": "Training expires in 30 days",
    "expiring_7": "Training expires in 7 days",
    "expired": "Training expired",
    "account_at_risk": "Account at risk (runner's training lapsed)",
    "digest": "Weekly digest (SLT and governors)",
    "review_due": "Policy review due (owner)",
}


class ReminderSettings(Base):
    """One row (id 1): what is sent and when. Missing, the defaults apply."""

    __tablename__ = "reminder_settings"

    id: Mapped[int] = mapped_column(primary_key=True)
    first_after_days: Mapped[int] = mapped_column(default=7)  # N: days after training became due
    every_days: Mapped[int] = mapped_column(default=7)  # M: then every M days
    max_times: Mapped[int] = mapped_column(default=4)  # K: at most K times
    quiet_from: Mapped[int] = mapped_column(default=20)  # hour, the school's time zone
    quiet_until: Mapped[int] = mapped_column(default=8)
    not_started_on: Mapped[bool] = mapped_column(default=True)
    expiring_on: Mapped[bool] = mapped_column(default=True)
    expired_on: Mapped[bool] = mapped_column(default=True)
    runners_on: Mapped[bool] = mapped_column(default=True)
    digest_on: Mapped[bool] = mapped_column(default=True)
    owner_on: Mapped[bool] = mapped_column(default=True)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __init__(self, **kwargs: object) -> None:
        # Column defaults apply only at INSERT; unsaved settings are the defaults too.
        for column in self.__table__.columns:
            if column.default is not None and column.name not in kwargs:
                kwargs[column.name] = column.default.arg
        super().__init__(**kwargs)

    def on(self, kind: str) -> bool:
        flag = {
            "not_started": self.not_started_on, "expiring_30": self.expiring_on,
            "expiring_7": self.expiring_on, "expired": self.expired_on,
            "account_at_risk": self.runners_on, "digest": self.digest_on,
            "review_due": self.owner_on,
        }  # fmt: skip
        return bool(flag.get(kind, False))


class Reminder(Base):
    """A reminder queued for a person: at most one per person, kind and cycle."""

    __tablename__ = "reminder"
    __table_args__ = (UniqueConstraint("person_id", "kind", "cycle"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(30))
    # What makes this reminder's training cycle: the policy and its version, or the expiry date,
    # and for the repeated "not done" reminder which one of the K it is.
    cycle: Mapped[str] = mapped_column(String(200))
    policy_id: Mapped[int | None] = mapped_column(ForeignKey("policy.id", ondelete="CASCADE"))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)  # ids only (accounts, counts)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DigestChoice(Base):
    """An SLT member's or governor's own choice about the weekly digest (absent: they get it)."""

    __tablename__ = "digest_choice"

    person_id: Mapped[int] = mapped_column(
        ForeignKey("person.id", ondelete="CASCADE"), primary_key=True
    )
    weekly_digest: Mapped[bool] = mapped_column(default=True)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
