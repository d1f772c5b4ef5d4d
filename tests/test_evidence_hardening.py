"""Evidence hardening: erasure and PDF storage never re-record a changed row, stored PDFs are
checked against their digest, only erasure may open a person's rows (and only to the pseudonymised
values), seal never blesses a row inserted after digests began, and SQLite's REPLACE cannot
rewrite evidence."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from audit import evidence
from audit.log import record_evidence
from audit.models import AuditEvent
from certificates.issuing import issue_due, store_pdf
from certificates.models import Certificate
from core.db import db, grant_app_role, utcnow
from people.models import Person
from people.privacy import ErasureTampered, erase_person, pseudonym
from people.service import deactivate
from tests import test_evidence_integrity as integrity
from tests.conftest import Auth, train_people
from training.models import Acknowledgement, ModuleVersion, ReadReceipt

pytestmark = pytest.mark.usefixtures("published")

world = integrity.world  # every kind of evidence, as a fixture
_problems, _sql, _tamper = integrity._problems, integrity._sql, integrity._tamper


def _leave(app, *person_ids: int, days: int = 10) -> None:
    with app.app_context():
        for person_id in person_ids:  # as the application does, so the chain records it
            deactivate(db.session.get(Person, person_id), at=utcnow() - timedelta(days=days))
        db.session.commit()


def _events(app, event: str) -> list[AuditEvent]:
    with app.app_context():
        return list(db.session.scalars(select(AuditEvent).where(AuditEvent.event == event)))


# --- E1: erasure and PDF storage check before re-recording ---------------------------------------


def test_erasure_refuses_to_launder_an_edited_decision_and_changes_nothing(app, world):
    _tamper(
        app,
        "UPDATE application_decision SET approved = true, reason = 'Approved by SLT' WHERE id = :d",
        d=world["decision"],
    )
    _leave(app, world["ann"])
    with app.app_context():
        s = db.session
        with pytest.raises(ErasureTampered, match=f"application decision {world['decision']}"):
            erase_person(s, world["ann"], actor_id=None, retention_days=1)
        s.rollback()
        assert s.get(Person, world["ann"]).erased_at is None
        assert s.get(Acknowledgement, world["ack_ann"]).typed_name == "Ann Signer"
    assert _events(app, "evidence.pseudonymised") == []
    assert any(
        p.startswith(f"application decision {world['decision']} edited") for p in _problems(app)
    )


def test_the_erasure_timer_skips_a_tampered_person_reports_it_and_erases_the_next(
    app, world, runner
):
    _tamper(
        app,
        "UPDATE acknowledgement SET at = '2020-01-01 00:00:00' WHERE id = :a",
        a=world["ack_ann"],
    )
    _leave(app, world["ann"], world["bob"], days=7 * 365)
    result = runner.invoke(args=["people", "erase-expired"])
    assert result.exit_code != 0
    assert f"person #{world['ann']}: not erased" in result.output
    assert f"acknowledgement {world['ack_ann']} does not match" in result.output
    assert f"erased person #{world['bob']}" in result.output
    with app.app_context():
        assert db.session.get(Person, world["ann"]).erased_at is None
        assert db.session.get(Person, world["bob"]).erased_at is not None
    assert any(p.startswith(f"acknowledgement {world['ack_ann']} edited") for p in _problems(app))


def test_the_erase_page_says_why_a_tampered_person_was_not_erased(app, world, auth, make_person):
    _tamper(app, "UPDATE acknowledgement SET ip = '10.9.9.9' WHERE id = :a", a=world["ack_ann"])
    _leave(app, world["ann"], days=7 * 365)
    auth.as_person(make_person("admin"))
    response = auth.post(f"/admin/people/{world['ann']}/erase")
    page = response.get_data(as_text=True)
    assert response.status_code == 409
    assert "does not match the audit log" in page and f"acknowledgement {world['ack_ann']}" in page
    with app.app_context():
        assert db.session.get(Person, world["ann"]).erased_at is None


def test_erasure_records_the_digest_each_row_had(app, world):
    with app.app_context():
        before = evidence.latest_recorded(db.session, {"acknowledgement": [world["ack_ann"]]})
    _leave(app, world["ann"])
    with app.app_context():
        erase_person(db.session, world["ann"], actor_id=None, retention_days=1)
        db.session.commit()
    details = [json.loads(e.detail) for e in _events(app, "evidence.pseudonymised")]
    (ack,) = [d for d in details if d["evidence"] == "acknowledgement"]
    assert ack["was"] == before["acknowledgement"][world["ack_ann"]][0] != ack["digest"]
    assert all("was" in d for d in details)
    assert _problems(app) == []


def test_storing_a_pdf_refuses_a_certificate_edited_before_it_was_stored(app, world, auth):
    with app.app_context():
        s = db.session
        (certificate,) = issue_due(s, [world["bob"]])
        s.commit()
        bob_certificate, code = certificate.id, certificate.code
    _tamper(
        app,
        "UPDATE certificate SET valid_until = '2099-01-01 00:00:00', person_name = 'Someone Else' "
        "WHERE id = :c",
        c=bob_certificate,
    )
    with app.app_context():
        with pytest.raises(evidence.NotAsRecorded, match=f"certificate {bob_certificate}"):
            store_pdf(db.session, db.session.get(Certificate, bob_certificate))
    response = auth.as_person(world["bob"]).get(f"/certificates/{code}.pdf")
    assert response.status_code == 500 and response.mimetype == "text/html"
    with app.app_context():
        assert db.session.get(Certificate, bob_certificate).pdf_sha256 is None
    assert len(_events(app, "certificate.stored")) == 1  # Ann's, from the world
    assert any(p.startswith(f"certificate {bob_certificate} edited") for p in _problems(app))


def test_storing_a_pdf_records_the_digest_it_replaces(app, world):
    (stored,) = _events(app, "certificate.stored")
    (issued,) = _events(app, "certificate.issued")
    assert json.loads(stored.detail)["was"] == json.loads(issued.detail)["digest"]


def test_verify_reports_a_changed_row_re_recorded_over_a_digest_the_chain_did_not_hold(app, world):
    """Any path that re-records a row without checking it first still leaves the change visible."""
    _tamper(app, "UPDATE acknowledgement SET ip = '10.9.9.9' WHERE id = :a", a=world["ack_ann"])
    with app.app_context():
        s = db.session
        tampered = evidence.digests(s, "acknowledgement", [world["ack_ann"]])
        record_evidence(
            s, "evidence.pseudonymised", "acknowledgement", [world["ack_ann"]], was=tampered
        )
        s.commit()
        seq = s.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1))
    problems = _problems(app)
    assert not any("edited" in p for p in problems)  # the row now matches its latest digest...
    assert any(  # ... but that digest was laid over one the chain never held
        p.startswith(f"audit row {seq} re-records acknowledgement {world['ack_ann']}")
        for p in problems
    ), problems


# --- E2: the PDF bytes are checked; the erasure marker is the erasure's alone ---------------------


def test_verify_reports_a_stored_pdf_that_does_not_match_its_digest(app, world, runner):
    _tamper(app, "UPDATE certificate SET pdf = :p WHERE id = :c", p=b"%PDF-1.4 forged",
            c=world["certificate"])  # fmt: skip
    expected = f"certificate {world['certificate']}: stored PDF does not match its digest"
    assert expected in _problems(app)
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code != 0 and expected in result.output


def test_a_replaced_pdf_is_never_served(app, world, auth, make_person, caplog):
    _tamper(app, "UPDATE certificate SET pdf = :p WHERE id = :c", p=b"%PDF-1.4 forged",
            c=world["certificate"])  # fmt: skip
    with app.app_context():
        code = db.session.get(Certificate, world["certificate"]).code
    response = auth.as_person(world["ann"]).get(f"/certificates/{code}.pdf")
    assert response.status_code == 500
    assert b"forged" not in response.data and b"cannot be downloaded" in response.data
    assert "stored PDF does not match its digest" in caplog.text
    with app.app_context():
        db.session.execute(text("INSERT INTO person_school (person_id, school) VALUES (:p, 'infant')"),
                           {"p": world["ann"]})  # fmt: skip
        db.session.commit()
    governor = Auth(app, app.test_client()).as_person(make_person("governor"))
    archive = governor.get("/certificates/schools/infant.zip")
    assert archive.status_code == 500 and b"forged" not in archive.data


def test_an_erasure_marker_allows_only_the_pseudonymised_values(app, world):
    """Whoever holds a marker may empty a person's personal columns, nothing else: no new PDF."""
    cert, ack = world["certificate"], world["ack_ann"]
    for statement in (
        "UPDATE certificate SET pdf = :pdf, pdf_sha256 = 'x' WHERE id = :cert",
        "UPDATE certificate SET pdf = NULL, pdf_sha256 = NULL, person_name = 'Someone Else' "
        "WHERE id = :cert",
        "UPDATE acknowledgement SET typed_name = 'Someone Else', ip = '', user_agent = '' "
        "WHERE id = :ack",
    ):
        with pytest.raises(DBAPIError, match="is evidence"):
            _sql(app, "INSERT INTO evidence_erasure (person_id) VALUES (:ann)", statement,
                 ann=world["ann"], cert=cert, ack=ack, pdf=b"%PDF-1.4 forged")  # fmt: skip
    with app.app_context():
        s = db.session
        s.execute(text("INSERT INTO evidence_erasure (person_id) VALUES (:p)"), {"p": world["ann"]})
        s.execute(
            text(
                "UPDATE certificate SET pdf = NULL, pdf_sha256 = NULL, person_name = :n "
                "WHERE id = :c"
            ),
            {"n": f"Erased person #{world['ann']}", "c": cert},
        )
        s.rollback()
    assert _problems(app) == []


