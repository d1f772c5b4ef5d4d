"""Links between an LMS user (a platform's ``sub``) and a Countersign person: how one is made,
confirmed, suspended and removed.

A platform's word for an email address proves nothing: anyone who can set their own email in the
LMS could claim someone else's. So a launch links an LMS user to an *existing* account only after
that person confirms it, signed in to Countersign or from a single-use link emailed to them, and
they are told by email when a link is made. Accounts that see everyone's records or approve
accounts (governors, SLT, administrators) are never opened by a launch at all: gaining such a role
suspends the person's links, and every launch checks the roles again.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app, has_app_context
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from audit.log import record
from core.db import utcnow
from lti.launch import insert_new
from lti.models import LtiIdentity, LtiLinkRequest, LtiPlatform
from people.models import Person

# Roles that can see everyone's records or approve accounts: never opened from a platform.
PRIVILEGED = frozenset({"governor", "slt", "admin"})
REQUEST_LIFETIME = timedelta(hours=24)
# At most this many LMS users may wait for one person's confirmation at a time, so launches
# cannot be used to flood someone's inbox.
MAX_OPEN_REQUESTS = 3


def subject_hash(platform_id: int, subject: str) -> str:
    """What the audit log keeps of an LMS user id: enough to match it, not the id itself."""
    return hashlib.sha256(f"{platform_id}\n{subject}".encode()).hexdigest()[:32]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def closed_roles(config: Mapping[str, Any] | None = None) -> frozenset[str]:
    """Roles whose accounts a launch never opens: those that see everyone's records, and any that
    must sign in with a second factor (``COUNTERSIGN_MFA_ROLES``), which a launch cannot give.
    Without ``config``, the running app's."""
    if config is None:
        config = current_app.config if has_app_context() else {}
    extra = config.get("MFA_ROLES") or ()
    if isinstance(extra, str):
        extra = extra.split(",")
    return PRIVILEGED | {r.strip() for r in extra if isinstance(r, str) and r.strip()}


def is_privileged(person: Person, roles: frozenset[str] | None = None) -> bool:
    """Whether a launch may never open this person's account."""
    return person.has_role(*(closed_roles() if roles is None else roles))


class LinkError(ValueError):
    """A link that cannot be confirmed; the message says why."""


@dataclass(frozen=True)
class LinkRequested:
    request: LtiLinkRequest
    # The secret of the emailed link, only when a new request was made with email to send it.
    token: str | None


def request_link(
    session: Session,
    platform: LtiPlatform,
    subject: str,
    person: Person,
    *,
    email: bool,
    now: datetime | None = None,
) -> LinkRequested:
    """Ask ``person`` to confirm that this LMS user is them. A launch again while the request is
    open finds the same request and sends no new email."""
    now = now or utcnow()
    session.execute(delete(LtiLinkRequest).where(LtiLinkRequest.expires_at < now))
    found = session.scalar(
        select(LtiLinkRequest).where(
            LtiLinkRequest.platform_id == platform.id, LtiLinkRequest.subject == subject
        )
    )
    if found is not None and found.person_id == person.id:
        return LinkRequested(found, None)
    if found is not None:  # the LMS user's email now names someone else
        session.delete(found)
        session.flush()
    waiting = session.scalar(
        select(func.count())
        .select_from(LtiLinkRequest)
        .where(LtiLinkRequest.person_id == person.id)
    )
    token = secrets.token_urlsafe(32) if email and waiting < MAX_OPEN_REQUESTS else None
    inserted = insert_new(
        session, LtiLinkRequest.__table__,
        {"platform_id": platform.id, "subject": subject, "person_id": person.id,
         "token_hash": _token_hash(token) if token else None, "created_at": now,
         "expires_at": now + REQUEST_LIFETIME},
    )  # fmt: skip
    request = session.scalar(
        select(LtiLinkRequest).where(
            LtiLinkRequest.platform_id == platform.id, LtiLinkRequest.subject == subject
        )
    )
    assert request is not None
    if not inserted:  # the same launch in another tab made it a moment ago
        return LinkRequested(request, None)
    record(
        session, "lti.link_requested", subject_type="person", subject_id=person.id,
        detail={"platform": platform.id, "lms_user": subject_hash(platform.id, subject),
                "request": request.id, "emailed": token is not None},
    )  # fmt: skip
    return LinkRequested(request, token)


def open_requests(session: Session, person_id: int, now: datetime | None = None) -> list:
    """The LMS users waiting for this person's confirmation, newest first."""
    return list(
        session.scalars(
            select(LtiLinkRequest)
            .where(
                LtiLinkRequest.person_id == person_id,
                LtiLinkRequest.expires_at >= (now or utcnow()),
            )
            .order_by(LtiLinkRequest.id.desc())
        )
    )


def request_for_token(
    session: Session, token: str, now: datetime | None = None
) -> LtiLinkRequest | None:
    """The open request an emailed link is for; None if the link is unknown, used or expired."""
    if not token or len(token) > 100:
        return None
    request = session.scalar(
        select(LtiLinkRequest).where(LtiLinkRequest.token_hash == _token_hash(token))
    )
    if request is None or request.expires_at < (now or utcnow()):
        return None
    return request


