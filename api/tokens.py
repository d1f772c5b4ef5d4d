"""API tokens: creating, checking, revoking."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.models import ApiToken
from core.db import utcnow, writing

SCOPES = {"training:read": "Read people's training status"}
TOKEN_PREFIX = "cs_"
# Recording every use would make each lookup a write; once a minute says enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenError(ValueError):
    pass


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class NewToken:
    token: ApiToken
    secret: str  # shown once, never stored


def create_token(
    session: Session, name: str, scopes: list[str], created_by_id: int | None = None
) -> NewToken:
    name = " ".join(name.split())
    if not name or len(name) > 100:
        raise TokenError("Give the token a name of up to 100 characters, saying who uses it.")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise TokenError(f"Choose scopes from: {', '.join(SCOPES)}.")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)  # 256 random bits
    token = ApiToken(
        name=name,
        token_hash=_hash(secret),
        prefix=secret[:10],
        scopes=sorted(set(scopes)),
        created_by_id=created_by_id,
    )
    session.add(token)
    session.flush()
    return NewToken(token, secret)


def authenticate(session: Session, secret: str, now: datetime | None = None) -> ApiToken | None:
    """The live token for ``secret``, or None. Marks it used (at most once a minute)."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    digest = _hash(secret)
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if token is None or token.revoked_at is not None:
        return None
    if not hmac.compare_digest(token.token_hash, digest):
        return None
    now = now or utcnow()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        with writing(session):
            session.execute(
                update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now)
            )
    return token


def revoke(token: ApiToken) -> None:
    if token.revoked_at is None:
        token.revoked_at = utcnow()
