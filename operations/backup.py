"""Backups that restore anywhere, and restores that write everything or nothing.

A backup is a gzipped tar file:

- ``manifest.json``: format, app version, Alembic revision, when it was made, the audit chain's
  head and what ``flask audit verify`` said of it, and for every table its columns, row count and
  the SHA-256 of its data; for every key its SHA-256;
- ``tables/NAME.jsonl``: one JSON object per row, in primary-key order;
- ``keys/NAME``: the instance key files that exist (see :mod:`operations.keys`);
- ``manifest.mac``: HMAC-SHA256 of ``manifest.json`` under the backup key, which is never in a
  backup. The manifest holds every member's SHA-256, so the MAC covers the whole file: someone
  holding a backup but not that key cannot change a row and make the checksums match again.

JSON lines rather than a database dump, so that a backup made on SQLite restores into PostgreSQL
and back. Tables are taken from the models' metadata in dependency order, so a table added later is
covered without changing this module; a table in the database that the models do not know stops
the backup rather than being left out silently.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import json
import os
import secrets
import tarfile
import tempfile
import tomllib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

from audit import anchor
from audit import log as audit_log
from audit.models import AuditEvent
from core.config import ROOT
from core.db import Base, deferred_reads, utcnow
from operations.keys import BackupKey, KeyFile, backup_key, fingerprint, key_files, keyring_file

FORMAT = "countersign-backup"
FORMAT_VERSION = 1
BATCH = 1000
MAC_MEMBER = "manifest.mac"
# Binds the MAC to its purpose: the same key used for anything else never yields a valid one.
MAC_CONTEXT = b"countersign backup manifest\0"
# Tables that belong to the migration tool, not to the app: backed up as the manifest's revision.
NOT_DATA = {"alembic_version"}


class BackupError(Exception):
    """A backup cannot be made or restored; the message says why and what to do."""


@dataclass
class Summary:
    path: Path
    revision: str
    rows: dict[str, int]
    head: str | None
    keys: list[str]
    keys_not_included: list[str] = field(default_factory=list)
    audit_problems: list[str] | None = None
    backup_key: str = ""  # where the key that authenticates it is kept
    backup_key_fingerprint: str = ""


def manifest_mac(key: bytes, manifest: bytes) -> str:
    return hmac.new(key, MAC_CONTEXT + manifest, hashlib.sha256).hexdigest()


def app_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def data_tables() -> list[sa.Table]:
    """Every table the app keeps, parents before children."""
    return [t for t in Base.metadata.sorted_tables if t.name not in NOT_DATA]


def schema_head() -> str:
    """The schema revision this version of the code migrates to."""
    from alembic.script import ScriptDirectory

    from core.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise BackupError("This version has no migrations.")
    return head


def current_revision(connection: Connection) -> str | None:
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


# --- values ------------------------------------------------------------------------------------


def _base_type(column: sa.Column) -> sa.types.TypeEngine:
    kind = column.type
    return kind.impl_instance if isinstance(kind, TypeDecorator) else kind


def _readable(column: sa.Column) -> Any:
    # JSON is read as its text, so a JSON null and an SQL NULL stay different.
    if isinstance(_base_type(column), sa.JSON):
        return sa.cast(column, sa.Text).label(column.name)
    return column


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot back up a value of type {type(value).__name__}")


def _decode(column: sa.Column, value: Any) -> Any:
    kind = _base_type(column)
    if isinstance(kind, sa.JSON):
        if value is None:
            return sa.null()
        parsed = json.loads(value)
        return kind.NULL if parsed is None else parsed
    if value is None:
        return None
    if isinstance(kind, sa.DateTime):
        return datetime.fromisoformat(value)
    if isinstance(kind, sa.Date):
        return date.fromisoformat(value)
    if isinstance(kind, sa.LargeBinary):
        return base64.b64decode(value, validate=True)
    if isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float):
        return Decimal(value)
    return value


# --- backup ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """One read transaction: REPEATABLE READ on PostgreSQL; on SQLite (WAL) a deferred read
    transaction, which sees one snapshot from its first read to its end and blocks no writer."""
    with deferred_reads(), engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection = connection.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        with connection.begin():
            yield connection


def _check_tables(connection: Connection) -> None:
    known = {t.name for t in Base.metadata.sorted_tables} | NOT_DATA
    unknown = sorted(set(sa.inspect(connection).get_table_names()) - known)
    if unknown:
        raise BackupError(
            f"The database has tables this version of Countersign does not know: "
            f"{', '.join(unknown)}. A backup would leave them out; run the version that made them."
        )


def _dump(connection: Connection, table: sa.Table, out: IO[bytes]) -> tuple[int, str]:
    digest, rows = hashlib.sha256(), 0
    order = list(table.primary_key.columns) or list(table.columns)
    query = sa.select(*(_readable(c) for c in table.columns)).order_by(*order)
    for row in connection.execution_options(stream_results=True, yield_per=BATCH).execute(query):
        record = {name: _encode(value) for name, value in row._mapping.items()}
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        digest.update(line)
        out.write(line)
        rows += 1
    return rows, digest.hexdigest()


def _add(archive: tarfile.TarFile, name: str, data: IO[bytes], size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(utcnow().timestamp())
    archive.addfile(info, data)


def default_name() -> str:
    return f"countersign-backup-{utcnow().strftime('%Y%m%dT%H%M%SZ')}.tar.gz"


def backup(app: Flask, engine: Engine, output: Path) -> Summary:
    """Write every table and the instance key files to ``output`` (made 0600, never overwritten)."""
    output = output.resolve()
    if output.exists():
        raise BackupError(f"{output} already exists: choose another name (--output).")
    try:
        mac_key = backup_key(app, create=True)
    except (OSError, ValueError) as exc:
        raise BackupError(f"The backup key cannot be read ({exc}); nothing was written.")
    if mac_key is None:  # not asked to be made: cannot happen with create=True
        raise BackupError("There is no backup key; nothing was written.")
    keys = [k for k in key_files(app) if k.path.is_file()]
    configured = [k.label for k in key_files(app) if k.configured]
    with tempfile.TemporaryDirectory(prefix="countersign-backup-") as work:
        os.chmod(work, 0o700)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "app_version": app_version(),
            "created_at": utcnow().isoformat(),
            "tables": {},
            "keys": {},
            "keys_configured_elsewhere": configured,
        }
        with _snapshot(engine) as connection:
            revision = current_revision(connection)
            if revision is None:
                raise BackupError("The database has no schema yet: there is nothing to back up.")
            _check_tables(connection)
            manifest["dialect"] = connection.dialect.name
            manifest["alembic_revision"] = revision
            for table in data_tables():
                with open(Path(work) / table.name, "wb") as out:
                    rows, digest = _dump(connection, table, out)
                manifest["tables"][table.name] = {
                    "columns": [c.name for c in table.columns],
                    "rows": rows,
                    "sha256": digest,
                }
            with Session(bind=connection) as session:
                head = audit_log.head(session)
                manifest["audit_head"] = str(head) if head else None
                manifest["audit_problems"] = _audit_problems(app, session, head)
        key_data = {k.name: k.path.read_bytes() for k in keys}
        for key in keys:
            manifest["keys"][key.name] = {
                "sha256": hashlib.sha256(key_data[key.name]).hexdigest(),
                "fingerprint": fingerprint(key_data[key.name]),
            }
        _write_archive(output, manifest, Path(work), key_data, mac_key)
    # Like every other export of personal data, a backup is on the record (after the snapshot, so
    # it is in the next backup, not this one).
    with Session(bind=engine) as session, session.begin():
        audit_log.record(
            session,
            "export.backup",
            detail={
                "rows": sum(t["rows"] for t in manifest["tables"].values()),
                "head": int(manifest["audit_head"].partition(":")[0])
                if manifest["audit_head"]
                else 0,
            },
        )
    return Summary(
        path=output,
        revision=revision,
        rows={name: t["rows"] for name, t in manifest["tables"].items()},
        head=manifest["audit_head"],
        keys=[k.label for k in keys],
        keys_not_included=configured,
        audit_problems=manifest["audit_problems"],
        backup_key=mac_key.where,
        backup_key_fingerprint=mac_key.fingerprint,
    )


def _audit_problems(app: Flask, session: Session, head: audit_log.Head | None) -> list[str] | None:
    """What ``flask audit verify`` says now, so a restore can show it says the same afterwards.
    None when it cannot be asked: rows, but no key to check them with."""
    if head is None:
        return []
    if not app.config.get("AUDIT_KEY") and not (Path(app.instance_path) / "audit_key").is_file():
        return None
    return audit_log.verify(session).problems


def _write_archive(
    output: Path,
    manifest: dict[str, Any],
    work: Path,
    key_data: dict[str, bytes],
    mac_key: BackupKey,
) -> None:
    """Written whole under a temporary name beside ``output``, then linked into place: a backup
    that stopped half-way never has the name of a finished one."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=output.parent, prefix=".countersign-backup-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as archive:
            body = json.dumps(manifest, indent=2, sort_keys=True).encode()
            _add(archive, "manifest.json", io.BytesIO(body), len(body))
            mac = json.dumps(
                {
                    "algorithm": "HMAC-SHA256",
                    "key_fingerprint": mac_key.fingerprint,
                    "mac": manifest_mac(mac_key.data, body),
                },
                indent=2,
            ).encode()
            _add(archive, MAC_MEMBER, io.BytesIO(mac), len(mac))
            for name in manifest["tables"]:
                path = work / name
                with open(path, "rb") as data:
                    _add(archive, f"tables/{name}.jsonl", data, path.stat().st_size)
            for name, data in key_data.items():
                _add(archive, f"keys/{name}", io.BytesIO(data), len(data))
            raw.flush()
            os.fsync(raw.fileno())
        try:
            os.link(temporary, output)
        except FileExistsError:
            raise BackupError(f"{output} appeared while the backup was written: nothing replaced.")
    finally:
        os.unlink(temporary)


