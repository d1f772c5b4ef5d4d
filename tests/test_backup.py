"""Backups and restores: a backup of realistic records comes back whole into an empty database, on
either backend, with the audit chain intact and everyone's training status as it was; a damaged
backup restores nothing; the application role on PostgreSQL cannot touch the schema."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from app import create_app
from core.db import Base, db, normalise_url
from core.migrate import upgrade
from people.models import Person, PersonRole
from people.service import record_person
from tests.conftest import PG_URL, cached_world, train_people
from training.publishing import published_policies
from training.status import statuses_for

TARGETS = ["sqlite"] + (["postgresql"] if PG_URL else [])
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
# Extra databases and roles beside the test database, named after it.
_TEST_DB = make_url(PG_URL).database if PG_URL else "countersign_test"
RESTORE_DB = f"{_TEST_DB}_restore"
# The key that authenticates backups, held by whoever makes and restores them, never in a backup.
BACKUP_KEY = "test-backup-key-kept-apart-from-the-backups"


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"BACKUP_KEY": BACKUP_KEY}


# --- helpers -----------------------------------------------------------------------------------


def _pg_admin():
    return create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT")


def fresh_pg_database(name: str, owner: str | None = None) -> str:
    """An empty PostgreSQL database beside the test one; its URL."""
    engine = _pg_admin()
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else "")))
    engine.dispose()
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(name: str) -> None:
    engine = _pg_admin()
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def make_app(url: str, instance: Path, content_dir: Path, **config: Any) -> Flask:
    instance.mkdir(parents=True, exist_ok=True)
    application = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": url,
            "CONTENT_DIR": str(content_dir),
            "SECRET_KEY": "test-secret-key-not-for-production",
            "SERVER_NAME": "countersign.test",
            "BASE_URL": "http://countersign.test",
            "BACKUP_KEY": BACKUP_KEY,
            **config,
        }
    )
    application.instance_path = str(instance)
    return application


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path, content_dir: Path):
    """A factory for the app of an empty database to restore into (no schema, no keys)."""
    made: list[tuple[Flask, str | None]] = []

    def factory(kind: str = "sqlite", **config: Any) -> Flask:
        if kind == "sqlite":
            url, pg_name = f"sqlite:///{tmp_path / f'restored-{len(made)}.db'}", None
        else:
            pg_name = RESTORE_DB
            url = fresh_pg_database(pg_name)
        application = make_app(url, tmp_path / f"restored-instance-{len(made)}", content_dir,
                               **config)  # fmt: skip
        made.append((application, pg_name))
        return application

    yield factory
    for application, pg_name in made:
        with application.app_context():
            db.engine.dispose()
        if pg_name:
            drop_pg_database(pg_name)


@pytest.fixture
def records(request: pytest.FixtureRequest, app: Flask, runner, published, make_person) -> None:
    """A realistic federation: the demo's people, readings, quizzes, signatures and accounts,
    certificates with their PDFs, an API token, and the LTI key made."""

    def build() -> None:
        result = runner.invoke(args=["demo", "--people", "30"])
        assert result.exit_code == 0, result.output
        _certificates_token_and_key(app, runner)

    cached_world(request, app, make_person, build)


@pytest.fixture
def federation(request: pytest.FixtureRequest, app: Flask, runner, published, make_person) -> None:
    """A few dozen people recorded as the app records them (each reading, quiz and signature
    through the rule functions): most trained, some part-way, some not started; certificates, an
    API token and the LTI key made."""
    cached_world(request, app, make_person, lambda: _federation(app, runner, make_person))


def _federation(app: Flask, runner, make_person) -> None:
    from sqlalchemy import select as select_

    from tests.conftest import complete_modules
    from training.models import Policy

    roles = ("staff", "volunteer", "parent", "governor", "staff", "slt")
    people = [make_person(roles[n % len(roles)], schools=("infant",)) for n in range(24)]
    train_people(app, *people[:14])
    with app.app_context():
        policy = db.session.scalar(select_(Policy))
        for pid in people[14:19]:
            person = db.session.get(Person, pid)
            first = training_modules(policy, person)[:2]
            complete_modules(db.session, person, policy, only=set(first))
        db.session.commit()
    _certificates_token_and_key(app, runner)


def _certificates_token_and_key(app: Flask, runner) -> None:
    """What both federations end with: certificates issued, an API token, the LTI key made."""
    for args in (["certificates", "issue"], ["tokens", "create", "--name", "HR",
                                             "--scope", "training:read"]):  # fmt: skip
        result = runner.invoke(args=args)
        assert result.exit_code == 0, result.output
    from lti.keys import private_key_pem

    with app.app_context():
        private_key_pem()


def training_modules(policy, person) -> list[str]:
    from training.status import training_status

    return [m.slug for m in training_status(db.session, person, policy).modules]


def make_backup(app: Flask, path: Path) -> Any:
    result = app.test_cli_runner().invoke(args=["backup", "--output", str(path)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def restore(application: Flask, path: Path, *args: str) -> Any:
    return application.test_cli_runner().invoke(args=["restore", str(path), *args])


def statuses(application: Flask) -> dict[tuple[str, int], Any]:
    with application.app_context():
        session = db.session
        people = list(session.scalars(select(Person).order_by(Person.id)))
        answers = {}
        for policy, _version in published_policies(session):
            for pid, status in statuses_for(session, people, policy, NOW).items():
                answers[(policy.slug, pid)] = status
        assert answers
        return answers


def row_counts(application: Flask) -> dict[str, int]:
    with application.app_context():
        return {
            t.name: db.session.scalar(select(func.count()).select_from(t))
            for t in Base.metadata.sorted_tables
            if t.name != "alembic_version"
        }


def tables_with_rows(application: Flask) -> list[str]:
    """Tables holding rows, among those the database has (an older schema lacks later ones)."""
    with application.app_context():
        existing = set(inspect(db.engine).get_table_names())
        return [
            t.name
            for t in Base.metadata.sorted_tables
            if t.name in existing
            and t.name != "alembic_version"
            and db.session.scalar(select(func.count()).select_from(t))
        ]


def read_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def write_members(output: Path, members: dict[str, bytes], sign_with: str | None = None) -> None:
    """Tar ``members`` up again; with ``sign_with``, give the manifest a new MAC under that key,
    as someone holding the backup key could."""
    if sign_with is not None:
        from operations.backup import manifest_mac

        mac = json.loads(members["manifest.mac"])
        mac["mac"] = manifest_mac(sign_with.encode(), members["manifest.json"])
        members = {**members, "manifest.mac": json.dumps(mac).encode()}
    with tarfile.open(output, "w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


def rewrite_backup(
    source: Path, output: Path, table: str, change, sign_with: str | None = BACKUP_KEY, **claims
) -> None:
    """A copy of a backup with one table's lines changed and its manifest entry made to match
    (and ``claims`` set in the manifest), re-signed with ``sign_with`` (None: the MAC is left as
    it was)."""
    members = read_members(source)
    manifest = json.loads(members["manifest.json"])
    lines = change(members[f"tables/{table}.jsonl"].splitlines(keepends=True))
    data = b"".join(lines)
    members[f"tables/{table}.jsonl"] = data
    manifest["tables"][table].update(rows=len(lines), sha256=hashlib.sha256(data).hexdigest())
    manifest.update(claims)
    members["manifest.json"] = json.dumps(manifest).encode()
    write_members(output, members, sign_with)


def audit_verify(application: Flask) -> Any:
    return application.test_cli_runner().invoke(args=["audit", "verify"])


def add_person(application: Flask) -> int:
    with application.app_context():
        person = Person(name="Nadia Restored", email="nadia.restored@ladysmith.example")
        person.role_rows = [PersonRole(role="staff")]
        db.session.add(person)
        db.session.flush()
        record_person(db.session, "person.created", [person.id], None)  # as the app adds people
        db.session.commit()
        return person.id


# --- backup and restore ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TARGETS)
def test_backup_restores_into_an_empty_database_with_chain_and_statuses_intact(
    app, federation, target, tmp_path, kind
):
    before_statuses, before_counts = statuses(app), row_counts(app)
    assert {s.trained for s in before_statuses.values()} == {True, False}
    source_instance = Path(app.instance_path)
    path = tmp_path / "backup.tar.gz"
    make_backup(app, path)

    restored = target(kind)
    result = restore(restored, path)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "the audit log verifies" in result.output

    verified = audit_verify(restored)
    assert verified.exit_code == 0 and "is intact" in verified.output, verified.output
    assert row_counts(restored) == before_counts
    assert statuses(restored) == before_statuses
    instance = Path(restored.instance_path)
    for name in ("audit_key", "lti_private_key.pem"):
        assert (instance / name).read_bytes() == (source_instance / name).read_bytes()
        assert stat.S_IMODE((instance / name).stat().st_mode) == 0o600

    # Work goes on after a restore: new rows get new ids (sequences were reset on PostgreSQL) and
    # a new acknowledgement extends the same chain under the restored key.
    with restored.app_context():
        head_before = db.session.execute(text("SELECT max(seq) FROM audit_event")).scalar()
    newcomer = add_person(restored)
    assert newcomer == max(pid for _slug, pid in before_statuses) + 1
    train_people(restored, newcomer)
    verified = audit_verify(restored)
    assert verified.exit_code == 0, verified.output
    with restored.app_context():
        events = db.session.execute(
            text("SELECT event FROM audit_event WHERE seq > :seq"), {"seq": head_before}
        ).scalars()
        assert "acknowledgement.signed" in list(events)
    assert any(s.trained for (_slug, pid), s in statuses(restored).items() if pid == newcomer)


def test_a_backup_restored_elsewhere_backs_up_to_the_same_rows(app, records, target, tmp_path):
    """The format is exact: values (times, JSON, PDFs) survive a round trip unchanged, from
    whichever backend to whichever other, across every table the demo fills; and `flask audit
    verify` says the same of the copy as of the original."""
    first, second = tmp_path / "first.tar.gz", tmp_path / "second.tar.gz"
    verified = audit_verify(app).output
    make_backup(app, first)
    restored = target(TARGETS[-1])
    result = restore(restored, first)
    assert result.exit_code == 0, result.output
    assert audit_verify(restored).output == verified
    make_backup(restored, second)

    def tables(path: Path) -> dict[str, str]:
        with tarfile.open(path, "r:gz") as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())
        return {name: entry["sha256"] for name, entry in manifest["tables"].items()}

    assert tables(first) == tables(second)


@pytest.fixture
def few_records(request: pytest.FixtureRequest, app: Flask, published, make_person) -> list[int]:
    """A handful of people, two of them trained: enough for the refusals, quicker than the demo."""
    from lti.keys import private_key_pem

    def build() -> list[int]:
        people = [make_person("staff"), make_person("volunteer"), make_person("staff")]
        train_people(app, *people[:2])
        with app.app_context():
            private_key_pem()
        return people

    return cached_world(request, app, make_person, build)


def test_a_signature_made_during_a_backup_is_wholly_in_it_or_wholly_out(
    app, few_records, target, tmp_path, monkeypatch
):
    """The backup reads every table in one snapshot: a person who signs while it runs (after the
    audit log was read, before the acknowledgements were) is in neither, so the restored log still
    accounts for every acknowledgement."""
    from operations import backup as backup_module

    late_signer = few_records[2]
    dump = backup_module._dump

    def dump_then_someone_signs(connection, table, out):
        result = dump(connection, table, out)
        if table.name == "audit_event":
            train_people(app, late_signer)
        return result

    monkeypatch.setattr(backup_module, "_dump", dump_then_someone_signs)
    path = tmp_path / "backup.tar.gz"
    make_backup(app, path)
    with app.app_context():  # the signature was made, on the live database
        assert db.session.scalar(
            text("SELECT count(*) FROM acknowledgement WHERE person_id = :p"), {"p": late_signer}
        )

    with tarfile.open(path, "r:gz") as tar:

        def rows(name: str) -> list[dict]:
            return [json.loads(line) for line in tar.extractfile(f"tables/{name}.jsonl")]

        acknowledgements = rows("acknowledgement")
        signed = {
            r["subject_id"] for r in rows("audit_event") if r["event"] == "acknowledgement.signed"
        }
    assert acknowledgements and {str(r["id"]) for r in acknowledgements} == signed
    assert late_signer not in {r["person_id"] for r in acknowledgements}
    restored = target()
    assert restore(restored, path).exit_code == 0
    assert audit_verify(restored).exit_code == 0


def test_backup_is_private_and_says_it_holds_secrets(app, few_records, tmp_path):
    path = tmp_path / "backups" / "b.tar.gz"
    result = make_backup(app, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "CONTAINS SECRETS" in result.output and "audit log's key" in result.output
    with tarfile.open(path, "r:gz") as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())
    assert names[0] == "manifest.json"
    assert {"keys/audit_key", "keys/lti_private_key.pem"} <= set(names)
    assert manifest["alembic_revision"] and manifest["app_version"]
    assert manifest["audit_head"].startswith(f"{manifest['tables']['audit_event']['rows']}:")
    assert manifest["tables"]["acknowledgement"]["rows"] > 0
    # Every backup is on the record, like any export of personal data.
    with app.app_context():
        event, detail = db.session.execute(
            text("SELECT event, detail FROM audit_event ORDER BY seq DESC LIMIT 1")
        ).one()
    total = sum(t["rows"] for t in manifest["tables"].values())
    assert event == "export.backup" and json.loads(detail)["rows"] == total
    # Nothing is ever overwritten.
    again = app.test_cli_runner().invoke(args=["backup", "--output", str(path)])
    assert again.exit_code == 1 and "already exists" in again.output


def test_backup_refuses_a_table_it_does_not_know(app, tmp_path):
    with app.app_context():
        db.session.execute(text("CREATE TABLE stray_notes (id INTEGER PRIMARY KEY)"))
        db.session.commit()
    try:
        runner = app.test_cli_runner()
        result = runner.invoke(args=["backup", "--output", str(tmp_path / "b.tgz")])
        assert result.exit_code == 1 and "stray_notes" in result.output
        assert not (tmp_path / "b.tgz").exists()
    finally:
        with app.app_context():
            db.session.execute(text("DROP TABLE stray_notes"))
            db.session.commit()


# --- refusals: nothing half-written ------------------------------------------------------------


def test_truncated_backup_restores_nothing(app, few_records, target, tmp_path):
    path = tmp_path / "backup.tar.gz"
    make_backup(app, path)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    restored = target()
    result = restore(restored, cut)
    assert result.exit_code == 1
    assert "damaged or incomplete" in result.output and "nothing was restored" in result.output
    assert tables_with_rows(restored) == []
    assert not (Path(restored.instance_path) / "audit_key").exists()


def test_backup_with_a_changed_row_restores_nothing(app, few_records, target, tmp_path):
    path, changed = tmp_path / "backup.tar.gz", tmp_path / "changed.tar.gz"
    make_backup(app, path)
    with tarfile.open(path, "r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    members["tables/acknowledgement.jsonl"] = members["tables/acknowledgement.jsonl"].replace(
        b'"typed_name":"', b'"typed_name":"X', 1
    )
    with tarfile.open(changed, "w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    restored = target()
    result = restore(restored, changed)
    assert result.exit_code == 1 and "does not match its checksum" in result.output
    assert tables_with_rows(restored) == []


def _doctor(lines: list[bytes]) -> list[bytes]:
    """Acknowledgement 1 signed by someone else, from elsewhere (as a forger would edit it)."""
    first = json.loads(lines[0])
    first.update(typed_name="Someone Else", ip="10.9.9.9")
    return [json.dumps(first, separators=(",", ":")).encode() + b"\n", *lines[1:]]


def test_a_doctored_backup_without_the_backup_key_restores_nothing(
    app, few_records, target, tmp_path
):
    """A row changed, its checksum recomputed and the manifest's claim about the log set to
    null: without the backup key the MAC cannot be made again, and restore refuses the file."""
    path, doctored = tmp_path / "backup.tar.gz", tmp_path / "doctored.tar.gz"
    make_backup(app, path)
    rewrite_backup(path, doctored, "acknowledgement", _doctor, sign_with=None,
                   audit_problems=None)  # fmt: skip
    restored = target()
    result = restore(restored, doctored)
    assert result.exit_code == 1
    assert "does not match the backup key" in result.output
    assert "Nothing was restored" in result.output
    assert tables_with_rows(restored) == []
    assert not (Path(restored.instance_path) / "audit_key").exists()
    # Told to skip the MAC, restore's own walk of the evidence still refuses it.
    unchecked = restore(restored, doctored, "--unauthenticated")
    assert unchecked.exit_code == 1
    assert "PROBLEM: acknowledgement 1 edited" in unchecked.output
    assert tables_with_rows(restored) == []


@pytest.mark.parametrize("claim", [None, "copied"])
def test_restore_reports_what_its_own_verify_found_never_the_manifests_claim(
    app, few_records, target, tmp_path, claim
):
    """Someone holding the backup key re-signs a doctored file whose manifest says the log had no
    problems (or copies the real problem text into it): restore's own walk finds the edit, lists
    it and restores nothing; with --accept-problems it restores and says the log does not verify."""
    path, doctored = tmp_path / "backup.tar.gz", tmp_path / "doctored.tar.gz"
    make_backup(app, path)
    problem = "acknowledgement 1 edited"
    claims: dict[str, Any] = {"audit_problems": None}
    if claim:  # the manifest lists the real problem, word for word
        rewrite_backup(path, doctored, "acknowledgement", _doctor)
        found = restore(target(), doctored, "--accept-problems").output
        line = next(x for x in found.splitlines() if problem in x)
        claims["audit_problems"] = [line.removeprefix("PROBLEM: ")]
    rewrite_backup(path, doctored, "acknowledgement", _doctor, **claims)
    restored = target()
    result = restore(restored, doctored)
    assert result.exit_code == 1
    assert f"PROBLEM: {problem}" in result.output and "Nothing was restored" in result.output
    assert "verifies" not in result.output and "same" not in result.output
    assert tables_with_rows(restored) == []
    accepted = restore(restored, doctored, "--accept-problems")
    assert accepted.exit_code == 0, accepted.output
    assert "does NOT verify: 1 problem(s)" in accepted.output
    assert f"PROBLEM: {problem}" in accepted.output
    assert "the audit log verifies" not in accepted.output
    assert audit_verify(restored).exit_code == 1


def test_a_backup_without_authentication_restores_only_when_told(
    app, few_records, target, tmp_path
):
    path, legacy = tmp_path / "backup.tar.gz", tmp_path / "legacy.tar.gz"
    make_backup(app, path)
    members = read_members(path)
    del members["manifest.mac"]
    write_members(legacy, members)
    restored = target()
    refused = restore(restored, legacy)
    assert refused.exit_code == 1 and "carries no authentication code" in refused.output
    assert "--unauthenticated" in refused.output
    assert tables_with_rows(restored) == []
    told = restore(restored, legacy, "--unauthenticated")
    assert told.exit_code == 0, told.output
    assert "not checking the file against the backup key" in told.output
    assert "the audit log verifies" in told.output


def test_the_backup_key_is_made_once_kept_apart_and_needed_to_restore(
    app, few_records, target, tmp_path
):
    app.config["BACKUP_KEY"] = ""
    key_file = Path(app.instance_path) / "backup_key"
    path = tmp_path / "backup.tar.gz"
    made = make_backup(app, path)
    key = key_file.read_bytes().strip()
    assert len(key) == 64 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert str(key_file) in made.output and "restoring needs it" in made.output
    members = read_members(path)
    assert not any(key in body for body in members.values())  # never inside the backup
    assert not any("backup_key" in name for name in members)
    make_backup(app, tmp_path / "second.tar.gz")
    assert key_file.read_bytes().strip() == key  # made once, then reused

    keyless = target(BACKUP_KEY="")
    refused = restore(keyless, path)
    assert refused.exit_code == 1 and "needs the backup key" in refused.output
    assert tables_with_rows(keyless) == []
    wrong = target(BACKUP_KEY="another-key")
    assert "does not match the backup key" in restore(wrong, path).output
    missing = str(tmp_path / "no-such-key")
    unreadable = restore(target(BACKUP_KEY="", BACKUP_KEY_FILE=missing), path)
    assert unreadable.exit_code == 1 and "backup key cannot be read" in unreadable.output
    app.config["BACKUP_KEY_FILE"] = missing
    not_made = app.test_cli_runner().invoke(args=["backup", "--output", str(tmp_path / "x.tgz")])
    assert not_made.exit_code == 1 and "backup key cannot be read" in not_made.output
    assert not (tmp_path / "no-such-key").exists() and not (tmp_path / "x.tgz").exists()
    right = target(BACKUP_KEY="", BACKUP_KEY_FILE=str(key_file))
    result = restore(right, path)
    assert result.exit_code == 0, result.output
    assert "matches the backup key" in result.output


@pytest.mark.parametrize("kind", TARGETS)
def test_rows_the_database_refuses_roll_back_the_whole_restore(
    app, records, target, tmp_path, kind
):
    """A failure deep into the restore (a duplicate acknowledgement, after most tables went in)
    leaves the database empty and no key written."""
    path, broken = tmp_path / "backup.tar.gz", tmp_path / "broken.tar.gz"
    make_backup(app, path)
    rewrite_backup(path, broken, "acknowledgement", lambda lines: [*lines, lines[-1]])
    restored = target(kind)
    result = restore(restored, broken)
    assert result.exit_code == 1, result.output
    assert "refused the backup's rows" in result.output and "Nothing was restored" in result.output
    assert tables_with_rows(restored) == []
    assert not (Path(restored.instance_path) / "audit_key").exists()
    # The schema built for it stays, so the same database takes the good backup afterwards.
    assert restore(restored, path).exit_code == 0


def test_a_tampered_log_is_restored_as_it_was_for_the_investigation(
    app, few_records, target, tmp_path, database_url
):
    """A backup is a faithful copy: a log that `flask audit verify` finds changed restores with
    the same problems (and says so), rather than being refused when it is needed most."""
    with app.app_context():
        if database_url.startswith("sqlite"):
            db.session.execute(text("DROP TRIGGER audit_event_no_update"))
        else:
            db.session.execute(text("ALTER TABLE audit_event DISABLE TRIGGER USER"))
        db.session.execute(text("UPDATE audit_event SET actor_id = 999 WHERE seq = 2"))
        if not database_url.startswith("sqlite"):  # the test database is shared: put it back
            db.session.execute(text("ALTER TABLE audit_event ENABLE TRIGGER USER"))
        db.session.commit()
    original = audit_verify(app)
    assert original.exit_code == 1 and "row 2 changed" in original.output
    path = tmp_path / "backup.tar.gz"
    made = make_backup(app, path)
    # The changed row, and the evidence it recorded, which no intact row records now.
    assert "reports 2 problem(s)" in made.output
    restored = target()
    refused = restore(restored, path)
    assert refused.exit_code == 1, refused.output
    assert "PROBLEM: row 2 changed" in refused.output and "--accept-problems" in refused.output
    assert tables_with_rows(restored) == []
    result = restore(restored, path, "--accept-problems")
    assert result.exit_code == 0, result.output
    assert "does NOT verify: 2 problem(s)" in result.output
    assert "PROBLEM: row 2 changed" in result.output
    assert audit_verify(restored).output == original.output


def test_restore_refuses_a_database_that_is_not_empty(app, few_records, target, tmp_path):
    path = tmp_path / "backup.tar.gz"
    make_backup(app, path)
    restored = target()
    assert restore(restored, path).exit_code == 0
    counts = row_counts(restored)
    again = restore(restored, path)
    assert again.exit_code == 1 and "not empty" in again.output
    assert row_counts(restored) == counts


def test_restore_refuses_another_schema_revision(app, few_records, target, tmp_path):
    path = tmp_path / "backup.tar.gz"
    make_backup(app, path)
    restored = target()
    from operations.backup import schema_head

    with restored.app_context():
        upgrade("0010")  # a database left at an older version
    result = restore(restored, path)
    assert result.exit_code == 1
    assert f"revision {schema_head()}" in result.output
    assert "this database is at 0010" in result.output
    assert tables_with_rows(restored) == []

    # A backup made by another version (another schema) is refused before anything is touched.
    older = tmp_path / "older.tar.gz"
    with tarfile.open(path, "r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    manifest = json.loads(members["manifest.json"])
    manifest.update(alembic_revision="0009", app_version="0.0.9")
    members["manifest.json"] = json.dumps(manifest).encode()
    write_members(older, members, sign_with=BACKUP_KEY)
    fresh = target()
    result = restore(fresh, older)
    assert result.exit_code == 1 and "with the version that made it" in result.output
    assert "0.0.9" in result.output
    with fresh.app_context():
        assert inspect(db.engine).get_table_names() == []


def test_restore_keeps_a_different_audit_key_unless_forced(app, few_records, target, tmp_path):
    path = tmp_path / "backup.tar.gz"
    make_backup(app, path)
    restored = target()
    own_key = Path(restored.instance_path) / "audit_key"
    own_key.write_text("a-key-this-instance-already-had")
    result = restore(restored, path)
    assert result.exit_code == 1 and "--force-keys" in result.output
    assert tables_with_rows(restored) == []
    assert own_key.read_text() == "a-key-this-instance-already-had"

    forced = restore(restored, path, "--force-keys")
    assert forced.exit_code == 0, forced.output
    assert own_key.read_bytes() == (Path(app.instance_path) / "audit_key").read_bytes()
    (aside,) = own_key.parent.glob("audit_key.replaced-*")
    assert aside.read_text() == "a-key-this-instance-already-had"
    assert audit_verify(restored).exit_code == 0


def test_restore_under_another_configured_audit_key_restores_nothing(
    app, few_records, target, tmp_path
):
    path = tmp_path / "backup.tar.gz"
    make_backup(app, path)
    restored = target(AUDIT_KEY="some-other-key")
    result = restore(restored, path)
    assert result.exit_code == 1 and "does not verify" in result.output
    assert tables_with_rows(restored) == []


def test_restore_of_a_missing_or_foreign_file_says_so(target, tmp_path):
    restored = target()
    missing = restore(restored, tmp_path / "nope.tar.gz")
    assert missing.exit_code == 1 and "no backup at" in missing.output
    foreign = tmp_path / "foreign.tar.gz"
    with tarfile.open(foreign, "w:gz") as tar:
        body = b'{"hello": 1}'
        info = tarfile.TarInfo("manifest.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    result = restore(restored, foreign)
    assert result.exit_code == 1 and "not a Countersign backup" in result.output


# --- the audit log's head, kept outside the database ---------------------------------------


def _delete_tail(application: Flask, database_url: str, after_seq: int) -> None:
    """What a database writer can do: remove every certificate and the audit rows after
    ``after_seq`` (the certificates' own), with the triggers out of the way."""
    with application.app_context():
        session = db.session
        if database_url.startswith("sqlite"):
            for trigger in ("audit_event_no_delete", "certificate_no_delete"):
                session.execute(text(f"DROP TRIGGER {trigger}"))
        else:
            for table in ("audit_event", "certificate"):
                session.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        session.execute(text("DELETE FROM certificate"))
        session.execute(text("DELETE FROM audit_event WHERE seq > :seq"), {"seq": after_seq})
        if not database_url.startswith("sqlite"):  # the test database is shared: put them back
            for table in ("audit_event", "certificate"):
                session.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
        session.commit()


def test_tail_deletion_passes_plain_verify_but_not_the_recorded_head(
    app, runner, few_records, tmp_path, database_url
):
    heads = tmp_path / "heads" / "audit-heads"
    heads.parent.mkdir()
    with app.app_context():
        assert db.session.scalar(text("SELECT count(*) FROM certificate")) == 0
        before = db.session.scalar(text("SELECT max(seq) FROM audit_event"))
    assert runner.invoke(args=["certificates", "issue"]).exit_code == 0
    with app.app_context():
        issued = db.session.scalar(text("SELECT count(*) FROM certificate"))
        top = db.session.scalar(text("SELECT max(seq) FROM audit_event"))
    assert issued and top > before

    app.config["AUDIT_HEAD_FILE"] = str(heads)
    recorded = runner.invoke(args=["audit", "head", "--record"])
    assert recorded.exit_code == 0, recorded.output
    assert f"Recorded in {heads}" in recorded.output
    assert stat.S_IMODE(heads.stat().st_mode) == 0o644  # the app's user reads it, never writes it
    assert heads.read_text().splitlines()[-1].split(" ")[1].startswith(f"{top}:")
    assert "is intact" in runner.invoke(args=["audit", "verify"]).output

    _delete_tail(app, database_url, before)
    app.config["AUDIT_HEAD_FILE"] = ""
    plain = runner.invoke(args=["audit", "verify"])
    assert plain.exit_code == 0 and "is intact" in plain.output  # the limitation the file closes

    app.config["AUDIT_HEAD_FILE"] = str(heads)
    anchored = runner.invoke(args=["audit", "verify"])
    assert anchored.exit_code == 1
    assert f"rows {before + 1} to {top} removed from the end" in anchored.output
    assert "Comparing with the head recorded" in anchored.output
    # A shorter log is never recorded over the longer one.
    again = runner.invoke(args=["audit", "head", "--record"])
    assert again.exit_code == 1 and "removed from the end" in again.output
    assert len(heads.read_text().splitlines()) == 1


@pytest.mark.parametrize(
    "doctor",
    [
        lambda m: {**m, "manifest.json": b" " * (17 * 1024 * 1024) + b"{}"},
        lambda m: {**m, "manifest.mac": b"[" * 100_000},
        lambda m: {**m, "manifest.json": b"[" * 100_000},
        lambda m: {**m, "manifest.mac": b" " * 5000 + b"{}"},
    ],
)
def test_an_oversized_or_deeply_nested_manifest_is_refused_plainly(
    app, few_records, target, tmp_path, doctor
):
    """Read before the backup is authenticated, so bounded: a small file cannot take the
    restoring machine's memory, and a nested one gets a message, not a traceback."""
    path = tmp_path / "backup.tar.gz"
    make_backup(app, path)
    doctored = tmp_path / "doctored.tar.gz"
    write_members(doctored, doctor(read_members(path)))
    restored = target()
    result = restore(restored, doctored)
    assert result.exit_code == 1, result.output
    assert "is damaged or incomplete" in result.output and "nothing was restored" in result.output
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    assert tables_with_rows(restored) == []


def _rewrite_history(app: Flask) -> None:
    """What code running as the app's user could do to a copy of the database it holds the audit
    key for: change one row and re-hash the whole chain after it, so the copy verifies."""
    from audit.log import audit_key, row_hash, verify
    from audit.models import AuditEvent

    with app.app_context():
        s = db.session
        key = audit_key()
        rows = s.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        s.expunge_all()
        # A row that records no evidence (a sign-in, say), given another actor.
        seq = next(r.seq for r in rows if r.seq > 1 and '"digest"' not in r.detail)
        postgresql = s.get_bind().dialect.name == "postgresql"
        if postgresql:
            s.execute(text("ALTER TABLE audit_event DISABLE TRIGGER USER"))
        else:
            s.execute(text("DROP TRIGGER audit_event_no_update"))
        prev = rows[seq - 2].hash if seq > 1 else "0" * 64
        for row in rows[seq - 1 :]:
            fields = {"seq": row.seq, "at": row.at, "event": row.event, "actor_id": row.actor_id,
                      "subject_type": row.subject_type, "subject_id": row.subject_id,
                      "detail": row.detail, "prev_hash": prev}  # fmt: skip
            if row.seq == seq:
                fields["actor_id"] = 999
            new = row_hash(key, **fields)
            s.execute(
                text(
                    "UPDATE audit_event SET actor_id = :a, prev_hash = :p, hash = :h WHERE seq = :s"
                ),
                {"a": fields["actor_id"], "p": prev, "h": new, "s": row.seq},
            )
            prev = new
        if postgresql:
            s.execute(text("ALTER TABLE audit_event ENABLE TRIGGER USER"))
        s.commit()
        assert verify(s).ok  # the copy verifies on its own


def test_a_backup_of_a_rewritten_log_is_refused_against_the_recorded_heads(
    app, runner, few_records, target, tmp_path
):
    """Someone who can read the app's keys can make a backup of a rewritten log that carries a
    valid authentication code; the heads recorded by another user show the rewrite."""
    from audit.log import record

    with app.app_context():
        record(db.session, "people.imported", actor_id=few_records[0], detail={"created": 0})
        db.session.commit()
    heads = tmp_path / "heads"
    app.config["AUDIT_HEAD_FILE"] = str(heads)
    assert runner.invoke(args=["audit", "head", "--record"]).exit_code == 0
    _rewrite_history(app)
    forged = tmp_path / "forged.tar.gz"
    make_backup(app, forged)

    refused = restore(target(), forged, "--heads", str(heads))
    assert refused.exit_code == 1
    assert "row " in refused.output and "the backup holds a rewritten log" in refused.output
    assert "Nothing was restored" in refused.output

    configured = target(AUDIT_HEAD_FILE=str(heads))  # the setting is used when --heads is not
    again = restore(configured, forged)
    assert again.exit_code == 1 and "rewritten log" in again.output
    assert tables_with_rows(configured) == []

    unanchored = restore(target(), forged)
    assert unanchored.exit_code == 0  # the limit the recorded heads close
    assert "no recorded heads to compare with" in unanchored.output


def test_the_check_page_compares_with_the_recorded_head_too(
    app, runner, auth, make_person, few_records, tmp_path, database_url
):
    """Governors read the web page, not the command: it reports the same tail deletion."""
    heads = tmp_path / "heads"
    with app.app_context():
        before = db.session.scalar(text("SELECT max(seq) FROM audit_event"))
    assert runner.invoke(args=["certificates", "issue"]).exit_code == 0
    app.config["AUDIT_HEAD_FILE"] = str(heads)
    assert runner.invoke(args=["audit", "head", "--record"]).exit_code == 0
    client = auth.as_person(make_person("governor"))
    page = client.get("/audit/check").get_data(as_text=True)
    assert "The audit log is intact" in page and "Compared with the head recorded" in page
    _delete_tail(app, database_url, before)
    page = client.get("/audit/check").get_data(as_text=True)
    assert "has been tampered with" in page and "removed from the end" in page
    heads.write_text("not a head\n")
    page = client.get("/audit/check").get_data(as_text=True)
    assert "The recorded head cannot be read" in page and "has been tampered with" in page


def test_the_evidence_pack_prints_the_head_that_verify_checks(
    app, runner, auth, make_person, few_records, tmp_path
):
    import shutil
    import subprocess

    if not shutil.which("pdftotext"):
        pytest.skip("pdftotext is not installed")
    client = auth.as_person(make_person("governor", schools=("infant",)))
    response = client.get("/reports/schools/infant/evidence.pdf")
    assert response.status_code == 200, response.status_code
    (tmp_path / "pack.pdf").write_bytes(response.data)
    words = " ".join(
        subprocess.run(  # noqa: S603 - fixed arguments
            ["pdftotext", str(tmp_path / "pack.pdf"), "-"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.split()
    )  # fmt: skip
    head = runner.invoke(args=["audit", "head"]).output.strip()  # the pack's download is the head
    seq, digest = head.split(":")
    assert f"entry {seq}, hash" in words and digest[:16] in words.replace(" ", "")
    assert runner.invoke(args=["audit", "verify", "--head", head]).exit_code == 0


def test_verify_uses_the_given_head_over_the_file_and_reads_it_strictly(
    app, runner, few_records, tmp_path
):
    heads = tmp_path / "audit-heads"
    app.config["AUDIT_HEAD_FILE"] = str(heads)
    missing = runner.invoke(args=["audit", "verify"])
    assert missing.exit_code == 0 and "no head has been recorded" in missing.output
    assert runner.invoke(args=["audit", "head", "--record"]).exit_code == 0
    heads.write_text(heads.read_text() + f"2026-01-01T00:00:00+00:00 999999:{'a' * 64}\n")
    assert runner.invoke(args=["audit", "verify"]).exit_code == 1
    with app.app_context():
        current = db.session.execute(text("SELECT seq, hash FROM audit_event ORDER BY seq DESC"))
        seq, digest = current.first()
    given = runner.invoke(args=["audit", "verify", "--head", f"{seq}:{digest}"])
    assert given.exit_code == 0, given.output
    heads.write_text("not a head\n")
    broken = runner.invoke(args=["audit", "verify"])
    assert broken.exit_code == 1 and "cannot be read" in broken.output
    app.config["AUDIT_HEAD_FILE"] = ""
    unset = runner.invoke(args=["audit", "head", "--record"])
    assert unset.exit_code == 1 and "COUNTERSIGN_AUDIT_HEAD_FILE" in unset.output


# --- the application role on PostgreSQL --------------------------------------------------------

OWNER, APP_ROLE, ROLE_DB = f"{_TEST_DB}_owner", f"{_TEST_DB}_app", f"{_TEST_DB}_roles"


@pytest.fixture
def role_database():
    if not PG_URL:
        pytest.skip("roles and grants are PostgreSQL's")
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{ROLE_DB}" WITH (FORCE)'))
        for role in (f"{_TEST_DB}_heir", APP_ROLE, OWNER):
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        conn.execute(text(f'CREATE ROLE "{OWNER}" LOGIN'))
        conn.execute(text(f'CREATE ROLE "{APP_ROLE}" LOGIN'))
    fresh_pg_database(ROLE_DB, owner=OWNER)
    # As deploy/postgresql-setup.sql does: only the owner creates objects in the schema.
    setup = create_engine(
        normalise_url(make_url(PG_URL).set(database=ROLE_DB).render_as_string(False)),
        isolation_level="AUTOCOMMIT",
    )
    with setup.connect() as conn:
        conn.execute(text(f'ALTER SCHEMA public OWNER TO "{OWNER}"'))
        conn.execute(text("REVOKE ALL ON SCHEMA public FROM PUBLIC"))
    setup.dispose()
    base = make_url(PG_URL).set(database=ROLE_DB)
    yield (
        base.set(username=OWNER).render_as_string(False),
        base.set(username=APP_ROLE).render_as_string(False),
    )
    drop_pg_database(ROLE_DB)
    with admin.connect() as conn:
        for role in (f"{_TEST_DB}_heir", APP_ROLE, OWNER):
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    admin.dispose()


def test_app_role_does_the_apps_work_but_cannot_alter_or_disable_triggers(
    role_database, tmp_path, content_dir
):
    owner_url, app_url = role_database
    application = make_app(
        app_url, tmp_path / "instance", content_dir,
        MIGRATION_DATABASE_URL=owner_url, DATABASE_APP_ROLE=APP_ROLE,
    )  # fmt: skip
    try:
        with application.app_context():
            upgrade()
        assert application.test_cli_runner().invoke(args=["content", "publish"]).exit_code == 0
        # The app's normal work, as the application role: people, reading, quizzes, signing,
        # the audit chain, a backup.
        pid = add_person(application)
        train_people(application, pid)
        assert audit_verify(application).exit_code == 0
        assert any(s.trained for (_slug, who), s in statuses(application).items() if who == pid)
        make_backup(application, tmp_path / "b.tar.gz")

        with application.app_context(), db.engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == APP_ROLE
            for statement in (
                "ALTER TABLE audit_event DISABLE TRIGGER ALL",
                "DROP TRIGGER audit_event_no_change ON audit_event",
                "ALTER TABLE acknowledgement ADD COLUMN note text",
                "DROP TABLE acknowledgement CASCADE",
                "UPDATE audit_event SET event = 'sign_out'",
                "DELETE FROM audit_event",
                "TRUNCATE audit_event",
                "UPDATE alembic_version SET version_num = '0001'",
                "CREATE TABLE mine (id integer)",
                "SET session_replication_role = replica",
            ):
                with pytest.raises(DBAPIError, match="must be owner|permission denied"):
                    with conn.begin_nested():
                        conn.execute(text(statement))
            conn.rollback()
    finally:
        with application.app_context():
            db.engine.dispose()


def test_app_role_configured_but_app_logged_in_as_owner_is_refused(
    role_database, tmp_path, content_dir
):
    owner_url, _app_url = role_database
    application = make_app(owner_url, tmp_path / "instance", content_dir,
                           DATABASE_APP_ROLE=APP_ROLE)  # fmt: skip
    try:
        with application.app_context(), pytest.raises(RuntimeError, match="logged in to Postgre"):
            db.session.execute(text("SELECT 1"))
    finally:
        with application.app_context():
            db.engine.dispose()


def test_migrating_refuses_an_app_role_that_is_missing_or_the_owner(
    role_database, tmp_path, content_dir
):
    owner_url, _app_url = role_database
    admin = _pg_admin()
    with admin.connect() as conn:  # an application role that inherits the owner's powers
        conn.execute(text(f'CREATE ROLE "{_TEST_DB}_heir" IN ROLE "{OWNER}"'))
    admin.dispose()
    refusals = ((f"{_TEST_DB}_nobody", "does not exist"), (OWNER, "separate role"),
                (f"{_TEST_DB}_heir", "member of"))  # fmt: skip
    for role, message in refusals:
        application = make_app(
            owner_url, tmp_path / "instance", content_dir,
            MIGRATION_DATABASE_URL=owner_url, DATABASE_APP_ROLE=role,
        )  # fmt: skip
        with application.app_context(), pytest.raises(RuntimeError, match=message):
            upgrade()
        with application.app_context():
            db.engine.dispose()
        owner = create_engine(normalise_url(owner_url))
        assert not inspect(owner).has_table("alembic_version")  # nothing was left half-done
        owner.dispose()


def test_backup_file_is_never_world_readable_even_with_a_loose_umask(app, tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "b.tar.gz"
        make_backup(app, path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- deploy/: the example files stay correct --------------------------------------------------

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _settings(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.lstrip("# ").strip()
        if line.startswith("COUNTERSIGN_") and "=" in line:
            names.add(line.split("=", 1)[0].removeprefix("COUNTERSIGN_"))
    return names


def test_environment_examples_name_real_settings_and_the_ones_production_needs(tmp_path):
    from core.config import defaults

    known = set(defaults(str(tmp_path))) | {
        "SECRET_KEY", "AUDIT_KEY", "SECURE_COOKIES", "RETENTION_DAYS", "MFA_ROLES",
        "BACKUP_KEY", "BACKUP_KEY_FILE", "AUDIT_HEAD_FILE",
    }  # fmt: skip
    app_env = _settings(DEPLOY / "countersign.env.example")
    migrate_env = _settings(DEPLOY / "migrate.env.example")
    assert app_env - known == set(), "a setting the app does not read"
    assert migrate_env == {"MIGRATION_DATABASE_URL", "DATABASE_URL", "DATABASE_APP_ROLE"}
    assert "MIGRATION_DATABASE_URL" not in app_env  # the owner's login never reaches the app
    assert {
        "BASE_URL", "SECURE_COOKIES", "PROXY_COUNT", "DATABASE_URL", "DATABASE_APP_ROLE",
        "AUDIT_KEY", "SECRET_KEY", "LTI_PRIVATE_KEY_FILE", "SMTP_HOST", "SMTP_PASSWORD",
        "MFA_ROLES", "RETENTION_DAYS", "TIMEZONE",
    } <= app_env  # fmt: skip


def test_proxy_configurations_are_valid(tmp_path):
    import shutil
    import subprocess

    checked = 0
    if shutil.which("nginx") and shutil.which("openssl"):
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(  # noqa: S603 - fixed arguments
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=countersign.school.example", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        site = (DEPLOY / "nginx" / "countersign.conf").read_text()
        live = "/etc/letsencrypt/live/countersign.school.example/"
        site = site.replace(live + "fullchain.pem", str(cert)).replace(
            live + "privkey.pem", str(key)
        )
        (tmp_path / "site.conf").write_text(site)
        (tmp_path / "nginx.conf").write_text(
            f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\n"
            f"events {{}}\nhttp {{ access_log off; include {tmp_path}/site.conf; }}\n"
        )
        result = subprocess.run(  # noqa: S603 - fixed arguments
            ["nginx", "-t", "-c", str(tmp_path / "nginx.conf")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        checked += 1
    if shutil.which("caddy"):
        result = subprocess.run(  # noqa: S603 - fixed arguments
            ["caddy", "validate", "--config", str(DEPLOY / "Caddyfile"), "--adapter", "caddyfile"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        checked += 1
    if not checked:
        pytest.skip("neither nginx nor caddy is installed")