def test_postgresql_refuses_to_commit_an_erasure_marker(app, world, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("deferred constraint triggers are PostgreSQL's; verify reports one on SQLite")
    with pytest.raises(DBAPIError, match="erasure marker"):
        _sql(app, "INSERT INTO evidence_erasure (person_id) VALUES (:ann)", ann=world["ann"])
    assert _problems(app) == []


def test_postgresql_app_role_can_open_a_persons_rows_only_through_the_erasure_function(
    app, world, database_url
):
    if not database_url.startswith("postgresql"):
        pytest.skip("roles and grants are PostgreSQL's")
    from core.migrate import _revoke_as_migrations_say, alembic_config

    role = f"countersign_app_{secrets.token_hex(4)}"
    cert, ann = world["certificate"], world["ann"]
    with app.app_context():
        conn = db.session.connection()
        conn.execute(text(f"CREATE ROLE {role}"))
        try:
            grant_app_role(conn, role)
            _revoke_as_migrations_say(alembic_config(), conn, role)

            def refused(statement: str, match: str, **params) -> None:
                conn.execute(text("SAVEPOINT attempt"))
                with pytest.raises(DBAPIError, match=match):
                    conn.execute(text(statement), params)
                conn.execute(text("ROLLBACK TO SAVEPOINT attempt"))

            conn.execute(text(f"SET LOCAL ROLE {role}"))
            for statement in (
                "INSERT INTO evidence_erasure (person_id) VALUES (:p)",
                "DELETE FROM evidence_erasure",
                "UPDATE evidence_erasure SET person_id = :p",
            ):
                refused(statement, "permission denied", p=ann)
            # Ann is active: the function refuses to open her rows.
            refused("SELECT countersign_erasure_begin(:p)", "not a leaver", p=ann)
            conn.execute(
                text("UPDATE person SET active = false, deactivated_at = now() WHERE id = :p"),
                {"p": ann},
            )
            conn.execute(text("SELECT countersign_erasure_begin(:p)"), {"p": ann})
            refused("UPDATE certificate SET pdf = :pdf WHERE id = :c", "is evidence",
                    pdf=b"%PDF-1.4 forged", c=cert)  # fmt: skip
            conn.execute(
                text(
                    "UPDATE certificate SET pdf = NULL, pdf_sha256 = NULL, person_name = :n "
                    "WHERE id = :c"
                ),
                {"n": f"Erased person #{ann}", "c": cert},
            )
            refused("SET CONSTRAINTS ALL IMMEDIATE", "erasure marker")  # would not commit
            conn.execute(text("SELECT countersign_erasure_end(:p)"), {"p": ann})
            conn.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))
        finally:
            db.session.rollback()  # the role, its grants and the changes: this transaction only


