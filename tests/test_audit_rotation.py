"""Replacing the audit log's key (ASVS V11.2.2): later rows use a new key, earlier keys stay for
verify, and someone who learns an old key can no longer change the log unnoticed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import select, text

from audit.log import KEYRING, ROTATED, audit_key, key_id, record, row_hash, verify
from audit.models import AuditEvent
from core.db import db, utcnow
from tests.test_audit import _some_events, _tamper, verify_cli

pytestmark = pytest.mark.usefixtures("published")


def _rotate(app, make_person) -> str:
    admin = make_person("admin", email=f"admin{os.urandom(3).hex()}@ladysmith.example")
    with app.app_context():
        from people.models import Person

        email = db.session.get(Person, admin).email
    result = app.test_cli_runner().invoke(args=["audit", "rotate-key", "--actor", email])
    assert result.exit_code == 0, result.output
    with app.app_context():
        row = db.session.scalars(select(AuditEvent).where(AuditEvent.event == ROTATED)).all()[-1]
        assert row.actor_id == admin
        return json.loads(row.detail)["next_key"]


def test_after_a_rotation_new_rows_use_the_new_key_and_the_whole_log_verifies(
    app, make_person
) -> None:
    _some_events(app, 3)
    with app.app_context():
        first = audit_key()
    kid = _rotate(app, make_person)
    path = Path(app.instance_path) / KEYRING / kid
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key_id(path.read_bytes()) == kid and path.read_bytes().strip() != first
    _some_events(app, 2)
    with app.app_context():
        rows = db.session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        after = [r for r in rows if r.seq > next(r.seq for r in rows if r.event == ROTATED)]
        new_key = path.read_bytes().strip()
        for row in after:
            fields = {c: getattr(row, c) for c in (
                "seq", "at", "event", "actor_id", "subject_type", "subject_id", "detail",
                "prev_hash")}  # fmt: skip
            assert row.hash == row_hash(new_key, **fields)
            assert row.hash != row_hash(first, **fields)
        assert verify(db.session).ok
    assert verify_cli(app).exit_code == 0


def test_someone_holding_the_old_key_cannot_rewrite_the_rows_before_the_rotation(
    app, make_person
) -> None:
    _some_events(app, 3)
    with app.app_context():
        old_key = audit_key()
    _rotate(app, make_person)
    _some_events(app, 1)
    # Row 2 is rewritten and every row up to the rotation re-hashed with the old key, as someone
    # who copied that key could; the first row after the rotation needs the new key to re-hash.
    with app.app_context():
        rows = db.session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        db.session.expunge_all()
    rotation = next(r.seq for r in rows if r.event == ROTATED)
    updates, prev = [], rows[0].hash
    for row in rows[1:rotation]:
        detail = '{"created":99}' if row.seq == 2 else row.detail
        fields = {"seq": row.seq, "at": row.at, "event": row.event, "actor_id": row.actor_id,
                  "subject_type": row.subject_type, "subject_id": row.subject_id,
                  "detail": detail, "prev_hash": prev}  # fmt: skip
        forged = row_hash(old_key, **fields)
        updates.append({"detail": detail, "prev": prev, "hash": forged, "seq": row.seq})
        prev = forged
    with app.app_context():  # the guard off, as someone with the owner's login could
        s = db.session
        postgresql = s.get_bind().dialect.name == "postgresql"
        if postgresql:
            s.execute(text("ALTER TABLE audit_event DISABLE TRIGGER USER"))
        else:
            s.execute(text("DROP TRIGGER audit_event_no_update"))
        for values in updates:
            s.execute(
                text("UPDATE audit_event SET detail = :detail, prev_hash = :prev, hash = :hash "
                     "WHERE seq = :seq"), values,
            )  # fmt: skip
        if postgresql:
            s.execute(text("ALTER TABLE audit_event ENABLE TRIGGER USER"))
        s.commit()
    result = verify_cli(app)
    assert result.exit_code == 1
    assert f"row {rotation + 1} is out of place" in result.output
    assert "row 2 changed" not in result.output  # the forgery itself hashes correctly


def test_a_missing_rotated_key_is_named_and_nothing_is_recorded_without_it(
    app, make_person
) -> None:
    _some_events(app, 2)
    kid = _rotate(app, make_person)
    moved = Path(app.instance_path) / f"{kid}.elsewhere"
    (Path(app.instance_path) / KEYRING / kid).rename(moved)
    app.extensions.pop("countersign.audit_keyring_cache", None)
    result = verify_cli(app)
    assert result.exit_code == 1 and f"hands the chain to audit key {kid}" in result.output
    with app.app_context():
        from audit.log import KeyMissing

        with pytest.raises(KeyMissing, match=kid):
            record(db.session, "people.imported", detail={"created": 1})
        db.session.rollback()
    moved.rename(Path(app.instance_path) / KEYRING / kid)
    assert verify_cli(app).exit_code == 0


def test_rotation_is_refused_while_the_log_does_not_verify_and_needs_an_administrator(
    app, make_person
) -> None:
    _some_events(app, 3)
    staff = make_person("staff", email="staff.rotate@ladysmith.example")
    assert staff
    refused = app.test_cli_runner().invoke(
        args=["audit", "rotate-key", "--actor", "staff.rotate@ladysmith.example"]
    )
    assert refused.exit_code == 2 and "active administrator" in refused.output
    _tamper(app, "UPDATE audit_event SET detail = '{\"created\": 42}' WHERE seq = 2")
    admin = make_person("admin", email="admin.rotate@ladysmith.example")
    assert admin
    result = app.test_cli_runner().invoke(
        args=["audit", "rotate-key", "--actor", "admin.rotate@ladysmith.example"]
    )
    assert result.exit_code == 1 and "does not verify" in result.output
    with app.app_context():
        assert db.session.scalar(select(AuditEvent.seq).where(AuditEvent.event == ROTATED)) is None
        assert not (Path(app.instance_path) / KEYRING).exists()


def test_a_backup_carries_rotated_keys_and_restores_a_log_that_verifies(
    app, make_person, tmp_path
) -> None:
    from tests.test_backup import BACKUP_KEY, make_app

    app.config["BACKUP_KEY"] = BACKUP_KEY
    _some_events(app, 2)
    kid = _rotate(app, make_person)
    _some_events(app, 2)
    archive = tmp_path / "rotated.tar.gz"
    made = app.test_cli_runner().invoke(args=["backup", "--output", str(archive)])
    assert made.exit_code == 0, made.output
    fresh = make_app(
        f"sqlite:///{tmp_path / 'restored.db'}", tmp_path / "restored-instance",
        Path(app.config["CONTENT_DIR"]), BACKUP_KEY=BACKUP_KEY,
    )  # fmt: skip
    restored = fresh.test_cli_runner().invoke(args=["restore", str(archive)])
    assert restored.exit_code == 0, restored.output
    assert (tmp_path / "restored-instance" / KEYRING / kid).is_file()
    assert (tmp_path / "restored-instance" / KEYRING / f"{kid}.at").is_file()
    assert fresh.test_cli_runner().invoke(args=["audit", "verify"]).exit_code == 0
    with fresh.app_context():
        record(db.session, "people.imported", detail={"created": 5})
        db.session.commit()
        assert verify(db.session).ok
        db.session.execute(text("SELECT 1"))
        db.engine.dispose()


def _insert_row(app, event: str, detail: str) -> None:
    """An audit row added behind the application's back (any role that may INSERT can)."""
    with app.app_context():
        s = db.session
        top = s.execute(
            select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc())
        ).first()
        s.execute(
            text("INSERT INTO audit_event (seq, at, event, actor_id, subject_type, subject_id, "
                 "detail, prev_hash, hash) VALUES (:s, :at, :e, NULL, NULL, NULL, :d, :p, :h)"),
            {"s": top.seq + 1, "at": utcnow().replace(tzinfo=None), "e": event, "d": detail, "p": top.hash,
             "h": "0" * 64},
        )  # fmt: skip
        s.commit()