# --- reading a backup --------------------------------------------------------------------------

DAMAGED = "The backup {path} is damaged or incomplete ({why}); nothing was restored."
# Read before the backup is authenticated, so bounded: no real manifest comes near these.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_MAC_BYTES = 4096
# One table row (a certificate with its PDF is the largest): a longer line is damage.
MAX_ROW_BYTES = 64 * 1024 * 1024


class Archive:
    """A backup file opened for restoring; every read is checked against the manifest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.tar = tarfile.open(path, mode="r:gz")
            self.manifest_bytes = self._member("manifest.json", MAX_MANIFEST_BYTES).read()
            self.manifest = json.loads(self.manifest_bytes)
        except FileNotFoundError:
            raise BackupError(f"There is no backup at {path}.")
        except BackupError:
            raise
        except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError, RecursionError) as exc:
            raise self.damaged(str(exc) or type(exc).__name__)
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            raise BackupError(f"{path} is not a Countersign backup.")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise BackupError(
                f"{path} is a backup in format {self.manifest.get('format_version')!r}; this "
                f"version of Countersign reads format {FORMAT_VERSION}."
            )

    def damaged(self, why: str) -> BackupError:
        return BackupError(DAMAGED.format(path=self.path, why=why))

    def _member(self, name: str, max_size: int | None = None) -> IO[bytes]:
        try:
            info = self.tar.getmember(name)
            if max_size is not None and info.size > max_size:
                raise self.damaged(f"{name} is {info.size:,} bytes, more than any backup holds")
            member = self.tar.extractfile(info)
        except KeyError:
            member = None
        if member is None:
            raise self.damaged(f"{name} is missing")
        return member

    def close(self) -> None:
        self.tar.close()

    def authenticate(self, key: BackupKey | None) -> str:
        """Check the manifest's MAC under the backup key before anything else is trusted; returns
        the fingerprint of the key that made it."""
        try:
            info = self.tar.getmember(MAC_MEMBER)
            if info.size > MAX_MAC_BYTES:
                raise self.damaged(f"its authentication code is {info.size:,} bytes long")
            member = self.tar.extractfile(info)
        except KeyError:
            member = None
        if member is None:
            raise BackupError(
                f"{self.path} carries no authentication code: it was made by a version of "
                "Countersign that did not authenticate backups, or the code was removed. Restore "
                "it only if you know where the file has been, with --unauthenticated. Nothing "
                "was restored."
            )
        try:
            mac = json.loads(member.read())
            claimed, named = str(mac["mac"]), str(mac.get("key_fingerprint", "?"))
        except (ValueError, KeyError, TypeError, tarfile.TarError, OSError, zlib.error,
                RecursionError) as exc:  # fmt: skip
            raise self.damaged(f"its authentication code is unreadable: {exc}")
        if key is None:
            raise BackupError(
                "Restoring needs the backup key, to check the file was not altered since it was "
                "made: set COUNTERSIGN_BACKUP_KEY, or COUNTERSIGN_BACKUP_KEY_FILE to the file "
                f"kept apart from the backups (the backup names key {named}). Nothing was restored."
            )
        if not hmac.compare_digest(claimed, manifest_mac(key.data, self.manifest_bytes)):
            raise BackupError(
                f"{self.path} does not match the backup key ({key.where}, key {key.fingerprint}): "
                f"it was altered after it was made, or made with another key (it names key "
                f"{named}). Nothing was restored."
            )
        return key.fingerprint

    def check(self) -> None:
        """Read every member once and compare with the manifest, before anything is written."""
        try:
            for name, table in self.manifest["tables"].items():
                count = sum(1 for _ in self.rows(name, table))
                if count != table["rows"]:
                    raise self.damaged(
                        f"{name} has {count} rows, the manifest says {table['rows']}"
                    )
            for name in self.manifest["keys"]:
                self.key(name)
        except BackupError:
            raise
        except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError, KeyError,
                TypeError) as exc:  # fmt: skip
            raise self.damaged(str(exc) or type(exc).__name__)

    def rows(self, name: str, table: dict[str, Any]) -> Iterator[dict[str, Any]]:
        digest = hashlib.sha256()
        member = self._member(f"tables/{name}.jsonl")
        while line := member.readline(MAX_ROW_BYTES + 1):
            if len(line) > MAX_ROW_BYTES:
                raise self.damaged(f"a row of {name} is longer than any row Countersign writes")
            digest.update(line)
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise self.damaged(f"a row of {name} is not readable ({type(exc).__name__})")
            if not isinstance(row, dict) or list(row) != table["columns"]:
                raise self.damaged(f"a row of {name} does not have the table's columns")
            yield row
        if digest.hexdigest() != table["sha256"]:
            raise self.damaged(f"the data of {name} does not match its checksum")

    def key(self, name: str) -> bytes:
        data = self._member(f"keys/{name}").read()
        if hashlib.sha256(data).hexdigest() != self.manifest["keys"][name]["sha256"]:
            raise self.damaged(f"the key {name} does not match its checksum")
        return data


# --- restore -----------------------------------------------------------------------------------


@dataclass
class Restored:
    revision: str
    rows: dict[str, int]
    head: str | None
    keys_written: list[str]
    keys_kept: list[str]  # different from the backup's, kept (they sign nothing recorded)
    keys_set_aside: list[str]
    migrated: bool
    # What this restore's own walk of the chain found, never what the backup's manifest says.
    audit_problems: list[str] = field(default_factory=list)
    claimed_problems: list[str] | None = None  # what the manifest says (unauthenticated text)
    authenticated_by: str | None = None  # the backup key's fingerprint; None with --unauthenticated


def _is_empty(connection: Connection) -> bool:
    return all(
        connection.execute(sa.select(sa.literal(1)).select_from(t).limit(1)).first() is None
        for t in data_tables()
    )


def _plan_keys(
    app: Flask, archive: Archive, force_keys: bool
) -> tuple[list[tuple[KeyFile, bytes]], list[str]]:
    """The key files to write, and those kept as they are. A different existing key that records
    depend on is replaced only when forced: it may be another database's."""
    wanted = {k.name: k for k in key_files(app)}
    plan, kept = [], []
    for name in archive.manifest["keys"]:
        key = wanted.get(name) or keyring_file(app, name)
        if key is None:
            raise BackupError(f"The backup holds a key this version does not know: {name}.")
        data = archive.key(name)
        if key.path.is_file():
            existing = key.path.read_bytes()
            if existing.strip() == data.strip():
                continue
            if not force_keys and not key.recorded:
                kept.append(name)
                continue
            if not force_keys:
                raise BackupError(
                    f"{key.path} ({key.label}) exists and differs from the backup's. The restored "
                    "records need the backup's key. If this instance holds nothing else (a fresh "
                    "install), run again with --force-keys: the existing file is kept beside it "
                    "with a .replaced-TIME suffix. Nothing was restored."
                )
        plan.append((key, data))
    return plan, kept


