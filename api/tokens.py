"""API tokens: creating, checking, revoking."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session, object_session

from api.models import ApiToken
from audit.log import record
from core.db import Sql, db, utcnow, writing

# training:status answers with ids and the verdict only, for systems that need no more (a door
# system, a rota); training:read adds name, email, roles and module-by-module detail.
SCOPES = {
    "training:status": "Whether people are trained, by id: no names, emails or module detail",
    "training:read": "People's training status with their name, email, roles and each module",
}
PERSONAL_SCOPE = "training:read"
TOKEN_PREFIX = "cs_"
# Recording every use would make each lookup a write; once a minute says enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# A token lives at most a year: a token copied into a forgotten script or a leaked file stops
# working by itself. The administrator chooses a shorter life when making it.
LIFETIMES_DAYS = (30, 90, 180, 365)
MAX_LIFETIME_DAYS = 365
# The tokens page warns about tokens that expire within this long.
EXPIRES_SOON = timedelta(days=30)


class TokenError(ValueError):
    pass


class TokenExpired(Exception):
    """A real token, past its expiry date."""

    def __init__(self, expired_at: datetime) -> None:
        super().__init__(f"expired at {expired_at:%Y-%m-%d %H:%M} UTC")
        self.expired_at = expired_at


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class NewToken:
    token: ApiToken
    secret: str  # shown once, never stored


def create_token(
    session: Session,
    name: str,
    scopes: list[str],
    created_by_id: int | None = None,
    days: int = MAX_LIFETIME_DAYS,
    now: datetime | None = None,
) -> NewToken:
    name = " ".join(name.split())
    if not name or len(name) > 100:
        raise TokenError("Give the token a name of up to 100 characters, saying who uses it.")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise TokenError(f"Choose scopes from: {', '.join(SCOPES)}.")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_LIFETIME_DAYS:
        raise TokenError(f"A token lives from 1 to {MAX_LIFETIME_DAYS} days.")
    created = now or utcnow()
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)  # 256 random bits
    token = ApiToken(
        name=name,
        token_hash=_hash(secret),
        prefix=secret[:10],
        scopes=sorted(set(scopes)),
        created_by_id=created_by_id,
        created_at=created,
        expires_at=created + timedelta(days=days),
    )
    session.add(token)
    session.flush()
    record(
        session, "token.created", actor_id=created_by_id, subject_type="api_token",
        subject_id=token.id, detail={"scopes": " ".join(token.scopes), "days": days},
    )  # fmt: skip
    return NewToken(token, secret)


@dataclass(frozen=True)
class Caller:
    """Who is calling the API: the token's id and what it may do."""

    token_id: int
    scopes: frozenset[str]


_FIND = Sql(
    """
    SELECT id, scopes, revoked_at IS NOT NULL,
           last_used_at IS NULL OR last_used_at < :used_before,
           expires_at <= :now, expires_at
    FROM api_token WHERE token_hash = :digest
    """
)


def authenticate(secret: str, now: datetime | None = None) -> Caller | None:
    """The caller for a live token ``secret``, or None. Marks it used (at most once a minute).
    Raises :class:`TokenExpired` for a token past its expiry date (never for a revoked one).

    Runs on every API request, so it reads with :attr:`db.reader`.
    """
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    now = now or utcnow()
    reader = db.reader
    rows = reader.all(_FIND, digest=_hash(secret), used_before=now - LAST_USED_RESOLUTION, now=now)
    if not rows:
        return None
    token_id, scopes, revoked, unrecorded, expired, expires_at = rows[0]
    if revoked:
        return None
    if expired:
        raise TokenExpired(reader.datetime(expires_at))
    if unrecorded:
        session = db.session
        with writing(session):
            session.execute(
                update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now)
            )
    return Caller(token_id, frozenset(reader.json(scopes)))


def revoke(token: ApiToken, by_id: int | None = None) -> None:
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session = object_session(token)
        assert session is not None, "revoke a token loaded from the database"
        record(
            session, "token.revoked", actor_id=by_id, subject_type="api_token", subject_id=token.id
        )