def confirm_link(
    session: Session, request: LtiLinkRequest, how: str, now: datetime | None = None
) -> LtiIdentity:
    """The person confirmed this LMS user is them (``how``: "sign_in" or "email"): linked, and
    the request used up. Refused for an account that sees everyone's records or is closed."""
    now = now or utcnow()
    person = session.get(Person, request.person_id)
    if person is None or not person.active:
        raise LinkError("This Countersign account is closed, so nothing can be connected to it.")
    if is_privileged(person):
        raise LinkError(
            "Your Countersign account can see everyone's records or needs a second factor to "
            "sign in, so it is never opened from a learning platform. Sign in to Countersign "
            "directly instead."
        )
    platform_id, subject = request.platform_id, request.subject
    session.execute(delete(LtiLinkRequest).where(LtiLinkRequest.id == request.id))
    identity = session.scalar(
        select(LtiIdentity).where(
            LtiIdentity.platform_id == platform_id, LtiIdentity.subject == subject
        )
    )
    if identity is None:
        identity = LtiIdentity(
            platform_id=platform_id, subject=subject, person_id=person.id, created_at=now,
            last_launch_at=now, how=how,
        )  # fmt: skip
        session.add(identity)
    else:
        identity.person_id, identity.how, identity.suspended_at = person.id, how, None
    session.flush()
    record(
        session, "lti.link_confirmed", actor_id=person.id, subject_type="person",
        subject_id=person.id,
        detail={"platform": platform_id, "lms_user": subject_hash(platform_id, subject),
                "identity": identity.id, "how": how},
    )  # fmt: skip
    return identity


def decline_link(session: Session, request: LtiLinkRequest, actor_id: int | None) -> None:
    """The person says the LMS user is not them: the request goes, and nothing is linked."""
    session.execute(delete(LtiLinkRequest).where(LtiLinkRequest.id == request.id))
    record(
        session, "lti.link_declined", actor_id=actor_id, subject_type="person",
        subject_id=request.person_id,
        detail={"platform": request.platform_id,
                "lms_user": subject_hash(request.platform_id, request.subject)},
    )  # fmt: skip


def record_new_person_link(session: Session, identity_id: int, platform_id: int, subject: str,
                           person_id: int) -> None:  # fmt: skip
    record(
        session, "lti.identity_linked", actor_id=person_id, subject_type="person",
        subject_id=person_id,
        detail={"platform": platform_id, "lms_user": subject_hash(platform_id, subject),
                "identity": identity_id, "how": "new_person"},
    )  # fmt: skip


def suspend_links(session: Session, person: Person, by_id: int | None) -> int:
    """Suspend the person's live links and drop the requests waiting for them; how many were
    suspended. Called when they gain a role that sees everyone's records."""
    session.execute(delete(LtiLinkRequest).where(LtiLinkRequest.person_id == person.id))
    live = session.scalars(
        select(LtiIdentity)
        .where(LtiIdentity.person_id == person.id, LtiIdentity.suspended_at.is_(None))
        .order_by(LtiIdentity.id)
    ).all()
    now = utcnow()
    for identity in live:
        identity.suspended_at = now
        record(
            session, "lti.link_suspended", actor_id=by_id, subject_type="person",
            subject_id=person.id,
            detail={"platform": identity.platform_id, "identity": identity.id,
                    "lms_user": subject_hash(identity.platform_id, identity.subject),
                    "reason": "privileged_role"},
        )  # fmt: skip
    return len(live)


def roles_changed(session: Session, person: Person, by_id: int | None) -> None:
    """After a person's roles change: a role that sees everyone's records suspends their links."""
    if is_privileged(person):
        suspend_links(session, person, by_id)


def links_of(session: Session, person_id: int) -> list[tuple[LtiIdentity, str]]:
    """A person's LMS links with their platforms' names, for the administrator's page."""
    return [
        (identity, name)
        for identity, name in session.execute(
            select(LtiIdentity, LtiPlatform.name)
            .join(LtiPlatform, LtiIdentity.platform_id == LtiPlatform.id)
            .where(LtiIdentity.person_id == person_id)
            .order_by(LtiIdentity.id)
        ).all()
    ]


def remove_link(session: Session, identity: LtiIdentity, by_id: int | None) -> None:
    """An administrator removes a link: that LMS user's next launch starts afresh (a new person's
    launch is confirmed again; its grade links go with it)."""
    detail = {"platform": identity.platform_id, "identity": identity.id,
              "lms_user": subject_hash(identity.platform_id, identity.subject)}  # fmt: skip
    person_id = identity.person_id
    session.execute(delete(LtiIdentity).where(LtiIdentity.id == identity.id))
    session.expunge(identity)
    record(
        session, "lti.link_removed", actor_id=by_id, subject_type="person", subject_id=person_id,
        detail=detail,
    )  # fmt: skip


def link_notice(person: Person, platform: LtiPlatform, site: str) -> tuple[str, str]:
    """The email telling someone a learning platform account now opens their account."""
    subject = "A learning platform account was connected to your Countersign account"
    body = (
        f"Hello {person.name},\n\n"
        f"A learning platform account on {platform.name} was connected to your {site} "
        "Countersign account. Opening the training from that platform now signs you in.\n\n"
        "If this wasn't you, tell a Countersign administrator: they can remove the connection.\n"
    )
    return subject, body


def confirm_request_mail(
    person: Person, platform: LtiPlatform, link: str, site: str
) -> tuple[str, str]:
    """The email with the single-use link that confirms a link request."""
    subject = "Connect your learning platform account to Countersign"
    body = (
        f"Hello {person.name},\n\n"
        f"Someone opened the {site} training from {platform.name} with your email address. If "
        "that was you, follow this link to connect that learning platform account to your "
        f"Countersign account:\n{link}\n\n"
        f"The link works once, within {int(REQUEST_LIFETIME.total_seconds() // 3600)} hours. "
        "If it wasn't you, ignore this email: nothing is connected unless you confirm, and you "
        "may want to tell a Countersign administrator.\n"
    )
    return subject, body
