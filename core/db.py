"""The database: one engine per app, one session per app context.

SQLite is the embedded default and PostgreSQL the scale-out path; both are reached through the same
SQLAlchemy session. On SQLite every transaction that may write starts with ``BEGIN IMMEDIATE``: a
read-then-write transaction begun with a plain ``BEGIN`` fails with "database is locked" under
concurrent writers whatever the busy timeout, because SQLite cannot upgrade a read snapshot that another
writer has moved past. Safe (GET/HEAD) requests begin deferred so readers never queue behind writers;
code that writes while serving one uses :func:`writing`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import threading
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, configure_mappers, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and always read back as an aware UTC datetime.

    SQLite has no time zone type, so storing naive UTC everywhere keeps both backends identical.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


# "IMMEDIATE" or "DEFERRED": how the next SQLite transaction in this context begins.
_sqlite_begin: contextvars.ContextVar[str] = contextvars.ContextVar(
    "countersign_sqlite_begin", default="IMMEDIATE"
)


SQLITE_MMAP_BYTES = 256 * 1024 * 1024
# Connections a process keeps open for reuse: one for each thread of a server worker (`make run`
# serves 16 threads a process). Fewer, and a busy moment opens and closes connections on every
# request. They are opened only as threads need them.
POOL_SIZE = 16


def normalise_url(url: str) -> str:
    """Accept the URL spellings hosting providers hand out and use psycopg 3 for PostgreSQL."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, pool_size=POOL_SIZE, connect_args={"check_same_thread": False, "timeout": 5}
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_size=POOL_SIZE, pool_pre_ping=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        # REPLACE deletes the row it replaces; with this on, that delete fires the evidence
        # tables' no-delete triggers (migration 0017 also refuses such an insert outright).
        cursor.execute("PRAGMA recursive_triggers=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Read through a memory map rather than a read() per page: lookups touch many pages.
        cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(f"BEGIN {_sqlite_begin.get()}")


def _require_login_as(engine: Engine, role: str) -> None:
    """With an application role configured, the app must log in as it: running as the tables'
    owner would let it drop or disable the triggers that keep the evidence append-only."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        user = dbapi_connection.info.user
        if user != role:
            raise RuntimeError(
                f"COUNTERSIGN_DATABASE_APP_ROLE is {role!r} but the app logged in to PostgreSQL "
                f"as {user!r}. Give COUNTERSIGN_DATABASE_URL the application role's login and "
                "COUNTERSIGN_MIGRATION_DATABASE_URL the owner's."
            )


def migration_engine(app: Flask) -> Engine:
    """The engine that changes the schema (and restores backups): the owner's, where one is
    configured apart from the app's. The caller disposes of it when it is not ``db.engine``."""
    url = app.config.get("MIGRATION_DATABASE_URL")
    return make_engine(url) if url else app.extensions["countersign.db"].kw["bind"]


def grant_app_role(connection: Any, role: str) -> None:
    """Give the application role what the app needs, after every migration: rows in every table,
    values from every sequence; no ownership, so no ALTER, DROP or DISABLE TRIGGER. Migrations
    that take some of these back (append-only tables) are applied again afterwards
    (``core.migrate``).

    It starts by revoking everything, so the grants are exactly these however they stood before,
    and it runs in the migration's transaction, so nobody ever sees them half-changed.
    """
    if connection.dialect.name != "postgresql" or not role:
        return
    found = connection.exec_driver_sql(
        "SELECT rolsuper, pg_has_role(rolname, current_user, 'MEMBER') FROM pg_roles "
        "WHERE rolname = %(role)s",
        {"role": role},
    ).first()
    if found is None:
        raise RuntimeError(
            f"COUNTERSIGN_DATABASE_APP_ROLE names {role!r}, which does not exist: create it first "
            "(deploy/postgresql-setup.sql)."
        )
    if found[0] or found[1]:
        raise RuntimeError(
            f"COUNTERSIGN_DATABASE_APP_ROLE {role!r} is a superuser, or is (or is a member of) "
            "the owner migrating the database: the application role must be a separate role "
            "with no such powers."
        )
    quote = connection.dialect.identifier_preparer.quote
    schema = quote(connection.exec_driver_sql("SELECT current_schema()").scalar())
    who = quote(role)
    for statement in (
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {who}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {who}",
        f"GRANT USAGE ON SCHEMA {schema} TO {who}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {who}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {who}",
        f"REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {who}",
    ):
        connection.exec_driver_sql(statement)


class Database:
    """Binds an engine and a per-app-context session to a Flask app (``init_app`` pattern).

    No connection is opened here: the engine connects on first use, so a server that forks its
    workers after creating the app gives each worker its own connections.
    """

    def init_app(self, app: Flask) -> None:
        engine = make_engine(app.config["DATABASE_URL"])
        if app.config.get("DATABASE_APP_ROLE") and engine.dialect.name == "postgresql":
            _require_login_as(engine, str(app.config["DATABASE_APP_ROLE"]))
        app.extensions["countersign.db"] = sessionmaker(bind=engine, expire_on_commit=False)
        app.extensions["countersign.readers"] = Readers(engine)
        configure_mappers()  # now, rather than in the middle of the first request that needs it
        app.teardown_appcontext(self._remove_session)

        @app.before_request
        def _reads_begin_deferred() -> None:
            from flask import request

            if request.method in ("GET", "HEAD", "OPTIONS"):
                _sqlite_begin.set("DEFERRED")
            else:
                _sqlite_begin.set("IMMEDIATE")

    @property
    def engine(self) -> Engine:
        factory = current_app.extensions["countersign.db"]
        return factory.kw["bind"]

    @property
    def session(self) -> Session:
        if "db_session" not in g:
            g.db_session = current_app.extensions["countersign.db"]()
        return g.db_session

    @property
    def reader(self) -> Reader:
        """Plain reads for hot paths, on this thread's own connection (see :class:`Reader`)."""
        return current_app.extensions["countersign.readers"].get()

    @staticmethod
    def _remove_session(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()


db = Database()


class Sql:
    """A hand-written read, adapted to each backend.

    Write ``:name`` for a value and ``{in :name}`` for membership of a list (passed as a list).
    Timestamps are passed as aware datetimes and compared as stored (naive UTC).
    """

    _PARAM = re.compile(r"(?<![:\w]):([a-z_]+)")
    _IN = re.compile(r"\{in :([a-z_]+) (\w+)\}")

    def __init__(self, template: str) -> None:
        self.template = " ".join(template.split())
        # SQLite takes ``:name`` itself, and a list as JSON; PostgreSQL takes a list as an array.
        self.sqlite = self._IN.sub(r"IN (SELECT value FROM json_each(:\1))", self.template)
        postgresql = self._IN.sub(r"= ANY(CAST(:\1 AS \2[]))", self.template)
        self.postgresql = self._PARAM.sub(r"%(\1)s", postgresql)


class Reader:
    """Reads for hot paths, straight on a DBAPI connection that autocommits.

    On a request that takes a millisecond, SQLAlchemy's statement machinery and even a pool checkout
    cost more than the query itself; the API's per-request lookups (token, policy, stored answer)
    run here instead. Each read sees what is committed; anything that writes uses the session.
    """

    def __init__(self, engine: Engine) -> None:
        self.postgresql = engine.dialect.name == "postgresql"
        self.pid = os.getpid()
        self._fairy = engine.raw_connection()
        self._fairy.detach()  # this thread's for good: never handed to a session
        self._connection = self._fairy.dbapi_connection
        if self.postgresql:
            self._connection.autocommit = True  # no transaction left open between requests

    def all(self, sql: Sql, **params: Any) -> list[tuple[Any, ...]]:
        values = {name: self._adapt(value) for name, value in params.items()}
        cursor = self._connection.cursor()
        try:
            cursor.execute(sql.postgresql if self.postgresql else sql.sqlite, values)
            return cursor.fetchall()
        finally:
            cursor.close()

    def _adapt(self, value: Any) -> Any:
        if type(value) in (int, str):
            return value
        if isinstance(value, datetime):
            naive = value.astimezone(UTC).replace(tzinfo=None)
            # SQLAlchemy stores SQLite timestamps as text in this format; it sorts as time does.
            return naive if self.postgresql else naive.isoformat(" ", "microseconds")
        if isinstance(value, list | tuple) and not self.postgresql:
            return json.dumps(list(value))
        return value

    def json(self, value: Any) -> Any:
        """A JSON column's value: PostgreSQL hands it decoded, SQLite as text."""
        return json.loads(value) if isinstance(value, str) else value

    def datetime(self, value: Any) -> datetime:
        """A UTCDateTime column's value, aware: PostgreSQL hands a naive datetime, SQLite text."""
        naive = value if isinstance(value, datetime) else datetime.fromisoformat(value)
        return naive.replace(tzinfo=UTC)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._connection.close()


class Readers:
    """One :class:`Reader` per thread and process, opened on first use (never before a server
    forks its workers), reopened after an error, and closed when the engine is disposed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._local = threading.local()
        self._open: list[Reader] = []
        self._lock = threading.Lock()
        event.listen(engine, "engine_disposed", lambda _engine: self.close_all())
        # An app dropped without disposing its engine still closes its readers' connections.
        weakref.finalize(self, _close_readers, self._open)

    def get(self) -> Reader:
        reader: Reader | None = getattr(self._local, "reader", None)
        if reader is None or reader.pid != os.getpid():
            reader = self._local.reader = _Guarded(self.engine, self)
            with self._lock:
                self._open.append(reader)
        return reader

    def discard(self, reader: Reader) -> None:
        reader.close()
        if getattr(self._local, "reader", None) is reader:
            del self._local.reader
        with self._lock:
            if reader in self._open:
                self._open.remove(reader)

    def close_all(self) -> None:
        with self._lock:
            readers = list(self._open)
            self._open.clear()
        _close_readers(readers)
        self._local = threading.local()


def _close_readers(readers: list[Reader]) -> None:
    for reader in readers:
        reader.close()


class _Guarded(Reader):
    """A reader whose connection is dropped after any error, so the next use opens a fresh one."""

    def __init__(self, engine: Engine, owner: Readers) -> None:
        super().__init__(engine)
        self._owner = owner

    def all(self, sql: Sql, **params: Any) -> list[tuple[Any, ...]]:
        try:
            return super().all(sql, **params)
        except Exception:
            self._owner.discard(self)
            raise


def reads_only() -> None:
    """Declare that this request only reads (writes go through :func:`writing`), whatever its
    method: on SQLite its transaction then begins deferred and never waits for writers."""
    _sqlite_begin.set("DEFERRED")


@contextlib.contextmanager
def deferred_reads() -> Iterator[None]:
    """SQLite transactions begun inside begin deferred, whatever the request: a long read (a
    backup) then holds one snapshot without making any writer wait."""
    token = _sqlite_begin.set("DEFERRED")
    try:
        yield
    finally:
        _sqlite_begin.reset(token)


def may_write() -> None:
    """Undo :func:`reads_only` for the transactions that follow: they begin IMMEDIATE again."""
    _sqlite_begin.set("IMMEDIATE")


@contextlib.contextmanager
def writing(session: Session) -> Iterator[Session]:
    """Run a write from a safe request in its own short transaction begun IMMEDIATE.

    Commits what the session holds first (a read-only transaction), so the write starts fresh.
    """
    session.commit()
    token = _sqlite_begin.set("IMMEDIATE")
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        _sqlite_begin.reset(token)


def insert_ignoring_conflict(session: Session, table: Any, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING; True when a row was inserted.

    A unique constraint plus this turns a double submit into exactly one row.
    """
    name = session.get_bind().dialect.name
    dialect_insert = postgresql.insert if name == "postgresql" else sqlite.insert
    # RETURNING rather than rowcount: psycopg reports -1 for this statement through SQLAlchemy,
    # which made every conflict look like an insert on PostgreSQL.
    stmt = (
        dialect_insert(table)
        .values(**values)
        .on_conflict_do_nothing()
        .returning(*table.primary_key.columns)
    )
    return session.execute(stmt).first() is not None
