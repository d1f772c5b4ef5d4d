"""The half-signed state between a right password and a passed second factor.

It lives in the signed session cookie of the browser that gave the password, lasts a few minutes,
and is not a sign-in: Flask-Login sees nobody, so every other page still asks the person to sign
in. Only the second-factor pages read it.
"""

from __future__ import annotations

import time
from typing import Any

from flask import current_app, redirect, session, url_for
from sqlalchemy.orm import Session

from audit.log import record
from mfa.rules import factors, second_step_needed
from people.models import Person

PENDING = "_mfa_pending"
PENDING_SECONDS = 5 * 60
# Kept in the session for one ceremony each; popped when used, replaced when a page is shown again.
TOTP_SECRET = "_mfa_totp_secret"
CHALLENGE = "_mfa_challenge"


def needs_second_step(session_: Session, person: Person) -> bool:
    """Whether the password step must hand over to :func:`start_second_step`."""
    return second_step_needed(session_, person, current_app.config)


def start_second_step(session_: Session, person: Person, next_url: str | None) -> Any:
    """Remember who gave the right password, then ask for (or set up) their second factor."""
    enrolled = bool(factors(session_, person.id))
    record(
        session_, "sign_in.password_accepted", actor_id=person.id,
        detail={"next_step": "second_factor" if enrolled else "set_up"},
    )  # fmt: skip
    session_.commit()
    session.clear()  # nothing carried over from before the password
    session[PENDING] = {
        "p": person.id,
        "v": person.auth_version,
        "t": int(time.time()),
        "n": next_url or "",
    }
    if enrolled:
        return redirect(url_for("mfa.verify"))
    return redirect(url_for("mfa.enrol"))


def pending_person(session_: Session) -> Person | None:
    """The person half-way through signing in, if that state is still fresh and still theirs."""
    data = session.get(PENDING)
    if not isinstance(data, dict):
        return None
    started = data.get("t")
    if not isinstance(started, int) or not 0 <= time.time() - started <= PENDING_SECONDS:
        session.pop(PENDING, None)
        return None
    person_id = data.get("p")
    person = session_.get(Person, person_id) if isinstance(person_id, int) else None
    if person is None or not person.active or person.auth_version != data.get("v"):
        session.pop(PENDING, None)
        return None
    return person


def pending_next() -> str | None:
    data = session.get(PENDING)
    return data.get("n") or None if isinstance(data, dict) else None
