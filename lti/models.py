"""What an LTI 1.3 platform (a school's LMS) and Countersign know of each other."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, UTCDateTime, utcnow


class LtiPlatform(Base):
    """A registered LMS: its issuer and our client id there, where to send people to log in,
    where to get service tokens, and how to check its signatures (a key set URL or a key set)."""

    __tablename__ = "lti_platform"
    __table_args__ = (UniqueConstraint("issuer", "client_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    issuer: Mapped[str] = mapped_column(String(500))
    client_id: Mapped[str] = mapped_column(String(255))
    auth_login_url: Mapped[str] = mapped_column(String(500))
    auth_token_url: Mapped[str] = mapped_column(String(500))
    key_set_url: Mapped[str | None] = mapped_column(String(500))
    key_set: Mapped[dict | None] = mapped_column(JSON)  # a JWKS pasted in, when there is no URL
    # LMS role (the part after '#', e.g. "Instructor") -> Countersign role code, for people
    # created on their first launch.
    role_map: Mapped[dict] = mapped_column(JSON)
    school: Mapped[str | None] = mapped_column(String(20))  # given to people created from here
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("person.id"))

    deployments: Mapped[list[LtiDeployment]] = relationship(
        back_populates="platform", cascade="all, delete-orphan", order_by="LtiDeployment.id"
    )

    @property
    def deployment_ids(self) -> list[str]:
        return [d.deployment_id for d in self.deployments]


class LtiDeployment(Base):
    """One installation of the tool on a platform; launches from any other are refused."""

    __tablename__ = "lti_deployment"
    __table_args__ = (UniqueConstraint("platform_id", "deployment_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    platform_id: Mapped[int] = mapped_column(ForeignKey("lti_platform.id", ondelete="CASCADE"))
    deployment_id: Mapped[str] = mapped_column(String(255))

    platform: Mapped[LtiPlatform] = relationship(back_populates="deployments")


class LtiUsedNonce(Base):
    """The nonce of a launch already accepted, kept until its login would have expired, so that
    a replayed launch is refused. Written only for launches the platform signed: the login that
    comes before them keeps its state in a signed cookie and writes nothing."""

    __tablename__ = "lti_used_nonce"
    __table_args__ = (Index("ix_lti_used_nonce_expires", "expires_at"),)

    nonce: Mapped[str] = mapped_column(String(100), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LtiIdentity(Base):
    """An LMS user (the platform's stable ``sub``) known to be this Countersign person."""

    __tablename__ = "lti_identity"
    __table_args__ = (UniqueConstraint("platform_id", "subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    platform_id: Mapped[int] = mapped_column(ForeignKey("lti_platform.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(255))
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_launch_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # How the link was made: "new_person" (the launch created the account), "sign_in" or
    # "email" (the person confirmed it), "earlier" (made before confirmation was asked for).
    how: Mapped[str] = mapped_column(String(20), server_default="earlier")
    # Set when the person gained a role that sees everyone's records: a suspended link signs
    # nobody in until the person confirms it again.
    suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LtiLinkRequest(Base):
    """An LMS user who launched with the email of someone Countersign already knows: linked only
    once that person confirms with the code shown at that launch, signed in or from the
    single-use link emailed to them (kept here only as a hash)."""

    __tablename__ = "lti_link_request"
    __table_args__ = (
        UniqueConstraint("platform_id", "subject"),
        Index("ix_lti_link_request_person", "person_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    platform_id: Mapped[int] = mapped_column(ForeignKey("lti_platform.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(255))
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id"))
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    # The short code shown only at the launch (a hash): the owner types it to confirm this
    # request, so they can never confirm another LMS user's believing it is theirs.
    pairing_hash: Mapped[str | None] = mapped_column(String(64))
    # The name the platform gave for the LMS user, to tell requests apart.
    lms_name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())

    platform: Mapped[LtiPlatform] = relationship()


class LtiGradeLink(Base):
    """Where a person's grade for a policy goes: the line item of the LMS activity they launched,
    with the scores the platform granted. Kept per person, platform and resource link."""

    __tablename__ = "lti_grade_link"
    __table_args__ = (UniqueConstraint("identity_id", "resource_link_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("lti_identity.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id"))
    policy_id: Mapped[int] = mapped_column(ForeignKey("policy.id"))
    resource_link_id: Mapped[str] = mapped_column(String(255))
    context_title: Mapped[str | None] = mapped_column(String(255))
    lineitem_url: Mapped[str | None] = mapped_column(String(1000))
    lineitems_url: Mapped[str | None] = mapped_column(String(1000))
    scopes: Mapped[list] = mapped_column(JSON)
    last_score: Mapped[float | None]  # the last score queued, so an unchanged one is not re-sent
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    identity: Mapped[LtiIdentity] = relationship()
