"""Quizzes: authoring checks, drawing, grading on the server, tampering, reviews, Moodle XML."""

from __future__ import annotations

import random
import re
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import escape
from sqlalchemy import func, select

from core.db import db, utcnow
from people.models import Person
from quizzes.attempts import draw, grade, start_attempt
from quizzes.bank import Question
from quizzes.models import QuizAttempt, QuizBank, QuizSubmission
from quizzes.moodle import MoodleXMLError, export_questions, import_questions
from quizzes.types import Option
from tests.conftest import csrf_token, evidence_guard_off, examples, right_answers, wrong_answers
from tests.test_journey import BASE, read_modules
from training.loader import ContentError, load_all, load_policy

POLICY = "social-media-policy"
FOLDER = Path(__file__).resolve().parents[1] / "content" / POLICY


def problems_for(content: Path) -> str:
    with pytest.raises(ContentError) as caught:
        load_all(content)
    return "\n".join(str(p) for p in caught.value.problems)


def test_every_module_has_a_bank_big_enough_for_its_draw():
    policy = load_policy(FOLDER)
    for module in policy.modules:
        assert module.bank is not None, module.slug
        assert len(module.bank.questions) >= max(6, module.bank.rules.draw), module.slug
        kinds = {q.type for q in module.bank.questions}
        assert {"true_false", "scenario"} <= kinds, module.slug


BANK = """questions:
  - id: first
    type: single
    prompt: A question?
    options:
      - text: Right
        correct: true
      - text: Wrong
    explanation: Because.
    clause: "Any comments, queries or complaints made through those accounts"
"""


def write_bank(content: Path, text: str) -> Path:
    path = content / POLICY / "04-monitoring.quiz.yaml"
    path.write_text(text)
    return path


def test_bank_problems_are_reported_with_file_and_line(editable_content):
    path = write_bank(
        editable_content,
        BANK
        + """  - id: first
    type: single
    prompt: Duplicate id and no correct option
    options: [{text: A}, {text: B}]
    explanation: x
    clause: "Any comments, queries or complaints made through those accounts"
  - id: two-right
    type: single
    prompt: Two right answers
    options: [{text: A, correct: true}, {text: B, correct: true}]
    explanation: x
    clause: "not in the module at all"
  - id: odd
    type: essay
    prompt: Unknown type
    explanation: x
    clause: "Any comments, queries or complaints made through those accounts"
  - id: tf
    type: true_false
    prompt: No answer given
    explanation: x
    clause: "Any comments, queries or complaints made through those accounts"
""",
    )
    found = problems_for(editable_content)
    assert f"{path}:11: question id 'first' is also used on line 2" in found
    assert f"{path}:14: no option is marked 'correct: true'" in found
    assert (
        f"{path}:20: 2 options are marked correct; this type has exactly one right answer" in found
    )
    assert f"{path}:22: the clause 'not in the module at all' is not in the module's text" in found
    assert f"{path}:24: unknown question type 'essay'" in found
    assert f"{path}:28: a true_false question needs 'answer: true' or 'answer: false'" in found


def test_too_few_questions_for_the_draw_and_stray_banks_are_reported(editable_content):
    path = write_bank(editable_content, BANK)
    (editable_content / POLICY / "99-nothing.quiz.yaml").write_text(BANK)
    found = problems_for(editable_content)
    assert f"{path}:1: 1 questions is too few to draw 5 per attempt" in found
    assert (
        "99-nothing.quiz.yaml: no module in the manifest's 'modules' matches this quiz file"
        in found
    )


def test_quiz_rules_in_the_manifest_are_checked(editable_content):
    manifest = editable_content / POLICY / "policy.yaml"
    text = manifest.read_text().replace("  pass_mark: 80", "  pass_mark: 180")
    manifest.write_text(text.replace("  scope: {draw: 6}", "  scope: {draw: 6, colour: blue}"))
    found = problems_for(editable_content)
    assert "quiz rule 'pass_mark' must be a whole number from 1 to 100" in found
    assert "unknown quiz rule 'colour'" in found


# --- drawing and grading ----------------------------------------------------------------------------


class FakeQuestion:
    def __init__(self, n: int, options: int, kind: str = "single") -> None:
        self.id, self.key, self.type = n, f"q{n}", kind
        self.prompt = self.scenario = self.explanation = self.clause = ""
        self.options = [{"id": f"o{i}", "text": str(i), "correct": i == 0} for i in range(options)]


