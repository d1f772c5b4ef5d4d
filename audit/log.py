"""Appending to the audit log and checking its chain.

Each row's hash is ``HMAC-SHA256(key, canonical(row) + previous row's hash)``. The key is kept
outside the database (``COUNTERSIGN_AUDIT_KEY``, or a file in the instance folder made on first
use), so someone who can write to the database but not read the key cannot forge a row, re-hash a
changed one, or stitch the chain back together after removing or reordering rows. Removing rows
from the end leaves a valid chain; that is caught by comparing with a head printed earlier (the
governors' evidence pack prints it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from audit import evidence
from audit.models import AuditEvent
from core.db import db, utcnow, writing

GENESIS = "0" * 64
# Any fixed number: the PostgreSQL advisory lock that serialises appends to the chain.
_CHAIN_LOCK = 0x6175646974  # "audit"

DetailValue = int | str | bool | None

# The events the log records, with the words the audit page shows for them.
EVENTS: dict[str, str] = {
    "sign_in.succeeded": "Signed in",
    "sign_in.failed": "Sign-in failed",
    "sign_out": "Signed out",
    "sessions.ended": "Signed out everywhere (every session ended)",
    "password.changed": "Password changed",
    "password.reset": "Password set from a link",
    "password.reset_requested": "New-password link asked for (none sent)",
    "link.invite_issued": "Invitation link issued",
    "link.reset_issued": "New-password link issued",
    "person.name_changed": "Name changed",
    "person.email_changed": "Email address changed",
    "acknowledgement.signed": "Policy acknowledged",
    "quiz.passed": "Quiz passed",
    "content.published": "Content published",
    "approval.decided": "Account application decided",
    "account.recorded": "Social media account recorded on the register",
    "account.handed_over": "Social media account handed over",
    "account.closed": "Social media account closed",
    "account.runner_added": "Runner added to a social media account",
    "account.runner_removed": "Runner taken off a social media account",
    "person.created": "Person added",
    "person.roles_changed": "Roles changed",
    "person.schools_changed": "Schools changed",
    "person.deactivated": "Person deactivated",
    "person.reactivated": "Person reactivated",
    "person.erased": "Personal data erased",
    "people.imported": "People imported",
    "token.created": "API token created",
    "token.revoked": "API token revoked",
    "webhook.added": "Webhook added",
    "webhook.stopped": "Webhook stopped",
    "export.people_csv": "People CSV exported",
    "export.evidence_pack": "Evidence pack downloaded",
    "export.certificates_zip": "School certificates downloaded",
    "export.backup": "Backup made (every record and the keys)",
    "personal_data.exported": "Personal data downloaded",
    "lti.launch": "Signed in from a learning platform",
    "lti.launch_refused": "Signed launch from a learning platform refused",
    "lti.identity_linked": "Learning platform account linked to a new person",
    "lti.link_requested": "Learning platform account waiting for its owner's confirmation",
    "lti.link_confirmed": "Learning platform account link confirmed",
    "lti.link_declined": "Learning platform account link declined",
    "lti.link_suspended": "Learning platform account link suspended",
    "lti.link_removed": "Learning platform account link removed",
    "lti.platform_registered": "Learning platform registered",
    "lti.platform_changed": "Learning platform registration changed",
    "module.read": "Module read",
    "quiz.started": "Quiz started",
    "quiz.failed": "Quiz not passed",
    "certificate.issued": "Certificate issued",
    "certificate.stored": "Certificate document stored",
    "evidence.pseudonymised": "Evidence pseudonymised on erasure",
    "evidence.sealed": "Evidence from before digests sealed",
}


def audit_key() -> bytes:
    """The chain's key: configured, or a random one kept in the instance folder (never the database)."""
    configured = current_app.config.get("AUDIT_KEY")
    if configured:
        return str(configured).encode()
    cached = current_app.extensions.get("countersign.audit_key")
    if cached:
        return cached
    path = Path(current_app.instance_path) / "audit_key"
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker made it first
            key = path.read_text().strip()
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            key = path.read_text().strip()
    current_app.extensions["countersign.audit_key"] = key.encode()
    return key.encode()


