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
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
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


def normalise_url(url: str) -> str:
    """Accept the URL spellings hosting providers hand out and use psycopg 3 for PostgreSQL."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 5})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(f"BEGIN {_sqlite_begin.get()}")


class Database:
    """Binds an engine and a per-app-context session to a Flask app (``init_app`` pattern).

    No connection is opened here: the engine connects on first use, so a server that forks its
    workers after creating the app gives each worker its own connections.
    """

    def init_app(self, app: Flask) -> None:
        engine = make_engine(app.config["DATABASE_URL"])
        app.extensions["countersign.db"] = sessionmaker(bind=engine, expire_on_commit=False)
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

    @staticmethod
    def _remove_session(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()


db = Database()


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
    stmt = dialect_insert(table).values(**values).on_conflict_do_nothing()
    result = session.execute(stmt)
    return bool(result.rowcount)