@settings(max_examples=examples(200))
@given(
    sizes=st.lists(st.integers(min_value=2, max_value=8), min_size=1, max_size=30),
    count=st.integers(min_value=1, max_value=40),
    shuffle=st.booleans(),
    seed=st.integers(),
)
def test_draw_takes_distinct_questions_and_only_reorders_options(sizes, count, shuffle, seed):
    bank = [FakeQuestion(n, size) for n, size in enumerate(sizes)]
    drawn = draw(bank, count, shuffle, random.Random(seed))
    keys = [q["key"] for q in drawn]
    assert len(keys) == min(count, len(bank)) == len(set(keys))
    for q in drawn:
        original = next(b for b in bank if b.key == q["key"])
        assert sorted(o["id"] for o in q["options"]) == sorted(o["id"] for o in original.options)
        if not shuffle:
            assert q["options"] == original.options


def test_draw_spreads_questions_and_option_orders():
    bank = [FakeQuestion(n, 4) for n in range(10)]
    rng = random.Random(7)
    seen_keys, first_options = set(), set()
    for _ in range(200):
        drawn = draw(bank, 5, True, rng)
        seen_keys |= {q["key"] for q in drawn}
        first_options.add(drawn[0]["options"][0]["id"])
    assert seen_keys == {q.key for q in bank}
    assert first_options == {"o0", "o1", "o2", "o3"}


def _drawn(*kinds):
    drawn = []
    for n, kind in enumerate(kinds):
        options = [
            {"id": "a", "text": "A", "correct": True},
            {"id": "b", "text": "B", "correct": kind == "multiple"},
            {"id": "c", "text": "C", "correct": False},
        ]
        drawn.append({"key": f"q{n}", "type": kind, "options": options})
    return drawn


def test_grading_is_all_or_nothing_per_question_and_rounds_down():
    drawn = _drawn("single", "multiple", "single")
    result = grade(drawn, {"q0": ["a"], "q1": ["a"], "q2": ["a"]}, 80)
    assert (result.correct, result.total, result.score, result.passed) == (2, 3, 66, False)
    result = grade(drawn, {"q0": ["a"], "q1": ["b", "a"], "q2": ["a"]}, 80)
    assert (result.correct, result.score, result.passed) == (3, 100, True)


@pytest.mark.parametrize(
    ("right", "total", "mark", "passed"), [(4, 5, 80, True), (3, 5, 80, False)]
)
def test_pass_mark_is_inclusive(right, total, mark, passed):
    drawn = _drawn(*["single"] * total)
    answers = {f"q{n}": ["a" if n < right else "b"] for n in range(total)}
    assert grade(drawn, answers, mark).passed is passed


def test_is_right_needs_exactly_the_correct_options():
    from quizzes.types import is_right

    options = [Option("a", "A", True), Option("b", "B", True), Option("c", "C", False)]
    assert is_right(options, {"a", "b"})
    assert not is_right(options, {"a"})
    assert not is_right(options, {"a", "b", "c"})


# --- taking a quiz through the pages ---------------------------------------------------------------

pytestmark_db = pytest.mark.usefixtures("published")


def _attempt(app, public_id):
    with app.app_context():
        return db.session.scalar(select(QuizAttempt).where(QuizAttempt.public_id == public_id))


def _start(app, client, slug="tone"):
    read_modules(client, [slug])
    intro = f"{BASE}/modules/{slug}/quiz"
    response = client.post(intro, data={"csrf_token": csrf_token(client, intro)})
    assert response.status_code == 302
    return response.location, _attempt(app, response.location.rsplit("/", 1)[1])


def _submit(client, url, answers, **extra):
    data = {f"q-{k}": v for k, v in answers.items()}
    # Any page's token will do (it belongs to the session); a submitted attempt has no form.
    return client.post(url, data={**data, **extra, "csrf_token": csrf_token(client, "/")})


def _submissions(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(QuizSubmission))


@pytestmark_db
def test_the_quiz_page_never_shows_which_options_are_right(app, auth, make_person):
    client = auth.as_person(make_person("staff"))
    url, attempt = _start(app, client)
    page = client.get(url).get_data(as_text=True)
    for q in attempt.drawn:
        assert str(escape(q["explanation"])) not in page
        assert str(escape(q["prompt"])) in page
    assert "correct" not in page.lower()
    assert len(re.findall(r'type="(?:radio|checkbox)"', page)) == sum(
        len(q["options"]) for q in attempt.drawn
    )


