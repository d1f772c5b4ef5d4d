"""Policies and their published versions, module versions, and the evidence of training.

Evidence (read receipts, acknowledgements) is append-only: the app inserts rows and never updates or
deletes them. Where a person may legitimately do the same thing again (re-reading after a refresher
falls due, signing again after new modules became required) the row carries a sequence number, and a
unique constraint on it turns a double submit into exactly one row.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import JSON, Date, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, UTCDateTime, utcnow


class Policy(Base):
    __tablename__ = "policy"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    # Bumped by database triggers when a version, its modules or its audiences change.
    status_rev: Mapped[int] = mapped_column(default=0, server_default="0")

    versions: Mapped[list[PolicyVersion]] = relationship(
        back_populates="policy", order_by="PolicyVersion.id"
    )


class Module(Base):
    """A module of a policy, identified by its slug across versions."""

    __tablename__ = "module"
    __table_args__ = (UniqueConstraint("policy_id", "slug"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("policy.id"))
    slug: Mapped[str] = mapped_column(String(80))


class ModuleVersion(Base):
    """One exact text of a module. Versions of a policy that share the text share this row, so a
    person's completion carries from one policy version to the next when the module did not change."""

    __tablename__ = "module_version"
    __table_args__ = (UniqueConstraint("module_id", "text_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    module_id: Mapped[int] = mapped_column(ForeignKey("module.id"))
    text_hash: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    summary: Mapped[str] = mapped_column(Text, default="")
    body_markdown: Mapped[str] = mapped_column(Text)
    html: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    # Joined: pages find a module by its slug among a version's modules on every request.
    module: Mapped[Module] = relationship(lazy="joined")


class PolicyVersion(Base):
    __tablename__ = "policy_version"
    __table_args__ = (UniqueConstraint("policy_id", "label"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("policy.id"))
    label: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(200))
    effective: Mapped[date] = mapped_column(Date)
    next_review: Mapped[date | None] = mapped_column(Date)
    owner: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(300), default="")
    refresher_months: Mapped[int]
    # Hash of everything that decides what people must do; equal fingerprints mean nothing changed.
    fingerprint: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict] = mapped_column(JSON)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    policy: Mapped[Policy] = relationship(back_populates="versions")
    module_links: Mapped[list[PolicyVersionModule]] = relationship(
        order_by="PolicyVersionModule.position", cascade="all, delete-orphan"
    )
    requirements: Mapped[list[RequiredModule]] = relationship(cascade="all, delete-orphan")

    @property
    def module_versions(self) -> list[ModuleVersion]:
        return [link.module_version for link in self.module_links]


class PolicyVersionModule(Base):
    __tablename__ = "policy_version_module"

    policy_version_id: Mapped[int] = mapped_column(
        ForeignKey("policy_version.id"), primary_key=True
    )
    module_version_id: Mapped[int] = mapped_column(
        ForeignKey("module_version.id"), primary_key=True
    )
    position: Mapped[int]
    # The module's question bank in this version; a corrected bank replaces it in place.
    bank_id: Mapped[int | None] = mapped_column(ForeignKey("quiz_bank.id"))

    module_version: Mapped[ModuleVersion] = relationship(lazy="joined")


class RequiredModule(Base):
    """Which modules a role must complete in a policy version (the manifest's audiences)."""

    __tablename__ = "required_module"

    policy_version_id: Mapped[int] = mapped_column(
        ForeignKey("policy_version.id"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(20), primary_key=True)
    module_id: Mapped[int] = mapped_column(ForeignKey("module.id"), primary_key=True)


class ModuleVisit(Base):
    """Where a person has been: lets the dashboard say "in progress" and offer to carry on.

    Progress, not evidence: it is updated in place.
    """

    __tablename__ = "module_visit"

    person_id: Mapped[int] = mapped_column(ForeignKey("person.id"), primary_key=True)
    module_version_id: Mapped[int] = mapped_column(
        ForeignKey("module_version.id"), primary_key=True
    )
    first_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReadReceipt(Base):
    """ "I have read this module", recorded against the exact module version."""

    __tablename__ = "read_receipt"
    __table_args__ = (
        UniqueConstraint("person_id", "module_version_id", "seq"),
        Index("ix_read_receipt_person", "person_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id"))
    module_version_id: Mapped[int] = mapped_column(ForeignKey("module_version.id"))
    seq: Mapped[int] = mapped_column(default=0)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    module_version: Mapped[ModuleVersion] = relationship()


class Acknowledgement(Base):
    """A signed declaration that the person has read and understood a policy version."""

    __tablename__ = "acknowledgement"
    __table_args__ = (
        UniqueConstraint("person_id", "policy_version_id", "seq"),
        Index("ix_acknowledgement_person", "person_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id"))
    policy_version_id: Mapped[int] = mapped_column(ForeignKey("policy_version.id"))
    seq: Mapped[int] = mapped_column(default=0)
    declaration: Mapped[str] = mapped_column(Text)
    typed_name: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ip: Mapped[str] = mapped_column(String(45))
    user_agent: Mapped[str] = mapped_column(String(500))

    policy_version: Mapped[PolicyVersion] = relationship()
    module_links: Mapped[list[AcknowledgementModule]] = relationship(
        order_by="AcknowledgementModule.module_version_id"
    )


class AcknowledgementModule(Base):
    """The exact module versions an acknowledgement covered."""

    __tablename__ = "acknowledgement_module"

    acknowledgement_id: Mapped[int] = mapped_column(
        ForeignKey("acknowledgement.id"), primary_key=True
    )
    module_version_id: Mapped[int] = mapped_column(
        ForeignKey("module_version.id"), primary_key=True
    )
    module_version: Mapped[ModuleVersion] = relationship()


class StoredStatus(Base):
    """The rule's last answer for a person and a policy: the one derived store of training status.

    Kept by :mod:`training.status_store`, which writes it only through the rule and turns every
    change of standing into one ``status.changed`` event. A row counts only while both revisions it
    was computed at are still the person's and the policy's (database triggers bump them in the same
    transaction as any change to evidence, roles, personal details or content) and until
    ``fresh_until``, when time alone changes the answer (training expires, a version takes effect).
    Derived: deleting every row loses nothing.
    """

    __tablename__ = "stored_status"
    __table_args__ = (Index("ix_stored_status_policy_standing", "policy_id", "standing"),)

    person_id: Mapped[int] = mapped_column(
        ForeignKey("person.id", ondelete="CASCADE"), primary_key=True
    )
    policy_id: Mapped[int] = mapped_column(
        ForeignKey("policy.id", ondelete="CASCADE"), primary_key=True
    )
    person_rev: Mapped[int]
    policy_rev: Mapped[int]
    policy_version_id: Mapped[int] = mapped_column(ForeignKey("policy_version.id"))
    version: Mapped[str] = mapped_column(String(40))
    active: Mapped[bool]
    trained: Mapped[bool]
    standing: Mapped[str] = mapped_column(String(20))
    completed: Mapped[int]
    required: Mapped[int]
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acknowledgement_id: Mapped[int | None]
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    changes_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # [{"slug", "title", "module_version_id", "state", "completed_at", "reason"}] in reading order
    modules: Mapped[list] = mapped_column(JSON)
    missing: Mapped[list] = mapped_column(JSON)  # [{"module", "reason"}]
    fresh_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