def canonical_detail(detail: Mapping[str, DetailValue] | None) -> str:
    if detail:
        for name, value in detail.items():
            if not isinstance(value, int | str | bool | type(None)):
                raise TypeError(f"audit detail {name!r} must be an id, code or flag")
    return json.dumps(dict(detail or {}), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def row_hash(
    key: bytes,
    *,
    seq: int,
    at: datetime,
    event: str,
    actor_id: int | None,
    subject_type: str | None,
    subject_id: str | None,
    detail: str,
    prev_hash: str,
) -> str:
    content = [
        seq, at.isoformat(timespec="microseconds"), event, actor_id, subject_type, subject_id,
        detail, prev_hash,
    ]  # fmt: skip
    message = json.dumps(content, separators=(",", ":"), ensure_ascii=True).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _hash_of(key: bytes, row: Any) -> str:
    return row_hash(
        key,
        seq=row.seq,
        at=row.at,
        event=row.event,
        actor_id=row.actor_id,
        subject_type=row.subject_type,
        subject_id=row.subject_id,
        detail=row.detail,
        prev_hash=row.prev_hash,
    )


def _lock_chain(session: Session) -> None:
    """Appends happen one at a time. SQLite's write transactions (BEGIN IMMEDIATE) already are; on
    PostgreSQL a transaction-scoped advisory lock holds the head until this transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK})


def record_separately(event: str, **fields: Any) -> AuditEvent:
    """Record an event that changes nothing else (a download served to a GET request) in a short
    write transaction of its own."""
    session = db.session
    with writing(session):
        row = record(session, event, **fields)
    return row


def record(
    session: Session,
    event: str,
    *,
    actor_id: int | None = None,
    subject_type: str | None = None,
    subject_id: int | str | None = None,
    detail: Mapping[str, DetailValue] | None = None,
) -> AuditEvent:
    """Append an event in the caller's transaction: it commits, or is rolled back, with the change
    it records. Call it last, just before committing, so the chain is held as briefly as possible.
    ``detail`` holds ids and codes, never names or email addresses."""
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}")
    _lock_chain(session)
    session.flush()
    head = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS)
    row = AuditEvent(
        seq=seq,
        at=utcnow(),
        event=event,
        actor_id=actor_id,
        subject_type=subject_type,
        subject_id=None if subject_id is None else str(subject_id),
        detail=canonical_detail(detail),
        prev_hash=prev_hash,
    )
    row.hash = _hash_of(audit_key(), row)
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class Entry:
    """One event for :func:`record_many`."""

    event: str
    actor_id: int | None = None
    subject_type: str | None = None
    subject_id: int | str | None = None
    detail: Mapping[str, DetailValue] | None = None


def record_many(session: Session, entries: Sequence[Entry]) -> None:
    """Append several events at once in the caller's transaction: one chain lock, one head read
    and one multi-row insert, for writes that record many rows together (issuing certificates in
    bulk, erasure, the demo)."""
    if not entries:
        return
    for entry in entries:
        if entry.event not in EVENTS:
            raise ValueError(f"unknown audit event {entry.event!r}")
    _lock_chain(session)
    session.flush()
    key = audit_key()
    head = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS)
    rows = []
    for entry in entries:
        row = {
            "seq": seq,
            "at": utcnow(),
            "event": entry.event,
            "actor_id": entry.actor_id,
            "subject_type": entry.subject_type,
            "subject_id": None if entry.subject_id is None else str(entry.subject_id),
            "detail": canonical_detail(entry.detail),
            "prev_hash": prev_hash,
        }
        row["hash"] = row_hash(key, **row)
        rows.append(row)
        seq, prev_hash = seq + 1, row["hash"]
    for start in range(0, len(rows), 1000):
        session.execute(insert(AuditEvent.__table__), rows[start : start + 1000])


def record_evidence(
    session: Session,
    event: str,
    table: str,
    ids: Iterable[int],
    *,
    actor_id: int | None = None,
    subject_type: str | None = None,
    subject_id: int | str | None = None,
    detail: Mapping[str, DetailValue] | None = None,
) -> None:
    """Record evidence rows just written (or changed by erasure), one audit row each, carrying
    the digest of each row as the database now holds it. Call it in the transaction that wrote
    them, after they are flushed. The subject is the row itself unless given."""
    session.flush()
    found = evidence.digests(session, table, ids)
    record_many(
        session,
        [
            Entry(
                event,
                actor_id=actor_id,
                subject_type=subject_type or table,
                subject_id=row_id if subject_id is None else subject_id,
                detail={**(detail or {}), **evidence.detail_for(table, row_id, row_digest)},
            )
            for row_id, row_digest in sorted(found.items())
        ],
    )


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, value: str) -> Head:
        seq, _, digest = value.strip().partition(":")
        if not seq.isdigit() or len(digest) != 64:
            raise ValueError("a head is written SEQUENCE:HASH, as printed on the evidence pack")
        return cls(int(seq), digest.lower())


def head(session: Session) -> Head | None:
    row = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    return Head(row[0], row[1]) if row else None


@dataclass
class Verification:
    rows: int = 0
    evidence_rows: int = 0
    head: Head | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _rows(session: Session, batch: int = 2000) -> Iterator[Any]:
    """Every row in order, as plain rows: nothing enters the session, so a long log costs no memory
    and the caller's objects (the signed-in person, say) stay attached."""
    table = AuditEvent.__table__
    after = 0
    while True:
        page = session.execute(
            select(table).where(table.c.seq > after).order_by(table.c.seq).limit(batch)
        ).all()
        if not page:
            return
        yield from page
        after = page[-1].seq


def seal_unrecorded(session: Session) -> dict[str, int]:
    """Record the current digest of every evidence row the chain does not record yet, one
    ``evidence.sealed`` row each; returns how many per table. For a database upgraded from a
    version that kept no digests: run once, straight after upgrading, so that verify can tell
    later changes from what was there then. Runs in the caller's transaction."""
    recorded = evidence.Recorded.empty()
    for row in _rows(session):
        found = evidence.recorded_in(row.detail)
        if found is not None:
            recorded.add(*found, row.seq)
    sealed: dict[str, int] = {}
    for table in evidence.DIGESTED:
        known = recorded.rows[table]
        for batch in evidence.all_digests(session, table):
            entries = [
                Entry(
                    "evidence.sealed",
                    subject_type=table,
                    subject_id=row_id,
                    detail=evidence.detail_for(table, row_id, row_digest),
                )  # fmt: skip
                for row_id, row_digest in batch.items()
                if row_id not in known
            ]
            record_many(session, entries)
            if entries:
                sealed[table] = sealed.get(table, 0) + len(entries)
    return sealed


def verify(session: Session, expected_head: Head | None = None) -> Verification:
    """Walk the chain from the first row, reporting every changed, removed or reordered row; with
    ``expected_head`` (printed earlier), also rows removed from the end or a rewritten head. Then
    compare every evidence row with the latest digest the chain records for it (edited, deleted,
    or inserted without an audit row)."""
    key = audit_key()
    result = Verification()
    recorded = evidence.Recorded.empty()
    expected_seq, prev_hash = 1, GENESIS
    for row in _rows(session):
        result.rows += 1
        found = evidence.recorded_in(row.detail)
        if found is not None:
            recorded.add(*found, row.seq)
        if row.seq != expected_seq:
            missing = (
                f"row {expected_seq}"
                if row.seq == expected_seq + 1
                else f"rows {expected_seq} to {row.seq - 1}"
            )
            result.problems.append(f"{missing} removed (the next row present is {row.seq})")
        if _hash_of(key, row) != row.hash:
            result.problems.append(f"row {row.seq} changed: its content does not match its hash")
        elif row.prev_hash != prev_hash:
            result.problems.append(
                f"row {row.seq} is out of place: it does not follow the row before it "
                "(rows removed, reordered or inserted)"
            )
        expected_seq, prev_hash = row.seq + 1, row.hash
        result.head = Head(row.seq, row.hash)
    if expected_head is not None:
        if result.head is None or result.head.seq < expected_head.seq:
            last = result.head.seq if result.head else 0
            result.problems.append(
                f"rows {last + 1} to {expected_head.seq} removed from the end "
                f"(an earlier head was {expected_head.seq})"
            )
        else:
            at = session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == expected_head.seq))
            if at != expected_head.hash:
                result.problems.append(
                    f"row {expected_head.seq} is not the row an earlier head recorded "
                    "(the log was rewritten from there)"
                )
    result.evidence_rows, problems = evidence.check(session, recorded)
    result.problems += problems
    return result