@pytestmark_db
def test_the_quiz_waits_until_the_module_is_read(app, auth, make_person):
    client = auth.as_person(make_person("staff"))
    intro = f"{BASE}/modules/tone/quiz"
    response = client.post(intro, data={"csrf_token": csrf_token(client, intro)})
    assert response.status_code == 302 and response.location.endswith("/modules/tone")
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(QuizAttempt)) == 0


@pytestmark_db
def test_starting_again_resumes_the_open_attempt(app, auth, make_person):
    client = auth.as_person(make_person("staff"))
    url, _ = _start(app, client)
    intro = f"{BASE}/modules/tone/quiz"
    again = client.post(intro, data={"csrf_token": csrf_token(client, intro)})
    assert again.location == url


@pytestmark_db
def test_a_pass_completes_the_module_and_shows_the_review(app, auth, make_person):
    client = auth.as_person(make_person("staff"))
    url, attempt = _start(app, client)
    response = _submit(client, url, right_answers(attempt), score="0", person_id="1")
    assert response.status_code == 302 and response.location == url + "/result"
    page = client.get(response.location).get_data(as_text=True)
    assert "You passed" in page and "100%" in page
    for q in attempt.drawn:
        assert str(escape(q["explanation"])) in page
    assert "#:~:text=" in page  # each answer links to the clause in the module
    dashboard = client.get("/").get_data(as_text=True)
    assert "You have completed 1 of 13 modules" in dashboard


@pytestmark_db
def test_a_fail_offers_rereading_and_a_retry_and_keeps_the_module_open(app, auth, make_person):
    client = auth.as_person(make_person("staff"))
    url, attempt = _start(app, client)
    response = _submit(client, url, wrong_answers(attempt))
    page = client.get(response.location).get_data(as_text=True)
    assert "Not passed this time: 0 of" in page
    assert "Re-read the module" in page and "Try again" in page
    assert "— correct" in page  # show_answers is on for this bank
    assert "You have completed 0 of 13 modules" in client.get("/").get_data(as_text=True)
    retry, second = _start(app, client)
    assert retry != url
    _submit(client, retry, right_answers(second))
    assert "You have completed 1 of 13 modules" in client.get("/").get_data(as_text=True)


def two_answers_to_a_single_answer_question(attempt) -> dict[str, list[str]]:
    q = next(q for q in attempt.drawn if q["type"] != "multiple")
    return {q["key"]: [o["id"] for o in q["options"][:2]]}


@pytestmark_db
@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda a: {**right_answers(a), "not-drawn": ["a"]}, "do not match the questions"),
        (lambda a: {**right_answers(a), a.drawn[0]["key"]: ["zzz"]}, "not one of the options"),
        (
            lambda a: {**right_answers(a), **two_answers_to_a_single_answer_question(a)},
            "Choose only one answer",
        ),
    ],
)
def test_tampered_answers_are_refused_and_nothing_is_recorded(
    app, auth, make_person, tamper, message
):
    client = auth.as_person(make_person("staff"))
    url, attempt = _start(app, client, "use-of-images")
    response = _submit(client, url, tamper(attempt))
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert _submissions(app) == 0


@pytestmark_db
def test_unanswered_questions_reshow_the_form_keeping_answers(app, auth, make_person):
    client = auth.as_person(make_person("staff"))
    url, attempt = _start(app, client)
    first = attempt.drawn[0]
    chosen = first["options"][0]["id"]
    response = _submit(client, url, {first["key"]: [chosen]})
    page = response.get_data(as_text=True)
    assert response.status_code == 400 and "Answer every question" in page
    assert f'value="{chosen}" checked' in page
    assert _submissions(app) == 0


@pytestmark_db
def test_a_second_submission_is_refused_and_the_first_stands(app, auth, make_person):
    client = auth.as_person(make_person("staff"))
    url, attempt = _start(app, client)
    _submit(client, url, wrong_answers(attempt))
    again = _submit(client, url, right_answers(attempt))
    assert again.status_code == 303
    page = client.get(again.location).get_data(as_text=True)
    assert "already submitted; your first answers stand" in page
    assert "Not passed this time" in page
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(QuizSubmission)) == 1
        assert db.session.scalar(select(QuizSubmission.passed)) is False


@pytestmark_db
def test_another_persons_attempt_is_not_found(app, auth, make_person):
    client = auth.as_person(make_person("staff"))
    url, attempt = _start(app, client)
    from tests.conftest import Auth

    other = Auth(app, app.test_client()).as_person(make_person("staff"))
    assert other.get(url).status_code == 404
    assert other.get(url + "/result").status_code == 404
    token = csrf_token(other, "/")
    data = {f"q-{k}": v for k, v in right_answers(attempt).items()}
    assert other.post(url, data={**data, "csrf_token": token}).status_code == 404
    assert _submissions(app) == 0


