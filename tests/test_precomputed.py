"""Precomputed API answers: served from the store, and never stale after the change that moved them.

The changes below are made with the domain functions or plain SQL, which send no signal: it is the
database's own triggers that must make a stored answer stop counting.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, select, text

from api.answers import dumps, find_answers, policies, refresh, status_json
from api.models import PrecomputedStatus
from core.db import db, utcnow
from people.models import Person, PersonRole
from quizzes.attempts import start_attempt, submit_attempt
from quizzes.models import QuizBank
from tests.conftest import complete_modules, csrf_token, right_answers, train_people
from training.models import Policy
from training.progress import AckRequest, acknowledge, record_read, record_visit
from training.publishing import current_version
from training.status import statuses_for

pytestmark = pytest.mark.usefixtures("published")


def served(pid: int, now: datetime | None = None) -> dict:
    """The API's answer for a person, as stored or computed (inside an app context)."""
    [policy] = policies()
    return json.loads(find_answers(policy, [str(pid)], now)[str(pid)].body)


def by_the_rule(pid: int, now: datetime | None = None) -> dict:
    """The rule's answer computed afresh, bypassing anything stored."""
    policy = db.session.scalar(select(Policy))
    person = db.session.get(Person, pid)
    db.session.refresh(person)
    status = statuses_for(db.session, [person], policy, now)[pid]
    return json.loads(dumps(status_json(person, policy.slug, status)))


def stored(pid: int) -> PrecomputedStatus | None:
    db.session.expire_all()
    return db.session.scalar(select(PrecomputedStatus).where(PrecomputedStatus.person_id == pid))


def first_module(pid: int):
    policy = db.session.scalar(select(Policy))
    link = current_version(db.session, policy).module_links[0]
    return db.session.get(Person, pid), policy, link


def test_an_answer_is_stored_then_served_from_the_store(app, make_person):
    pid = make_person("staff")
    with app.app_context():
        first = served(pid)
        row = stored(pid)
        assert row is not None and json.loads(row.body) == first == by_the_rule(pid)
        # Prove the second lookup reads the store: it returns what is stored, without the rule.
        db.session.execute(text("UPDATE precomputed_status SET body = '{\"marker\": 1}'"))
        db.session.commit()
        counted: list[str] = []

        def count(*args) -> None:
            counted.append(args[2])

        [policy] = policies()
        event.listen(db.engine, "before_cursor_execute", count)
        try:
            answer = find_answers(policy, [str(pid)])[str(pid)]
        finally:
            event.remove(db.engine, "before_cursor_execute", count)
        assert answer.body == '{"marker": 1}'
        assert counted == []  # the rule did not run: nothing went through the session


def _read(pid: int) -> None:
    person, policy, link = first_module(pid)
    record_read(db.session, person, policy, link.module_version)


def _visit(pid: int) -> None:
    person, _, link = first_module(pid)
    record_visit(db.session, person, link.module_version)


def _pass_quiz(pid: int) -> None:
    person, policy, link = first_module(pid)
    record_read(db.session, person, policy, link.module_version)
    db.session.commit()
    served(pid)  # stored again after the read: now the quiz pass alone must show
    bank = db.session.get(QuizBank, link.bank_id)
    attempt = start_attempt(db.session, person, link.module_version_id, bank)
    db.session.commit()
    served(pid)
    submit_attempt(db.session, person, attempt.public_id, right_answers(attempt))


def _add_role(pid: int) -> None:
    db.session.add(PersonRole(person_id=pid, role="governor"))


def _remove_role(pid: int) -> None:
    db.session.execute(text("DELETE FROM person_role WHERE person_id = :p"), {"p": pid})
    db.session.add(PersonRole(person_id=pid, role="volunteer"))


def _rename(pid: int) -> None:
    db.session.execute(text("UPDATE person SET name = 'Ada Renamed' WHERE id = :p"), {"p": pid})


def _new_email(pid: int) -> None:
    db.session.get(Person, pid).email = "new.address@ladysmith.example"


def _deactivate(pid: int) -> None:
    db.session.execute(text("UPDATE person SET active = false WHERE id = :p"), {"p": pid})


