"""Appending to the audit log and checking its chain.

Each row's hash is ``HMAC-SHA256(key, canonical(row) + previous row's hash)``. The key is kept
outside the database (``COUNTERSIGN_AUDIT_KEY``, or a file in the instance folder made on first
use), so someone who can write to the database but not read the key cannot forge a row, re-hash a
changed one, or stitch the chain back together after removing or reordering rows. Removing rows
from the end leaves a valid chain; that is caught by comparing with a head printed earlier (the
governors' evidence pack prints it).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from audit import evidence
from audit.models import AuditEvent
from core.db import Base, db, utcnow, writing

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
    "reminders.settings_changed": "Reminder settings changed",
    "reminders.sent_now": "Reminders sent now",
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
    "evidence.digests_start": "Where evidence digests began recorded (only rows before it are sealed)",
    "audit.key_rotated": "Audit log key replaced (later rows use the new key)",
}
SEALED, DIGESTS_START = "evidence.sealed", "evidence.digests_start"
# Replacing the chain's key: the rotation row, hashed with the key in use until then, names the
# next key by its id; every later row is hashed with that key. Keys made by rotation are kept in
# this folder of the instance folder, one file per key named by its id, and never deleted: verify
# needs each of them for the rows it signed.
ROTATED = "audit.key_rotated"
KEYRING = "audit_keys"
_KEY_ID = re.compile(r"[0-9a-f]{16}")


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


def key_id(key: bytes) -> str:
    """A short name for a key that tells keys apart without revealing one."""
    return hashlib.sha256(b"countersign audit key id\0" + key.strip()).hexdigest()[:16]


def is_key_id(value: object) -> bool:
    return isinstance(value, str) and bool(_KEY_ID.fullmatch(value))


def keyring_key(kid: str) -> bytes | None:
    """The key a rotation named, from ``instance/audit_keys/<id>`` (a restore in progress may
    supply its backup's keys before placing them); None when it is missing or is not that key."""
    if not is_key_id(kid):
        return None
    given = current_app.extensions.get("countersign.audit_keyring") or {}
    if kid in given:
        return given[kid]
    cache = current_app.extensions.setdefault("countersign.audit_keyring_cache", {})
    if kid in cache:
        return cache[kid]
    try:
        data = (Path(current_app.instance_path) / KEYRING / kid).read_bytes().strip()
    except FileNotFoundError:
        return None
    if key_id(data) != kid:
        return None
    cache[kid] = data
    return data


def _next_key(detail: str) -> str | None:
    try:
        value = json.loads(detail).get("next_key")
    except (ValueError, RecursionError, AttributeError):
        return None
    return value if is_key_id(value) else None


class KeyMissing(RuntimeError):
    pass


class KeyRolledBack(RuntimeError):
    """The keyring holds a key the log no longer hands over to where it did: rows from a rotation
    on were removed or rewritten, perhaps by someone holding an earlier key."""


@dataclass(frozen=True)
class Handover:
    """From the row after ``seq`` (the rotation row, whose hash is ``hash``), rows use ``key``."""

    seq: int
    hash: str
    kid: str | None
    key: bytes | None  # None: the key file is missing


def key_schedule(session: Session) -> list[Handover]:
    """Which key hashes which rows: the first key, then each key a rotation hands over to. Only a
    rotation row whose own hash verifies under the key before it counts, so a row inserted
    behind the application's back can neither switch keys nor stop the application recording."""
    schedule = [Handover(0, GENESIS, None, audit_key())]
    table = AuditEvent.__table__
    for row in session.execute(
        select(table).where(table.c.event == ROTATED).order_by(table.c.seq)
    ).all():
        key = schedule[-1].key
        if key is None:
            break
        if _hash_of(key, row) != row.hash:
            continue  # not the application's: verify reports it
        kid = _next_key(row.detail)
        schedule.append(Handover(row.seq, row.hash, kid, keyring_key(kid) if kid else None))
    return schedule


def key_positions() -> dict[str, Head]:
    """Where each key in the keyring took over, as ``rotate_key`` wrote beside it (``<id>.at``):
    kept outside the database, so removing a rotation from the log is noticed."""
    folder = Path(current_app.instance_path) / KEYRING
    cache = current_app.extensions.setdefault("countersign.audit_key_positions", {})
    found: dict[str, Head] = {}
    names = sorted(os.listdir(folder)) if folder.is_dir() else []
    for name in names:
        kid, dot, suffix = name.partition(".")
        if not (dot and suffix == "at" and is_key_id(kid)):
            continue
        if kid not in cache:
            try:
                cache[kid] = Head.parse((folder / name).read_text())
            except (OSError, ValueError):
                continue
        found[kid] = cache[kid]
    return found


def rolled_back(handed: Mapping[str, tuple[int, str]]) -> list[str]:
    """Keys the keyring says took over at a row where the log (``handed``: each key it hands over
    to, with the rotation row's seq and hash) no longer hands over to them."""
    problems = []
    for kid, at in sorted(key_positions().items(), key=lambda item: item[1].seq):
        if handed.get(kid) != (at.seq, at.hash):
            problems.append(
                f"audit key {kid} took over after row {at.seq} (recorded beside the key), but the "
                "log no longer hands over to it there: rows from that rotation on were removed "
                "or rewritten"
            )
    return problems


def signing_key(session: Session) -> bytes:
    """The key the next row is hashed with: the one the latest verified rotation named, else the
    first key. Read from the chain under its lock, so every worker on every server follows a
    rotation at once (each needs the key files: copy ``instance/audit_keys/`` to every server).
    Refuses, rather than go back to an earlier key, when a rotation was removed from the log."""
    schedule = key_schedule(session)
    problems = rolled_back({h.kid: (h.seq, h.hash) for h in schedule if h.kid})
    if problems:
        raise KeyRolledBack(
            "; ".join(problems) + ". Nothing can be recorded until this is investigated "
            "(flask audit verify)."
        )
    current = schedule[-1]
    if current.key is None:
        raise KeyMissing(
            f"The audit log's current key ({current.kid}) is not in the instance folder's "
            f"{KEYRING}/ folder: copy it there from the server that replaced the key, or from a "
            "backup. Nothing can be recorded until it is there."
        )
    return current.key


def trusted_rows(session: Session) -> Callable[[Any], bool]:
    """A check that an audit row is the application's: its hash verifies under the key in use
    at its position. Digests are taken only from such rows before evidence is re-recorded."""
    schedule = key_schedule(session)

    def trusted(row: Any) -> bool:
        key = next(h.key for h in reversed(schedule) if h.seq < row.seq)
        return key is not None and _hash_of(key, row) == row.hash

    return trusted


def rotate_key(session: Session, actor_id: int | None) -> str:
    """Make a new key, keep it in the keyring, and record the rotation (hashed with the key in
    use until now) in the caller's transaction; returns the new key's id. From the next row on,
    the chain is hashed with the new key, so whoever learns an earlier key can no longer add or
    change anything unnoticed: the first row after the rotation, which only the new key can
    make, holds the hash of every row before it."""
    new = secrets.token_hex(32).encode()
    kid = key_id(new)
    folder = Path(current_app.instance_path) / KEYRING
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_new(folder / kid, new)
    try:
        row = record(session, ROTATED, actor_id=actor_id, detail={"next_key": kid})
        # Where this key takes over, beside it: verify, and every append, check that the log
        # still hands over to it there.
        _write_new(folder / f"{kid}.at", f"{row.seq}:{row.hash}\n".encode())
    except BaseException:
        forget_key(kid)
        raise
    return kid


def forget_key(kid: str) -> None:
    """Remove a key made by a rotation that was not committed (nothing was hashed with it)."""
    folder = Path(current_app.instance_path) / KEYRING
    for name in (kid, f"{kid}.at"):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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
    row.hash = _hash_of(signing_key(session), row)
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
        if entry.event == ROTATED:
            raise ValueError("a key rotation is recorded on its own (rotate_key)")
    _lock_chain(session)
    session.flush()
    key = signing_key(session)
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
    was: Mapping[int, str] | None = None,
) -> None:
    """Record evidence rows just written (or changed by erasure), one audit row each, carrying
    the digest of each row as the database now holds it. Call it in the transaction that wrote
    them, after they are flushed. The subject is the row itself unless given. A row the chain
    recorded already is re-recorded with ``was``, the digest it had (from
    :func:`audit.evidence.as_recorded`, which checks the row first); verify checks it."""
    session.flush()
    found = evidence.digests(session, table, ids)
    held = _held(session)
    before = {i: held[(table, i)] for i in found if (table, i) in held} | dict(was or {})
    record_many(
        session,
        [
            Entry(
                event,
                actor_id=actor_id,
                subject_type=subject_type or table,
                subject_id=row_id if subject_id is None else subject_id,
                detail={
                    **(detail or {}),
                    **evidence.detail_for(table, row_id, row_digest),
                    **({evidence.WAS_KEY: before[row_id]} if row_id in before else {}),
                },
            )
            for row_id, row_digest in sorted(found.items())
        ],
    )
    for row_id, row_digest in found.items():  # re-recorded later in this transaction: over this
        held[(table, row_id)] = row_digest


