from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime, utcnow


class ApiToken(Base):
    """A bearer token for another system. Only a hash is kept: the token is shown once."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))  # first characters, to recognise a token
    scopes: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("person.id"))
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Refused from this moment: a token lives at most a year (MAX_LIFETIME_DAYS in api.tokens).
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Webhook(Base):
    """Where to POST events. The secret signs each delivery; it is shown to the administrator."""

    __tablename__ = "webhook"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(500))
    secret: Mapped[str] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("person.id"))


class WebhookDelivery(Base):
    __tablename__ = "webhook_delivery"
    __table_args__ = (Index("ix_webhook_delivery_due", "delivered_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhook.id"))
    event_id: Mapped[str] = mapped_column(String(36))
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    gave_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class StatusSnapshot(Base):
    """The trained status last announced for a person and policy (derived; rebuilt at will)."""

    __tablename__ = "status_snapshot"

    person_id: Mapped[int] = mapped_column(ForeignKey("person.id"), primary_key=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("policy.id"), primary_key=True)
    trained: Mapped[bool]
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PrecomputedStatus(Base):
    """A person's API answer for a policy, kept so lookups need not re-run the rule.

    Derived and rebuilt at will. A row counts only while both revisions it was computed at are
    still the person's and the policy's (triggers bump them on every change of evidence, roles,
    personal details or content) and until ``fresh_until``, when time alone changes the answer
    (training expires, or a new version takes effect).
    """

    __tablename__ = "precomputed_status"

    person_id: Mapped[int] = mapped_column(
        ForeignKey("person.id", ondelete="CASCADE"), primary_key=True
    )
    policy_id: Mapped[int] = mapped_column(
        ForeignKey("policy.id", ondelete="CASCADE"), primary_key=True
    )
    person_rev: Mapped[int]
    policy_rev: Mapped[int]
    trained: Mapped[bool]
    # For reports: Status.standing, the modules done of those required, and valid_until.
    standing: Mapped[str] = mapped_column(String(20))
    completed: Mapped[int]
    required: Mapped[int]
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    body: Mapped[str] = mapped_column(Text)  # the API's JSON for this person and policy
    fresh_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
