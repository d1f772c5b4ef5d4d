"""Quiz attempts keep references to immutable question versions, not copies: what was asked stays
exactly reconstructible, corrected banks leave earlier attempts as they were, the versions are
evidence like the attempts (refused changes, checked by verify), and upgrading converts the
copies without changing a single evidence digest."""

from __future__ import annotations

import json

import pytest
import yaml
from alembic import command
from markupsafe import escape
from sqlalchemy import JSON, column, func, inspect, select, table, text
from sqlalchemy.exc import DBAPIError

from audit.evidence import DIGESTED, detail_for, digest
from audit.log import Entry, record_many, verify
from core.db import db
from core.migrate import alembic_config, upgrade
from people.models import Person
from quizzes.attempts import grade, start_attempt, submit_attempt
from quizzes.models import QuestionVersion, QuizAttempt, QuizBank
from quizzes.versions import content_hash, content_of
from tests.conftest import (
    complete_modules,
    csrf_token,
    evidence_guard_off,
    right_answers,
    wrong_answers,
)
from tests.test_journey import BASE, read_modules
from training.models import Policy
from training.publishing import current_version

POLICY = "social-media-policy"
TONE_BANK = f"{POLICY}/08-tone.quiz.yaml"


def _tone_bank(session) -> QuizBank:
    policy = session.scalar(select(Policy))
    link = next(
        m for m in current_version(session, policy).module_links if m.module_version.title == "Tone"
    )
    return session.get(QuizBank, link.bank_id)


def _correct_every_question(path) -> None:
    """A corrected bank: every prompt reworded, and the right answer moved wherever one can be."""
    data = yaml.safe_load(path.read_text())
    for question in data["questions"]:
        question["prompt"] = "Reworded: " + question["prompt"]
        if question["type"] == "true_false":
            question["answer"] = not question["answer"]
        elif question["type"] in ("single", "scenario"):
            options = question["options"]
            right = next(i for i, o in enumerate(options) if o.get("correct"))
            options[right].pop("correct")
            options[(right + 1) % len(options)]["correct"] = True
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def test_an_attempt_started_before_a_bank_is_corrected_shows_and_grades_what_was_asked_then(
    app, auth, runner, editable_content, make_person
):
    app.config["CONTENT_DIR"] = str(editable_content)
    assert runner.invoke(args=["content", "publish"]).exit_code == 0
    client = auth.as_person(make_person("staff"))
    read_modules(client, ["tone"])
    intro = f"{BASE}/modules/tone/quiz"
    started = client.post(intro, data={"csrf_token": csrf_token(client, intro)})
    url = started.location
    public_id = url.rsplit("/", 1)[1]
    with app.app_context():
        attempt = db.session.scalar(select(QuizAttempt).where(QuizAttempt.public_id == public_id))
        asked, answers = attempt.drawn, right_answers(attempt)

    _correct_every_question(editable_content / TONE_BANK)
    published = runner.invoke(args=["content", "publish"])
    assert "quiz of tone" in published.output, published.output

    with app.app_context():
        s = db.session
        attempt = s.scalar(select(QuizAttempt).where(QuizAttempt.public_id == public_id))
        assert attempt.drawn == asked  # the same questions, texts, keys and option order
        corrected = {q.key: q for q in _tone_bank(s).questions}
        assert all(corrected[q["key"]].prompt != q["prompt"] for q in asked)
        # Graded by today's bank, the answers that were right then would fail.
        today = [
            {**q, "options": [o for i in q["options"] for o in corrected[q["key"]].options
                              if o["id"] == i["id"]]}
            for q in asked
        ]  # fmt: skip
        assert grade(today, answers, attempt.pass_mark).score < 100
    page = client.get(url).get_data(as_text=True)
    for q in asked:
        assert str(escape(q["prompt"])) in page
    assert "Reworded" not in page

    data = {f"q-{k}": v for k, v in answers.items()}
    submitted = client.post(url, data={**data, "csrf_token": csrf_token(client, "/")})
    assert submitted.location == url + "/result"
    result = client.get(submitted.location).get_data(as_text=True)
    assert "You passed" in result and "100%" in result and "Reworded" not in result
    with app.app_context():
        assert verify(db.session).ok


@pytest.mark.usefixtures("published")
def test_attempts_store_small_references_and_a_question_is_stored_once(app, make_person):
    people = [make_person("staff") for _ in range(3)]
    with app.app_context():
        s = db.session
        bank = _tone_bank(s)
        mv = next(
            m.module_version_id
            for m in current_version(s, s.scalar(select(Policy))).module_links
            if m.bank_id == bank.id
        )
        for pid in people:
            person = s.get(Person, pid)
            for answers in (wrong_answers, right_answers):
                attempt = start_attempt(s, person, mv, bank)
                submit_attempt(s, person, attempt.public_id, answers(attempt))
        s.commit()
        # Six attempts of five questions from a bank of six: one version per question asked.
        asked = {q["key"] for a in s.scalars(select(QuizAttempt)) for q in a.drawn}
        assert s.scalar(select(func.count()).select_from(QuestionVersion)) == len(asked)
        for version in s.scalars(select(QuestionVersion)):
            content = {name: getattr(version, name) for name in ("type", "prompt", "scenario",
                       "options", "explanation", "clause")}  # fmt: skip
            assert version.content_hash == content_hash(content)
        sizes = [
            len(json.dumps(refs)) if not isinstance(refs, str) else len(refs)
            for refs in s.scalars(text("SELECT question_refs FROM quiz_attempt"))
        ]
        assert len(sizes) == 6 and max(sizes) < 400, sizes
        assert verify(s).ok