def _held(session: Session) -> dict[tuple[str, int], str]:
    """Digests kept for this transaction: of rows as they were before the application changed
    them (:func:`note_before_change`), or as this transaction last recorded them."""
    if session.get_transaction() is None:
        session.connection()  # begin it now, as the first query would: the digests belong to it
    transaction = session.get_transaction()
    kept = session.info.get("countersign.evidence_held")
    if kept is None or kept[0] is not transaction:
        kept = (transaction, {})
        session.info["countersign.evidence_held"] = kept
    return kept[1]


def note_before_change(session: Session, table: str, ids: Iterable[int]) -> None:
    """Call before the application changes rows the chain already records (a person's name,
    email, roles or state; an account on the register; a runner taken off): keeps each row's
    digest as it is now, which :func:`record_evidence` then records as ``was``. verify checks
    that ``was`` is the digest the chain last recorded, so a change made behind the application's
    back is still reported after the application's own change, instead of being covered by it."""
    held = _held(session)
    wanted = [i for i in ids if (table, i) not in held]
    if wanted:
        for row_id, row_digest in evidence.digests(session, table, wanted).items():
            held[(table, row_id)] = row_digest


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


class SealRefused(ValueError):
    """Rows the chain does not record are newer than digests: they were inserted behind the
    application's back, and sealing them would hide that. The message names them."""


