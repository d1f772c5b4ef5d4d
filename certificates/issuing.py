"""Issuing certificates: one for each acknowledgement that made a person trained.

Whether someone is trained is the status store's answer (:mod:`training.status_store`), never
decided here. A person who is trained now, on the strength of an acknowledgement that has no
certificate yet, is due one: the ``status.changed`` event that says so issues it, in the worker.
The unique acknowledgement on :class:`~certificates.models.Certificate` plus ``INSERT … ON CONFLICT
DO NOTHING`` makes issuing idempotent: called twice, or by two workers at once, it issues one.

The PDF is rendered by the worker afterwards (a ``certificate.render`` message), outside the issuing
transaction: rendering takes far longer than the insert, and SQLite has one writer at a time. A
certificate downloaded before then is rendered on demand; ``flask certificates issue`` issues and
renders anything missed.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, TypeVar

from flask import Flask
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, selectinload

from audit import evidence
from audit.log import record_evidence, trusted_rows
from certificates.models import Certificate
from certificates.render import render
from core.db import insert_ignoring_conflict, utcnow, writing
from core.outbox import OutboxMessage, enqueue, subscribe, topic
from core.web import federation
from people.models import Person
from training.models import Policy, PolicyVersion
from training.status_store import STATUS_CHANGED, bring_up_to_date, current_many

log = logging.getLogger("countersign.certificates")

BATCH = 500  # people whose status is worked out at once
CODE_BYTES = 20  # 160 random bits


def new_code() -> str:
    return secrets.token_urlsafe(CODE_BYTES)


T = TypeVar("T")


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def issue_due(
    session: Session,
    person_ids: Iterable[int] | None,
    now: datetime | None = None,
    *,
    federation_name: str | None = None,
) -> list[Certificate]:
    """Issue a certificate to each of these people (everyone when None) who is trained now on a
    policy through an acknowledgement that has no certificate yet. Returns those issued.

    Runs in the caller's transaction; the caller commits. ``federation_name`` defaults to the
    federation of the running app.
    """
    now = now or utcnow()
    if federation_name is None:
        federation_name = federation().name
    if person_ids is None:
        ids = list(session.scalars(select(Person.id).where(Person.active.is_(True))))
    else:
        ids = sorted(set(person_ids))
    policies = list(session.scalars(select(Policy).order_by(Policy.id)))
    codes: list[str] = []
    for chunk in _chunks(ids, BATCH):
        people = session.scalars(
            select(Person)
            .where(Person.id.in_(chunk), Person.active.is_(True))
            .options(selectinload(Person.role_rows))
            .execution_options(populate_existing=True)  # roles as committed, not as first loaded
        ).all()
        if not people:
            continue
        for policy in policies:
            codes += _issue_for_policy(session, list(people), policy, now, federation_name)
    issued: list[Certificate] = []
    for chunk_codes in _chunks(codes, BATCH):
        issued += session.scalars(
            select(Certificate).where(Certificate.code.in_(chunk_codes)).order_by(Certificate.id)
        ).all()
    record_evidence(session, "certificate.issued", "certificate", [c.id for c in issued])
    return issued


def _issue_for_policy(
    session: Session, people: list[Person], policy: Policy, now: datetime, federation_name: str
) -> list[str]:
    try:
        statuses = current_many(session, people, policy, now)
    except LookupError:
        return []  # no version published: nobody can be trained on it
    due = [s for s in statuses.values() if s.trained and s.acknowledgement_id is not None]
    if not due:
        return []
    certified = set(
        session.scalars(
            select(Certificate.acknowledgement_id).where(
                Certificate.acknowledgement_id.in_([s.acknowledgement_id for s in due])
            )
        )
    )
    names = {p.id: p.name for p in people}
    versions: dict[int, PolicyVersion] = {}
    codes = []
    for status in due:
        if status.acknowledgement_id in certified:
            continue
        version = versions.get(status.policy_version_id)
        if version is None:
            version = versions[status.policy_version_id] = session.get_one(
                PolicyVersion, status.policy_version_id
            )
        values: dict[str, Any] = {
            "person_id": status.person_id,
            "policy_id": policy.id,
            "policy_version_id": status.policy_version_id,
            "acknowledgement_id": status.acknowledgement_id,
            "issued_at": now,
            "valid_until": status.valid_until,
            "person_name": names[status.person_id],
            "policy_title": version.title,
            "version_label": status.version,
            "module_titles": [m.title for m in status.modules],
            "federation_name": federation_name,
        }
        for _ in range(3):  # a code already taken (never seen in practice) gets a fresh one
            code = new_code()
            if insert_ignoring_conflict(session, Certificate.__table__, {**values, "code": code}):
                codes.append(code)
                break
            if session.scalar(
                select(Certificate.id).where(
                    Certificate.acknowledgement_id == status.acknowledgement_id
                )
            ):
                break  # issued meanwhile by another worker
    return codes


class PdfNotAsDigested(RuntimeError):
    """A stored PDF does not hash to the certificate's digested ``pdf_sha256``: the bytes were
    replaced behind the application's back, and are not to be served."""

    def __init__(self, certificate_id: int) -> None:
        self.certificate_id = certificate_id
        super().__init__(f"certificate {certificate_id}: stored PDF does not match its digest")


