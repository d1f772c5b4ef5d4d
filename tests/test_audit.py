"""The audit log: what it records, that it cannot be changed, and that tampering is found."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from audit.log import Head, record, verify
from audit.models import AuditEvent
from core.db import db
from people.models import Person
from tests.conftest import Auth, train_people
from tests.test_approvals import apply, decide
from tests.test_approvals import people as people  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("published")


def events(app) -> list[AuditEvent]:
    with app.app_context():
        rows = db.session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        db.session.expunge_all()
        return list(rows)


def names(app) -> list[str]:
    return [e.event for e in events(app)]


def verify_cli(app, *args: str):
    return app.test_cli_runner().invoke(args=["audit", "verify", *args])


def test_sign_in_success_and_failure_are_recorded_by_id_only(app, auth, make_person):
    pid = make_person("staff", name="Zed Private", email="zed.private@ladysmith.example")
    auth.sign_in("zed.private@ladysmith.example", "wrong password")
    auth.sign_in("nobody@ladysmith.example", "wrong password")
    auth.sign_in("zed.private@ladysmith.example")
    rows = [e for e in events(app) if e.event.startswith("sign_in")]
    assert [(e.event, e.actor_id) for e in rows] == [
        ("sign_in.failed", pid),
        ("sign_in.failed", None),
        ("sign_in.succeeded", pid),
    ]
    assert all(e.subject_type == "sign_in_attempt" and e.subject_id for e in rows)
    with app.app_context():
        dump = db.session.execute(
            text("SELECT event, subject_type, subject_id, detail FROM audit_event")
        ).all()
    assert "zed" not in repr(dump).lower() and "nobody" not in repr(dump).lower()


def test_learning_approvals_roles_tokens_and_exports_are_recorded(
    app, auth, make_person, people, tmp_path
):
    assert "content.published" in names(app)
    train_people(app, people["ann"], people["bob"])
    recorded = names(app)
    assert recorded.count("acknowledgement.signed") == 2
    assert recorded.count("quiz.passed") >= 2
    application_id = apply(app, people, ["ann", "bob"]).headers["Location"].rsplit("/", 1)[-1]
    decide(app, people["sue"], int(application_id), "approve", "Good plan.")
    approval = [e for e in events(app) if e.event == "approval.decided"]
    assert [(e.actor_id, e.subject_id, json.loads(e.detail)["approved"]) for e in approval] == [
        (people["sue"], application_id, True)
    ]
    assert json.loads(approval[0].detail)["evidence"] == "application_decision"

    admin = Auth(app, app.test_client())
    admin.as_person(people["ada"])
    admin.post(
        f"/admin/people/{people['vic']}",
        {"name": "Vic Volunteer", "email": "person4@ladysmith.example", "roles": ["volunteer",
         "parent"], "schools": []},
    )  # fmt: skip
    admin.post("/admin/tokens/", {"name": "Approvals", "scopes": ["training:read"]})
    with app.app_context():
        token_id = db.session.scalar(text("SELECT id FROM api_token"))
    admin.post(f"/admin/tokens/{token_id}/revoke", form_url="/admin/tokens/")
    by_admin = [
        (e.event, e.subject_id, e.detail) for e in events(app) if e.actor_id == people["ada"]
    ]
    roles = [
        json.loads(detail)
        for event, subject, detail in by_admin
        if (event, subject) == ("person.roles_changed", str(people["vic"]))
    ]
    # With the digest of who the person now is (their roles are evidence too).
    assert [(r["from"], r["to"], r["evidence"]) for r in roles] == [
        ("volunteer", "parent volunteer", "person")
    ]
    assert ("token.created", str(token_id), '{"days":365,"scopes":"training:read"}') in by_admin
    assert ("token.revoked", str(token_id), "{}") in by_admin

    governor = Auth(app, app.test_client()).as_person(people["gus"])
    assert governor.get("/reports/people.csv").status_code == 200
    pack = governor.get("/reports/schools/infant/evidence.pdf")
    with governor.get("/certificates/schools/infant.zip") as response:
        assert response.status_code == 200
    exports = [e.event for e in events(app) if e.actor_id == people["gus"]]
    assert exports[-3:] == ["export.people_csv", "export.evidence_pack", "export.certificates_zip"]

    # The evidence pack prints the head as it was when the pack was made, its own entry included.
    path = tmp_path / "pack.pdf"
    path.write_bytes(pack.data)
    words = " ".join(
        subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True)
        .stdout.split()
    )  # fmt: skip
    pack_entry = next(e for e in events(app) if e.event == "export.evidence_pack")
    assert f"entry {pack_entry.seq}, hash {pack_entry.hash}" in words

    result = verify_cli(app)
    assert result.exit_code == 0, result.output
    assert f"intact: {len(events(app))} rows" in result.output


def _sql(app, statement: str, **params) -> None:
    with app.app_context():
        db.session.execute(text(statement), params)
        db.session.commit()


def _some_events(app, n: int = 5) -> None:
    with app.app_context():
        for i in range(n):
            record(db.session, "people.imported", detail={"created": i})
        db.session.commit()


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_event SET event = 'sign_out' WHERE seq = 2", "DELETE FROM audit_event WHERE seq = 2",
     "DELETE FROM audit_event"],
)  # fmt: skip
def test_the_database_refuses_to_change_or_remove_audit_rows(app, statement):
    _some_events(app)
    before = [(e.seq, e.event, e.hash) for e in events(app)]
    with pytest.raises(DBAPIError, match="append-only"):
        _sql(app, statement)
    assert [(e.seq, e.event, e.hash) for e in events(app)] == before


def test_postgresql_refuses_truncate(app, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("TRUNCATE is PostgreSQL's")
    _some_events(app)
    with pytest.raises(DBAPIError, match="append-only"):
        _sql(app, "TRUNCATE audit_event")
    assert len(events(app)) > 0


def _tamper(app, *statements: str) -> None:
    """What someone with direct database access could do: switch the guard off and edit rows."""
    with app.app_context():
        s = db.session
        postgresql = s.get_bind().dialect.name == "postgresql"
        if postgresql:
            s.execute(text("ALTER TABLE audit_event DISABLE TRIGGER USER"))
        else:
            s.execute(text("DROP TRIGGER audit_event_no_update"))
            s.execute(text("DROP TRIGGER audit_event_no_delete"))
        for statement in statements:
            s.execute(text(statement))
        if postgresql:
            s.execute(text("ALTER TABLE audit_event ENABLE TRIGGER USER"))
        s.commit()


@pytest.mark.parametrize(
    ("statements", "problem"),
    [
        (["UPDATE audit_event SET detail = '{\"created\": 99}' WHERE seq = 3"], "row 3 changed"),
        (["UPDATE audit_event SET actor_id = 7 WHERE seq = 2"], "row 2 changed"),
        (["DELETE FROM audit_event WHERE seq = 3"], "row 3 removed"),
        (["DELETE FROM audit_event WHERE seq IN (2, 3)"], "rows 2 to 3 removed"),
        (["DELETE FROM audit_event WHERE seq = 1"], "row 1 removed"),
        # Reordering: rows 2 and 3 swap places, each with its own hash; the chain no longer links.
        (
            [
                "UPDATE audit_event SET seq = -2 WHERE seq = 2",
                "UPDATE audit_event SET seq = 2 WHERE seq = 3",
                "UPDATE audit_event SET seq = 3 WHERE seq = -2",
            ],
            "row 2 changed",
        ),  # fmt: skip
    ],
)
def test_verify_reports_changed_removed_and_reordered_rows(app, statements, problem):
    _some_events(app)
    assert verify_cli(app).exit_code == 0
    _tamper(app, *statements)
    result = verify_cli(app)
    assert result.exit_code == 1
    assert problem in result.output and "tampered with" in result.output


def test_removing_the_newest_rows_is_caught_against_a_printed_head(app):
    _some_events(app, 6)
    with app.app_context():
        printed = verify(db.session).head
    assert printed is not None and printed.seq >= 6
    _tamper(app, f"DELETE FROM audit_event WHERE seq > {printed.seq - 2}")
    assert verify_cli(app).exit_code == 0  # what is left is a valid chain
    result = verify_cli(app, "--head", str(printed))
    assert result.exit_code == 1
    assert f"rows {printed.seq - 1} to {printed.seq} removed from the end" in result.output
    bad = verify_cli(app, "--head", "six")
    assert bad.exit_code == 2 and "SEQUENCE:HASH" in bad.output


def test_a_rewritten_log_does_not_match_a_printed_head(app):
    _some_events(app, 4)
    with app.app_context():
        printed = verify(db.session).head
        forged = Head(printed.seq, "f" * 64)
    result = verify_cli(app, "--head", str(forged))
    assert result.exit_code == 1 and "not the row an earlier head recorded" in result.output


def test_rows_cannot_be_forged_without_the_key_kept_outside_the_database(app):
    _some_events(app, 3)
    app.config["AUDIT_KEY"] = "a different key"
    result = verify_cli(app)
    assert result.exit_code == 1 and "row 1 changed" in result.output


def test_parallel_appends_keep_one_unbroken_chain(app):
    def work() -> None:
        with app.app_context():
            for i in range(10):
                record(db.session, "people.imported", detail={"created": i})
                db.session.commit()

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = events(app)
    assert [e.seq for e in rows] == list(range(1, len(rows) + 1))
    assert sum(e.event == "people.imported" for e in rows) == 60
    with app.app_context():
        assert verify(db.session).ok


def test_details_must_be_ids_codes_or_flags(app):
    with app.app_context(), pytest.raises(TypeError):
        record(db.session, "people.imported", detail={"who": ["a list"]})
    with app.app_context(), pytest.raises(ValueError):
        record(db.session, "made.up")


def test_governors_and_administrators_browse_the_log_with_filters(app, make_person):
    staff = make_person("staff", name="Sam Staff")
    governor = make_person("governor", name="Gwen Governor")
    admin = make_person("admin", name="Ada Admin")
    for pid in (staff, governor):
        Auth(app, app.test_client()).as_person(pid)
    client = Auth(app, app.test_client()).as_person(governor)
    page = client.get("/audit/").get_data(as_text=True)
    assert "Signed in" in page and "Sam Staff (#" in page and "Content published" in page
    only_staff = client.get(f"/audit/?person={staff}").get_data(as_text=True)
    assert "Sam Staff" in only_staff and "Gwen Governor (#" not in only_staff
    published = client.get("/audit/?event=content.published").get_data(as_text=True)
    assert "Content published" in published and "Signed in</td>" not in published
    bad = client.get("/audit/?since=yesterday&event=nonsense")
    assert bad.status_code == 400
    assert "Choose an event from the list" in bad.get_data(as_text=True)
    assert "must be a date" in bad.get_data(as_text=True)
    check = client.get("/audit/check").get_data(as_text=True)
    assert "The audit log is intact" in check
    assert Auth(app, app.test_client()).as_person(admin).get("/audit/").status_code == 200
    assert Auth(app, app.test_client()).as_person(staff).get("/audit/").status_code == 403


def test_the_check_page_says_when_the_log_was_tampered_with(app, make_person):
    governor = make_person("governor")
    client = Auth(app, app.test_client()).as_person(governor)
    _tamper(app, "UPDATE audit_event SET actor_id = 999 WHERE seq = 1")
    page = client.get("/audit/check").get_data(as_text=True)
    assert "has been tampered with" in page and "row 1 changed" in page


def test_erasing_a_person_leaves_the_chain_intact(app, make_person):
    """Rows name people by id only, so a person's details can change or go without touching it
    (the change itself is recorded with the person's new digest, as erasure does)."""
    from people.service import record_person

    pid = make_person("staff")
    Auth(app, app.test_client()).as_person(pid)
    with app.app_context():
        person = db.session.get(Person, pid)
        person.name, person.email = "Erased person", f"erased-{pid}@erased.invalid"
        record_person(db.session, "person.erased", [pid], None)
        db.session.commit()
        assert verify(db.session).ok


def test_postgresql_app_role_loses_its_right_to_change_audit_rows(app, database_url):
    """Where the app connects as its own role, the migration revokes UPDATE, DELETE and TRUNCATE."""
    if not database_url.startswith("postgresql"):
        pytest.skip("roles and grants are PostgreSQL's")
    import importlib.util

    from core.config import ROOT

    spec = importlib.util.spec_from_file_location(
        "audit_migration", ROOT / "migrations" / "versions" / "0008_audit.py"
    )
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    _some_events(app, 2)
    role = "countersign_app_under_test"
    with app.app_context():
        conn = db.session.connection()
        conn.execute(text(f"CREATE ROLE {role}"))
        conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        conn.execute(
            text(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON audit_event TO {role}")
        )
        try:
            migration.revoke_changes(conn, role)
            conn.execute(text(f"SET LOCAL ROLE {role}"))
            assert conn.execute(text("SELECT count(*) FROM audit_event")).scalar() >= 2
            for statement in ("UPDATE audit_event SET event = 'sign_out'", "DELETE FROM audit_event",
                              "TRUNCATE audit_event"):  # fmt: skip
                conn.execute(text("SAVEPOINT attempt"))
                with pytest.raises(DBAPIError, match="permission denied"):
                    conn.execute(text(statement))
                conn.execute(text("ROLLBACK TO SAVEPOINT attempt"))
        finally:
            db.session.rollback()  # the role and its grants were made in this transaction only