@dataclass
class SealPlan:
    """What ``flask audit seal`` would record: per evidence table, the highest id that predates
    digests (``start``: from the chain, or fixed now in ``new_start``), and the rows at or below
    it that the chain does not record yet, with their digests."""

    start: dict[str, int]
    new_start: dict[str, int]
    rows: dict[str, dict[int, str]]


def plan_seal(session: Session) -> SealPlan:
    """Work out what sealing would record; raises :class:`SealRefused` when a row the chain does
    not record is newer than where digests began.

    Where digests began, per table, is recorded in the chain (``evidence.digests_start``) by the
    first seal. That first seal fixes it as the row before the first one the application itself
    recorded; for a table whose rows the application never recorded, the highest id there is
    then (which is why seal lists the rows and asks first)."""
    recorded = evidence.Recorded.empty()
    start: dict[str, int] = {}
    first_recorded: dict[str, int] = {}
    trusted = trusted_rows(session)
    for row in _rows(session):
        if not trusted(row):
            continue  # not the application's: verify reports it; it counts for nothing here
        if row.event == DIGESTS_START:
            start = _digests_start(row.detail, start) | start
        found = evidence.recorded_in(row.detail)
        if found is not None:
            table, row_id, _ = found
            recorded.add(*found, row.seq)
            # Where the application began recording: its first recordings, not a change to a
            # row from before digests (which carries ``was``), nor a seal.
            if row.event != SEALED and f'"{evidence.WAS_KEY}"' not in row.detail:
                first_recorded[table] = min(first_recorded.get(table, row_id), row_id)
    new_start: dict[str, int] = {}
    for table in evidence.DIGESTED:
        if table in start:
            continue
        if table in first_recorded:
            new_start[table] = first_recorded[table] - 1
        else:
            t = Base.metadata.tables[table]
            new_start[table] = session.scalar(select(func.coalesce(func.max(t.c.id), 0))) or 0
    start |= new_start
    rows: dict[str, dict[int, str]] = {}
    newer: list[str] = []
    for table in evidence.DIGESTED:
        known = recorded.rows[table]
        for batch in evidence.all_digests(session, table):
            for row_id, row_digest in batch.items():
                if row_id in known:
                    continue
                if row_id <= start[table]:
                    rows.setdefault(table, {})[row_id] = row_digest
                else:
                    newer.append(f"{table.replace('_', ' ')} {row_id}")
    if newer:
        raise SealRefused(
            "These rows are newer than the evidence digests, so they were inserted without the "
            f"application: {', '.join(newer)}. Nothing was sealed; find out who inserted them."
        )
    return SealPlan(start, new_start, rows)


