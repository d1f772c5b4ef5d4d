"""Who a record names, and who may run the federation's accounts, are evidence too: people (email,
name, state, roles, schools), the social media accounts on the register and their runner rows are
digested in the audit chain, so that a change made behind the application's back (two people's
emails swapped, a role added, a runner added or back-dated) is named by verify. Runner rows are
also append-only under database triggers, and an account row changes only by closing or erasure."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from approvals.models import AccountRunner, SocialAccount
from approvals.rules import ApplicationData, close, decide, record_account, submit_application
from approvals.rules import transfer as hand_over
from audit.log import verify
from core.db import db, utcnow
from core.web import federation
from people.models import Person
from people.privacy import erase_person
from people.service import (
    PersonData,
    create_person,
    deactivate,
    import_people,
    reactivate,
    update_person,
)
from tests.conftest import cached_world, train_people

pytestmark = pytest.mark.usefixtures("published")

REGISTER = ("social_account", "account_runner")


@pytest.fixture
def world(request, app, make_person):
    return cached_world(request, app, make_person, lambda: _build_world(app, make_person))


def _build_world(app, make_person):
    """Two accounts on the register: one handed over (a runner taken off, another added), one
    closed; and the people who applied, decided and recorded them."""
    ids = {
        "ann": make_person("staff", name="Ann Runner", email="ann@ladysmith.example"),
        "bob": make_person("staff", name="Bob Runner", email="bob@ladysmith.example"),
        "cat": make_person("staff", name="Cat Runner"),
        "vic": make_person("volunteer", name="Vic Volunteer", email="vic@ladysmith.example"),
        "sue": make_person("slt", "staff", name="Sue Senior"),
        "sam": make_person("slt", "staff", name="Sam Senior"),
        "admin": make_person("admin", name="Alex Admin"),
    }
    train_people(app, ids["ann"], ids["bob"], ids["cat"])
    with app.app_context():
        s = db.session
        sue, sam, admin = (s.get(Person, ids[k]) for k in ("sue", "sam", "admin"))
        accounts = []
        for key in ("one", "two"):
            application = submit_application(
                s, sue, ApplicationData(f"Account {key}", "Facebook", "Aim", "Parents",
                                        "Newsletter", "private", (ids["ann"], ids["bob"])),
            )  # fmt: skip
            decide(s, application, sam, True, "Fine.")
            accounts.append(record_account(s, application, admin, "Facebook", f"@{key}"))
        hand_over(s, accounts[0], admin, (ids["ann"], ids["cat"]))
        close(s, accounts[1], admin, "No longer needed.")
        s.commit()
        ids["account"], ids["closed"] = accounts[0].id, accounts[1].id
        rows = {
            (r.account_id, r.person_id, r.removed_at is None): r.id
            for r in s.scalars(select(AccountRunner))
        }
        ids["runner"] = rows[ids["account"], ids["ann"], True]
        ids["removed_runner"] = rows[ids["account"], ids["bob"], False]
    return ids


def _problems(app) -> list[str]:
    with app.app_context():
        return verify(db.session).problems


def _sql(app, *statements: str, **params) -> None:
    with app.app_context():
        for statement in statements:
            db.session.execute(text(statement), params)
        db.session.commit()


def _tamper(app, *statements: str, **params) -> None:
    """Someone with the database owner's rights: the register's guards off, rows edited."""
    with app.app_context():
        s = db.session
        postgresql = s.get_bind().dialect.name == "postgresql"
        for table in REGISTER:
            if postgresql:
                s.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
            else:
                s.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_update"))
                s.execute(text(f"DROP TRIGGER {table}_no_delete"))
        for statement in statements:
            s.execute(text(statement), params)
        if postgresql:
            for table in REGISTER:
                s.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
        s.commit()


def test_the_register_and_people_are_recorded_and_verify_passes(app, world):
    with app.app_context():
        s = db.session
        result = verify(s)
        counts = {
            t: s.scalar(text(f"SELECT count(*) FROM {t}"))
            for t in ("person", "social_account", "account_runner")
        }
    assert result.ok, result.problems
    # Two accounts, two runners each when recorded, one taken off and one added on hand-over.
    assert counts == {"person": 7, "social_account": 2, "account_runner": 5}


def test_swapping_two_peoples_emails_and_names_is_reported(app, world, runner):
    """The review's case: the application's own role moves one person's training to another by
    swapping their emails and names; "is vic@ trained?" would then answer yes."""
    _sql(
        app,
        "UPDATE person SET email = 'tmp@x.example' WHERE id = :ann",
        "UPDATE person SET email = 'ann@ladysmith.example', name = 'Ann Runner' WHERE id = :vic",
        "UPDATE person SET email = 'vic@ladysmith.example', name = 'Vic Volunteer' WHERE id = :ann",
        ann=world["ann"],
        vic=world["vic"],
    )
    problems = _problems(app)
    for who in ("ann", "vic"):
        assert any(p.startswith(f"person {world[who]} edited") for p in problems), problems
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code != 0 and f"person {world['vic']} edited" in result.output


PERSON_TAMPERING = {
    "role added": "INSERT INTO person_role (person_id, role) VALUES (:vic, 'staff')",
    "role removed": "DELETE FROM person_role WHERE person_id = :ann",
    "role changed": "UPDATE person_role SET role = 'admin' WHERE person_id = :vic",
    "school added": "INSERT INTO person_school (person_id, school) VALUES (:vic, 'infant')",
    "name changed": "UPDATE person SET name = 'Someone Else' WHERE id = :vic",
    "reactivated": "UPDATE person SET active = true, deactivated_at = NULL WHERE id = :vic",
    "marked erased": "UPDATE person SET erased_at = '2020-01-01 00:00:00' WHERE id = :vic",
}


@pytest.mark.parametrize("case", list(PERSON_TAMPERING))
def test_a_change_to_who_someone_is_is_reported(app, world, case):
    statement = PERSON_TAMPERING[case]
    who = "ann" if ":ann" in statement else "vic"
    if case == "reactivated":
        with app.app_context():
            deactivate(db.session.get(Person, world["vic"]), world["admin"])
            db.session.commit()
        assert _problems(app) == []
    _sql(app, statement, ann=world["ann"], vic=world["vic"])
    problems = _problems(app)
    assert [p.split(":")[0] for p in problems] == [f"person {world[who]} edited"], problems


def test_a_person_inserted_or_deleted_behind_the_apps_back_is_reported(app, world, make_person):
    _sql(
        app,
        "INSERT INTO person (email, name, active, auth_version, created_at, status_rev) "
        "VALUES ('forged@ladysmith.example', 'Forged', true, 1, '2026-01-01 00:00:00', 0)",
    )
    with app.app_context():
        forged = db.session.scalar(select(func.max(Person.id)))
    assert _problems(app) == [f"person {forged} inserted without an audit row"]
    _sql(app, "DELETE FROM person WHERE id = :p", p=forged)
    assert _problems(app) == []
    gone = make_person("parent")
    _sql(app, "DELETE FROM person_role WHERE person_id = :p", "DELETE FROM person WHERE id = :p",
         p=gone)  # fmt: skip
    assert [p.split(":")[0] for p in _problems(app)] == [f"person {gone} deleted"]


REFUSED = [
    # The review's case: a runner back-dated and "added by" someone else.
    "UPDATE account_runner SET added_by_id = :sue, added_at = '2025-01-01 00:00:00' "
    "WHERE id = :runner",
    "UPDATE account_runner SET person_id = :vic WHERE id = :runner",
    "UPDATE account_runner SET removed_at = NULL WHERE id = :removed_runner",
    "UPDATE account_runner SET removed_at = '2020-01-01 00:00:00' WHERE id = :removed_runner",
    "UPDATE account_runner SET removed_at = '2030-01-01 00:00:00', added_by_id = :sue "
    "WHERE id = :runner",
    "DELETE FROM account_runner WHERE id = :removed_runner",
    "DELETE FROM social_account WHERE id = :closed",
]


@pytest.mark.parametrize("statement", REFUSED)
def test_the_database_refuses_to_rewrite_or_remove_runner_rows(app, world, statement):
    params = {k: world[k] for k in ("sue", "vic", "runner", "removed_runner", "closed")}
    used = {k: v for k, v in params.items() if f":{k}" in statement}
    with pytest.raises(DBAPIError, match="is evidence"):
        _sql(app, statement, **used)
    assert _problems(app) == []


def test_taking_a_runner_off_is_the_one_change_allowed_and_verify_still_sees_it(app, world):
    """The application takes runners off by setting ``removed_at`` once; done directly in the
    database, the trigger lets it through but the digest does not match."""
    _sql(app, "UPDATE account_runner SET removed_at = :now WHERE id = :r", now=utcnow(),
         r=world["runner"])  # fmt: skip
    assert [p.split(":")[0] for p in _problems(app)] == [f"account runner {world['runner']} edited"]


# --- V7: an account row changes only by closing or erasure; no REPLACE over a register row -------

RUNNER_COLUMNS = "id, account_id, person_id, added_at, added_by_id, removed_at"
ACCOUNT_COLUMNS = (
    "id, application_id, platform, handle, recorded_by_id, recorded_at, closed_at, closed_by_id, "
    "close_reason"
)
# The review's cases: a runner row re-inserted as someone else, back-dated; an account's handle
# rewritten. Each names the id of a row already there.
FORGED_RUNNER = (
    "SELECT id, account_id, :vic, '2024-01-01 00:00:00.000000', added_by_id, removed_at "
    "FROM account_runner WHERE id = :runner"
)
FORGED_ACCOUNT = (
    "SELECT id, application_id, platform, '@replaced', recorded_by_id, recorded_at, closed_at, "
    "closed_by_id, close_reason FROM social_account WHERE id = :account"
)
REPLACING = {
    "runner upserted": (
        f"INSERT INTO account_runner ({RUNNER_COLUMNS}) {FORGED_RUNNER} "
        "ON CONFLICT (id) DO UPDATE SET person_id = excluded.person_id, "
        "added_at = excluded.added_at"
    ),
    "account upserted": (
        f"INSERT INTO social_account ({ACCOUNT_COLUMNS}) {FORGED_ACCOUNT} "
        "ON CONFLICT (id) DO UPDATE SET handle = excluded.handle"
    ),
    "runner replaced": f"INSERT OR REPLACE INTO account_runner ({RUNNER_COLUMNS}) {FORGED_RUNNER}",
    "runner replace into": f"REPLACE INTO account_runner ({RUNNER_COLUMNS}) {FORGED_RUNNER}",
    "account replaced": f"INSERT OR REPLACE INTO social_account ({ACCOUNT_COLUMNS}) {FORGED_ACCOUNT}",
    "account replace into": f"REPLACE INTO social_account ({ACCOUNT_COLUMNS}) {FORGED_ACCOUNT}",
}


@pytest.mark.parametrize("case", list(REPLACING))
def test_replace_or_upsert_cannot_rewrite_a_register_row(app, world, database_url, case):
    statement = REPLACING[case]
    if "REPLACE" in statement and database_url.startswith("postgresql"):
        pytest.skip("INSERT OR REPLACE and REPLACE INTO are SQLite's")
    params = {k: world[k] for k in ("vic", "runner", "account") if f":{k}" in statement}
    if database_url.startswith("postgresql"):
        with pytest.raises(DBAPIError, match="is evidence"):
            _sql(app, statement, **params)
    else:
        # The review's way in: the sqlite3 command line, where recursive triggers are off (the
        # app turns them on), so a REPLACE deletes the old row without firing its no-delete
        # trigger.
        with closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as plain:
            with pytest.raises(sqlite3.DatabaseError, match="is evidence"):
                plain.execute(statement, params)
    with app.app_context():
        s = db.session
        assert s.get(AccountRunner, world["runner"]).person_id == world["ann"]
        assert s.get(SocialAccount, world["account"]).handle == "@one"
    assert _problems(app) == []


# Each is one transaction; an erasure marker opens the account row only to erasure's redaction.
MARKER = "INSERT INTO evidence_erasure (person_id) VALUES (:vic)"
ACCOUNT_REFUSED = {
    # The review's case.
    "handle rewritten": ("UPDATE social_account SET handle = '@evil' WHERE id = :account",),
    "recorder changed": ("UPDATE social_account SET recorded_by_id = :sue WHERE id = :account",),
    "reopened": (
        "UPDATE social_account SET closed_at = NULL, closed_by_id = NULL, close_reason = NULL "
        "WHERE id = :closed",
    ),
    "closed again": (
        "UPDATE social_account SET closed_at = '2030-01-01 00:00:00', closed_by_id = :sue, "
        "close_reason = 'Other.' WHERE id = :closed",
    ),
    "reason rewritten": ("UPDATE social_account SET close_reason = 'Other.' WHERE id = :closed",),
    "closed in part": (
        "UPDATE social_account SET closed_at = '2030-01-01 00:00:00' WHERE id = :account",
    ),
    "closed and handle changed": (
        "UPDATE social_account SET closed_at = '2030-01-01 00:00:00', closed_by_id = :sue, "
        "close_reason = 'Done.', handle = '@evil' WHERE id = :account",
    ),
    "platform changed under a marker": (
        MARKER,
        "UPDATE social_account SET platform = 'X' WHERE id = :account",
    ),
    "closed under a marker": (
        MARKER,
        "UPDATE social_account SET closed_at = '2030-01-01 00:00:00', closed_by_id = :sue, "
        "close_reason = 'Done.', handle = '@evil' WHERE id = :account",
    ),
    "reason emptied under a marker": (
        MARKER,
        "UPDATE social_account SET close_reason = NULL WHERE id = :closed",
    ),
    "reason given to an open account under a marker": (
        MARKER,
        "UPDATE social_account SET close_reason = 'Closed.' WHERE id = :account",
    ),
}


@pytest.mark.parametrize("case", list(ACCOUNT_REFUSED))
def test_the_database_refuses_every_change_to_an_account_but_closing_and_erasure(app, world, case):
    statements = ACCOUNT_REFUSED[case]
    params = {k: world[k] for k in ("sue", "vic", "account", "closed")}
    used = {k: v for k, v in params.items() if any(f":{k}" in st for st in statements)}
    with pytest.raises(DBAPIError, match="social_account is evidence"):
        _sql(app, *statements, **used)
    assert _problems(app) == []


def test_closing_once_and_erasures_redaction_are_the_changes_allowed_and_verify_sees_them(
    app, world
):
    """The trigger lets the application's two changes through; made directly in the database
    (closing, or a handle changed while an erasure marker exists), the digest does not match."""
    account = world["account"]
    _sql(
        app,
        "UPDATE social_account SET closed_at = :now, closed_by_id = :sue, close_reason = 'Done.' "
        "WHERE id = :account",
        now=utcnow(), sue=world["sue"], account=account,
    )  # fmt: skip
    assert [p.split(":")[0] for p in _problems(app)] == [f"social account {account} edited"]
    closed = world["closed"]
    _sql(
        app,
        MARKER,
        "UPDATE social_account SET handle = '@redacted', close_reason = 'Redacted.' "
        "WHERE id = :closed",
        "DELETE FROM evidence_erasure WHERE person_id = :vic",
        vic=world["vic"], closed=closed,
    )  # fmt: skip
    assert [p.split(":")[0] for p in _problems(app)] == [
        f"social account {account} edited",
        f"social account {closed} edited",
    ]
    with app.app_context():
        assert db.session.get(SocialAccount, closed).handle == "@redacted"


def test_downgrading_restores_the_register_guards_as_they_were(app, world):
    """Downgrading to 0019 removes exactly this revision's triggers (the account row is open to
    UPDATE again, as it was); upgrading puts them back."""
    from alembic import command

    from core.migrate import alembic_config, upgrade

    added = {"social_account_no_update"}
    with app.app_context():
        postgresql = db.session.get_bind().dialect.name == "postgresql"
    if not postgresql:
        added |= {"social_account_no_replace", "account_runner_no_replace"}

    def triggers() -> set[str]:
        query = (
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid IN "
            "('social_account'::regclass, 'account_runner'::regclass)"
            if postgresql
            else "SELECT name FROM sqlite_master WHERE type = 'trigger' "
            "AND tbl_name IN ('social_account', 'account_runner')"
        )
        with app.app_context():
            return set(db.session.scalars(text(query)))

    at_head = triggers()
    assert added <= at_head
    cfg = alembic_config()
    try:
        with app.app_context(), db.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, "0019")
        assert triggers() == at_head - added
        with app.app_context():
            functions = db.session.scalar(
                text("SELECT count(*) FROM pg_proc WHERE proname = 'social_account_guard'")
                if postgresql
                else text("SELECT 0")
            )
        assert functions == 0
        _sql(app, "UPDATE social_account SET handle = '@open' WHERE id = :a", a=world["account"])
    finally:
        with app.app_context():
            upgrade()
    assert triggers() == at_head
    with pytest.raises(DBAPIError, match="is evidence"):
        _sql(app, "UPDATE social_account SET handle = '@again' WHERE id = :a", a=world["account"])


def test_postgresql_refuses_truncating_the_register(app, world, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("TRUNCATE is PostgreSQL's")
    for table in REGISTER:
        with pytest.raises(DBAPIError, match="is evidence"):
            _sql(app, f"TRUNCATE {table} CASCADE")
    assert _problems(app) == []


# (statements, what verify must say); run with the register's guards off.
REGISTER_TAMPERING = {
    "runner back-dated": (
        "UPDATE account_runner SET added_by_id = :sue, added_at = '2025-01-01 00:00:00' "
        "WHERE id = :runner",
        "account runner {runner} edited",
    ),
    "runner put back": (
        "UPDATE account_runner SET removed_at = NULL WHERE id = :removed_runner",
        "account runner {removed_runner} edited",
    ),
    "runner deleted": (
        "DELETE FROM account_runner WHERE id = :removed_runner",
        "account runner {removed_runner} deleted",
    ),
    "runner inserted": (
        # The review's case: an untrained volunteer made a runner, "added by" someone else.
        "INSERT INTO account_runner (account_id, person_id, added_at, added_by_id) "
        "VALUES (:account, :vic, '2026-11-20 12:26:01', :sue)",
        "account runner {new} inserted without an audit row",
    ),
    "account edited": (
        "UPDATE social_account SET handle = '@elsewhere' WHERE id = :account",
        "social account {account} edited",
    ),
    "account reopened": (
        "UPDATE social_account SET closed_at = NULL, closed_by_id = NULL, close_reason = NULL "
        "WHERE id = :closed",
        "social account {closed} edited",
    ),
    "account deleted": (
        "DELETE FROM account_runner WHERE account_id = :closed; "
        "DELETE FROM social_account WHERE id = :closed",
        "social account {closed} deleted",
    ),
}


@pytest.mark.parametrize("case", list(REGISTER_TAMPERING))
def test_verify_names_every_register_row_edited_deleted_or_inserted(app, world, runner, case):
    statements, expected = REGISTER_TAMPERING[case]
    params = {k: world[k] for k in ("sue", "vic", "runner", "removed_runner", "account", "closed")}
    statements = statements.split("; ")
    used = {k: v for k, v in params.items() if any(f":{k}" in st for st in statements)}
    _tamper(app, *statements, **used)
    with app.app_context():
        new = db.session.scalar(select(func.max(AccountRunner.id)))
    wanted = expected.format(**params, new=new)
    problems = _problems(app)
    assert any(p.startswith(wanted) for p in problems), (wanted, problems)
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code != 0 and wanted in result.output


def test_the_apps_own_changes_to_people_and_the_register_keep_verify_intact(app, world):
    """Every way the application writes who someone is, or the register: each records the new
    digest in the same transaction, so verify stays intact throughout."""
    from lti.accounts import person_for_launch
    from lti.launch import LaunchInfo
    from lti.models import LtiPlatform

    with app.app_context():
        s = db.session
        admin = world["admin"]
        fed = federation()
        school = fed.schools[0].code
        made = create_person(s, PersonData("New Person", "new@ladysmith.example", ("staff",)),
                             fed, admin)  # fmt: skip
        s.commit()
        vic = s.get(Person, world["vic"])
        for data in (
            PersonData("Victoria Volunteer", vic.email, ("volunteer",)),  # renamed
            PersonData(vic.name, "victoria@ladysmith.example", ("volunteer",)),  # new email
            PersonData(vic.name, "victoria@ladysmith.example", ("volunteer", "parent")),
            PersonData(vic.name, "victoria@ladysmith.example", ("parent",), (school,)),
        ):
            update_person(s, vic, data, fed, admin)
            s.commit()
            assert _problems(app) == [], data
        import_people(
            s,
            "name,email,roles,schools\n"
            "Imported One,imported1@ladysmith.example,staff,\n"
            f"New Person Renamed,new@ladysmith.example,staff;volunteer,{school}\n",
            fed,
            admin,
        )
        s.commit()
        assert _problems(app) == []
        deactivate(s.get(Person, made.id), admin)
        s.commit()
        reactivate(s.get(Person, made.id), admin)
        s.commit()
        assert _problems(app) == []
        # Someone new from a learning platform's launch.
        platform = LtiPlatform(
            name="LMS", issuer="https://lms.example", client_id="c",
            auth_login_url="https://lms.example/auth", auth_token_url="https://lms.example/token",
            key_set={"keys": []}, role_map={"Learner": "volunteer"},
        )  # fmt: skip
        s.add(platform)
        s.flush()
        info = LaunchInfo("lms-user-1", "lms.user@ladysmith.example", "Lee Learner",
                          ("Learner",), "link-1", None, {}, None)  # fmt: skip
        arrival = person_for_launch(s, platform, info, fed)
        s.commit()
        assert arrival.person.email == "lms.user@ladysmith.example"
        assert _problems(app) == []
        # The register: an account recorded, handed over and closed through the rules; its
        # handle and closing reason name Bob, so erasing him later changes the account too.
        sue, sam, admin_person = (s.get(Person, world[k]) for k in ("sue", "sam", "admin"))
        application = submit_application(
            s, sue, ApplicationData("Account three", "Instagram", "Aim", "Parents", "Posters",
                                    "open", (world["ann"], world["bob"])),
        )  # fmt: skip
        decide(s, application, sam, True, "Fine.")
        account = record_account(
            s, application, admin_person, "Instagram", "instagram.com/bob@ladysmith.example"
        )
        s.commit()
        hand_over(s, account, admin_person, (world["cat"], world["ann"]))
        s.commit()
        close(s, account, admin_person, "Bob Runner asked for it to close.")
        s.commit()
        assert _problems(app) == []
        # Bob leaves, and once the retention period is over his personal data is erased.
        bob = s.get(Person, world["bob"])
        deactivate(bob, admin, at=utcnow() - timedelta(days=10))
        s.commit()
        erase_person(s, bob.id, actor_id=admin, retention_days=1)
        s.commit()
        closed = s.get(SocialAccount, account.id)
        assert "bob" not in (closed.handle + closed.close_reason).lower()
        result = verify(s)
    assert result.ok, result.problems


def test_the_demo_people_of_a_new_installation_are_recorded(app):
    from people.demo import seed_demo

    with app.app_context():
        assert seed_demo(lambda _text: None)
        assert db.session.scalar(select(func.count()).select_from(Person)) == 6
        result = verify(db.session)
    assert result.ok, result.problems
    assert result.evidence_rows == 6


def test_postgresql_app_role_cannot_remove_register_rows(app, world, database_url):
    """Where the app connects as its own role, the migration revokes DELETE and TRUNCATE."""
    if not database_url.startswith("postgresql"):
        pytest.skip("roles and grants are PostgreSQL's")
    import importlib.util

    from core.config import ROOT

    spec = importlib.util.spec_from_file_location(
        "register_migration", ROOT / "migrations" / "versions" / "0018_identity_register.py"
    )
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    role = "countersign_register_app_under_test"
    with app.app_context():
        conn = db.session.connection()
        conn.execute(text(f"CREATE ROLE {role}"))
        conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        conn.execute(
            text(
                f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON {', '.join(REGISTER)} TO {role}"
            )
        )
        try:
            migration.revoke_changes(conn, role)
            conn.execute(text(f"SET LOCAL ROLE {role}"))
            for table in REGISTER:
                for statement in (f"DELETE FROM {table}", f"TRUNCATE {table}"):
                    conn.execute(text("SAVEPOINT attempt"))
                    with pytest.raises(DBAPIError, match="permission denied"):
                        conn.execute(text(statement))
                    conn.execute(text("ROLLBACK TO SAVEPOINT attempt"))
        finally:
            db.session.rollback()


@pytest.mark.parametrize("later", ["rename", "deactivate", "roles", "import"])
def test_a_change_made_behind_the_apps_back_stays_reported_after_the_apps_own_change(
    app, world, later
):
    """Someone gives Vic an SLT role in the database; later an administrator renames Vic (or
    takes any other recorded action on Vic's record). The application's change is recorded with
    the digest the row had just before it, which is not the one the chain held: verify goes on
    naming the earlier change, instead of the new digest covering it."""
    vic = world["vic"]
    _sql(app, "INSERT INTO person_role (person_id, role) VALUES (:p, 'slt')", p=vic)
    assert any(p.startswith(f"person {vic} edited") for p in _problems(app))
    with app.app_context():
        s = db.session
        person = s.get(Person, vic)
        if later == "rename":
            renamed = PersonData("Victoria Volunteer", person.email, tuple(person.roles))
            update_person(s, person, renamed, federation(), world["admin"])
        elif later == "deactivate":
            deactivate(person, world["admin"])
        elif later == "roles":
            update_person(s, person, PersonData(person.name, person.email, ("volunteer",)),
                          federation(), world["admin"])  # fmt: skip
        else:
            import_people(s, "name,email,roles,schools\nVictoria Volunteer,vic@ladysmith.example,"
                             "volunteer;slt,\n", federation(), world["admin"])  # fmt: skip
        s.commit()
    problems = _problems(app)
    assert any(
        f"re-records person {vic} over a digest that" in p and "was changed before" in p
        for p in problems
    ), problems


def test_a_register_row_edited_behind_the_apps_back_stays_reported_after_it_is_closed(app, world):
    account = world["account"]
    _tamper(app, "UPDATE social_account SET handle = '@forged' WHERE id = :a", a=account)
    with app.app_context():
        s = db.session
        close(s, s.get(SocialAccount, account), s.get(Person, world["admin"]), "Replaced.")
        s.commit()
    problems = _problems(app)
    assert any(f"re-records social account {account} over a digest" in p for p in problems), (
        problems
    )


def test_the_apps_own_successive_changes_in_one_transaction_verify(app, world):
    with app.app_context():
        s = db.session
        person = s.get(Person, world["vic"])
        update_person(s, person, PersonData("Vic V", "vic.v@ladysmith.example", ("volunteer",
                      "parent")), federation(), world["admin"])  # fmt: skip
        update_person(s, person, PersonData("Vic W", "vic.w@ladysmith.example", ("parent",)),
                      federation(), world["admin"])  # fmt: skip
        deactivate(person, world["admin"])
        reactivate(person, world["admin"])
        s.commit()
        deactivate(s.get(Person, world["vic"]), world["admin"])
        s.commit()
    assert _problems(app) == []