def _set_sequences(connection: Connection) -> None:
    """PostgreSQL hands out ids from sequences that a restore with explicit ids leaves behind."""
    if connection.dialect.name != "postgresql":
        return
    quote = connection.dialect.identifier_preparer.quote
    for table in data_tables():
        for column in table.primary_key.columns:
            sequence = connection.execute(
                sa.text("SELECT pg_get_serial_sequence(:table, :column)"),
                {"table": quote(table.name), "column": column.name},
            ).scalar()
            if sequence:
                top = sa.func.max(column)
                connection.execute(
                    sa.select(
                        sa.func.setval(sequence, sa.func.coalesce(top, 1), top.is_not(None))
                    ).select_from(table)
                )


def _restore_rows(connection: Connection, archive: Archive) -> dict[str, int]:
    counts: dict[str, int] = {}
    # Counters that triggers keep (status revisions) move while child rows go in: put them back
    # as they were, so stored answers made before the backup are still known to be current.
    counters: dict[str, list[dict[str, Any]]] = {}
    for table in data_tables():
        entry = archive.manifest["tables"][table.name]
        columns = [table.c[name] for name in entry["columns"]]
        batch: list[dict[str, Any]] = []
        counts[table.name] = 0
        kept = counters[table.name] = []
        has_counter = "status_rev" in table.c and table.primary_key.columns
        for row in archive.rows(table.name, entry):
            values = {c.name: _decode(c, row[c.name]) for c in columns}
            batch.append(values)
            if has_counter:
                kept.append(
                    {**{f"pk_{c.name}": values[c.name] for c in table.primary_key.columns},
                     "rev": values["status_rev"]}
                )  # fmt: skip
            if len(batch) >= BATCH:
                connection.execute(table.insert(), batch)
                counts[table.name] += len(batch)
                batch = []
        if batch:
            connection.execute(table.insert(), batch)
            counts[table.name] += len(batch)
    for table in data_tables():
        if counters.get(table.name):
            where = [c == sa.bindparam(f"pk_{c.name}") for c in table.primary_key.columns]
            update = table.update().where(*where).values(status_rev=sa.bindparam("rev"))
            connection.execute(update, counters[table.name])
    return counts