def _digests_start(detail: str, known: Mapping[str, int]) -> dict[str, int]:
    """The tables an ``evidence.digests_start`` row fixes, other than those already fixed."""
    try:
        values = json.loads(detail)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(values, dict):
        return {}
    return {
        table: int(value)
        for table, value in values.items()
        if table not in known and isinstance(value, int) and not isinstance(value, bool)
    }


def seal(session: Session, plan: SealPlan, actor_id: int) -> dict[str, int]:
    """Record ``plan`` in the caller's transaction: where digests began (the first time), then
    one ``evidence.sealed`` row per row, all under ``actor_id``; returns how many per table."""
    if plan.new_start:
        record(
            session, DIGESTS_START, actor_id=actor_id, subject_type="evidence",
            detail=dict(sorted(plan.new_start.items())),
        )  # fmt: skip
    sealed: dict[str, int] = {}
    for table, rows in plan.rows.items():
        entries = [
            Entry(
                SEALED,
                actor_id=actor_id,
                subject_type=table,
                subject_id=row_id,
                detail=evidence.detail_for(table, row_id, row_digest),
            )
            for row_id, row_digest in sorted(rows.items())
        ]
        record_many(session, entries)
        sealed[table] = len(entries)
    return sealed


def verify(session: Session, expected_head: Head | None = None) -> Verification:
    """Walk the chain from the first row, reporting every changed, removed or reordered row; with
    ``expected_head`` (printed earlier), also rows removed from the end or a rewritten head. Then
    compare every evidence row with the latest digest the chain records for it (edited, deleted,
    or inserted without an audit row)."""
    key: bytes | None = audit_key()
    result = Verification()
    recorded = evidence.Recorded.empty()
    handed: dict[str, tuple[int, str]] = {}
    deferred: list[tuple[str, int, str]] = []
    start: dict[str, int] = {}
    expected_seq, prev_hash = 1, GENESIS
    for row in _rows(session):
        result.rows += 1
        if row.seq != expected_seq:
            missing = (
                f"row {expected_seq}"
                if row.seq == expected_seq + 1
                else f"rows {expected_seq} to {row.seq - 1}"
            )
            result.problems.append(f"{missing} removed (the next row present is {row.seq})")
        intact = key is None or _hash_of(key, row) == row.hash
        if not intact:
            result.problems.append(f"row {row.seq} changed: its content does not match its hash")
        elif row.prev_hash != prev_hash:
            result.problems.append(
                f"row {row.seq} is out of place: it does not follow the row before it "
                "(rows removed, reordered or inserted)"
            )
        # Only what a row whose hash verifies says is taken as recorded: a row inserted behind
        # the application's back is reported above, and records nothing.
        values = evidence.parse_detail(row.detail) if intact and key is not None else None
        found = evidence.recorded_by(values) if values is not None else None
        if values is not None and found is not None:
            table, row_id, _ = found
            replaced = evidence.replaced_wrongly(values, recorded, row.seq)
            if replaced and row_id not in recorded.rows[table]:
                # Re-recorded over a digest the chain never held: a row from before digests,
                # changed by the application before the seal, is fine (checked below).
                deferred.append((table, row_id, replaced))
            elif replaced:
                result.problems.append(replaced)
            recorded.add(*found, row.seq)
        if intact and key is not None and row.event == DIGESTS_START:
            start.update(_digests_start(row.detail, start))
        if row.event == ROTATED and intact and key is not None:
            kid = _next_key(row.detail)
            if kid:
                handed[kid] = (row.seq, row.hash)
            key = keyring_key(kid) if kid else None
            if key is None:
                result.problems.append(
                    f"row {row.seq} hands the chain to audit key {kid}, which is not in the "
                    f"instance folder's {KEYRING}/ folder: the rows after it cannot be checked"
                )
        expected_seq, prev_hash = row.seq + 1, row.hash
        result.head = Head(row.seq, row.hash)
    # A row from before digests (at or below where they began) first recorded by an application
    # change is how an upgraded database catches up; any other row so recorded was not the
    # application's to begin with.
    result.problems += [
        problem for table, row_id, problem in deferred if row_id > start.get(table, -1)
    ]
    result.problems += rolled_back(handed)
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
