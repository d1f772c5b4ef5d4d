"""The database layer: schema from migrations, SQLite settings, transactions that survive concurrency."""

from __future__ import annotations

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text

from core.db import Base, Sql, db, insert_ignoring_conflict
from people.models import Person, PersonSchool, SignInAttempt


def test_migrations_build_exactly_the_schema_the_models_describe(app):
    with app.app_context(), db.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert differences == [], "a model changed without a migration"


def test_sqlite_runs_with_wal_foreign_keys_and_busy_timeout(app, database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite settings")
    with app.app_context():
        conn = db.session.connection()
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000


def test_foreign_keys_are_enforced(app):
    from sqlalchemy.exc import IntegrityError

    with app.app_context():
        with pytest.raises(IntegrityError):
            db.session.execute(
                text("INSERT INTO person_role (person_id, role) VALUES (999, 'staff')")
            )
            db.session.flush()
        db.session.rollback()


def test_concurrent_read_then_write_transactions_all_succeed(app):
    """Each worker reads a count then writes; on SQLite this needs BEGIN IMMEDIATE."""
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for _ in range(15):
                with app.app_context():
                    s = db.session
                    seen = s.scalar(select(func.count()).select_from(SignInAttempt))
                    s.add(
                        SignInAttempt(
                            email=f"w{n}-{seen}@x.example", ip="127.0.0.1", succeeded=False
                        )
                    )
                    s.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(SignInAttempt)) == 90


def test_safe_requests_begin_deferred_and_writes_begin_immediate(
    app, database_url, auth, make_person
):
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite transaction modes")
    from sqlalchemy import event

    begins: list[str] = []
    with app.app_context():
        engine = db.engine

    @event.listens_for(engine, "before_cursor_execute")
    def spy(conn, cursor, statement, *args):
        if statement.startswith("BEGIN"):
            begins.append(statement)

    auth.as_person(make_person("staff"))
    begins.clear()
    auth.client.get("/history")
    assert begins and set(begins) == {"BEGIN DEFERRED"}
    begins.clear()
    auth.client.post("/sign-in", data={})
    assert "BEGIN IMMEDIATE" in begins
    event.remove(engine, "before_cursor_execute", spy)


def test_creating_the_app_opens_no_database_connection(database_url, tmp_path):
    """A server forks workers after importing the app: no connection may exist before that."""
    from app import create_app

    fresh = create_app({"DATABASE_URL": database_url, "SECRET_KEY": "x", "TESTING": True})
    with fresh.app_context():
        pool = db.engine.pool
        assert pool.checkedin() == 0 and pool.checkedout() == 0


@pytest.mark.usefixtures("published")
def test_simultaneous_acknowledgements_record_exactly_one(app, make_person):
    from people.models import Person
    from tests.conftest import complete_modules
    from training.models import Acknowledgement, Policy
    from training.progress import AckRequest, AlreadySigned, acknowledge

    pid = make_person("volunteer", name="Val Vol")
    with app.app_context():
        person = db.session.get(Person, pid)
        policy = db.session.scalar(select(Policy))
        complete_modules(db.session, person, policy)
        db.session.commit()

    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def submit() -> None:
        with app.app_context():
            s = db.session
            barrier.wait()
            try:
                acknowledge(s, s.get(Person, pid), s.scalar(select(Policy)),
                            AckRequest("Val Vol", "I agree", "127.0.0.1", "test"))  # fmt: skip
                s.commit()
                outcomes.append("signed")
            except AlreadySigned:
                s.rollback()
                outcomes.append("already")

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["already"] * 3 + ["signed"]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Acknowledgement)) == 1


def test_hand_written_reads_adapt_to_each_backend():
    sql = Sql("SELECT id FROM person WHERE id {in :ids integer} AND created_at > :since")
    assert sql.sqlite == (
        "SELECT id FROM person WHERE id IN (SELECT value FROM json_each(:ids)) "
        "AND created_at > :since"
    )
    assert sql.postgresql == (
        "SELECT id FROM person WHERE id = ANY(CAST(%(ids)s AS integer[])) "
        "AND created_at > %(since)s"
    )


def test_the_reader_sees_each_commit_and_compares_times_as_stored(app, make_person):
    from datetime import timedelta

    from core.db import utcnow

    first = make_person("staff")
    query = Sql("SELECT id FROM person WHERE id {in :ids integer} AND created_at > :since")
    with app.app_context():
        before = utcnow() - timedelta(minutes=1)
        assert db.reader.all(query, ids=[first, 999], since=before) == [(first,)]
        assert db.reader.all(query, ids=[first], since=utcnow() + timedelta(minutes=1)) == []
        assert db.reader.all(query, ids=[], since=before) == []
    second = make_person("staff")  # committed by another connection, after the reader's reads
    with app.app_context():
        assert sorted(db.reader.all(query, ids=[first, second], since=before)) == [
            (first,),
            (second,),
        ]


def test_the_reader_opens_a_fresh_connection_after_an_error(app, make_person):
    pid = make_person("staff")
    query = Sql("SELECT name FROM person WHERE id = :id")
    with app.app_context():
        broken = db.reader
        broken._connection.close()  # as when the database server restarts
        with pytest.raises(Exception):  # noqa: B017 (whatever the driver raises)
            broken.all(query, id=pid)
        assert db.reader is not broken
        assert db.reader.all(query, id=pid) == [("Person 1",)]


def test_insert_ignoring_conflict_says_whether_it_inserted(app):
    """Callers write an audit row or a notification only when the row is new: on PostgreSQL the
    driver's rowcount is -1 here, which once made every duplicate look new."""
    with app.app_context():
        table = PersonSchool.__table__
        person_id = db.session.scalar(select(Person.id).limit(1))
        if person_id is None:
            person = Person(email="dup@countersign.test", name="Dup", active=True)
            db.session.add(person)
            db.session.flush()
            person_id = person.id
        values = {"person_id": person_id, "school": "infant"}
        assert insert_ignoring_conflict(db.session, table, values) is True
        assert insert_ignoring_conflict(db.session, table, values) is False
        db.session.rollback()
