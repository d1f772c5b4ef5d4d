"""A certificate of training: issued once for the acknowledgement that made a person trained.

A certificate is derived from the evidence (the acknowledgement and the status rule) but, once
issued, it is a document people print and show: its facts are a snapshot taken at issue, so a later
change of name, title or federation does not rewrite a certificate already in someone's hands, and
its PDF is rendered once and served byte for byte ever after.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime


class Certificate(Base):
    __tablename__ = "certificate"
    __table_args__ = (Index("ix_certificate_person", "person_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # secrets.token_urlsafe(20): 160 random bits. The only key the public verification page takes.
    code: Mapped[str] = mapped_column(String(40), unique=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id"))
    policy_id: Mapped[int] = mapped_column(ForeignKey("policy.id"))
    policy_version_id: Mapped[int] = mapped_column(ForeignKey("policy_version.id"))
    # One certificate per acknowledgement that made the person trained: a double issue is refused.
    acknowledgement_id: Mapped[int] = mapped_column(ForeignKey("acknowledgement.id"), unique=True)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    valid_until: Mapped[datetime] = mapped_column(UTCDateTime())

    # What the certificate says, as it was when issued.
    person_name: Mapped[str] = mapped_column(String(200))
    policy_title: Mapped[str] = mapped_column(String(200))
    version_label: Mapped[str] = mapped_column(String(40))
    module_titles: Mapped[list[str]] = mapped_column(JSON)  # in reading order
    federation_name: Mapped[str] = mapped_column(String(200))

    # The PDF/A document, stored once rendered; never loaded unless asked for.
    pdf: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    pdf_sha256: Mapped[str | None] = mapped_column(String(64))
