"""Digests of the evidence rows, recorded in the audit chain, and the check that they still match.

The chain (:mod:`audit.log`) is keyed by a secret outside the database, so whatever an audit row
says cannot be changed unnoticed. Each audit row that records evidence carries, in its detail, the
table and id of the evidence row and a SHA-256 digest of that row's content: who, what, when and
from where. ``verify`` re-reads every evidence row and compares: a row whose digest differs from
the latest one recorded was edited; a recorded row that is gone was deleted; a row no audit row
records was inserted behind the application's back.

Rows are read a batch at a time by id, with plain Core selects, so checking a large database costs
little memory and no ORM objects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, func, or_, select
from sqlalchemy.orm import Session

from core.db import Base
from quizzes.versions import MissingVersion, load_versions, rebuild, version_problems

BATCH = 2000

# The columns each digest covers. A certificate's PDF is covered through ``pdf_sha256``; the
# bytes themselves are too large to re-read on every check. ``tests/test_evidence_integrity.py``
# fails when a column is added to one of these tables and not listed here (or deliberately left out).
DIGESTED: dict[str, tuple[str, ...]] = {
    "acknowledgement": (
        "id", "person_id", "policy_version_id", "seq", "declaration", "typed_name", "at", "ip",
        "user_agent",
    ),
    "read_receipt": ("id", "person_id", "module_version_id", "seq", "at"),
    "quiz_attempt": (
        "id", "public_id", "person_id", "module_version_id", "bank_id", "started_at",
        "expires_at", "pass_mark", "show_answers", "drawn",
    ),
    "quiz_submission": (
        "id", "attempt_id", "submitted_at", "answers", "correct", "total", "score", "passed",
    ),
    "application_decision": (
        "id", "application_id", "approved", "reason", "decided_by_id", "decided_at",
        "runners_snapshot",
    ),
    "certificate": (
        "id", "code", "person_id", "policy_id", "policy_version_id", "acknowledgement_id",
        "issued_at", "valid_until", "person_name", "policy_title", "version_label",
        "module_titles", "federation_name", "pdf_sha256",
    ),
    # Who a record names: evidence is read through the person's id, email and name (the status
    # API answers by id or email), and their roles decide what they must do.
    "person": ("id", "email", "name", "active", "created_at", "deactivated_at", "erased_at"),
    # The register: which accounts exist and who may run them, since when, added by whom.
    "social_account": (
        "id", "application_id", "platform", "handle", "recorded_by_id", "recorded_at",
        "closed_at", "closed_by_id", "close_reason",
    ),
    "account_runner": ("id", "account_id", "person_id", "added_at", "added_by_id", "removed_at"),
}  # fmt: skip
# Left out on purpose: the PDF (see above); a person's password hash and the counters that change
# on every sign-out or status change (auth_version, status_rev) are not who they are.
NOT_DIGESTED = {
    "certificate": ("pdf",),
    "person": ("password_hash", "auth_version", "status_rev"),
}
# A quiz attempt stores references to question versions (``quizzes.versions``); its digest covers
# ``drawn``, the questions rebuilt from them: exactly what the person was asked, as the copies held
# before attempts stored references. So digests recorded before and after that change compare
# alike, and a question version edited by hand changes the digest of every attempt that asked it.
REBUILT: dict[str, dict[str, str]] = {"quiz_attempt": {"drawn": "question_refs"}}
# An acknowledgement's digest also covers the module versions it was signed for, with their text
# hashes, from ``acknowledgement_module``: those rows are part of the signature.
MODULES_OF = "acknowledgement"
# A person's digest also covers their roles and schools (``person_role``, ``person_school``), which
# have no ids of their own: adding or removing one changes the person's digest.
MEMBERSHIPS_OF = "person"

# Audit detail keys: which row, and its digest.
TABLE_KEY, ID_KEY, DIGEST_KEY = "evidence", "evidence_id", "digest"
# Events that re-record a row the chain already records (erasure, a certificate's PDF stored) carry
# the digest they replace under this key; verify checks it is the one recorded before.
# An audit row that re-records a row the chain already records says which digest it replaced;
# verify checks that it is the one the chain held (``replaced_wrongly``).
WAS_KEY = "was"


def _table(name: str) -> Table:
    return Base.metadata.tables[name]  # type: ignore[return-value]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(timespec="microseconds")
    if isinstance(value, bytes):
        return value.hex()
    return value


def digest(
    table: str,
    row: Mapping[str, Any],
    modules: Sequence[Sequence[Any]] = (),
    memberships: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """SHA-256 of a canonical JSON form of the row (sorted keys, ASCII, no spaces)."""
    content: dict[str, Any] = {"table": table}
    content["row"] = {c: _plain(row[c]) for c in DIGESTED[table]}
    if table == MODULES_OF:
        content["modules"] = sorted([int(mv), str(h)] for mv, h in modules)
    if table == MEMBERSHIPS_OF:
        for kind in ("roles", "schools"):
            content[kind] = sorted(str(v) for v in (memberships or {}).get(kind, ()))
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _modules(session: Session, where: Any) -> dict[int, list[tuple[int, str]]]:
    links, versions = _table("acknowledgement_module"), _table("module_version")
    found: dict[int, list[tuple[int, str]]] = {}
    for ack_id, mv_id, text_hash in session.execute(
        select(links.c.acknowledgement_id, versions.c.id, versions.c.text_hash)
        .join(versions, versions.c.id == links.c.module_version_id)
        .where(where(links.c.acknowledgement_id))
    ):
        found.setdefault(ack_id, []).append((mv_id, text_hash))
    return found


def _memberships(session: Session, where: Any) -> dict[int, dict[str, list[str]]]:
    found: dict[int, dict[str, list[str]]] = {}
    for kind, name, column in (
        ("roles", "person_role", "role"),
        ("schools", "person_school", "school"),
    ):
        t = _table(name)
        for person_id, value in session.execute(
            select(t.c.person_id, t.c[column]).where(where(t.c.person_id))
        ):
            found.setdefault(person_id, {}).setdefault(kind, []).append(value)
    return found


def _columns(t: Table, table: str) -> list[Any]:
    """The columns a digest reads: those it covers, or those a covered value is rebuilt from."""
    rebuilt = REBUILT.get(table, {})
    return [t.c[rebuilt.get(c, c)] for c in DIGESTED[table]]


def _drawn(refs: Any, versions: Mapping[int, Mapping[str, Any]]) -> Any:
    """An attempt's questions as rebuilt; references that do not rebuild (a version removed, or
    references edited into another shape) are digested as they are, so verify reports the row."""
    try:
        return rebuild(refs, versions)
    except (MissingVersion, KeyError, TypeError, ValueError):
        return {"unrebuildable": refs}


def _contents(session: Session, table: str, rows: Sequence[Any]) -> list[Mapping[str, Any]]:
    if table not in REBUILT:
        return [r._mapping for r in rows]
    wanted: set[int] = set()
    for r in rows:
        for ref in r.question_refs if isinstance(r.question_refs, list) else ():
            if isinstance(ref, list) and ref and isinstance(ref[0], int):
                wanted.add(ref[0])
    versions = load_versions(session, wanted)
    return [{**r._mapping, "drawn": _drawn(r.question_refs, versions)} for r in rows]


def _digest_rows(session: Session, table: str, rows: Sequence[Any], where: Any) -> dict[int, str]:
    modules = _modules(session, where) if table == MODULES_OF and rows else {}
    memberships = _memberships(session, where) if table == MEMBERSHIPS_OF and rows else {}
    return {
        r.id: digest(table, row, modules.get(r.id, ()), memberships.get(r.id))
        for r, row in zip(rows, _contents(session, table, rows), strict=True)
    }


def digests(session: Session, table: str, ids: Iterable[int]) -> dict[int, str]:
    """The current digest of each of these rows (a row that does not exist is left out)."""
    t = _table(table)
    columns = _columns(t, table)
    wanted = sorted(set(ids))
    found: dict[int, str] = {}
    for start in range(0, len(wanted), BATCH):
        chunk = wanted[start : start + BATCH]
        rows = session.execute(select(*columns).where(t.c.id.in_(chunk))).all()
        found |= _digest_rows(session, table, rows, lambda c, chunk=chunk: c.in_(chunk))
    return found


def all_digests(session: Session, table: str, batch: int = BATCH) -> Iterator[dict[int, str]]:
    """Every row's digest, a batch at a time in id order."""
    t = _table(table)
    columns = _columns(t, table)
    after = 0
    while True:
        rows = session.execute(
            select(*columns).where(t.c.id > after).order_by(t.c.id).limit(batch)
        ).all()
        if not rows:
            return
        low, high = rows[0].id, rows[-1].id
        yield _digest_rows(session, table, rows, lambda c, lo=low, hi=high: c.between(lo, hi))
        after = high