def test_a_forged_rotation_row_neither_switches_keys_nor_stops_recording(app, make_person):
    _some_events(app, 2)
    _insert_row(app, ROTATED, '{"next_key":"0000000000000000"}')
    with app.app_context():
        record(db.session, "people.imported", detail={"created": 1})  # still records
        db.session.commit()
    result = verify_cli(app)
    assert result.exit_code == 1 and "changed: its content does not match its hash" in result.output


@pytest.mark.parametrize("detail", ['"digest" not json', '{"digest": [[[[', "[1, 2]"])
def test_a_malformed_row_is_reported_and_verify_and_backups_still_run(app, detail, tmp_path):
    _some_events(app, 2)
    _insert_row(app, "sign_in.failed", detail)
    result = verify_cli(app)
    assert result.exit_code == 1 and "changed: its content does not match its hash" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    from tests.test_backup import BACKUP_KEY

    app.config["BACKUP_KEY"] = BACKUP_KEY
    made = app.test_cli_runner().invoke(args=["backup", "--output", str(tmp_path / "b.tar.gz")])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "b.tar.gz").exists()


def test_removing_a_rotation_and_re_signing_with_the_old_key_is_noticed(app, make_person):
    """Whoever holds the key from before a rotation (an old backup holds it) removes the rotation
    and re-appends rows with the old key: the keyring says where the new key took over."""
    _some_events(app, 2)
    with app.app_context():
        old_key = audit_key()
    kid = _rotate(app, make_person)
    _some_events(app, 1)
    with app.app_context():
        rotation = db.session.scalar(select(AuditEvent.seq).where(AuditEvent.event == ROTATED))
        last = db.session.execute(
            select(AuditEvent).where(AuditEvent.seq == rotation - 1)
        ).scalar_one()
        db.session.expunge_all()
    _tamper(app, f"DELETE FROM audit_event WHERE seq >= {rotation}")
    with app.app_context():  # one row re-appended with the old key, as the attacker would
        s = db.session
        fields = {"seq": rotation, "at": last.at, "event": "people.imported", "actor_id": None,
                  "subject_type": None, "subject_id": None, "detail": '{"created":7}',
                  "prev_hash": last.hash}  # fmt: skip
        s.execute(
            text("INSERT INTO audit_event (seq, at, event, actor_id, subject_type, subject_id, "
                 "detail, prev_hash, hash) VALUES (:seq, :at, :event, :actor_id, :subject_type, "
                 ":subject_id, :detail, :prev_hash, :hash)"),
            {**fields, "at": last.at.replace(tzinfo=None), "hash": row_hash(old_key, **fields)},
        )  # fmt: skip
        s.commit()
    result = verify_cli(app)
    assert result.exit_code == 1
    assert f"audit key {kid} took over after row {rotation}" in result.output
    with app.app_context():
        from audit.log import KeyRolledBack

        with pytest.raises(KeyRolledBack, match=kid):  # nothing is signed with the old key again
            record(db.session, "people.imported", detail={"created": 1})
        db.session.rollback()


