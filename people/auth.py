"""Sign-in throttling, where to go after signing in, invitation and password-reset links."""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import abort
from flask_login import current_user, login_required
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, joinedload
from werkzeug.urls import iri_to_uri

from audit.models import AuditEvent
from core.db import db, utcnow
from people.models import Person, SignInAttempt

# New-password links asked for by email: a person gets at most this many an hour, however many
# times their address is typed into the form, so the form cannot be used to flood their inbox.
RESET_MAILS_PER_HOUR = 3


def reset_mail_allowed(
    session: Session, person: Person, now: datetime | None = None, limit: int = RESET_MAILS_PER_HOUR
) -> bool:
    """Whether another new-password link may be emailed to this person now (the links emailed are
    counted from the audit log, where each one is recorded). Holds the person's sign-in lock for
    the rest of the caller's transaction, so requests at the same moment are counted one after
    another: call it in the transaction that records the link."""
    lock_sign_in(session, person.email)
    since = (now or utcnow()) - timedelta(hours=1)
    sent = session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(
            AuditEvent.event == "link.reset_issued",
            AuditEvent.actor_id.is_(None),
            AuditEvent.subject_type == "person",
            AuditEvent.subject_id == str(person.id),
            AuditEvent.at >= since,
        )
    )
    return (sent or 0) < limit


# --- throttling ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThrottlePolicy:
    free_failures: int = 5  # failures allowed for one email before waiting is required
    window: timedelta = timedelta(minutes=15)
    first_wait: timedelta = timedelta(seconds=30)
    max_wait: timedelta = timedelta(minutes=15)
    # Failures from one address against accounts that exist (password spraying); failures for
    # made-up emails are left out, so they cannot lock out everyone behind a school's address.
    ip_free_failures: int = 20


def _wait_after(failures: int, last: datetime, policy: ThrottlePolicy, free: int) -> datetime:
    doublings = min(failures - free, 10)
    wait = min(policy.first_wait * (2**doublings), policy.max_wait)
    return last + wait


