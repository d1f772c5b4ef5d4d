"""A person's second factors (authenticator apps, passkeys) and recovery codes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime, utcnow

TOTP = "totp"
PASSKEY = "passkey"
METHOD_NAMES = {TOTP: "Authenticator app", PASSKEY: "Passkey or security key"}


class SecondFactor(Base):
    """One method a person can use after their password.

    An authenticator app keeps its shared secret and the last time step accepted, so a code is
    never accepted twice; a passkey keeps its credential id, public key and signature counter.
    """

    __tablename__ = "second_factor"
    __table_args__ = (Index("ix_second_factor_person", "person_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(10))
    label: Mapped[str] = mapped_column(String(60))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Authenticator app (RFC 6238).
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    totp_last_step: Mapped[int | None]
    # Passkey (WebAuthn).
    credential_id: Mapped[bytes | None] = mapped_column(LargeBinary(1024), unique=True)
    public_key: Mapped[bytes | None] = mapped_column(LargeBinary(2048))
    sign_count: Mapped[int | None]

    @property
    def method_name(self) -> str:
        return METHOD_NAMES.get(self.method, self.method)


class RecoveryCode(Base):
    """A single-use code for when the person's other methods are lost; only its hash is kept."""

    __tablename__ = "recovery_code"

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class PasskeyChallenge(Base):
    """A passkey challenge the server issued and has not yet seen answered.

    The browser's session cookie says which challenge it was shown, but a cookie can be sent
    again; the row (only the challenge's hash) is deleted by the answer that uses it, so an
    assertion replayed with an old cookie finds nothing to match.
    """

    __tablename__ = "passkey_challenge"
    __table_args__ = (Index("ix_passkey_challenge_expires", "expires_at"),)

    challenge_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(10))  # SIGN_IN or ENROL
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
