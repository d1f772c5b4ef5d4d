"""Fixtures: a real database per test (SQLite always, PostgreSQL when TEST_DATABASE_URL is set),
built by running the migrations, plus helpers to make people and sign in as them."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import settings as hypothesis_settings
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from app import create_app
from core.config import ROOT
from core.db import db, normalise_url
from core.mail import MAIL_THREAD
from core.migrate import upgrade
from people.models import Person, PersonRole, PersonSchool
from people.service import record_person, set_password


def _per_worker(url: str | None) -> str | None:
    """Under pytest-xdist each worker gets its own PostgreSQL database beside the one named in
    TEST_DATABASE_URL (``countersign_test_gw0``, ...), because tests empty the database they use."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not url or not worker:
        return url
    from sqlalchemy.engine import make_url

    base = make_url(url)
    return base.set(database=f"{base.database}_{worker}").render_as_string(hide_password=False)


PG_URL = _per_worker(os.environ.get("TEST_DATABASE_URL"))


def _memoise_url_builders() -> None:
    """Werkzeug compiles two builder functions (``ast`` + ``compile``) for each of the app's URL
    rules whenever an app is made: nine tenths of ``create_app``'s time. The suite makes an app
    per test, so the test process compiles each rule's builders once and reuses them; the
    builders' code depends only on the rule's parsed shape and its defaults, which make the key."""
    from werkzeug.routing.rules import Rule

    compile_builder = Rule._compile_builder
    cache: dict[Any, Any] = {}

    def memoised(self: Rule, append_unknown: bool = True) -> Any:
        defaults = self.defaults or {}
        key = (
            tuple(self._trace), append_unknown,
            tuple(sorted((k, repr(v), type(self._converters.get(k))) for k, v in defaults.items())),
        )  # fmt: skip
        builder = cache.get(key)
        if builder is None:
            builder = cache[key] = compile_builder(self, append_unknown)
        return builder

    Rule._compile_builder = memoised  # type: ignore[method-assign]


_memoise_url_builders()

# Generated examples: every count a test asks for under ``make test``; a twentieth of it (at least
# five) under ``make check`` (HYPOTHESIS_PROFILE=check), the fast inner loop.
QUICK = os.environ.get("HYPOTHESIS_PROFILE") == "check"
hypothesis_settings.register_profile("check", max_examples=10)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def examples(count: int) -> int:
    """How many examples a property test generates in this run (see QUICK)."""
    return max(5, count // 20) if QUICK else count


# Markers, so a developer can pick (``pytest -m "not slow"``): ``make check`` runs neither slow,
# browser, crash nor integration tests. Most are given here from where a test lives and what it
# uses; a slow test elsewhere says so itself (``@pytest.mark.slow``).
INTEGRATION_FILES = {
    "test_xapi.py",  # a real Learning Record Store (ralph) in its own process
    "test_lti.py",  # a learning platform served on 127.0.0.1
    "test_mail.py",  # an SMTP server on 127.0.0.1, with TLS
    "test_deploy.py",  # systemd-analyze, and the deployment files as systemd reads them
    "test_backup.py",  # backups and restores through the command line, with real keys
}
# Fixtures that start another program or server: a test using one is an integration test.
INTEGRATION_FIXTURES = {"lms", "platform", "lrs", "smtp", "mailbox"}
SLOW_FILES = {"test_demo.py"}  # each builds a demo federation of people with their history


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path))
        if "browser" in path.parts:
            item.add_marker(pytest.mark.slow)
        if path.name == "test_crash.py":
            item.add_marker(pytest.mark.crash)
            item.add_marker(pytest.mark.slow)
        if path.name in INTEGRATION_FILES or INTEGRATION_FIXTURES & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.integration)
        if path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
        function = getattr(item, "function", None)
        if path.name == "test_forms_fuzz.py" or getattr(function, "is_hypothesis_test", False):
            item.add_marker(pytest.mark.fuzz)


BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
PASSWORD = "correct horse battery"
CHEAP_HASH_METHOD = "pbkdf2:sha256:1"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file migrated once; each test gets its own copy."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    app = create_app({"DATABASE_URL": f"sqlite:///{path}", "TESTING": True})
    with app.app_context():
        upgrade()
        db.engine.dispose()
    return path