def lock_sign_in(session: Session, email: str) -> None:
    """Serialise sign-in attempts for one email so parallel guesses cannot overtake the count.

    SQLite's BEGIN IMMEDIATE already serialises them; PostgreSQL takes a transaction-scoped
    advisory lock keyed on the email.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:email))"), {"email": email})


def _seconds_left(count: int, last: datetime | None, free: int, policy: ThrottlePolicy,
                  now: datetime) -> int:  # fmt: skip
    if count < free or last is None:
        return 0
    until = _wait_after(count, last, policy, free)
    return max(0, int((until - now).total_seconds() + 0.999))


def retry_after(
    session: Session,
    email: str,
    ip: str,
    policy: ThrottlePolicy,
    now: datetime | None = None,
    trusted_device: bool = False,
) -> int:
    """Seconds the caller must wait before trying again; 0 when a try is allowed.

    Two counts, both in the database so every worker sees them:

    - per email, failures since its last success: one account's password cannot be guessed
      quickly. Unknown emails are counted exactly like known ones, so the answer does not say
      which accounts exist.
    - per address, failures against accounts that exist: spraying one password over many real
      accounts from one address is slowed down, while failures with made-up emails (which guess
      nobody's password) do not count, so they cannot lock out the real people at that address.
      A ``trusted_device`` (a browser this person has fully signed in from, see
      :func:`device_token`) is exempt from this count: spraying from a shared address cannot lock
      out the people behind it, while a new browser there still meets the limit.
    """
    now = now or utcnow()
    since = now - policy.window
    last_success = session.scalar(
        select(func.max(SignInAttempt.at)).where(
            SignInAttempt.email == email, SignInAttempt.succeeded.is_(True)
        )
    )
    failed = SignInAttempt.succeeded.is_(False)
    per_email = session.execute(
        select(func.count(), func.max(SignInAttempt.at)).where(
            SignInAttempt.email == email,
            failed,
            SignInAttempt.at > (max(since, last_success) if last_success else since),
        )
    ).one()
    if trusted_device:
        return _seconds_left(*per_email, policy.free_failures, policy, now)
    per_address = session.execute(
        select(func.count(), func.max(SignInAttempt.at)).where(
            SignInAttempt.ip == ip,
            failed,
            SignInAttempt.at > since,
            SignInAttempt.email.in_(select(Person.email)),
        )
    ).one()
    return max(
        _seconds_left(*per_email, policy.free_failures, policy, now),
        _seconds_left(*per_address, policy.ip_free_failures, policy, now),
    )


def record_attempt(session: Session, email: str, ip: str, succeeded: bool) -> SignInAttempt:
    attempt = SignInAttempt(email=email[:254], ip=ip[:45], succeeded=succeeded, at=utcnow())
    session.add(attempt)
    session.flush()
    return attempt


# --- trusted devices (OWASP's "device cookie") ------------------------------------------------

DEVICE_SALT = "countersign-device"
DEVICE_MAX_AGE = 180 * 24 * 3600  # a browser used at least twice a year stays trusted


def device_token(secret_key: str, person: Person) -> str:
    """A signed mark given to a browser at each full sign-in: this person has signed in here.

    It is bound to the person (and their email, so it lapses when the email changes) and carries
    nothing secret; it only lets that person's sign-ins from this browser skip the per-address
    count. A random part makes each one different, so tokens do not tell people apart.
    """
    serializer = URLSafeTimedSerializer(secret_key, salt=DEVICE_SALT)
    return serializer.dumps(
        {"p": person.id, "e": _email_tag(person.email), "n": secrets.token_hex(8)}
    )


def device_trusted(secret_key: str, token: str | None, person: Person | None) -> bool:
    """Whether ``token`` is a device mark, still in date, issued to this person."""
    if not token or person is None or len(token) > 500:
        return False
    serializer = URLSafeTimedSerializer(secret_key, salt=DEVICE_SALT)
    try:
        data = serializer.loads(token, max_age=DEVICE_MAX_AGE)
    except BadSignature:  # SignatureExpired included
        return False
    return (
        isinstance(data, dict)
        and data.get("p") == person.id
        and data.get("e") == _email_tag(person.email)
    )


def _email_tag(email: str) -> str:
    return hashlib.sha256(email.lower().encode()).hexdigest()[:16]


# --- where to go after signing in ----------------------------------------------------------------


def _is_path_only(url: str) -> bool:
    if not url.startswith("/") or url.startswith("//"):
        return False
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc


def local_path(target: str | None) -> str | None:
    """``target`` when it is a path on this site, else None.

    Browsers read ``//host``, ``/\\host`` and paths with a tab or newline inside as another host, and
    Werkzeug rewrites the Location header (``////x`` leaves as ``//x``), so the path is judged both
    as given and as it will be sent.
    """
    if not target or len(target) > 2000 or "\\" in target:
        return None
    if any(c < " " or c == "\x7f" or not c.isprintable() for c in target):
        return None  # tabs, newlines and other controls: dropped by browsers, split headers
    if not _is_path_only(target) or not _is_path_only(iri_to_uri(target)):
        return None
    return target


# --- links -------------------------------------------------------------------------------------------

INVITE = "invite"
RESET = "reset"


def _fingerprint(person: Person) -> str:
    """Changes when the password does, so a link works once: using it sets a new password."""
    material = f"{person.id}:{person.auth_version}:{person.password_hash or ''}"
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def make_link_token(secret_key: str, purpose: str, person: Person) -> str:
    serializer = URLSafeTimedSerializer(secret_key, salt=f"countersign-{purpose}")
    return serializer.dumps({"p": person.id, "f": _fingerprint(person)})


class LinkError(Exception):
    pass


def person_for_token(
    session: Session, secret_key: str, purpose: str, token: str, max_age: int
) -> Person:
    """The person a link was made for, or LinkError saying why it no longer works."""
    serializer = URLSafeTimedSerializer(secret_key, salt=f"countersign-{purpose}")
    try:
        data = serializer.loads(token, max_age=max_age)
    except SignatureExpired:
        raise LinkError("This link has expired. Ask for a new one.")
    except BadSignature:
        raise LinkError("This link is not valid. Check you copied all of it, or ask for a new one.")
    person = session.get(Person, data.get("p")) if isinstance(data, dict) else None
    if person is None or not person.active or data.get("f") != _fingerprint(person):
        raise LinkError("This link has already been used or is no longer valid. Ask for a new one.")
    return person


# --- who may open a page ---------------------------------------------------------------------------


def roles_required(*roles: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A view for signed-in people holding one of ``roles``; anyone else gets a 403."""

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        @login_required
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not current_user.has_role(*roles):
                abort(403)
            return view(*args, **kwargs)

        return wrapped

    return decorator


def load_user(user_id: str) -> Person | None:
    """The person a session's ``person id:auth version`` names, while that still holds."""
    try:
        pid, version = (int(part) for part in user_id.split(":"))
    except ValueError:
        return None
    # With the roles, in the same query: nearly every page asks what the person may see.
    person = db.session.get(Person, pid, options=[joinedload(Person.role_rows)])
    if person is None or not person.active or person.auth_version != version:
        return None  # signed out elsewhere, password changed, or deactivated
    return person