def store_pdf(session: Session, certificate: Certificate) -> bytes:
    """Render the certificate's PDF and store it, unless one is stored already; returns the
    stored bytes, checked against their digest. An issued PDF is never replaced: when two workers
    render at once, the first stored wins and both serve it. Commits: it runs in transactions of
    its own. Raises :class:`PdfNotAsDigested` for stored bytes that were replaced, and
    :class:`audit.evidence.NotAsRecorded` (storing nothing) for a certificate row changed since
    the chain recorded it."""
    stored = stored_pdf(session, certificate.id)
    # End the read, so that no transaction (on SQLite perhaps the write lock) is held while
    # rendering.
    session.commit()
    if stored is not None:
        return stored
    rendered = render(certificate)
    with writing(session):
        # Storing re-records the row's digest: only over the digest the chain holds for it, or an
        # earlier change to the row would pass as recorded.
        try:
            was = evidence.as_recorded(
                session, {"certificate": [certificate.id]}, by_subject=True,
                trusted=trusted_rows(session),
            )  # fmt: skip
        except evidence.NotAsRecorded as exc:
            log.error("certificate %s: PDF not stored: %s", certificate.id, exc)
            raise
        stored_now = session.execute(
            update(Certificate)
            .where(Certificate.id == certificate.id, Certificate.pdf.is_(None))
            .values(pdf=rendered.pdf, pdf_sha256=rendered.sha256)
        ).rowcount
        if stored_now:
            # The one change a certificate row allows (migration 0011): its PDF's hash, once.
            record_evidence(
                session, "certificate.stored", "certificate", [certificate.id],
                was=was["certificate"],
            )  # fmt: skip
    stored = stored_pdf(session, certificate.id)
    session.commit()
    if stored is None:
        raise RuntimeError(f"certificate {certificate.id} has no stored PDF after storing one")
    return stored


def stored_pdf(session: Session, certificate_id: int) -> bytes | None:
    """The stored PDF, None if none is stored; raises :class:`PdfNotAsDigested` (and logs) when the
    bytes do not hash to the certificate's digest."""
    row = session.execute(
        select(Certificate.pdf, Certificate.pdf_sha256).where(Certificate.id == certificate_id)
    ).first()
    if row is None or (row.pdf is None and row.pdf_sha256 is None):
        return None
    if row.pdf is None or hashlib.sha256(row.pdf).hexdigest() != row.pdf_sha256:
        log.error(
            "certificate %s: stored PDF does not match its digest; not served", certificate_id
        )
        raise PdfNotAsDigested(certificate_id)
    # The bytes match the row's own digest; the row (that digest included) must also be what the
    # audit chain last recorded for it, or bytes stored behind the application's back, with a
    # digest to match, would be served.
    try:
        evidence.as_recorded(
            session, {"certificate": [certificate_id]}, by_subject=True,
            trusted=trusted_rows(session),
        )  # fmt: skip
    except evidence.NotAsRecorded as exc:
        log.error("certificate %s: not as the audit log records it; not served: %s",
                  certificate_id, exc)  # fmt: skip
        raise PdfNotAsDigested(certificate_id) from exc
    return row.pdf


def check_stored_pdfs(session: Session, certificate_ids: Iterable[int]) -> dict[int, str]:
    """Check many certificates' stored PDFs at once, before any is sent: each PDF hashes to its
    row's digest, and each row is what the audit chain last recorded for it (as
    :func:`stored_pdf` checks one). A few queries for all of them, not a few for each.

    Returns the digest the chain records for each row: :func:`pdf_as_checked` holds the row to it
    when the PDF is read again to be sent. Raises :class:`PdfNotAsDigested` (for the first PDF
    that does not hash to its digest) or :class:`audit.evidence.NotAsRecorded` (naming every row
    the chain does not record as it is), and logs each."""
    ids = sorted(set(certificate_ids))
    replaced = evidence.pdf_mismatches(session, ids)
    for certificate_id in replaced:
        log.error(
            "certificate %s: stored PDF does not match its digest; not served", certificate_id
        )
    if replaced:
        raise PdfNotAsDigested(replaced[0])
    trusted = trusted_rows(session)
    recorded: dict[int, str] = {}
    for chunk in _chunks(ids, evidence.BATCH):
        try:
            recorded |= evidence.as_recorded(
                session, {"certificate": chunk}, by_subject=True, trusted=trusted
            )["certificate"]
        except evidence.NotAsRecorded as exc:
            log.error("certificates not as the audit log records them; not served: %s", exc)
            raise
    return recorded