@pytestmark_db
def test_an_expired_attempt_cannot_be_submitted(app, auth, make_person):
    client = auth.as_person(make_person("staff"))
    url, attempt = _start(app, client)
    with app.app_context():
        with evidence_guard_off(db.session, "quiz_attempt"):
            db.session.execute(
                QuizAttempt.__table__.update().values(expires_at=utcnow() - timedelta(seconds=1))
            )
        db.session.commit()
    response = _submit(client, url, right_answers(attempt))
    assert response.status_code == 410
    assert "This attempt has expired" in response.get_data(as_text=True)
    assert _submissions(app) == 0
    _, fresh = _start(app, client)  # a new attempt, with its own questions
    assert fresh.public_id != attempt.public_id


@pytestmark_db
def test_repeated_failures_need_a_cooldown(app, auth, make_person):
    client = auth.as_person(make_person("staff"))
    for _ in range(3):
        url, attempt = _start(app, client)
        _submit(client, url, wrong_answers(attempt))
    intro = f"{BASE}/modules/tone/quiz"
    page = client.get(intro).get_data(as_text=True)
    assert "you can try again from" in page
    response = client.post(intro, data={"csrf_token": csrf_token(client, intro)})
    assert response.status_code == 200
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(QuizAttempt)) == 3


@pytestmark_db
def test_a_changed_module_text_needs_its_quiz_again_unchanged_ones_keep_their_pass(
    app, runner, editable_content, make_person
):
    from tests.conftest import complete_modules
    from training.models import Policy
    from training.status import training_status

    app.config["CONTENT_DIR"] = str(editable_content)
    runner.invoke(args=["content", "publish"])
    pid = make_person("staff")
    with app.app_context():
        person, policy = db.session.get(Person, pid), db.session.scalar(select(Policy))
        complete_modules(db.session, person, policy)
        db.session.commit()
    folder = editable_content / POLICY
    text = (folder / "08-tone.md").read_text().replace("- Engaging", "- Engaging and clear")
    (folder / "08-tone.md").write_text(text)
    manifest = folder / "policy.yaml"
    manifest.write_text(manifest.read_text().replace('version: "1.0"', 'version: "1.1"'))
    assert runner.invoke(args=["content", "publish"]).exit_code == 0
    with app.app_context():
        person, policy = db.session.get(Person, pid), db.session.scalar(select(Policy))
        status = training_status(db.session, person, policy)
        assert [(m.module, m.reason) for m in status.missing] == [
            ("tone", "outdated_version"),
            (None, "not_acknowledged"),
        ]
        complete_modules(db.session, person, policy, only={"tone"})
        status = training_status(db.session, person, policy)
        assert [(m.module, m.reason) for m in status.missing] == [(None, "not_acknowledged")]


@pytestmark_db
def test_a_corrected_bank_takes_over_without_a_new_version(app, runner, editable_content):
    app.config["CONTENT_DIR"] = str(editable_content)
    runner.invoke(args=["content", "publish"])
    bank = editable_content / POLICY / "08-tone.quiz.yaml"
    bank.write_text(bank.read_text().replace("prompt: What should", "prompt: Which should", 1))
    result = runner.invoke(args=["content", "publish"])
    assert "version 1.0 updated: quiz of tone" in result.output
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(QuizBank)) == 14


# --- authors ---------------------------------------------------------------------------------------------


@pytestmark_db
def test_authors_see_the_answer_key_and_which_questions_people_get_wrong(app, auth, make_person):
    learner = auth.as_person(make_person("staff"))
    url, attempt = _start(app, learner)
    _submit(learner, url, wrong_answers(attempt))
    from tests.conftest import Auth

    author = Auth(app, app.test_client()).as_person(make_person("slt"))
    assert "Tone" in author.get("/authoring/quizzes").get_data(as_text=True)
    page = author.get(f"/authoring/quizzes/{POLICY}/tone?order=wrong").get_data(as_text=True)
    assert "— correct" in page
    assert "answered 1 time, wrong 1 (100%)" in page
    staff_only = Auth(app, app.test_client()).as_person(make_person("staff", "governor"))
    assert staff_only.get(f"/authoring/quizzes/{POLICY}/tone").status_code == 403