def restore(
    app: Flask,
    engine: Engine,
    path: Path,
    *,
    force_keys: bool = False,
    migrate: Any = None,
    accept_problems: bool = False,
    unauthenticated: bool = False,
    heads: Path | None = None,
) -> Restored:
    """Bring a backup back into an empty database, and its keys into the instance folder.

    The backup must come from this version's schema revision. ``migrate(revision)`` is called
    first when the database has no schema at all, to build it. The manifest's MAC is checked
    under the backup key first (skipped only with ``unauthenticated``). The rows, the sequences
    and a walk of the restored audit chain under the key that will be in effect happen in one
    transaction: problems found by that walk roll it all back unless ``accept_problems``. The key
    files are moved into place only once it has committed. ``heads`` (a file of heads recorded
    by ``flask audit head --record``, kept away from the app's user) is compared with the restored
    log too: every head it holds up to the backup's must be in the restored chain, so a backup of
    a rewritten log is refused even when it carries a valid MAC (someone who could read the app's
    keys could make one).
    """
    archive = Archive(path)
    try:
        authenticated_by = None
        if not unauthenticated:
            try:
                key = backup_key(app)
            except (OSError, ValueError) as exc:
                raise BackupError(f"The backup key cannot be read ({exc}). Nothing was restored.")
            authenticated_by = archive.authenticate(key)
        archive.check()
        manifest = archive.manifest
        revision = manifest["alembic_revision"]
        known = {t.name: [c.name for c in t.columns] for t in data_tables()}
        ours = schema_head()
        if revision != ours:
            raise BackupError(
                f"The backup was made at schema revision {revision} (Countersign "
                f"{manifest.get('app_version')}); this version's schema is at {ours}. Restore it "
                "with the version that made it, then upgrade as usual. Nothing was restored."
            )
        migrated = False
        with engine.connect() as connection:
            current = current_revision(connection)
            fresh = current is None and not sa.inspect(connection).get_table_names()
        if fresh and migrate is not None:
            migrate(revision)
            migrated = True
        with engine.connect() as connection:
            current = current_revision(connection)
        if current != revision:
            raise BackupError(
                f"The backup was made at schema revision {revision}; this database is at "
                f"{current or 'no revision'}. Restore into a new, empty database (restore builds "
                "the schema itself). Nothing was restored."
            )
        backed_up = {name: t["columns"] for name, t in manifest["tables"].items()}
        if backed_up != known:
            raise BackupError(
                "The backup's tables or columns differ from this version's at the same schema "
                "revision: restore it with the version of Countersign that made it "
                f"({manifest.get('app_version')})."
            )
        keys, kept_different = _plan_keys(app, archive, force_keys)
        audit_key = next((d for k, d in keys if k.name == "audit_key"), None)
        # Keys made by rotations: the restored chain is checked with them before they are placed.
        keyring = {k.path.name: d.strip() for k, d in keys if keyring_file(app, k.name) is not None}
        with engine.connect() as connection:
            transaction = connection.begin()
            try:
                if not _is_empty(connection):
                    raise BackupError(
                        "The database is not empty: a restore only goes into an empty database, "
                        "so that nothing recorded there is overwritten or mixed with the "
                        "backup's. Nothing was restored."
                    )
                if connection.dialect.name == "sqlite":
                    connection.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
                counts = _restore_rows(connection, archive)
                _set_sequences(connection)
                found = _check_chain(app, connection, manifest, audit_key, keyring)
                if heads is not None:
                    found.problems += _check_heads(connection, heads)
                if found.problems and not accept_problems:
                    raise ProblemsFound(found.problems)
            except BaseException:
                transaction.rollback()
                raise
            staged = _stage_keys(keys)
            try:
                transaction.commit()
            except BaseException:
                _unstage(staged)
                raise
        written, set_aside = _place_keys(staged)
    except (KeyError, TypeError) as exc:
        raise archive.damaged(f"its manifest is malformed: {exc}")
    finally:
        archive.close()
    claimed = manifest.get("audit_problems")
    return Restored(
        revision=revision,
        rows=counts,
        head=str(found.head) if found.head else None,
        keys_written=written,
        keys_kept=kept_different,
        keys_set_aside=set_aside,
        migrated=migrated,
        audit_problems=found.problems,
        claimed_problems=claimed if isinstance(claimed, list) else None,
        authenticated_by=authenticated_by,
    )