CHANGES = {
    "read": _read,
    "visit": _visit,
    "quiz pass": _pass_quiz,
    "role added": _add_role,
    "role replaced": _remove_role,
    "renamed": _rename,
    "new email": _new_email,
    "deactivated": _deactivate,
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_change_is_seen_by_the_next_lookup(app, make_person, change):
    pid = make_person("staff", name="Ada Lovelace")
    with app.app_context():
        before = served(pid)
        assert stored(pid) is not None
        CHANGES[change](pid)
        db.session.commit()
        after = served(pid)
        assert after != before
        assert after == by_the_rule(pid)
        assert json.loads(stored(pid).body) == after


def test_signing_is_seen_by_the_next_lookup(app, make_person):
    pid = make_person("volunteer", name="Val Vol")
    with app.app_context():
        person = db.session.get(Person, pid)
        policy = db.session.scalar(select(Policy))
        complete_modules(db.session, person, policy)
        db.session.commit()
        assert served(pid)["missing"] == [{"module": None, "reason": "not_acknowledged"}]
        acknowledge(db.session, person, policy, AckRequest("Val Vol", "d", "127.0.0.1", "ua"))
        db.session.commit()
        assert served(pid)["trained"] is True
        assert served(pid) == by_the_rule(pid)


def test_training_expires_in_the_answer_when_its_time_comes(app, make_person):
    pid = make_person("volunteer")
    train_people(app, pid)
    with app.app_context():
        answer = served(pid)
        assert answer["trained"] is True
        valid_until = datetime.fromisoformat(answer["valid_until"].replace("Z", "+00:00"))
        assert stored(pid).fresh_until == valid_until
        assert served(pid, valid_until - timedelta(seconds=1))["trained"] is True
        expired = served(pid, valid_until)
        assert expired["trained"] is False
        assert {"module": None, "reason": "expired"} in expired["missing"]
        assert expired == by_the_rule(pid, valid_until)


def test_a_new_version_is_seen_at_once_or_from_its_effective_date(
    app, runner, editable_content, make_person
):
    app.config["CONTENT_DIR"] = str(editable_content)
    folder = editable_content / "social-media-policy"
    pid = make_person("volunteer")
    train_people(app, pid)
    with app.app_context():
        assert served(pid)["policy"]["version"] == "1.0"

    def edit(old: str, new: str, name: str = "policy.yaml") -> None:
        path = folder / name
        path.write_text(path.read_text().replace(old, new, 1))

    edit("- Engaging", "- Engaging and clear", "08-tone.md")
    edit('version: "1.0"', 'version: "1.1"')
    assert runner.invoke(args=["content", "publish"]).exit_code == 0
    with app.app_context():
        answer = served(pid)
        assert answer["policy"]["version"] == "1.1" and answer["trained"] is False
        assert answer == by_the_rule(pid)

    effective = (utcnow() + timedelta(days=20)).date()
    edit("- Engaging and clear", "- Engaging, clear", "08-tone.md")
    edit('version: "1.1"', 'version: "2.0"')
    edit("effective: 2026-09-01", f"effective: {effective}")
    edit("next_review: 2027-09-01", f"next_review: {effective.year + 1}-12-31")
    assert runner.invoke(args=["content", "publish"]).exit_code == 0
    with app.app_context():
        assert served(pid)["policy"]["version"] == "1.1"
        midnight = datetime.combine(effective, datetime.min.time(), UTC)
        assert stored(pid).fresh_until == midnight
        assert served(pid, midnight - timedelta(seconds=1))["policy"]["version"] == "1.1"
        assert served(pid, midnight)["policy"]["version"] == "2.0"


def test_an_answer_labelled_with_an_older_revision_is_never_served(app, make_person):
    """An answer computed while a change was committing carries the revision read before it."""
    pid = make_person("staff")
    with app.app_context():
        served(pid)
        _read(pid)
        db.session.commit()
        rev = db.session.scalar(select(Person.status_rev).where(Person.id == pid))
        db.session.execute(
            text("UPDATE precomputed_status SET person_rev = :r, body = '{}' WHERE person_id = :p"),
            {"r": rev - 1, "p": pid},
        )
        db.session.commit()
        assert served(pid) == by_the_rule(pid)


def test_a_learners_action_stores_their_new_answer_straight_away(app, auth, make_person):
    pid = make_person("staff")
    client = auth.as_person(pid)
    with app.app_context():
        served(pid)
        old_rev = stored(pid).person_rev
    url = "/policies/social-media-policy/modules/scope"
    response = client.post(f"{url}/read", data={"csrf_token": csrf_token(client, url)})
    assert response.status_code == 302
    with app.app_context():
        row = stored(pid)
        rev = db.session.scalar(select(Person.status_rev).where(Person.id == pid))
        assert row.person_rev == rev > old_rev
        assert json.loads(row.body) == by_the_rule(pid)


def test_refresh_stores_everyones_answer(app, make_person):
    pids = [make_person("staff") for _ in range(3)] + [make_person("parent")]
    with app.app_context():
        assert refresh() == 4
        for pid in pids:
            assert json.loads(stored(pid).body) == by_the_rule(pid)
