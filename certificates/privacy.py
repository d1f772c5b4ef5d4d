"""The certificates in a person's data; erasure keeps each certificate under the pseudonym."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from certificates.models import Certificate
from people.personal_data import Erasure, Export, iso


def certificates(request: Export) -> list[dict[str, Any]]:
    return [
        {
            "code": c.code,
            "name": c.person_name,
            "policy": c.policy_title,
            "version": c.version_label,
            "modules": c.module_titles,
            "issued_at": iso(c.issued_at),
            "valid_until": iso(c.valid_until),
            "verify_url": request.verify_url(c.code),
        }
        for c in request.session.scalars(
            select(Certificate)
            .where(Certificate.person_id == request.person.id)
            .order_by(Certificate.issued_at)
        )
    ]


def certificates_to_pseudonymise(
    session: Session, person_id: int, _name: str, _email: str
) -> dict[str, list[int]]:
    return {
        "certificate": list(
            session.scalars(select(Certificate.id).where(Certificate.person_id == person_id))
        )
    }


def erase_certificates(erasure: Erasure) -> None:
    for certificate in erasure.session.scalars(
        select(Certificate).where(Certificate.person_id == erasure.person_id)
    ):
        certificate.person_name = erasure.new_name
        certificate.pdf = None
        certificate.pdf_sha256 = None
        erasure.pseudonymised("certificate", certificate.id)