def _check_heads(connection: Connection, path: Path) -> list[str]:
    """Each head recorded in ``path`` no later than the restored log's end must be the restored
    row at that position (later ones are expected: the backup is older than them)."""
    try:
        recorded = anchor.all_heads(path)
    except FileNotFoundError:
        raise BackupError(
            f"The file of recorded heads {path} does not exist. Nothing was restored."
        )
    except (OSError, ValueError) as exc:
        raise BackupError(f"The recorded heads cannot be read ({exc}). Nothing was restored.")
    problems, compared = [], 0
    for entry in recorded:
        stored = connection.execute(
            sa.select(AuditEvent.hash).where(AuditEvent.seq == entry.head.seq)
        ).scalar()
        if stored is None:
            continue  # recorded after this backup was made
        compared += 1
        if stored != entry.head.hash:
            problems.append(
                f"row {entry.head.seq} is not the row recorded at {entry.at} in {path}: the "
                "backup holds a rewritten log"
            )
    if not compared and recorded:
        problems.append(
            f"no head recorded in {path} is in the restored log: it cannot be compared (is this "
            "the right file, and the right backup?)"
        )
    return problems


class ProblemsFound(BackupError):
    """The restored audit log does not verify; nothing was restored."""

    SHOWN = 20

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        listed = "\n".join(f"PROBLEM: {p}" for p in problems[: self.SHOWN])
        more = len(problems) - self.SHOWN
        if more > 0:
            listed += f"\n… and {more} more."
        super().__init__(
            f"The restored audit log does not verify with the audit key that would be in effect: "
            f"{len(problems)} problem(s).\n{listed}\nIf every row is reported changed, is "
            "COUNTERSIGN_AUDIT_KEY set to another key? Nothing was restored. To restore the "
            "records as they are (for an investigation), run again with --accept-problems."
        )