@pytest.mark.usefixtures("published")
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE question_version SET prompt = 'Something else'",
        "UPDATE question_version SET options = options",
        "DELETE FROM question_version",
    ],
)
def test_the_database_refuses_to_change_or_remove_a_question_version(app, make_person, statement):
    pid = make_person("staff")
    with app.app_context():
        complete_modules(db.session, db.session.get(Person, pid), db.session.scalar(select(Policy)))
        db.session.commit()
        before = db.session.scalar(select(func.count()).select_from(QuestionVersion))
    with app.app_context(), pytest.raises(DBAPIError, match="question_version is evidence"):
        db.session.execute(text(statement))
        db.session.commit()
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(QuestionVersion)) == before
        if db.session.get_bind().dialect.name == "postgresql":
            with pytest.raises(DBAPIError, match="question_version is evidence"):
                db.session.execute(text("TRUNCATE question_version CASCADE"))
            db.session.rollback()
        assert verify(db.session).ok


@pytest.mark.usefixtures("published")
def test_verify_names_a_question_version_edited_by_hand_and_every_attempt_that_asked_it(
    app, make_person, runner
):
    pid = make_person("staff")
    with app.app_context():
        s = db.session
        complete_modules(s, s.get(Person, pid), s.scalar(select(Policy)))
        s.commit()
        attempt = s.scalar(select(QuizAttempt).order_by(QuizAttempt.id).limit(1))
        version_id = attempt.question_refs[0][0]
        postgresql = s.get_bind().dialect.name == "postgresql"
        # What someone with the owner's rights could do: switch the guard off and edit the row.
        if postgresql:
            s.execute(text("ALTER TABLE question_version DISABLE TRIGGER USER"))
        else:
            s.execute(text("DROP TRIGGER question_version_no_update"))
        s.execute(
            text("UPDATE question_version SET explanation = 'Anything goes.' WHERE id = :v"),
            {"v": version_id},
        )
        if postgresql:
            s.execute(text("ALTER TABLE question_version ENABLE TRIGGER USER"))
        s.commit()
        problems = verify(s).problems
    assert f"quiz attempt {attempt.id} edited" in " ".join(problems)
    assert any(p.startswith(f"question version {version_id} edited") for p in problems)
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code != 0 and f"question version {version_id} edited" in result.output


def _migrate(app, revision: str, down: bool) -> None:
    cfg = alembic_config()
    with app.app_context(), db.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(cfg, revision)


@pytest.mark.usefixtures("published")
def test_upgrading_turns_copies_into_versions_and_every_digest_still_verifies(app, make_person):
    """Attempts recorded as copies (revision 0020) become references: nothing asked is lost, one
    version per distinct question, and the digests recorded for the copies still verify."""
    people = [make_person("staff") for _ in range(2)]
    with app.app_context():
        s = db.session
        policy = s.scalar(select(Policy))
        for pid in people:
            complete_modules(s, s.get(Person, pid), policy)
        s.commit()
        asked = {a.id: a.drawn for a in s.scalars(select(QuizAttempt))}
        assert verify(s).ok
    _migrate(app, "0020", down=True)
    try:
        with app.app_context():
            s = db.session
            assert "question_version" not in inspect(s.get_bind()).get_table_names()
            copies = {
                i: json.loads(d) if isinstance(d, str) else d
                for i, d in s.execute(text("SELECT id, drawn FROM quiz_attempt"))
            }
            assert copies == asked
            # An attempt recorded by the earlier version, with its audit row: one question shown in
            # another order than anyone else saw it, and one asked twice in the same attempt.
            first = min(copies)
            old = [*copies[first], copies[first][0]]
            old[0] = {**old[0], "options": list(reversed(old[0]["options"]))}
            columns = ("person_id, module_version_id, bank_id, started_at, expires_at, "
                       "pass_mark, show_answers")  # fmt: skip
            s.execute(
                text(f"INSERT INTO quiz_attempt (public_id, {columns}, drawn) "
                     f"SELECT 'recorded-before', {columns}, :drawn FROM quiz_attempt "
                     "WHERE id = :first"),
                {"drawn": json.dumps(old), "first": first},
            )  # fmt: skip
            # The row as revision 0020's code read it: its columns with their types, and drawn.
            typed = QuizAttempt.__table__.c
            then = table(
                "quiz_attempt",
                *(column(c, typed[c].type) for c in DIGESTED["quiz_attempt"] if c != "drawn"),
                column("drawn", JSON()),
            )
            row = dict(
                s.execute(select(then).where(then.c.public_id == "recorded-before")).one()._mapping
            )
            assert row["drawn"] == old
            record_many(s, [Entry("quiz.started", actor_id=row["person_id"],
                                  subject_type="quiz_attempt", subject_id=row["id"],
                                  detail=detail_for("quiz_attempt", row["id"],
                                                    digest("quiz_attempt", row)))])  # fmt: skip
            s.commit()
            asked[row["id"]] = old
    finally:
        with app.app_context():
            upgrade()
    with app.app_context():
        s = db.session
        result = verify(s)
        assert result.ok, result.problems
        assert {a.id: a.drawn for a in s.scalars(select(QuizAttempt))} == asked
        distinct = {content_hash(content_of(q)) for drawn in asked.values() for q in drawn}
        assert set(s.scalars(select(QuestionVersion.content_hash))) == distinct
        with pytest.raises(DBAPIError, match="quiz_attempt is evidence"):
            s.execute(text("UPDATE quiz_attempt SET pass_mark = 0"))


