"""Second-factor rules: who needs one, enrolling and checking each method, recovery codes, reset.

Plain functions over a session and a person; views turn :class:`SecondFactorError` into a message
at the field. Every change is audited here, in the caller's transaction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pyotp
import segno
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session
from webauthn import (
    base64url_to_bytes,
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from audit.log import record
from core.db import utcnow
from mfa.models import PASSKEY, TOTP, PasskeyChallenge, RecoveryCode, SecondFactor
from people.models import Person
from people.roles import ROLES

DEFAULT_ROLES = "admin,slt,governor"
RECOVERY_CODES = 10
# 24 base32 characters: 120 bits, enough that a plain SHA-256 of the code is a safe way to keep
# it (ASVS 6.5.2 asks a salted slow hash only below 112 bits).
RECOVERY_CHARS = 24
TOTP_STEP = 30
TOTP_DRIFT = 1  # steps either side of now: a phone's clock a little out still works


class SecondFactorError(Exception):
    """A refusal to show the person, in plain words."""


# --- who needs one -------------------------------------------------------------------------------


def mfa_roles(config: Mapping[str, Any]) -> frozenset[str]:
    """The roles that must use a second factor (``COUNTERSIGN_MFA_ROLES``; empty means none)."""
    value = config.get("MFA_ROLES", DEFAULT_ROLES)
    if value is None:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else list(value)
    roles = frozenset(str(item).strip().lower() for item in items if str(item).strip())
    unknown = sorted(roles - set(ROLES))
    if unknown:
        raise ValueError(
            f"COUNTERSIGN_MFA_ROLES names unknown roles: {', '.join(unknown)} "
            f"(known: {', '.join(ROLES)})"
        )
    return roles


def required_for(person: Person, config: Mapping[str, Any]) -> bool:
    return person.has_role(*mfa_roles(config))


def factors(session: Session, person_id: int) -> list[SecondFactor]:
    return list(
        session.scalars(
            select(SecondFactor)
            .where(SecondFactor.person_id == person_id)
            .order_by(SecondFactor.created_at, SecondFactor.id)
        )
    )


def second_step_needed(session: Session, person: Person, config: Mapping[str, Any]) -> bool:
    """After the password: whether a second factor must pass before the person is signed in.

    Anyone who has enrolled a method uses it, whatever their role; the roles that require one
    must enrol first if they have none.
    """
    return required_for(person, config) or bool(factors(session, person.id))


# --- authenticator apps (RFC 6238) ---------------------------------------------------------------


def new_totp_secret() -> str:
    """160 random bits from the operating system's CSPRNG, as RFC 4226 recommends; base32."""
    return base64.b32encode(secrets.token_bytes(20)).decode()


def totp_uri(secret: str, email: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=issuer)


def qr_svg(uri: str) -> str:
    """The QR code as inline SVG: no script, no external image, nothing the CSP refuses."""
    return segno.make(uri, error="m").svg_inline(
        scale=4, title="QR code for your authenticator app"
    )


def _clean_code(code: str) -> str:
    return "".join(code.split()).replace("-", "")


