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
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from audit.log import record
from core.db import utcnow
from lti.launch import insert_new
from lti.models import LtiIdentity, LtiLinkRequest, LtiPlatform
from people.models import Person

# Roles that can see everyone's records or approve accounts: never opened from a platform.
PRIVILEGED = frozenset({"governor", "slt", "admin"})
REQUEST_LIFETIME = timedelta(hours=24)
# At most this many LMS users wait for one person at a time; a new launch drops the oldest (never
# the one whose link was emailed), so launches by others can never crowd out the owner's own.
MAX_OPEN_REQUESTS = 5
# The pairing code shown at a launch: short enough to type from one window into another, with no
# letters that look alike. It binds a confirmation to one launch; it is not a password.
PAIRING_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
PAIRING_LENGTH = 6


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


def launch_closed(session: Session, person: Person) -> bool:
    """Whether a launch may never open this person's account: a closed role, or a second factor
    they set up themselves (a launch cannot ask for it, and they chose to be asked)."""
    from mfa.rules import factors  # mfa builds on people, as lti does: imported when used

    return is_privileged(person) or bool(factors(session, person.id))


class LinkError(ValueError):
    """A link that cannot be confirmed; the message says why."""


@dataclass(frozen=True)
class LinkRequested:
    request: LtiLinkRequest
    # The pairing code for this launch, shown only on the page the launching browser gets.
    code: str
    # The secret of the emailed link, only when an email is to be sent now.
    token: str | None


def new_pairing_code() -> str:
    return "".join(secrets.choice(PAIRING_ALPHABET) for _ in range(PAIRING_LENGTH))


def show_pairing_code(code: str) -> str:
    """``ABC234`` as ``ABC 234``: easier to read out and type."""
    half = len(code) // 2
    return f"{code[:half]} {code[half:]}"


def clean_pairing_code(text: str | None) -> str:
    """What the person typed, as the code is made: capitals, no spaces or dashes."""
    return "".join(c for c in (text or "").upper() if c not in " -\t")[: PAIRING_LENGTH * 2]


def _pairing_hash(person_id: int, code: str) -> str:
    return hashlib.sha256(f"{person_id}\n{code}".encode()).hexdigest()


def request_link(
    session: Session,
    platform: LtiPlatform,
    subject: str,
    person: Person,
    *,
    email: bool,
    lms_name: str | None = None,
    now: datetime | None = None,
) -> LinkRequested:
    """Ask ``person`` to confirm that this LMS user is them, with a new pairing code for this
    launch (a launch again while the request is open replaces the code). An email (``email``:
    one can be sent) goes only when no emailed link of theirs is live, so at most one a day
    reaches them however many LMS users launch."""
    now = now or utcnow()
    session.execute(delete(LtiLinkRequest).where(LtiLinkRequest.expires_at < now))
    code = new_pairing_code()
    found = session.scalar(
        select(LtiLinkRequest).where(
            LtiLinkRequest.platform_id == platform.id, LtiLinkRequest.subject == subject
        )
    )
    if found is not None and found.person_id == person.id:
        found.pairing_hash = _pairing_hash(person.id, code)
        found.lms_name = (lms_name or "")[:200] or None
        session.flush()
        return LinkRequested(found, code, None)
    if found is not None:  # the LMS user's email now names someone else
        session.delete(found)
        session.flush()
    waiting = open_requests(session, person.id, now)
    emailed = any(r.token_hash is not None for r in waiting)
    others = sorted((r for r in waiting if r.token_hash is None), key=lambda r: r.id)
    for oldest in others[: max(0, len(waiting) - MAX_OPEN_REQUESTS + 1)]:
        session.execute(delete(LtiLinkRequest).where(LtiLinkRequest.id == oldest.id))
        session.expunge(oldest)
    token = secrets.token_urlsafe(32) if email and not emailed else None
    inserted = insert_new(
        session, LtiLinkRequest.__table__,
        {"platform_id": platform.id, "subject": subject, "person_id": person.id,
         "token_hash": _token_hash(token) if token else None,
         "pairing_hash": _pairing_hash(person.id, code),
         "lms_name": (lms_name or "")[:200] or None, "created_at": now,
         "expires_at": now + REQUEST_LIFETIME},
    )  # fmt: skip
    request = session.scalar(
        select(LtiLinkRequest).where(
            LtiLinkRequest.platform_id == platform.id, LtiLinkRequest.subject == subject
        )
    )
    assert request is not None
    if not inserted:  # the same launch in another tab made it a moment ago: this code instead
        request.pairing_hash = _pairing_hash(person.id, code)
        session.flush()
        return LinkRequested(request, code, None)
    record(
        session, "lti.link_requested", subject_type="person", subject_id=person.id,
        detail={"platform": platform.id, "lms_user": subject_hash(platform.id, subject),
                "request": request.id, "emailed": token is not None},
    )  # fmt: skip
    return LinkRequested(request, code, token)


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