def detail_for(table: str, row_id: int, row_digest: str) -> dict[str, int | str]:
    return {TABLE_KEY: table, ID_KEY: row_id, DIGEST_KEY: row_digest}


def parse_detail(detail: str) -> dict[str, Any] | None:
    """An audit row's detail when it records an evidence row (most rows do not: not parsed);
    None for any other, malformed ones included."""
    if f'"{DIGEST_KEY}"' not in detail:
        return None
    try:
        values = json.loads(detail)
    except (ValueError, RecursionError):
        return None
    return values if isinstance(values, dict) else None


def recorded_in(detail: str) -> tuple[str, int, str] | None:
    """(table, id, digest) when an audit row's detail records an evidence row."""
    values = parse_detail(detail)
    return recorded_by(values) if values is not None else None


def recorded_by(values: Mapping[str, Any]) -> tuple[str, int, str] | None:
    table, row_id, row_digest = values.get(TABLE_KEY), values.get(ID_KEY), values.get(DIGEST_KEY)
    if table in DIGESTED and isinstance(row_id, int) and isinstance(row_digest, str):
        return table, row_id, row_digest
    return None


@dataclass
class Recorded:
    """The latest digest the chain records for each evidence row, and the audit row saying so."""

    rows: dict[str, dict[int, tuple[str, int]]]

    @classmethod
    def empty(cls) -> Recorded:
        return cls({table: {} for table in DIGESTED})

    def add(self, table: str, row_id: int, row_digest: str, seq: int) -> None:
        self.rows[table][row_id] = (row_digest, seq)