def matching_step(
    secret: str, code: str, after: int | None, now: float | None = None
) -> int | None:
    """The time step ``code`` belongs to (now ±1 step), if it is later than ``after``."""
    code = _clean_code(code)
    if not (code.isascii() and code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    current = int((time.time() if now is None else now) // TOTP_STEP)
    for step in range(current - TOTP_DRIFT, current + TOTP_DRIFT + 1):
        if hmac.compare_digest(totp.at(step * TOTP_STEP), code):
            return step if after is None or step > after else None
    return None


def enrol_totp(session: Session, person: Person, secret: str, code: str) -> SecondFactor:
    """Keep an authenticator app once a first code from it proves it is set up."""
    step = matching_step(secret, code, None)
    if step is None:
        raise SecondFactorError(
            "That code is not right. Check the app shows Countersign and enter the code it "
            "shows now."
        )
    factor = SecondFactor(
        person_id=person.id, method=TOTP, label="Authenticator app", totp_secret=secret,
        totp_last_step=step, created_at=utcnow(),
    )  # fmt: skip
    return _enrolled(session, person, factor)


def use_totp(session: Session, person: Person, code: str) -> SecondFactor | None:
    """The authenticator app the code came from, now marked used; None if no app gives it.

    A code is accepted once: the step it belongs to is kept, and only later steps pass. The
    update is conditional on the step stored, so two requests racing with one code both lose
    but one.
    """
    for factor in factors(session, person.id):
        if factor.method != TOTP or not factor.totp_secret:
            continue
        step = matching_step(factor.totp_secret, code, factor.totp_last_step)
        if step is None:
            continue
        last = SecondFactor.totp_last_step
        changed = session.execute(
            update(SecondFactor)
            .where(SecondFactor.id == factor.id, last.is_(None) | (last < step))
            .values(totp_last_step=step, last_used_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount == 1:
            session.refresh(factor)
            return factor
    return None


# --- passkeys (WebAuthn) -------------------------------------------------------------------------


@dataclass(frozen=True)
class RelyingParty:
    id: str  # the site's host name: passkeys made for it work only there
    origin: str
    name: str


def relying_party(config: Mapping[str, Any], name: str) -> RelyingParty:
    """Taken from the configured address, never from the request's Host header."""
    parts = urlsplit(str(config["BASE_URL"]))
    return RelyingParty(
        id=parts.hostname or "", origin=f"{parts.scheme}://{parts.netloc}", name=name
    )


SIGN_IN = "sign_in"
ENROL = "enrol"
CHALLENGE_LIFETIME = timedelta(minutes=5)  # as long as the half-signed-in state lasts


def _challenge_hash(challenge: bytes) -> str:
    return hashlib.sha256(challenge).hexdigest()


def keep_challenge(session: Session, person_id: int, purpose: str, challenge: bytes) -> None:
    """Remember a challenge just issued, replacing the person's earlier one for the same purpose
    (the browser's session holds only the latest), and drop expired ones."""
    now = utcnow()
    session.execute(
        delete(PasskeyChallenge).where(
            (PasskeyChallenge.expires_at <= now)
            | ((PasskeyChallenge.person_id == person_id) & (PasskeyChallenge.purpose == purpose))
        )
    )
    session.add(
        PasskeyChallenge(
            challenge_hash=_challenge_hash(challenge), person_id=person_id, purpose=purpose,
            expires_at=now + CHALLENGE_LIFETIME,
        )
    )  # fmt: skip
    session.flush()


def spend_challenge(session: Session, person_id: int, purpose: str, challenge: bytes) -> bool:
    """Whether the challenge was issued to this person for this purpose and not yet used; it is
    used up by this call. One conditional DELETE, so of two requests racing with one answer only
    one finds the row (the other waits for the row lock, then deletes nothing)."""
    result = session.execute(
        delete(PasskeyChallenge).where(
            PasskeyChallenge.challenge_hash == _challenge_hash(challenge),
            PasskeyChallenge.person_id == person_id,
            PasskeyChallenge.purpose == purpose,
            PasskeyChallenge.expires_at > utcnow(),
        )
    )
    return result.rowcount == 1


def registration_options(session: Session, person: Person, rp: RelyingParty) -> tuple[str, bytes]:
    """The options for the browser to make a passkey (JSON), and their single-use challenge."""
    options = generate_registration_options(
        rp_id=rp.id,
        rp_name=rp.name,
        user_id=hashlib.sha256(f"countersign-person:{person.id}".encode()).digest(),
        user_name=person.email,
        user_display_name=person.name,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
        exclude_credentials=[
            PublicKeyCredentialDescriptor(id=f.credential_id)
            for f in factors(session, person.id)
            if f.method == PASSKEY and f.credential_id
        ],
    )
    return options_to_json(options), options.challenge


def enrol_passkey(
    session: Session, person: Person, credential: str, challenge: bytes, rp: RelyingParty
) -> SecondFactor:
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise SecondFactorError(
            "The passkey could not be set up. Try again, or use an authenticator app."
        ) from exc
    taken = session.scalar(
        select(func.count())
        .select_from(SecondFactor)
        .where(SecondFactor.credential_id == verified.credential_id)
    )
    if taken:
        raise SecondFactorError("This passkey is already set up.")
    factor = SecondFactor(
        person_id=person.id, method=PASSKEY, label="Passkey",
        credential_id=verified.credential_id, public_key=verified.credential_public_key,
        sign_count=verified.sign_count, created_at=utcnow(),
    )  # fmt: skip
    return _enrolled(session, person, factor)


def authentication_options(
    session: Session, person: Person, rp: RelyingParty
) -> tuple[str, bytes] | None:
    """The options for the browser to use one of the person's passkeys; None if they have none."""
    allowed = [
        PublicKeyCredentialDescriptor(id=f.credential_id)
        for f in factors(session, person.id)
        if f.method == PASSKEY and f.credential_id
    ]
    if not allowed:
        return None
    options = generate_authentication_options(
        rp_id=rp.id,
        allow_credentials=allowed,
        user_verification=UserVerificationRequirement.PREFERRED,
    )
    return options_to_json(options), options.challenge


def use_passkey(
    session: Session, person: Person, credential: str, challenge: bytes, rp: RelyingParty
) -> SecondFactor | None:
    """The person's passkey that signed the challenge, now marked used; None if none did."""
    try:
        raw = json.loads(credential)
        credential_id = base64url_to_bytes(raw["rawId"])
    except (ValueError, KeyError, TypeError):
        return None
    factor = session.scalar(
        select(SecondFactor).where(
            SecondFactor.person_id == person.id,
            SecondFactor.method == PASSKEY,
            SecondFactor.credential_id == credential_id,
        )
    )
    if factor is None or factor.public_key is None:
        return None
    try:
        verified = verify_authentication_response(
            credential=raw,
            expected_challenge=challenge,
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
            credential_public_key=factor.public_key,
            credential_current_sign_count=factor.sign_count or 0,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError):
        return None  # a wrong key, another site's, or a counter gone back (a cloned key)
    # Conditional on the counter read above: of two answers racing past the check, one wins.
    moved = session.execute(
        update(SecondFactor)
        .where(
            SecondFactor.id == factor.id,
            func.coalesce(SecondFactor.sign_count, 0) == (factor.sign_count or 0),
        )
        .values(sign_count=verified.new_sign_count, last_used_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    return factor if moved.rowcount == 1 else None


# --- recovery codes ------------------------------------------------------------------------------


def _code_hash(code: str) -> str:
    return hashlib.sha256(_clean_code(code).lower().encode()).hexdigest()


def new_recovery_codes(session: Session, person: Person) -> list[str]:
    """Ten fresh codes, replacing any earlier ones; returned once to show, kept only as hashes."""
    session.execute(delete(RecoveryCode).where(RecoveryCode.person_id == person.id))
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"  # 32 symbols, none easily misread
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(alphabet) for _ in range(RECOVERY_CHARS))
        codes.append("-".join(raw[i : i + 4] for i in range(0, RECOVERY_CHARS, 4)))
    now = utcnow()
    session.add_all(
        RecoveryCode(person_id=person.id, code_hash=_code_hash(c), created_at=now) for c in codes
    )
    session.flush()
    return codes


def recovery_codes_left(session: Session, person_id: int) -> int:
    return session.scalar(
        select(func.count())
        .select_from(RecoveryCode)
        .where(RecoveryCode.person_id == person_id, RecoveryCode.used_at.is_(None))
    )


def use_recovery_code(session: Session, person: Person, code: str) -> int | None:
    """Spend a recovery code: the number left afterwards, or None when the code is not valid.

    One conditional UPDATE spends it, so the same code used twice at once works only once.
    """
    spent = session.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.person_id == person.id,
            RecoveryCode.code_hash == _code_hash(code),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if spent.rowcount != 1:
        return None
    left = recovery_codes_left(session, person.id)
    record(
        session, "second_factor.recovery_used", actor_id=person.id,
        subject_type="person", subject_id=person.id, detail={"codes_left": left},
    )  # fmt: skip
    return left


# --- enrolling, removing, resetting --------------------------------------------------------------


def _enrolled(session: Session, person: Person, factor: SecondFactor) -> SecondFactor:
    session.add(factor)
    session.flush()
    record(
        session, "second_factor.enrolled", actor_id=person.id, subject_type="second_factor",
        subject_id=factor.id, detail={"method": factor.method, "person": person.id},
    )  # fmt: skip
    return factor


def remove_factor(
    session: Session, person: Person, factor_id: int, config: Mapping[str, Any]
) -> SecondFactor:
    """Remove one of the person's own methods; never the last while their role needs one."""
    factor = session.scalar(
        select(SecondFactor).where(
            SecondFactor.id == factor_id, SecondFactor.person_id == person.id
        )
    )
    if factor is None:
        raise SecondFactorError("That method is not one of yours, or it is already removed.")
    remaining = len(factors(session, person.id)) - 1
    if remaining == 0 and required_for(person, config):
        raise SecondFactorError(
            "Your role needs a second factor, so you cannot remove your only one. "
            "Add another method first."
        )
    session.delete(factor)
    if remaining == 0:  # nothing left to recover: the codes would only be a way in
        session.execute(delete(RecoveryCode).where(RecoveryCode.person_id == person.id))
    session.flush()
    record(
        session, "second_factor.removed", actor_id=person.id, subject_type="second_factor",
        subject_id=factor_id, detail={"method": factor.method, "person": person.id},
    )  # fmt: skip
    return factor


def reset_factors(session: Session, person: Person, admin: Person) -> int:
    """An administrator removes every method and recovery code of someone else.

    The person is signed out everywhere; at their next sign-in they enrol again (if their role
    needs a second factor). Returns how many methods were removed.
    """
    if person.id == admin.id:
        raise SecondFactorError(
            "You cannot reset your own second factor here. Ask another administrator."
        )
    removed = session.execute(
        delete(SecondFactor)
        .where(SecondFactor.person_id == person.id)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.execute(delete(RecoveryCode).where(RecoveryCode.person_id == person.id))
    person.auth_version += 1
    session.flush()
    record(
        session, "second_factor.reset", actor_id=admin.id, subject_type="person",
        subject_id=person.id, detail={"methods_removed": removed},
    )  # fmt: skip
    return removed


def first_sign_in_note(config: Mapping[str, Any]) -> str | None:
    """What `flask setup` and `flask demo` say about the second factor, when roles need one."""
    roles = mfa_roles(config)
    if not roles:
        return None
    names = ", ".join(ROLES[role] for role in ROLES if role in roles)
    return (
        f"At their first sign-in, these roles are asked to set up a second factor (an "
        f"authenticator app or a passkey) after the password: {names} (COUNTERSIGN_MFA_ROLES)."
    )