@pytest.mark.usefixtures("published")
def test_postgresql_app_role_cannot_change_or_remove_a_question_version(
    app, make_person, database_url
):
    """Where the app connects as its own role, migration 0021 takes back every change but INSERT."""
    if not database_url.startswith("postgresql"):
        pytest.skip("roles and grants are PostgreSQL's")
    import importlib.util

    from core.config import ROOT

    spec = importlib.util.spec_from_file_location(
        "versions_migration", ROOT / "migrations/versions/0021_attempt_question_versions.py"
    )
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    pid = make_person("staff")
    role = "countersign_versions_app_under_test"
    with app.app_context():
        complete_modules(db.session, db.session.get(Person, pid), db.session.scalar(select(Policy)))
        db.session.flush()
        conn = db.session.connection()
        conn.execute(text(f"CREATE ROLE {role}"))
        conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        conn.execute(
            text(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON question_version TO {role}")
        )
        try:
            migration.revoke_changes(conn, role)
            conn.execute(text(f"SET LOCAL ROLE {role}"))
            assert conn.execute(text("SELECT count(*) FROM question_version")).scalar() >= 1
            for statement in (
                "UPDATE question_version SET prompt = ''",
                "DELETE FROM question_version",
                "TRUNCATE question_version",
            ):
                conn.execute(text("SAVEPOINT attempt"))
                with pytest.raises(DBAPIError, match="permission denied"):
                    conn.execute(text(statement))
                conn.execute(text("ROLLBACK TO SAVEPOINT attempt"))
        finally:
            db.session.rollback()  # the role and its grants were made in this transaction only


@pytest.mark.usefixtures("published")
def test_a_new_attempt_shows_its_questions_after_its_session_has_closed(app, make_person):
    pid = make_person("staff")
    with app.app_context():
        s = db.session
        bank = _tone_bank(s)
        mv = next(
            m.module_version_id
            for m in current_version(s, s.scalar(select(Policy))).module_links
            if m.bank_id == bank.id
        )
        attempt = start_attempt(s, s.get(Person, pid), mv, bank)
        s.commit()
    assert len(attempt.drawn) == 5 and right_answers(attempt)


@pytest.mark.usefixtures("published")
def test_an_attempt_that_would_not_convert_exactly_stops_the_upgrade_and_nothing_changes(
    app, make_person
):
    pid = make_person("staff")
    with app.app_context():
        complete_modules(db.session, db.session.get(Person, pid), db.session.scalar(select(Policy)))
        db.session.commit()
    _migrate(app, "0020", down=True)
    try:
        with app.app_context():
            s = db.session
            first, copy = s.execute(text("SELECT id, drawn FROM quiz_attempt ORDER BY id")).first()
            copy = json.loads(copy) if isinstance(copy, str) else copy
            # A question in a shape no version holds (say, a key added by hand): converting it
            # would lose that key.
            odd = [{**copy[0], "hint": "kept by hand"}, *copy[1:]]
            with evidence_guard_off(s, "quiz_attempt"):
                s.execute(
                    text("UPDATE quiz_attempt SET drawn = :d WHERE id = :i"),
                    {"d": json.dumps(odd), "i": first},
                )
            s.commit()
        with app.app_context(), pytest.raises(RuntimeError, match=f"quiz attempt {first} holds"):
            upgrade()
        with app.app_context():
            s = db.session
            assert s.scalar(text("SELECT version_num FROM alembic_version")) == "0020"
            assert "question_version" not in inspect(s.connection()).get_table_names()
            kept = s.scalar(text("SELECT drawn FROM quiz_attempt WHERE id = :i"), {"i": first})
            assert (json.loads(kept) if isinstance(kept, str) else kept) == odd
            with evidence_guard_off(s, "quiz_attempt"):
                s.execute(
                    text("UPDATE quiz_attempt SET drawn = :d WHERE id = :i"),
                    {"d": json.dumps(copy), "i": first},
                )
            s.commit()
    finally:
        with app.app_context():
            upgrade()
    with app.app_context():
        assert verify(db.session).ok