def test_an_upgraded_database_changed_before_it_was_sealed_can_still_be_sealed(
    app, make_person
) -> None:
    """People from before digests (an upgrade) have no audit rows; one of them leaves before
    anyone runs `flask audit seal`. Sealing then completes, verify is clean, and the key can be
    rotated: the application's change is no reason to refuse for ever."""
    with app.app_context():
        s = db.session
        for n in (1, 2, 3):  # as an older version left them: no digests in the chain
            s.execute(text("INSERT INTO person (id, name, email, active, auth_version, "
                           "status_rev, created_at) VALUES (:i, :n, :e, :a, 1, 0, :c)"),
                      {"i": n, "n": f"Old {n}", "e": f"old{n}@ladysmith.example", "a": True,
                       "c": utcnow().replace(tzinfo=None)})  # fmt: skip
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SELECT setval(pg_get_serial_sequence('person', 'id'), 3)"))
        s.commit()
    admin = make_person("admin", email="admin.seal@ladysmith.example")
    assert admin > 3
    with app.app_context():
        from people.models import Person
        from people.service import deactivate

        deactivate(db.session.get(Person, 2), admin)
        db.session.commit()
    before = verify_cli(app)
    assert before.exit_code == 1 and "person 1 inserted without an audit row" in before.output
    sealed = app.test_cli_runner().invoke(
        args=["audit", "seal", "--actor", "admin.seal@ladysmith.example", "--yes"]
    )
    assert sealed.exit_code == 0, sealed.output
    assert "Sealed 2 evidence rows" in sealed.output
    after = verify_cli(app)
    assert after.exit_code == 0, after.output
    _rotate(app, make_person)
