"""Who may download which certificate, under what name, and a school's certificates as one ZIP.

People download their own certificates; governors, the senior leadership team and administrators
download anyone's, one by one or a school's at once for the governors' files. Stored PDFs are served
as issued, byte for byte.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session
from zipstream import ZIP_STORED, ZipStream

from certificates.issuing import check_stored_pdfs, pdf_as_checked
from certificates.models import Certificate
from people.models import Person, PersonSchool
from training.loader import Federation

VIEWER_ROLES = ("governor", "slt", "admin")


def may_download(person: Person, certificate: Certificate) -> bool:
    """The certificate's owner, or a governor, SLT member or administrator."""
    return certificate.person_id == person.id or person.has_role(*VIEWER_ROLES)


def withdrawn(session: Session, certificate: Certificate) -> bool:
    """The holder's personal data was erased: the certificate's document is gone for good."""
    erased_at = session.scalar(select(Person.erased_at).where(Person.id == certificate.person_id))
    return erased_at is not None


def _not_erased() -> Any:
    return Certificate.person_id.not_in(select(Person.id).where(Person.erased_at.is_not(None)))


def certificates_of(session: Session, person_id: int) -> list[Certificate]:
    """A person's certificates, newest first (without their PDFs)."""
    return list(
        session.scalars(
            select(Certificate)
            .where(Certificate.person_id == person_id)
            .order_by(Certificate.issued_at.desc(), Certificate.id.desc())
        )
    )


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9.]+", "-", ascii_text.lower()).strip("-.") or "x"


def pdf_filename(certificate: Certificate) -> str:
    """e.g. ``certificate-social-media-policy-v1.0-grace-hopper.pdf``: plain ASCII, so it needs
    no encoding in a Content-Disposition header or a ZIP directory."""
    return (
        f"certificate-{_slug(certificate.policy_title)}-v{_slug(certificate.version_label)}"
        f"-{_slug(certificate.person_name)}.pdf"
    )


@dataclass(frozen=True)
class SchoolSummary:
    code: str
    name: str
    certificates: int
    people: int


def school_summaries(session: Session, federation: Federation) -> list[SchoolSummary]:
    """Each school of the federation with how many certificates its people hold."""
    counts = {
        school: (certificates, people)
        for school, certificates, people in session.execute(
            select(
                PersonSchool.school,
                func.count(Certificate.id),
                func.count(distinct(Certificate.person_id)),
            )
            .join(Certificate, Certificate.person_id == PersonSchool.person_id)
            .group_by(PersonSchool.school)
        )
    }
    return [SchoolSummary(s.code, s.name, *counts.get(s.code, (0, 0))) for s in federation.schools]


def unrendered_in_school(session: Session, school: str) -> list[int]:
    """Certificates of the school's people whose PDF is not stored yet (rendering failed)."""
    return list(
        session.scalars(
            select(Certificate.id)
            .join(PersonSchool, PersonSchool.person_id == Certificate.person_id)
            .where(PersonSchool.school == school, Certificate.pdf.is_(None), _not_erased())
            .order_by(Certificate.id)
        )
    )


def school_archive(session: Session, school: str) -> ZipStream:
    """Every certificate of the school's people, as a ZIP built while it is sent.

    PDFs are already compressed, so they are stored as they are (ZIP_STORED); that makes the
    archive's size known before a byte is sent, and each PDF is read from the database only when
    its turn comes, one at a time, so memory stays flat however many there are. A certificate
    whose PDF could not be rendered is named in ``not-included.txt`` rather than left out silently.
    """
    rows = session.execute(
        select(
            Certificate.id,
            Certificate.person_name,
            Certificate.policy_title,
            Certificate.version_label,
            Certificate.issued_at,
            func.length(Certificate.pdf),
        )
        .join(PersonSchool, PersonSchool.person_id == Certificate.person_id)
        .where(PersonSchool.school == school, _not_erased())
        .order_by(Certificate.person_name, Certificate.issued_at, Certificate.id)
    ).all()
    # Every PDF hashed, and every row checked against the audit chain, all at once before a byte
    # is sent: a replaced one stops the download with an error, not halfway through a ZIP.
    recorded = check_stored_pdfs(session, [r[0] for r in rows if r[-1] is not None])
    archive = ZipStream(compress_type=ZIP_STORED, sized=True)
    used: set[str] = set()
    missing: list[str] = []
    for certificate_id, person, title, label, issued_at, size in rows:
        if size is None:
            missing.append(f"{person}: {title}, version {label}, issued {issued_at:%Y-%m-%d}")
            continue
        stem = f"{_slug(person)}-{_slug(title)}-v{_slug(label)}-{issued_at:%Y-%m-%d}"
        name, n = f"{stem}.pdf", 1
        while name in used:  # two certificates, same person, policy, version and day
            n += 1
            name = f"{stem}-{n}.pdf"
        used.add(name)
        archive.add(
            _pdf_chunks(session, certificate_id, recorded.get(certificate_id)), name, size=size
        )
    if missing:
        note = "These certificates could not be rendered; try again later:\n" + "".join(
            f"- {line}\n" for line in missing
        )
        archive.add(note.encode(), "not-included.txt")
    return archive


def _pdf_chunks(session: Session, certificate_id: int, recorded: str | None) -> Iterator[bytes]:
    try:
        pdf = pdf_as_checked(session, certificate_id, recorded)  # read again, so checked again
    except BaseException:
        # The request's teardown has closed its session already, so end this read here: a
        # refused file leaves no connection checked out.
        session.rollback()
        raise
    session.commit()  # end the read: a long download holds no transaction open between files
    yield pdf
