from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime


class AuditEvent(Base):
    """One security-relevant event. Rows are only ever inserted: database triggers refuse UPDATE and
    DELETE (migration 0008). Each row's ``hash`` is an HMAC of its content and of the previous row's
    hash, keyed by a secret kept outside the database, so a changed, removed or reordered row breaks
    the chain. Rows hold ids, never personal details, so erasing a person never touches the log."""

    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_event_event_seq", "event", "seq"),
        Index("ix_audit_event_actor_seq", "actor_id", "seq"),
        Index("ix_audit_event_at", "at"),
        # The latest digest recorded for one evidence row, without reading the chain (0017).
        Index("ix_audit_event_subject", "subject_type", "subject_id"),
    )

    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    event: Mapped[str] = mapped_column(String(60))
    actor_id: Mapped[int | None] = mapped_column()
    subject_type: Mapped[str | None] = mapped_column(String(40))
    subject_id: Mapped[str | None] = mapped_column(String(64))
    # Canonical JSON (sorted keys, no spaces) of ids and codes; the exact text is what is hashed.
    detail: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class ErasureMarker(Base):
    """Present only inside the transaction that erases a person (``people.privacy.erase_person``),
    which adds it first and removes it before committing. The evidence tables' triggers
    (migrations 0011, 0017) let that person's evidence rows take the pseudonymised values while it
    is there and refuse every other UPDATE or DELETE. No other transaction can see an uncommitted
    marker (PostgreSQL), and SQLite has one writer at a time. On PostgreSQL only the owner's
    ``countersign_erasure_begin``/``_end`` functions write it, and a marker cannot be committed."""

    __tablename__ = "evidence_erasure"

    person_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