def test_erasure_works_as_the_application_role(app, world, database_url):
    """The whole erasure, as the restricted role the app logs in as on PostgreSQL."""
    if not database_url.startswith("postgresql"):
        pytest.skip("roles and grants are PostgreSQL's")
    from core.migrate import _revoke_as_migrations_say, alembic_config

    role = f"countersign_app_{secrets.token_hex(4)}"
    _leave(app, world["ann"])
    with app.app_context():
        s = db.session
        conn = s.connection()
        conn.execute(text(f"CREATE ROLE {role}"))
        try:
            grant_app_role(conn, role)
            _revoke_as_migrations_say(alembic_config(), conn, role)
            conn.execute(text(f"SET LOCAL ROLE {role}"))
            erase_person(s, world["ann"], actor_id=None, retention_days=1)
            s.flush()
            conn.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))
            assert s.get(Certificate, world["certificate"]).pdf is None
        finally:
            s.rollback()


# --- E3: seal only what predates digests, with an actor, after asking -----------------------------


def test_seal_seals_only_rows_from_before_digests_records_who_and_never_a_later_forgery(
    app, make_person, runner
):
    ann = make_person("staff", name="Ann Signer")
    admin = make_person("admin", email="admin@ladysmith.example")
    staff = make_person("staff", email="staff@ladysmith.example")
    with app.app_context():
        s = db.session
        version = s.scalar(select(ModuleVersion.id).order_by(ModuleVersion.id).limit(1))
        # A receipt from a version that kept no digests: in the table, not in the chain.
        s.execute(
            text(
                "INSERT INTO read_receipt (person_id, module_version_id, seq, at) "
                "VALUES (:p, :v, 9, '2024-01-01 09:00:00.000000')"
            ),
            {"p": ann, "v": version},
        )
        s.commit()
        old = s.scalar(select(ReadReceipt.id))
    train_people(app, ann)  # the application's own rows, recorded with their digests
    assert any(f"read receipt {old} inserted" in p for p in _problems(app))

    assert runner.invoke(args=["audit", "seal"]).exit_code != 0  # --actor is required
    not_admin = runner.invoke(args=["audit", "seal", "--actor", "staff@ladysmith.example"])
    assert not_admin.exit_code != 0 and "administrator" in not_admin.output
    declined = runner.invoke(
        args=["audit", "seal", "--actor", "admin@ladysmith.example"], input="n\n"
    )
    assert declined.exit_code != 0 and f"To seal: read receipt {old}" in declined.output
    assert _events(app, "evidence.sealed") == [] and _events(app, "evidence.digests_start") == []

    sealed = runner.invoke(
        args=["audit", "seal", "--actor", "admin@ladysmith.example"], input="y\n"
    )
    assert sealed.exit_code == 0 and "Sealed 1 evidence rows (read receipt: 1)" in sealed.output
    (start,) = _events(app, "evidence.digests_start")
    (row,) = _events(app, "evidence.sealed")
    assert start.actor_id == row.actor_id == admin and staff != admin
    assert json.loads(start.detail)["read_receipt"] == old
    assert _problems(app) == []

    # A row inserted now, behind the application's back, is never sealed.
    _sql(
        app,
        "INSERT INTO read_receipt (person_id, module_version_id, seq, at) "
        "SELECT person_id, module_version_id, 99, at FROM read_receipt WHERE id = :r",
        r=old,
    )
    with app.app_context():
        forged = db.session.scalar(select(ReadReceipt.id).order_by(ReadReceipt.id.desc()).limit(1))
    refused = runner.invoke(args=["audit", "seal", "--actor", "admin@ladysmith.example", "--yes"])
    assert refused.exit_code != 0 and f"read receipt {forged}" in refused.output
    assert "Nothing was sealed" in refused.output
    assert len(_events(app, "evidence.sealed")) == 1
    assert f"read receipt {forged} inserted without an audit row" in _problems(app)