class NotAsRecorded(RuntimeError):
    """Evidence rows about to be re-recorded no longer match what the chain records for them (or it
    records nothing): re-recording them would make verify accept whatever was changed."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "evidence does not match the audit log, so it was not changed: " + "; ".join(problems)
        )


def latest_recorded(
    session: Session,
    wanted: Mapping[str, Iterable[int]],
    *,
    by_subject: bool = False,
    trusted: Callable[[Any], bool] | None = None,
) -> dict[str, dict[int, tuple[str, int]]]:
    """The latest digest the chain records for each of these rows, with its audit row's seq.

    Reads every audit row that records a digest, a batch at a time (erasure: rare). With
    ``by_subject``, only the audit rows whose subject is the row itself, through the subject index:
    cheap, and right for tables always recorded that way (certificates). With ``trusted``, only
    the audit rows it accepts (``audit.log.trusted_rows``: the hash verifies) count."""
    events = _table("audit_event")
    ids = {table: {int(i) for i in row_ids} for table, row_ids in wanted.items()}
    found: dict[str, dict[int, tuple[str, int]]] = {table: {} for table in ids}
    where = events.c.detail.contains(f'"{DIGEST_KEY}"')
    if by_subject:
        where = and_(
            where,
            or_(
                *(
                    and_(
                        events.c.subject_type == table,
                        events.c.subject_id.in_([str(i) for i in row_ids]),
                    )  # fmt: skip
                    for table, row_ids in ids.items()
                    if row_ids
                ),
                False,
            ),
        )
    after = 0
    while True:
        page = session.execute(
            select(events).where(where, events.c.seq > after).order_by(events.c.seq).limit(BATCH)
        ).all()
        if not page:
            return found
        for row in page:
            if trusted is not None and not trusted(row):
                continue
            recorded = recorded_in(row.detail)
            if recorded is not None and recorded[1] in ids.get(recorded[0], ()):
                found[recorded[0]][recorded[1]] = (recorded[2], row.seq)
        after = page[-1].seq


def as_recorded(
    session: Session,
    wanted: Mapping[str, Iterable[int]],
    *,
    by_subject: bool = False,
    trusted: Callable[[Any], bool] | None = None,
) -> dict[str, dict[int, str]]:
    """The digest the chain records for each of these rows, after checking that each row still
    has exactly that digest; raises :class:`NotAsRecorded` naming every row that does not."""
    recorded = latest_recorded(session, wanted, by_subject=by_subject, trusted=trusted)
    problems: list[str] = []
    for table, row_ids in wanted.items():
        label = table.replace("_", " ")
        current = digests(session, table, row_ids)
        for row_id in sorted(current):
            entry = recorded[table].get(row_id)
            if entry is None:
                problems.append(f"{label} {row_id} has no audit row recording it")
            elif entry[0] != current[row_id]:
                problems.append(
                    f"{label} {row_id} does not match the digest in audit row {entry[1]}"
                )
    if problems:
        raise NotAsRecorded(problems)
    return {table: {i: d for i, (d, _) in rows.items()} for table, rows in recorded.items()}


def replaced_wrongly(values: Mapping[str, Any], recorded: Recorded, seq: int) -> str | None:
    """For an audit row (its parsed detail) that re-records an evidence row: a problem when the
    digest it says it replaced is not the one the chain held for that row (the row had been
    changed in between, and this row would otherwise make the change look recorded). Rows written
    before digests carried ``was`` have none and are not checked."""
    was, table, row_id = values.get(WAS_KEY), values.get(TABLE_KEY), values.get(ID_KEY)
    if was is None or table not in recorded.rows:
        return None
    before = recorded.rows[table].get(row_id)
    if before is not None and before[0] == was:
        return None
    held = f"audit row {before[1]}" if before else "no audit row"
    return (
        f"audit row {seq} re-records {table.replace('_', ' ')} {row_id} over a digest that "
        f"{held} did not record: the row was changed before it was re-recorded"
    )


PDF_BATCH = 50  # certificates whose PDFs are hashed at once (SQLite reads the bytes)


def pdf_mismatches(session: Session, certificate_ids: Iterable[int] | None = None) -> list[int]:
    """Certificates whose stored PDF does not hash to their digested ``pdf_sha256`` (or that have
    one without the other), in id order; of these certificates, or all. PostgreSQL hashes in the
    database; elsewhere the bytes are read a few at a time and not kept."""
    t = _table("certificate")
    postgresql = session.get_bind().dialect.name == "postgresql"
    hashed = func.encode(func.sha256(t.c.pdf), "hex") if postgresql else t.c.pdf
    where = or_(t.c.pdf.is_not(None), t.c.pdf_sha256.is_not(None))
    if certificate_ids is not None:
        where = and_(where, t.c.id.in_(sorted(set(certificate_ids))))
    wrong: list[int] = []
    after = 0
    while True:
        rows = session.execute(
            select(t.c.id, hashed, t.c.pdf_sha256)
            .where(where, t.c.id > after)
            .order_by(t.c.id)
            .limit(PDF_BATCH)
        ).all()
        if not rows:
            return wrong
        for row_id, content, expected in rows:
            actual = (
                content if postgresql or content is None else hashlib.sha256(content).hexdigest()
            )
            if actual is None or actual != expected:
                wrong.append(row_id)
        after = rows[-1][0]


def check(session: Session, recorded: Recorded) -> tuple[int, list[str]]:
    """Compare every evidence row with the chain; returns (rows checked, problems)."""
    checked, problems = 0, []
    # A marker outlives its erasure only if someone put it there: it opens that person's rows.
    markers = _table("evidence_erasure")
    for (person_id,) in session.execute(select(markers.c.person_id).order_by(markers.c.person_id)):
        problems.append(
            f"an erasure marker for person {person_id} was left in evidence_erasure: the "
            "database lets their evidence rows be changed while it is there"
        )
    for table in DIGESTED:
        expected = dict(recorded.rows[table])
        label = table.replace("_", " ")
        for batch in all_digests(session, table):
            for row_id, actual in batch.items():
                checked += 1
                entry = expected.pop(row_id, None)
                if entry is None:
                    problems.append(f"{label} {row_id} inserted without an audit row")
                elif entry[0] != actual:
                    problems.append(
                        f"{label} {row_id} edited: its content does not match the digest in "
                        f"audit row {entry[1]}"
                    )
        for row_id, (_, seq) in sorted(expected.items()):
            problems.append(f"{label} {row_id} deleted: audit row {seq} records it")
    # The PDF bytes are not digested (too large to re-read for every row); their hash is.
    for certificate_id in pdf_mismatches(session):
        problems.append(f"certificate {certificate_id}: stored PDF does not match its digest")
    # Attempts' digests cover the versions they asked; this names the version itself.
    for version_id in version_problems(session):
        problems.append(
            f"question version {version_id} edited: its content does not match its content hash"
        )
    return checked, problems
