"""The evidence itself: rows the database refuses to change, digests in the audit chain, and a
verify that names every evidence row edited, deleted or inserted behind the application's back."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from approvals.models import AccountApplication, Decision
from approvals.rules import ApplicationData, decide, submit_application
from audit.evidence import DIGESTED, NOT_DIGESTED, REBUILT
from audit.log import verify
from audit.models import AuditEvent, ErasureMarker
from certificates.issuing import issue_due, store_pdf
from certificates.models import Certificate
from core.db import Base, db, utcnow
from people.models import Person
from people.privacy import erase_person
from people.service import deactivate
from quizzes.attempts import start_attempt, submit_attempt
from quizzes.models import QuizAttempt, QuizBank, QuizSubmission
from tests.conftest import cached_world, train_people, wrong_answers
from training.models import Acknowledgement, Policy, ReadReceipt
from training.publishing import current_version

pytestmark = pytest.mark.usefixtures("published")

# People and the account register are digested too; tests/test_evidence_identity.py covers them.
EVIDENCE = [t for t in DIGESTED if t not in ("person", "social_account", "account_runner")]
# Every table the triggers guard (acknowledgement_module is covered by its acknowledgement's digest).
GUARDED = [*EVIDENCE, "acknowledgement_module"]


@pytest.fixture
def world(request, app, make_person):
    return cached_world(request, app, make_person, lambda: _build_world(app, make_person))


def _build_world(app, make_person):
    """Every kind of evidence: reads, attempts (passed, failed, open), acknowledgements, a
    certificate with its PDF stored, and a decision; plus a second, undecided application."""
    ids = {
        "ann": make_person("staff", name="Ann Signer"),
        "bob": make_person("staff", name="Bob Signer"),
        "sue": make_person("slt", "staff", name="Sue Senior"),
        # Another SLT member decides: nobody decides an application they made.
        "sam": make_person("slt", "staff", name="Sam Senior"),
    }
    train_people(app, ids["ann"], ids["bob"])
    with app.app_context():
        s = db.session
        ann, bob, sue = (s.get(Person, ids[k]) for k in ("ann", "bob", "sue"))
        policy = s.scalar(select(Policy))
        link = next(m for m in current_version(s, policy).module_links if m.bank_id)
        bank = s.get(QuizBank, link.bank_id)
        failed = start_attempt(s, sue, link.module_version_id, bank)
        submit_attempt(s, sue, failed.public_id, wrong_answers(failed))
        ids["open_attempt"] = start_attempt(s, sue, link.module_version_id, bank, utcnow()).id
        # Ann's certificate, with its PDF; Bob's acknowledgement is left without one.
        (certificate,) = issue_due(s, [ids["ann"]])
        ids["certificate"] = certificate.id
        s.commit()
        store_pdf(s, certificate)
        for key in ("first", "second"):
            application = submit_application(
                s, sue, ApplicationData(f"Account {key}", "Facebook", "Aim", "Parents",
                                        "Newsletter", "private", (ids["ann"], ids["bob"])),
            )  # fmt: skip
            ids[f"{key}_application"] = application.id
        sam = s.get(Person, ids["sam"])
        decide(s, s.get(AccountApplication, ids["first_application"]), sam, False, "Not now.")
        ids["ack_ann"], ids["ack_bob"] = (
            s.scalar(select(Acknowledgement.id).where(Acknowledgement.person_id == ids[k]))
            for k in ("ann", "bob")
        )
        ids["receipt"] = s.scalar(select(func.min(ReadReceipt.id)))
        ids["attempt"] = s.scalar(
            select(QuizAttempt.id).where(QuizAttempt.person_id == ids["ann"]).limit(1)
        )
        ids["submission"] = s.scalar(
            select(QuizSubmission.id).where(QuizSubmission.attempt_id == ids["attempt"])
        )
        ids["decision"] = s.scalar(select(Decision.id))
        s.commit()
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
    """What someone with direct database access could do: switch the guards off and edit rows."""
    with app.app_context():
        s = db.session
        postgresql = s.get_bind().dialect.name == "postgresql"
        for table in GUARDED:
            if postgresql:
                s.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
            else:
                s.execute(text(f"DROP TRIGGER {table}_no_update"))
                s.execute(text(f"DROP TRIGGER {table}_no_delete"))
        for statement in statements:
            s.execute(text(statement), params)
        if postgresql:
            for table in GUARDED:
                s.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
        s.commit()


def test_every_evidence_row_is_recorded_with_its_digest_and_verify_passes(app, world):
    with app.app_context():
        result = verify(db.session)
        counts = {t: db.session.scalar(text(f"SELECT count(*) FROM {t}")) for t in DIGESTED}
        recorded = [
            json.loads(e.detail)
            for e in db.session.scalars(select(AuditEvent).order_by(AuditEvent.seq))
            if '"digest"' in e.detail
        ]
        events = {e for e in db.session.scalars(select(AuditEvent.event))}
    assert result.ok, result.problems
    assert all(counts[t] for t in EVIDENCE), counts  # every kind of evidence is there
    assert result.evidence_rows == sum(counts.values())
    assert set(EVIDENCE) <= {r["evidence"] for r in recorded}
    assert all(len(r["digest"]) == 64 for r in recorded)
    assert {"quiz.started", "quiz.failed", "quiz.passed", "module.read"} <= events
    assert {"certificate.issued", "certificate.stored", "approval.decided"} <= events


def test_the_digests_cover_every_column_of_every_evidence_table(app):
    for table, columns in DIGESTED.items():
        actual = {c.name for c in Base.metadata.tables[table].columns}
        # A value rebuilt from other columns (an attempt's questions) stands for those columns.
        rebuilt = REBUILT.get(table, {})
        covered = {rebuilt.get(c, c) for c in columns}
        assert actual == covered | set(NOT_DIGESTED.get(table, ())), table


REFUSED = [
    "UPDATE acknowledgement SET typed_name = 'Someone Else', ip = '10.9.9.9'",
    "UPDATE acknowledgement SET at = '2020-01-01 00:00:00'",
    "DELETE FROM acknowledgement_module",
    "UPDATE acknowledgement_module SET module_version_id = module_version_id",
    "UPDATE read_receipt SET at = '2020-01-01 00:00:00'",
    "DELETE FROM read_receipt",
    "UPDATE quiz_attempt SET pass_mark = 0",
    "DELETE FROM quiz_attempt WHERE id NOT IN (SELECT attempt_id FROM quiz_submission)",
    "UPDATE quiz_submission SET score = 100, passed = true",
    "DELETE FROM quiz_submission",
    "UPDATE application_decision SET reason = 'Approved after all', approved = true",
    "DELETE FROM application_decision",
    "UPDATE certificate SET valid_until = '2099-01-01 00:00:00'",
    "UPDATE certificate SET person_name = 'Someone Else'",
    "UPDATE certificate SET pdf = NULL, pdf_sha256 = NULL",
    "DELETE FROM certificate",
]


@pytest.mark.parametrize("statement", REFUSED)
def test_the_database_refuses_to_change_or_remove_evidence(app, world, statement):
    with pytest.raises(DBAPIError, match="is evidence"):
        _sql(app, statement)
    assert _problems(app) == []


def test_postgresql_refuses_truncating_evidence(app, world, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("TRUNCATE is PostgreSQL's")
    for table in GUARDED:
        with pytest.raises(DBAPIError, match="is evidence"):
            _sql(app, f"TRUNCATE {table} CASCADE")
    assert _problems(app) == []


def test_a_certificate_pdf_is_stored_once_and_never_replaced(app, world):
    with app.app_context():
        s = db.session
        certificate = s.get(Certificate, world["certificate"])
        assert certificate.pdf_sha256 is not None
    with pytest.raises(DBAPIError, match="is evidence"):
        _sql(app, "UPDATE certificate SET pdf = :pdf, pdf_sha256 = 'x'", pdf=b"%PDF-other")


def test_an_erasure_marker_opens_only_that_persons_rows_and_only_the_personal_columns(app, world):
    with app.app_context():
        s = db.session
        s.execute(insert(ErasureMarker.__table__).values(person_id=world["ann"]))
        # Ann's acknowledgement may lose its personal details...
        s.execute(
            update(Acknowledgement)
            .where(Acknowledgement.id == world["ack_ann"])
            .values(typed_name="", ip="", user_agent="")
        )
        s.rollback()
    for statement in (
        # ... but not its time, nor be removed; and Bob's rows stay closed.
        "UPDATE acknowledgement SET at = '2020-01-01 00:00:00' WHERE person_id = :ann",
        "DELETE FROM acknowledgement_module WHERE acknowledgement_id IN "
        "(SELECT id FROM acknowledgement WHERE person_id = :ann)",
        "UPDATE acknowledgement SET typed_name = '' WHERE person_id = :bob",
        "UPDATE read_receipt SET at = '2020-01-01 00:00:00' WHERE person_id = :ann",
        "UPDATE certificate SET valid_until = '2099-01-01 00:00:00' WHERE person_id = :ann",
    ):
        with pytest.raises(DBAPIError, match="is evidence"):
            _sql(
                app,
                "INSERT INTO evidence_erasure (person_id) VALUES (:ann)",
                statement,
                ann=world["ann"],
                bob=world["bob"],
            )
    assert _problems(app) == []


def test_verify_reports_an_erasure_marker_left_behind(app, world, database_url):
    if database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL refuses to commit a marker (test_evidence_hardening)")
    _sql(app, "INSERT INTO evidence_erasure (person_id) VALUES (:ann)", ann=world["ann"])
    assert _problems(app) == [
        f"an erasure marker for person {world['ann']} was left in evidence_erasure: the "
        "database lets their evidence rows be changed while it is there"
    ]


def _erase(app, person_id: int) -> None:
    with app.app_context():
        s = db.session
        deactivate(s.get(Person, person_id), at=utcnow() - timedelta(days=10))
        erase_person(s, person_id, actor_id=None, retention_days=1)
        s.commit()


def test_erasure_pseudonymises_evidence_records_the_new_digests_and_verify_passes(app, world):
    _erase(app, world["ann"])
    with app.app_context():
        s = db.session
        ack = s.get(Acknowledgement, world["ack_ann"])
        certificate = s.get(Certificate, world["certificate"])
        assert (ack.typed_name, ack.ip, ack.user_agent) == ("", "", "")
        assert certificate.person_name.startswith("Erased person") and certificate.pdf is None
        assert s.scalar(select(func.count()).select_from(ErasureMarker)) == 0
        pseudonymised = {
            (d["evidence"], d["evidence_id"])
            for d in (
                json.loads(e.detail)
                for e in s.scalars(
                    select(AuditEvent).where(AuditEvent.event == "evidence.pseudonymised")
                )
            )
        }
    assert ("acknowledgement", world["ack_ann"]) in pseudonymised
    assert ("certificate", world["certificate"]) in pseudonymised
    assert ("application_decision", world["decision"]) in pseudonymised
    assert _problems(app) == []
    # The erased person's rows are closed again once the erasure has committed.
    with pytest.raises(DBAPIError, match="is evidence"):
        _sql(app, "UPDATE acknowledgement SET typed_name = 'Ann' WHERE id = :a", a=world["ack_ann"])
    with pytest.raises(DBAPIError, match="is evidence"):
        _sql(app, "UPDATE certificate SET pdf = :p, pdf_sha256 = 'x'", p=b"%PDF")


# (statements run with the guards off, what verify must say). Ids are filled in from the world.
TAMPERING = {
    "acknowledgement edited": (
        ["UPDATE acknowledgement SET typed_name = 'Someone Else', ip = '10.9.9.9' WHERE id = :ack"],
        ["acknowledgement {ack} edited"],
    ),
    "acknowledgement back-dated": (
        ["UPDATE acknowledgement SET at = '2020-01-01 00:00:00' WHERE id = :ack"],
        ["acknowledgement {ack} edited"],
    ),
    "acknowledgement module removed": (
        ["DELETE FROM acknowledgement_module WHERE acknowledgement_id = :ack AND "
         "module_version_id = (SELECT min(module_version_id) FROM acknowledgement_module "
         "WHERE acknowledgement_id = :ack)"],
        ["acknowledgement {ack} edited"],
    ),
    "module text hash rewritten": (
        ["UPDATE module_version SET text_hash = 'x' WHERE id = (SELECT min(module_version_id) "
         "FROM acknowledgement_module WHERE acknowledgement_id = :ack)"],
        ["acknowledgement {ack} edited"],
    ),
    "acknowledgement deleted": (
        ["DELETE FROM acknowledgement_module WHERE acknowledgement_id = :bob_ack",
         "DELETE FROM acknowledgement WHERE id = :bob_ack"],
        ["acknowledgement {bob_ack} deleted"],
    ),
    "acknowledgement inserted": (
        ["INSERT INTO acknowledgement (person_id, policy_version_id, seq, declaration, typed_name, "
         "at, ip, user_agent) SELECT :sue, policy_version_id, 0, declaration, 'Sue Senior', at, "
         "ip, user_agent FROM acknowledgement WHERE id = :ack"],
        ["acknowledgement {new} inserted without an audit row"],
    ),
    "read receipt edited": (
        ["UPDATE read_receipt SET at = '2020-01-01 00:00:00' WHERE id = :receipt"],
        ["read receipt {receipt} edited"],
    ),
    "read receipt deleted": (
        ["DELETE FROM read_receipt WHERE id = :receipt"],
        ["read receipt {receipt} deleted"],
    ),
    "read receipt inserted": (
        ["INSERT INTO read_receipt (person_id, module_version_id, seq, at) "
         "SELECT :sue, module_version_id, 5, at FROM read_receipt WHERE id = :receipt"],
        ["read receipt {new} inserted without an audit row"],
    ),
    "quiz attempt edited": (
        ["UPDATE quiz_attempt SET pass_mark = 0 WHERE id = :attempt"],
        ["quiz attempt {attempt} edited"],
    ),
    "quiz attempt deleted": (
        ["DELETE FROM quiz_attempt WHERE id = :open_attempt"],
        ["quiz attempt {open_attempt} deleted"],
    ),
    "quiz attempt inserted": (
        ["INSERT INTO quiz_attempt (public_id, person_id, module_version_id, bank_id, started_at, "
         "expires_at, pass_mark, show_answers, question_refs) SELECT 'forged', :sue, "
         "module_version_id, bank_id, started_at, expires_at, pass_mark, show_answers, "
         "question_refs FROM quiz_attempt "
         "WHERE id = :attempt"],
        ["quiz attempt {new} inserted without an audit row"],
    ),
    "quiz submission edited": (
        ["UPDATE quiz_submission SET score = 100, passed = true, correct = total "
         "WHERE id = (SELECT max(id) FROM quiz_submission WHERE passed = false)"],
        ["quiz submission {failed} edited"],
    ),
    "quiz submission deleted": (
        ["DELETE FROM quiz_submission WHERE id = :submission"],
        ["quiz submission {submission} deleted"],
    ),
    "quiz submission inserted": (
        ["INSERT INTO quiz_submission (attempt_id, submitted_at, answers, correct, total, score, "
         "passed) SELECT :open_attempt, submitted_at, answers, correct, total, score, passed "
         "FROM quiz_submission WHERE id = :submission"],
        ["quiz submission {new} inserted without an audit row"],
    ),
    "decision edited": (
        ["UPDATE application_decision SET approved = true, reason = 'Fine.' WHERE id = :decision"],
        ["application decision {decision} edited"],
    ),
    "decision deleted": (
        ["DELETE FROM application_decision WHERE id = :decision"],
        ["application decision {decision} deleted"],
    ),
    "decision inserted": (
        ["INSERT INTO application_decision (application_id, approved, reason, decided_by_id, "
         "decided_at, runners_snapshot) SELECT :second_application, true, '', decided_by_id, "
         "decided_at, runners_snapshot FROM application_decision WHERE id = :decision"],
        ["application decision {new} inserted without an audit row"],
    ),
    "certificate edited": (
        ["UPDATE certificate SET valid_until = '2099-01-01 00:00:00' WHERE id = :certificate"],
        ["certificate {certificate} edited"],
    ),
    "certificate pdf swapped": (
        ["UPDATE certificate SET pdf = :pdf, pdf_sha256 = 'forged' WHERE id = :certificate"],
        ["certificate {certificate} edited"],
    ),
    "certificate deleted": (
        ["DELETE FROM certificate WHERE id = :certificate"],
        ["certificate {certificate} deleted"],
    ),
    "certificate inserted": (
        ["INSERT INTO certificate (code, person_id, policy_id, policy_version_id, "
         "acknowledgement_id, issued_at, valid_until, person_name, policy_title, version_label, "
         "module_titles, federation_name) SELECT 'forged', :bob, policy_id, policy_version_id, "
         ":bob_ack, issued_at, valid_until, 'Bob Signer', policy_title, version_label, "
         "module_titles, federation_name FROM certificate WHERE id = :certificate"],
        ["certificate {new} inserted without an audit row"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TAMPERING))
def test_verify_names_every_evidence_row_edited_deleted_or_inserted(app, world, runner, case):
    statements, expected = TAMPERING[case]
    table = expected[0].split(" {")[0].replace(" ", "_")
    with app.app_context():
        s = db.session
        before = s.scalar(text(f"SELECT coalesce(max(id), 0) FROM {table}"))
        failed = s.scalar(
            select(func.max(QuizSubmission.id)).where(QuizSubmission.passed.is_(False))
        )
    params = {
        "ack": world["ack_ann"], "bob_ack": world["ack_bob"], "sue": world["sue"],
        "bob": world["bob"], "receipt": world["receipt"], "attempt": world["attempt"],
        "open_attempt": world["open_attempt"], "submission": world["submission"],
        "decision": world["decision"], "second_application": world["second_application"],
        "certificate": world["certificate"], "pdf": b"%PDF-forged",
    }  # fmt: skip
    used = {k: v for k, v in params.items() if any(f":{k}" in st for st in statements)}
    _tamper(app, *statements, **used)
    with app.app_context():
        new = db.session.scalar(text(f"SELECT max(id) FROM {table}"))
    names = {**params, "new": new, "failed": failed}
    if "inserted" in case:
        assert new > before
    problems = _problems(app)
    for line in expected:
        wanted = line.format(**names)
        assert any(p.startswith(wanted) for p in problems), (wanted, problems)

    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code != 0
    assert expected[0].format(**names) in result.output


def test_the_check_page_names_a_tampered_evidence_row(app, world, auth, make_person):
    client = auth.as_person(make_person("governor"))
    assert "evidence records" in client.get("/audit/check").get_data(as_text=True)
    _tamper(
        app, "UPDATE read_receipt SET at = '2020-01-01 00:00:00' WHERE id = :r", r=world["receipt"]
    )
    page = client.get("/audit/check").get_data(as_text=True)
    assert "has been tampered with" in page and f"read receipt {world['receipt']} edited" in page


def test_seal_refuses_a_row_inserted_after_digests_began(app, world, runner, make_person):
    """Rows from before digests are sealed (test_evidence_hardening); a row inserted since the
    application began recording digests is never sealed, and verify keeps reporting it."""
    make_person("admin", email="admin@ladysmith.example")
    _sql(
        app,
        "INSERT INTO read_receipt (person_id, module_version_id, seq, at) "
        "SELECT :sue, module_version_id, 7, at FROM read_receipt WHERE id = :receipt",
        sue=world["sue"],
        receipt=world["receipt"],
    )
    assert any("inserted without an audit row" in p for p in _problems(app))
    sealed = runner.invoke(args=["audit", "seal", "--actor", "admin@ladysmith.example", "--yes"])
    assert sealed.exit_code != 0 and "Nothing was sealed" in sealed.output
    assert any("inserted without an audit row" in p for p in _problems(app))
    checked = runner.invoke(args=["audit", "verify"])
    assert checked.exit_code != 0


def test_postgresql_app_role_loses_its_right_to_remove_evidence(app, world, database_url):
    """Where the app connects as its own role, the migration revokes DELETE and TRUNCATE."""
    if not database_url.startswith("postgresql"):
        pytest.skip("roles and grants are PostgreSQL's")
    import importlib.util

    from core.config import ROOT

    spec = importlib.util.spec_from_file_location(
        "evidence_migration", ROOT / "migrations" / "versions" / "0011_evidence.py"
    )
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    role = "countersign_evidence_app_under_test"
    with app.app_context():
        conn = db.session.connection()
        conn.execute(text(f"CREATE ROLE {role}"))
        conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        conn.execute(
            text(
                f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON {', '.join(GUARDED)} TO {role}"
            )
        )
        try:
            migration.revoke_changes(conn, role)
            conn.execute(text(f"SET LOCAL ROLE {role}"))
            for table in GUARDED:
                assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() >= 1
                for statement in (f"DELETE FROM {table}", f"TRUNCATE {table}"):
                    conn.execute(text("SAVEPOINT attempt"))
                    with pytest.raises(DBAPIError, match="permission denied"):
                        conn.execute(text(statement))
                    conn.execute(text("ROLLBACK TO SAVEPOINT attempt"))
        finally:
            db.session.rollback()  # the role and its grants were made in this transaction only