# --- E8: no REPLACE or UPSERT over an evidence row ----------------------------------------------


def test_replace_or_upsert_cannot_rewrite_an_evidence_row(app, world, database_url):
    columns = "id, person_id, policy_version_id, seq, declaration, typed_name, at, ip, user_agent"
    forged = (
        "SELECT id, person_id, policy_version_id, seq, declaration, 'Someone Else', at, "
        "'10.9.9.9', user_agent FROM acknowledgement WHERE id = :a"
    )
    statements = [
        f"INSERT INTO acknowledgement ({columns}) {forged} "
        "ON CONFLICT (id) DO UPDATE SET typed_name = excluded.typed_name, ip = excluded.ip",
    ]
    if not database_url.startswith("postgresql"):
        statements += [
            f"INSERT OR REPLACE INTO acknowledgement ({columns}) {forged}",
            f"REPLACE INTO acknowledgement ({columns}) {forged}",
            "INSERT OR REPLACE INTO acknowledgement_module (acknowledgement_id, module_version_id) "
            "SELECT acknowledgement_id, module_version_id FROM acknowledgement_module "
            "WHERE acknowledgement_id = :a",
        ]
    for statement in statements:
        with pytest.raises(DBAPIError, match="is evidence"):
            _sql(app, statement, a=world["ack_ann"])
    with app.app_context():
        assert db.session.get(Acknowledgement, world["ack_ann"]).typed_name == "Ann Signer"
    assert _problems(app) == []


