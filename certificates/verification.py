"""Checking a certificate by its code: what the public verification page may say.

Anyone holding a printed certificate can check it, so the answer carries only what the certificate
itself prints (name, policy, version, dates) and whether it still stands, and never anything else
about the person. It comes from the certificate's snapshot, so it works for people who have since
left.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from certificates.models import Certificate
from core.db import utcnow
from people.models import Person
from training.models import Policy
from training.publishing import current_version

CODE_RE = re.compile(r"[A-Za-z0-9_-]{27}")  # secrets.token_urlsafe(20)

VALID = "valid"
SUPERSEDED = "superseded"  # a newer version of the policy is in effect
EXPIRED = "expired"  # the refresher period has run out
# The person's personal data was erased after the retention period: the certificate no longer
# says who it was issued to, so it cannot stand as anyone's evidence of training.
WITHDRAWN = "withdrawn"


@dataclass(frozen=True)
class Verification:
    person_name: str
    policy_title: str
    version_label: str
    issued_at: datetime
    valid_until: datetime
    state: str  # VALID, SUPERSEDED or EXPIRED
    current_version_label: str | None  # the version in effect now, when superseded

    @property
    def valid(self) -> bool:
        return self.state == VALID


def find_certificate(session: Session, code: str) -> Certificate | None:
    """The certificate with this code; None for unknown or malformed codes."""
    if not CODE_RE.fullmatch(code):
        return None
    return session.scalar(select(Certificate).where(Certificate.code == code))


def verify(session: Session, code: str, now: datetime | None = None) -> Verification | None:
    """Does the certificate with this code still stand? None when there is no such certificate.

    Expiry wins over supersession: an expired certificate is expired whatever came after it.
    """
    certificate = find_certificate(session, code)
    if certificate is None:
        return None
    now = now or utcnow()
    current_label = None
    erased = session.scalar(select(Person.erased_at).where(Person.id == certificate.person_id))
    if erased is not None:
        state = WITHDRAWN
    elif certificate.valid_until <= now:
        state = EXPIRED
    else:
        policy = session.get_one(Policy, certificate.policy_id)
        current = current_version(session, policy, now.date())
        if current is not None and current.id != certificate.policy_version_id:
            state, current_label = SUPERSEDED, current.label
        else:
            state = VALID
    return Verification(
        person_name=certificate.person_name,
        policy_title=certificate.policy_title,
        version_label=certificate.version_label,
        issued_at=certificate.issued_at,
        valid_until=certificate.valid_until,
        state=state,
        current_version_label=current_label,
    )