@pytest.fixture(scope="session")
def sqlite_published_template(sqlite_template: Path) -> Path:
    """The migrated template with the real content published: a test that asks for ``published``
    gets a copy instead of publishing 13 modules and 102 questions itself."""
    path = sqlite_template.with_name("published.db")
    shutil.copy(sqlite_template, path)
    _publish_into(f"sqlite:///{path}", sqlite_template.with_name("published-instance"))
    return path


def _publish_into(url: str, instance: Path) -> None:
    """Publish the real content into ``url``. Publishing is audited: the chain's key, kept in
    ``instance``, goes with every copy (see the ``app`` fixture)."""
    from training.cli import publish_all

    app = create_app({"DATABASE_URL": url, "TESTING": True, "CONTENT_DIR": str(ROOT / "content"),
                      "SECRET_KEY": "test-secret-key-not-for-production"})  # fmt: skip
    app.instance_path = str(instance)
    with app.app_context():
        publish_all()
        db.engine.dispose()


PG_PUBLISHED_INSTANCE: dict[str, Path] = {}
SNAPSHOT = "published_snapshot"  # a schema beside ``public`` holding the published content


@pytest.fixture(scope="session")
def postgres_ready(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The PostgreSQL test database, emptied and migrated once per run, and a snapshot of it with
    the real content published (see ``_reset_postgres``)."""
    assert PG_URL
    if PG_URL != os.environ["TEST_DATABASE_URL"]:
        _create_database(PG_URL, os.environ["TEST_DATABASE_URL"])
    engine = create_engine(normalise_url(PG_URL))
    with engine.begin() as conn:
        for schema in conn.scalars(
            text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'world%' OR nspname = :s"),
            {"s": SNAPSHOT},
        ).all():
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    app = create_app({"DATABASE_URL": PG_URL, "TESTING": True})
    with app.app_context():
        upgrade()
        db.engine.dispose()
    instance = PG_PUBLISHED_INSTANCE[PG_URL] = tmp_path_factory.mktemp("pg-published")
    _publish_into(PG_URL, instance)
    _snapshot_postgres(PG_URL, SNAPSHOT)
    return PG_URL


def _snapshot_postgres(url: str, schema: str) -> None:
    """Copy every table with rows, and where each sequence stands, into ``schema``."""
    engine = create_engine(normalise_url(url), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {schema}"))
        for table in _pg_tables(conn):
            if conn.scalar(text(f'SELECT EXISTS (SELECT 1 FROM public."{table}")')):
                conn.execute(text(f'CREATE TABLE {schema}."{table}" AS TABLE public."{table}"'))
        conn.execute(
            text(f"CREATE TABLE {schema}.sequences AS SELECT schemaname, sequencename, "
                 "last_value FROM pg_sequences WHERE schemaname = 'public'")
        )  # fmt: skip
    engine.dispose()


def _pg_tables(conn: Any, schema: str = "public") -> list[str]:
    return list(
        conn.scalars(
            text("SELECT tablename FROM pg_tables WHERE schemaname = :s "
                 "AND tablename <> 'alembic_version' ORDER BY tablename"),
            {"s": schema},
        )
    )  # fmt: skip


def _create_database(url: str, reachable: str) -> None:
    """Create ``url``'s database (if missing) through a connection to ``reachable``."""
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    admin = create_engine(normalise_url(reachable), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


_RESET_ENGINES: dict[str, Any] = {}


def _reset_postgres(url: str, published: bool = False, snapshot: str = SNAPSHOT) -> None:
    """Empty the test database (and, with ``published``, restore the published content from the
    snapshot) in one transaction: DELETE of a few rows is far cheaper than
    TRUNCATE of every table, and the sequences start again where a fresh database's would. No
    connection is kept open afterwards: tests count the sessions the app holds."""
    engine = _RESET_ENGINES.get(url)
    if engine is None:
        engine = _RESET_ENGINES[url] = create_engine(normalise_url(url), poolclass=NullPool)
    with engine.begin() as conn:
        # The audit table refuses DELETE and TRUNCATE through triggers; emptying the test database
        # between tests is the one place that is wanted, so triggers (and the foreign keys'
        # checks, also triggers) are off for this transaction.
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        statements = [f'DELETE FROM public."{t}"' for t in _pg_tables(conn)]
        if published:
            statements += [
                f'INSERT INTO public."{t}" SELECT * FROM {snapshot}."{t}"'
                for t in _pg_tables(conn, snapshot)
                if t != "sequences"
            ]
            statements.append(
                "SELECT setval(quote_ident(s.schemaname) || '.' || quote_ident(s.sequencename), "
                "coalesce(k.last_value, 1), k.last_value IS NOT NULL) FROM pg_sequences s "
                f"LEFT JOIN {snapshot}.sequences k USING (schemaname, sequencename) "
                "WHERE s.schemaname = 'public'"
            )
        else:
            statements.append(
                "SELECT setval(quote_ident(schemaname) || '.' || quote_ident(sequencename), 1, false) "
                "FROM pg_sequences WHERE schemaname = 'public'"
            )
        for statement in statements:
            conn.exec_driver_sql(statement)


def _truncate_postgres(url: str) -> None:
    _reset_postgres(url)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    # A test that asks for the real content published, on a database of its own, starts from a
    # copy of the content published once per run (publishing is the same for every such test).
    published = _starts_published(request)
    if request.param == "sqlite":
        path = tmp_path / "countersign.db"
        template = request.getfixturevalue(
            "sqlite_published_template" if published else "sqlite_template"
        )
        shutil.copy(template, path)
        if published:
            request.node.stash[PUBLISHED] = template.with_name("published-instance")
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_ready")
    _reset_postgres(url, published)
    if published:
        request.node.stash[PUBLISHED] = PG_PUBLISHED_INSTANCE[url]
    return url


PUBLISHED = pytest.StashKey[Path]()  # the instance folder whose audit key the copy's chain uses


def _starts_published(request: pytest.FixtureRequest) -> bool:
    return (
        "published" in request.fixturenames
        and request.getfixturevalue("content_dir") == ROOT / "content"
        and "AUDIT_KEY" not in request.getfixturevalue("app_config")
    )


@pytest.fixture
def content_dir() -> Path:
    """The real content; tests that change content copy it with ``editable_content``."""
    return ROOT / "content"


@pytest.fixture
def editable_content(tmp_path: Path) -> Path:
    target = tmp_path / "content"
    shutil.copytree(ROOT / "content", target)
    return target


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {}


@pytest.fixture
def app(
    request: pytest.FixtureRequest, database_url: str, content_dir: Path, tmp_path: Path,
    app_config: dict,
) -> Iterator[Flask]:  # fmt: skip
    instance = tmp_path / "instance"
    instance.mkdir(exist_ok=True)
    published_from = request.node.stash.get(PUBLISHED, None)
    if published_from is not None and not (instance / "audit_key").exists():
        shutil.copy(published_from / "audit_key", instance / "audit_key")
    config = {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "CONTENT_DIR": str(content_dir),
        "SECRET_KEY": "test-secret-key-not-for-production",
        "SERVER_NAME": "countersign.test",
        "BASE_URL": "http://countersign.test",
        "WEBHOOKS_ALLOW_HTTP_LOOPBACK": True,  # test receivers listen on 127.0.0.1
        # The shared sign-in helpers use a password alone; tests of the second factor turn it on.
        "MFA_ROLES": "",
        # Cheap hashing: thousands of sign-ins must not each spend 50 ms in scrypt. One test
        # (tests/test_passwords.py) signs in at the production cost, which is what an app outside
        # a test run always uses.
        "PASSWORD_HASH_METHOD": CHEAP_HASH_METHOD,
        **app_config,
    }
    application = create_app(config)
    application.instance_path = str(instance)
    yield application
    join_mail_threads()
    with application.app_context():
        db.engine.dispose()


def join_mail_threads(timeout: float = 10) -> None:
    """Wait for mail sent in the background, and failures being recorded, to finish: a thread
    still writing after the test's database is gone would open a connection nobody closes."""
    for thread in threading.enumerate():
        if thread.name == MAIL_THREAD:
            thread.join(timeout)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


@pytest.fixture
def published(request: pytest.FixtureRequest, app: Flask) -> None:
    """The real content, published (usually already, from a copy: see ``database_url``)."""
    if PUBLISHED in request.node.stash:
        return
    from training.cli import publish_all

    with app.app_context():
        publish_all()


@pytest.fixture
def make_person(app: Flask) -> Callable[..., int]:
    """Factory: make_person("staff", name=..., schools=[...]) -> the new person's id."""
    counter = {"n": 0}

    def factory(*roles: str, name: str | None = None, email: str | None = None,
                schools: tuple[str, ...] = (), password: str | None = PASSWORD,
                active: bool = True) -> int:  # fmt: skip
        counter["n"] += 1
        n = counter["n"]
        with app.app_context():
            person = Person(
                name=name or f"Person {n}",
                email=(email or f"person{n}@ladysmith.example").lower(),
                active=active,
            )
            person.role_rows = [PersonRole(role=r) for r in (roles or ("staff",))]
            person.school_rows = [PersonSchool(school=s) for s in schools]
            if password:
                set_password(person, password)
            db.session.add(person)
            db.session.flush()
            # As the app's own ways of adding someone do: who they are is digested in the chain.
            record_person(db.session, "person.created", [person.id], None)
            db.session.commit()
            return person.id

    factory.counter = counter  # type: ignore[attr-defined]  # see cached_world
    return factory


CSRF_RE = re.compile(
    r'name="csrf_token" type="hidden" value="([^"]+)"|name="csrf_token" value="([^"]+)"'
)


def csrf_token(client: FlaskClient, url: str) -> str:
    """The CSRF token of the form on ``url``, as a browser would see it."""
    page = client.get(url).get_data(as_text=True)
    match = CSRF_RE.search(page)
    assert match, f"no CSRF token on {url}"
    return match.group(1) or match.group(2)


class Auth:
    def __init__(self, app: Flask, client: FlaskClient) -> None:
        self.app, self.client = app, client

    def sign_in(self, email: str, password: str = PASSWORD) -> Any:
        token = csrf_token(self.client, "/sign-in")
        return self.client.post(
            "/sign-in", data={"email": email, "password": password, "csrf_token": token}
        )

    def as_person(self, person_id: int) -> FlaskClient:
        with self.app.app_context():
            email = db.session.get(Person, person_id).email
        response = self.sign_in(email)
        assert response.status_code == 302, response.get_data(as_text=True)
        return self.client

    def post(self, url: str, data: dict | None = None, form_url: str | None = None) -> Any:
        token = csrf_token(self.client, form_url or url)
        return self.client.post(url, data={**(data or {}), "csrf_token": token})


@pytest.fixture
def auth(app: Flask, client: FlaskClient) -> Auth:
    return Auth(app, client)


def right_answers(attempt) -> dict[str, list[str]]:
    return {q["key"]: [o["id"] for o in q["options"] if o["correct"]] for q in attempt.drawn}


def wrong_answers(attempt) -> dict[str, list[str]]:
    return {
        q["key"]: [next(o["id"] for o in q["options"] if not o["correct"])] for q in attempt.drawn
    }


def complete_modules(session, person, policy, only: set[str] | None = None) -> None:
    """Read every module the person must do (or those in ``only``) and pass its quiz."""
    from quizzes.attempts import start_attempt, submit_attempt
    from quizzes.models import QuizBank
    from training.progress import record_read
    from training.publishing import current_version
    from training.status import training_status

    version = current_version(session, policy)
    links = {link.module_version_id: link for link in version.module_links}
    for module in training_status(session, person, policy).modules:
        if module.complete or (only is not None and module.slug not in only):
            continue
        link = links[module.module_version_id]
        record_read(session, person, policy, link.module_version)
        if link.bank_id is not None:
            bank = session.get(QuizBank, link.bank_id)
            attempt = start_attempt(session, person, link.module_version_id, bank)
            submit_attempt(session, person, attempt.public_id, right_answers(attempt))
    session.flush()


def train_people(app, *person_ids: int) -> None:
    """Make people trained on the published policy: every module read and passed, then signed."""
    from sqlalchemy import select

    from training.models import Policy
    from training.progress import AckRequest, acknowledge

    with app.app_context():
        policy = db.session.scalar(select(Policy))
        for pid in person_ids:
            person = db.session.get(Person, pid)
            complete_modules(db.session, person, policy)
            acknowledge(db.session, person, policy, AckRequest(person.name, "d", "127.0.0.1", "ua"))
        db.session.commit()


@contextmanager
def evidence_guard_off(session, table: str) -> Iterator[None]:
    """Update an evidence table as only the database's owner could (migration 0011's trigger
    refuses it to everyone else), to set up a state the app would take months to reach, such as
    training signed two years ago. The guard is back before the transaction ends."""
    trigger = f"{table}_no_update"
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}"))
        yield
        session.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}"))
    else:
        ddl = session.scalar(
            text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = :name"),
            {"name": trigger},
        )
        session.execute(text(f"DROP TRIGGER {trigger}"))
        yield
        session.execute(text(ddl))