def test_bytes_stored_with_a_matching_digest_behind_the_apps_back_are_never_served(
    app, world, auth, caplog
):
    """A certificate's PDF and digest replaced together (what the PDF-storing transition would
    let anyone with the database's rights do) match each other but not the chain: not served."""
    forged = b"%PDF-1.4 forged: never trained"
    _tamper(app, "UPDATE certificate SET pdf = :p, pdf_sha256 = :h WHERE id = :c", p=forged,
            h=hashlib.sha256(forged).hexdigest(), c=world["certificate"])  # fmt: skip
    with app.app_context():
        code = db.session.get(Certificate, world["certificate"]).code
    response = auth.as_person(world["ann"]).get(f"/certificates/{code}.pdf")
    assert response.status_code == 500 and b"forged" not in response.data
    assert "not as the audit log records it; not served" in caplog.text


def test_a_leaving_date_set_behind_the_apps_back_erases_no_one(app, world, runner):
    """The erasure timer acts on who left and when: a person made a leaver directly in the
    database (still trained, still working there) is refused, reported, and keeps everything."""
    ann = world["ann"]
    _sql(app, "UPDATE person SET active = :f, deactivated_at = :t WHERE id = :p", f=False,
         t=utcnow() - timedelta(days=4000), p=ann)  # fmt: skip
    result = runner.invoke(args=["people", "erase-expired"])
    assert result.exit_code == 1, result.output
    assert f"person {ann} does not match the digest" in result.output
    with app.app_context():
        person = db.session.get(Person, ann)
        assert person.erased_at is None and person.name != pseudonym(ann)[0]
        assert db.session.get(Acknowledgement, world["ack_ann"]).typed_name != ""