# --- Moodle XML ------------------------------------------------------------------------------------------


def test_moodle_xml_round_trip_loses_nothing():
    policy = load_policy(FOLDER)
    for module in policy.modules:
        questions = list(module.bank.questions)
        again = import_questions(export_questions(questions, f"{POLICY}/{module.slug}"))
        assert [q.as_data() for q in again] == [q.as_data() for q in questions], module.slug


def test_moodle_xml_has_moodles_shape():
    import xml.etree.ElementTree as ET

    questions = list(load_policy(FOLDER).modules[0].bank.questions)
    root = ET.fromstring(export_questions(questions, "x"))
    kinds = [q.get("type") for q in root.findall("question")]
    assert kinds[0] == "category" and set(kinds[1:]) <= {"multichoice", "truefalse"}
    multiple = next(q for q in root.findall("question") if q.findtext("single") == "false")
    fractions = [float(a.get("fraction")) for a in multiple.findall("answer")]
    assert round(sum(f for f in fractions if f > 0)) == 100


def test_moodle_questions_without_our_extras_import_as_plain_questions():
    xml = b"""<?xml version="1.0" encoding="UTF-8"?>
<quiz>
  <question type="multichoice"><name><text>Reply time</text></name>
    <questiontext format="html"><text><![CDATA[<p>How fast do we <b>reply</b>?</p>]]></text></questiontext>
    <single>true</single>
    <answer fraction="100"><text>Within 24 hours</text></answer>
    <answer fraction="0"><text>Within a week</text></answer>
  </question>
  <question type="essay"><name><text>Essay</text></name></question>
</quiz>"""
    with pytest.raises(MoodleXMLError, match="type 'essay' is not supported"):
        import_questions(xml)
    (question,) = import_questions(
        xml.replace(b'<question type="essay"><name><text>Essay</text></name></question>', b"")
    )
    assert (question.id, question.type, question.prompt) == (
        "reply-time",
        "single",
        "How fast do we reply?",
    )
    assert [o.correct for o in question.options] == [True, False]
    with pytest.raises(MoodleXMLError, match="not valid XML"):
        import_questions(b"<quiz><question>")


def test_quiz_commands_export_and_import_through_the_content_checks(
    runner, app, editable_content, tmp_path
):
    app.config["CONTENT_DIR"] = str(editable_content)
    out = tmp_path / "tone.xml"
    result = runner.invoke(args=["quiz", "export", POLICY, "tone", "-o", str(out)])
    assert result.exit_code == 0, result.output
    bank = editable_content / POLICY / "08-tone.quiz.yaml"
    before = load_policy(editable_content / POLICY).modules[7].bank
    refused = runner.invoke(args=["quiz", "import", POLICY, "tone", str(out)])
    assert refused.exit_code != 0 and "--replace" in refused.output
    done = runner.invoke(args=["quiz", "import", POLICY, "tone", str(out), "--replace"])
    assert done.exit_code == 0, done.output
    after = load_policy(editable_content / POLICY).modules[7].bank
    assert [q.as_data() for q in after.questions] == [q.as_data() for q in before.questions]
    broken = tmp_path / "broken.xml"
    broken.write_text(out.read_text().replace("clause: ", "note: "))
    failed = runner.invoke(args=["quiz", "import", POLICY, "tone", str(broken), "--replace"])
    assert failed.exit_code != 0 and "'clause' is required" in failed.output
    assert bank.read_text() == (editable_content / POLICY / "08-tone.quiz.yaml").read_text()
    assert [
        q.as_data() for q in load_policy(editable_content / POLICY).modules[7].bank.questions
    ] == [q.as_data() for q in before.questions]


def test_question_dataclass_keeps_author_fields():
    q = Question("x", "single", "P", (Option("a", "A", True),), "E", "C", "S")
    assert q.as_data()["scenario"] == "S" and q.as_data()["options"][0]["correct"] is True


def test_start_attempt_resumes_rather_than_redraws(app, make_person, published):
    from training.models import PolicyVersionModule

    pid = make_person("staff")
    with app.app_context():
        person = db.session.get(Person, pid)
        link = db.session.scalar(
            select(PolicyVersionModule).where(PolicyVersionModule.bank_id.is_not(None))
        )
        bank = db.session.get(QuizBank, link.bank_id)
        first = start_attempt(db.session, person, link.module_version_id, bank)
        second = start_attempt(db.session, person, link.module_version_id, bank)
        assert first.id == second.id
        assert len(first.public_id) >= 22  # at least 128 random bits