_PDF_WITH_ROW = select(
    Certificate.__table__.c.pdf,
    *(Certificate.__table__.c[c] for c in evidence.DIGESTED["certificate"]),
).where(Certificate.__table__.c.id == bindparam("id"))  # built once: it runs for every file


def pdf_as_checked(session: Session, certificate_id: int, recorded_digest: str | None) -> bytes:
    """The stored PDF, read once more to be sent after :func:`check_stored_pdfs`: read with its
    row in one query, the row must still have the digest the chain recorded for it and the bytes
    must hash to the row's ``pdf_sha256``, so a PDF changed since the check is never sent.
    Raises :class:`PdfNotAsDigested` (and logs) otherwise."""
    row = session.execute(_PDF_WITH_ROW, {"id": certificate_id}).first()
    if row is None or row.pdf is None or hashlib.sha256(row.pdf).hexdigest() != row.pdf_sha256:
        log.error(
            "certificate %s: stored PDF does not match its digest; not served", certificate_id
        )
        raise PdfNotAsDigested(certificate_id)
    if evidence.digest("certificate", row._mapping) != recorded_digest:
        log.error(
            "certificate %s: changed since it was checked against the audit log; not served",
            certificate_id,
        )
        raise PdfNotAsDigested(certificate_id)
    return row.pdf


def render_missing(
    session: Session, certificate_ids: Iterable[int] | None = None
) -> tuple[int, int]:
    """Render and store every PDF not yet stored (of these certificates, or all).

    Returns (rendered, failed); failures are logged and left for the next try.
    """
    query = (
        select(Certificate.id)
        .where(Certificate.pdf.is_(None))
        # An erased person's certificates are withdrawn: never render their documents again.
        .where(Certificate.person_id.not_in(select(Person.id).where(Person.erased_at.is_not(None))))
        .order_by(Certificate.id)
    )
    if certificate_ids is not None:
        query = query.where(Certificate.id.in_(list(certificate_ids)))
    rendered = failed = 0
    for certificate_id in list(session.scalars(query)):
        try:
            store_pdf(session, session.get_one(Certificate, certificate_id))
            rendered += 1
        except Exception:
            session.rollback()
            log.exception("could not render certificate %s", certificate_id)
            failed += 1
    return rendered, failed


def issue_to_everyone(session: Session, batch: int = 200) -> int:
    """Issue what is due to everyone, a batch of people per transaction, so that learners'
    writes never wait long behind it. Returns how many certificates were issued."""
    bring_up_to_date(session)  # one evaluation for each stale answer, before issuing reads them
    ids = list(
        session.scalars(select(Person.id).where(Person.active.is_(True)).order_by(Person.id))
    )
    session.commit()
    issued = 0
    for chunk in _chunks(ids, batch):
        with writing(session):
            issued += len(issue_due(session, chunk))
    return issued


def issue_and_render(session: Session, person_ids: Iterable[int] | None) -> list[Certificate]:
    """Issue what is due in its own transaction, then render each new certificate."""
    with writing(session):
        issued = issue_due(session, person_ids)
    if issued:
        log.info("issued %d certificate(s)", len(issued))
        render_missing(session, [c.id for c in issued])
    return issued


RENDER = "certificate.render"


def on_status_changed(session: Session, message: OutboxMessage) -> None:
    """Someone became trained through a new acknowledgement: issue their certificate, and queue
    its PDF for rendering."""
    old, new = message.payload["old"], message.payload["new"]
    if not new["trained"] or new["acknowledgement_id"] is None:
        return
    if (
        old is not None
        and old["trained"]
        and old["acknowledgement_id"] == new["acknowledgement_id"]
    ):
        return
    for certificate in issue_due(session, [message.payload["person_id"]]):
        enqueue(session, RENDER, {"certificate_id": certificate.id},
                key=f"{RENDER}:{certificate.id}", person_id=certificate.person_id)  # fmt: skip


def render_one(session: Session, message: OutboxMessage) -> None:
    certificate = session.get(Certificate, message.payload["certificate_id"])
    if certificate is None or certificate.pdf is not None:
        return
    if session.scalar(select(Person.erased_at).where(Person.id == certificate.person_id)):
        return  # an erased person's certificates are withdrawn: never rendered again
    store_pdf(session, certificate)


def init_app(app: Flask) -> None:
    """Certificates are issued from ``status.changed`` events and rendered by the worker."""
    subscribe(app, STATUS_CHANGED, on_status_changed)
    topic(app, RENDER, render_one, remote=True)