def _check_chain(
    app: Flask,
    connection: Connection,
    manifest: dict[str, Any],
    audit_key: bytes | None,
    keyring: dict[str, bytes] | None = None,
) -> audit_log.Verification:
    """Walk the restored chain and evidence with the key that will be in effect afterwards, and
    say what that walk found; nothing the manifest claims is taken on trust. A backup restored
    under the wrong key would leave a log that can never be verified, so every row reported
    changed is a problem like any other."""
    configured = bool(app.config.get("AUDIT_KEY"))
    if audit_key is None and not configured:
        try:
            audit_key = (Path(app.instance_path) / "audit_key").read_bytes()
        except FileNotFoundError:
            has_rows = connection.execute(sa.select(AuditEvent.seq).limit(1)).first()
            if has_rows:
                raise BackupError(
                    "The backup's audit log was kept with a key set in the environment, which is "
                    "not in the backup: set COUNTERSIGN_AUDIT_KEY to it and run again. Nothing "
                    "was restored."
                )
            # An empty log needs no key; the evidence check (any evidence row is then one
            # without its audit row) still runs. This key is used for this walk only.
            audit_key = secrets.token_hex(32).encode()
    cache = app.extensions.pop("countersign.audit_key", None)
    if audit_key is not None and not configured:
        app.extensions["countersign.audit_key"] = audit_key.strip()
    app.extensions["countersign.audit_keyring"] = keyring or {}
    try:
        with app.app_context(), Session(bind=connection) as session:
            result = audit_log.verify(session)
    finally:
        app.extensions.pop("countersign.audit_keyring", None)
        app.extensions.pop("countersign.audit_key", None)
        if cache is not None:
            app.extensions["countersign.audit_key"] = cache
    head = str(result.head) if result.head else None
    if head != manifest.get("audit_head"):
        result.problems.append(
            f"the restored log's head is {head or 'none'}; the backup's manifest says "
            f"{manifest.get('audit_head') or 'none'}"
        )
    return result


def _stage_keys(keys: list[tuple[KeyFile, bytes]]) -> list[tuple[KeyFile, Path]]:
    staged = []
    try:
        for key, data in keys:
            key.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=key.path.parent, prefix=f".{key.path.name}-")
            staged.append((key, Path(temporary)))
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(data)
    except BaseException:
        _unstage(staged)
        raise
    return staged


def _unstage(staged: list[tuple[KeyFile, Path]]) -> None:
    for _key, temporary in staged:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _place_keys(staged: list[tuple[KeyFile, Path]]) -> tuple[list[str], list[str]]:
    written, set_aside = [], []
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    for key, temporary in staged:
        if key.path.exists():
            aside = key.path.with_name(f"{key.path.name}.replaced-{stamp}")
            os.replace(key.path, aside)
            set_aside.append(str(aside))
        os.replace(temporary, key.path)
        written.append(key.name)
    return written, set_aside