def request_for_code(
    session: Session, person_id: int, code: str | None, now: datetime | None = None
) -> LtiLinkRequest | None:
    """The open request of this person that the pairing code was shown for; None if none."""
    code = clean_pairing_code(code)
    if len(code) != PAIRING_LENGTH:
        return None
    return session.scalar(
        select(LtiLinkRequest).where(
            LtiLinkRequest.person_id == person_id,
            LtiLinkRequest.pairing_hash == _pairing_hash(person_id, code),
            LtiLinkRequest.expires_at >= (now or utcnow()),
        )
    )


def link_used(session: Session, token: str) -> None:
    """The emailed link was answered: it works once."""
    session.execute(
        update(LtiLinkRequest)
        .where(LtiLinkRequest.token_hash == _token_hash(token))
        .values(token_hash=None)
    )


def confirm_link(
    session: Session, request: LtiLinkRequest, how: str, now: datetime | None = None
) -> LtiIdentity:
    """The person confirmed this LMS user is them (``how``: "sign_in" or "email"): linked, and
    the request used up. Refused for an account that sees everyone's records or is closed."""
    now = now or utcnow()
    person = session.get(Person, request.person_id)
    if person is None or not person.active:
        raise LinkError("This Countersign account is closed, so nothing can be connected to it.")
    if launch_closed(session, person):
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


def decline_all(session: Session, person_id: int, actor_id: int | None) -> int:
    """The person says none of the waiting LMS users are them: every request goes; how many."""
    waiting = open_requests(session, person_id)
    for request in waiting:
        decline_link(session, request, actor_id)
    return len(waiting)


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
    return _suspend(session, person, by_id, "privileged_role", new_person_only=False)


def _suspend(
    session: Session, person: Person, by_id: int | None, reason: str, *, new_person_only: bool
) -> int:
    query = select(LtiIdentity).where(
        LtiIdentity.person_id == person.id, LtiIdentity.suspended_at.is_(None)
    )
    if new_person_only:
        query = query.where(LtiIdentity.how == "new_person")
    live = session.scalars(query.order_by(LtiIdentity.id)).all()
    now = utcnow()
    for identity in live:
        identity.suspended_at = now
        record(
            session, "lti.link_suspended", actor_id=by_id, subject_type="person",
            subject_id=person.id,
            detail={"platform": identity.platform_id, "identity": identity.id,
                    "lms_user": subject_hash(identity.platform_id, identity.subject),
                    "reason": reason},
        )  # fmt: skip
    return len(live)


def account_claimed(session: Session, person: Person, by_id: int | None) -> int:
    """A real person takes over an account a launch created (their first password, or an import
    or administrator giving it their name or roles): whoever launched then may not be them, so
    the launch's link is suspended until the person confirms it with the code from their own
    launch. How many were suspended."""
    return _suspend(session, person, by_id, "account_claimed", new_person_only=True)


def roles_changed(session: Session, person: Person, by_id: int | None) -> None:
    """After a person's roles change: a role that sees everyone's records suspends their links;
    any other change claims an account a launch created."""
    if is_privileged(person):
        suspend_links(session, person, by_id)
    else:
        account_claimed(session, person, by_id)


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
    person: Person, platform: LtiPlatform, link: str, site: str, waiting: int
) -> tuple[str, str]:
    """The email with the single-use link that confirms a link request with its pairing code."""
    subject = "Connect your learning platform account to Countersign"
    others = (
        f"\n{waiting} learning platform accounts are waiting for your answer now; the page lists "
        "them. Connect only the one whose code you saw yourself.\n"
        if waiting > 1
        else ""
    )
    body = (
        f"Hello {person.name},\n\n"
        f"Someone opened the {site} training from {platform.name} with your email address. If "
        "that was you, follow this link and type the code that the page in your course showed "
        f"you:\n{link}\n{others}\n"
        f"The link works once, within {int(REQUEST_LIFETIME.total_seconds() // 3600)} hours. "
        "If it wasn't you, ignore this email, or follow the link and choose 'None of these were "
        "me': nothing is connected without the code from the launch, and you may want to tell "
        "a Countersign administrator. No other link is emailed to you while this one works.\n"
    )
    return subject, body