def run_worker(app: Flask, now: Any = None) -> Any:
    """One pass of the worker (``flask worker --once``): what the outbox holds is delivered."""
    from core.outbox import run_once

    with app.app_context():
        return run_once(now=now)


_WORLDS: dict[tuple[str, str], tuple[Any, Path, int]] = {}


def cached_world(
    request: pytest.FixtureRequest, app: Flask, make_person: Callable[..., int],
    build: Callable[[], Any],
) -> Any:  # fmt: skip
    """A fixture's world (people, evidence, accounts) built once per run and database, and copied
    for every later test that asks for it: the same rows, ids, audit chain and key, as if built
    again. ``build()`` makes it with ``app`` and ``make_person`` and returns what the tests get
    (ids). Only for worlds built on the real content, published; a module's own settings
    (``app_config``) make a world of their own."""
    usual = (
        PUBLISHED in request.node.stash
        and request.getfixturevalue("content_dir") == ROOT / "content"
    )
    if not usual:
        return build()
    url = app.config["DATABASE_URL"]
    postgres = url.startswith("postgresql")
    name = f"{request.module.__name__.rsplit('.', 1)[-1]}_{request.fixturename}".lower()
    config = request.getfixturevalue("app_config")
    if config:
        name += "_" + hashlib.sha256(repr(sorted(config.items())).encode()).hexdigest()[:10]
    key = ("postgresql" if postgres else "sqlite", name)
    instance = Path(app.instance_path)
    with app.app_context():
        db.session.close()
        db.engine.dispose()
    cached = _WORLDS.get(key)
    if cached is None:
        made = build()
        folder = Path(request.getfixturevalue("tmp_path_factory").mktemp(f"world-{name}"))
        with app.app_context():
            db.session.close()
            db.engine.dispose()
        if postgres:
            _snapshot_postgres(url, f"world_{name}")
        else:
            _sqlite_copy(url.removeprefix("sqlite:///"), folder / "world.db")
        shutil.copytree(instance, folder / "instance")
        _WORLDS[key] = (made, folder, make_person.counter["n"])  # type: ignore[attr-defined]
        return made
    made, folder, people_made = cached
    made = copy.deepcopy(made)  # a test may change what it was given
    if postgres:
        _reset_postgres(url, published=True, snapshot=f"world_{name}")
    else:
        path = Path(url.removeprefix("sqlite:///"))
        for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)
        shutil.copy(folder / "world.db", path)
    shutil.copytree(folder / "instance", instance, dirs_exist_ok=True)
    app.extensions.pop("countersign.audit_key", None)
    make_person.counter["n"] = people_made  # type: ignore[attr-defined]
    return made


def _sqlite_copy(source: str, target: Path) -> None:
    """A consistent copy of an SQLite database in WAL mode (its log folded in)."""
    import sqlite3

    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
