"""The status store: each change evaluated once, stored, announced once, and never served stale.

Changes below are made through the domain functions (which mark the people they touch) or in
plain SQL (which marks nobody): either way the database's triggers make a stored answer stop
counting, and the next reader or the worker's sweep asks the rule again.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import event, select, text

import training.status
from api.answers import dumps, find_answers, policies, refresh, status_json
from core.db import db, utcnow
from core.outbox import OutboxMessage
from people.models import Person, PersonRole
from people.service import deactivate
from quizzes.attempts import start_attempt, submit_attempt
from quizzes.models import QuizBank
from tests.conftest import (
    Auth,
    complete_modules,
    csrf_token,
    right_answers,
    run_worker,
    train_people,
)
from training import status_store
from training.models import Policy, StoredStatus
from training.progress import AckRequest, acknowledge, record_read, record_visit
from training.publishing import current_version
from training.status import statuses_for
from training.status_store import STATUS_CHANGED, as_status, bring_up_to_date

pytestmark = pytest.mark.usefixtures("published")
BASE = "/policies/social-media-policy"


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


def rule_status(pid: int, now: datetime | None = None):
    policy = db.session.scalar(select(Policy))
    person = db.session.get(Person, pid)
    db.session.refresh(person)
    return statuses_for(db.session, [person], policy, now)[pid]


def stored(pid: int) -> StoredStatus | None:
    db.session.expire_all()
    return db.session.scalar(select(StoredStatus).where(StoredStatus.person_id == pid))


def events(app, pid: int) -> list[dict]:
    with app.app_context():
        return [
            m.payload
            for m in db.session.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.topic == STATUS_CHANGED, OutboxMessage.person_id == pid)
                .order_by(OutboxMessage.id)
            )
        ]


def first_module(pid: int):
    policy = db.session.scalar(select(Policy))
    link = current_version(db.session, policy).module_links[0]
    return db.session.get(Person, pid), policy, link


@pytest.fixture
def evaluations(monkeypatch) -> list[int]:
    """Every run of the rule, by person: the one function that decides is counted."""
    calls: list[int] = []
    real = training.status.evaluate

    def counted(**kwargs):
        calls.append(kwargs["person_id"])
        return real(**kwargs)

    monkeypatch.setattr(training.status, "evaluate", counted)
    return calls


# --- stored, then served ---------------------------------------------------------------------


def test_adding_a_person_stores_their_answer_and_lookups_are_served_from_the_store(
    app, make_person, evaluations
):
    pid = make_person("staff")
    assert evaluations == [pid]  # once, after the commit that added them
    with app.app_context():
        row = stored(pid)
        assert row is not None and as_status(row) == rule_status(pid)
        evaluations.clear()
        # Prove a lookup reads the store: it returns what is stored, without the rule.
        db.session.execute(text("UPDATE stored_status SET version = 'marker'"))
        db.session.commit()
        counted: list[str] = []

        def count(*args) -> None:
            counted.append(args[2])

        event.listen(db.engine, "before_cursor_execute", count)
        try:
            answer = served(pid)
        finally:
            event.remove(db.engine, "before_cursor_execute", count)
        assert answer["policy"]["version"] == "marker"
        assert evaluations == [] and counted == []  # nothing went through the session


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
        assert as_status(stored(pid)) == rule_status(pid)


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
            text(
                "UPDATE stored_status SET person_rev = :r, version = 'stale' WHERE person_id = :p"
            ),
            {"r": rev - 1, "p": pid},
        )
        db.session.commit()
        assert served(pid) == by_the_rule(pid)


def test_a_learners_action_stores_their_new_answer_straight_away(app, auth, make_person):
    pid = make_person("staff")
    client = auth.as_person(pid)
    with app.app_context():
        old_rev = stored(pid).person_rev
    url = f"{BASE}/modules/scope"
    response = client.post(f"{url}/read", data={"csrf_token": csrf_token(client, url)})
    assert response.status_code == 302
    with app.app_context():
        row = stored(pid)
        rev = db.session.scalar(select(Person.status_rev).where(Person.id == pid))
        assert row.person_rev == rev > old_rev
        assert as_status(row) == rule_status(pid)


def test_bringing_everyone_up_to_date_stores_every_answer(app, make_person):
    pids = [make_person("staff") for _ in range(3)] + [make_person("parent")]
    with app.app_context():
        db.session.execute(text("DELETE FROM stored_status"))
        db.session.commit()
        assert refresh() == 4
        assert refresh() == 0  # all current now
        for pid in pids:
            assert as_status(stored(pid)) == rule_status(pid)


# --- once per change ---------------------------------------------------------------------------


def _module_url(slug: str) -> str:
    return f"{BASE}/modules/{slug}"


@pytest.mark.parametrize("step", ["read", "quiz", "sign", "roles"])
def test_a_status_changing_request_runs_the_rule_exactly_once(
    app, auth, make_person, evaluations, step
):
    """One evaluation per affected person and policy, however many packages care: the view,
    the domain function, webhooks, certificates, grades and xAPI all read the one answer."""
    pid = make_person("volunteer", name="Una Once", email="una@ladysmith.example")
    admin_id = make_person("admin", name="Ada Admin")
    client = auth.as_person(pid)
    with app.app_context():
        person, policy = db.session.get(Person, pid), db.session.scalar(select(Policy))
        link = current_version(db.session, policy).module_links[0]
        slug = link.module_version.module.slug
        if step == "quiz":  # read, quiz started: passing it is the change
            record_read(db.session, person, policy, link.module_version)
            attempt = start_attempt(db.session, person, link.module_version_id,
                                    db.session.get(QuizBank, link.bank_id))  # fmt: skip
            answers, public_id = right_answers(attempt), attempt.public_id
        elif step == "sign":
            complete_modules(db.session, person, policy)
        db.session.commit()
    if step == "read":
        url = _module_url(slug)
        client.get(url)  # opened: the answer is stored as it stands before the click
        token = csrf_token(client, url)
        evaluations.clear()
        response = client.post(f"{url}/read", data={"csrf_token": token})
    elif step == "quiz":
        token = csrf_token(client, f"/quiz/{public_id}")
        evaluations.clear()
        data = {"csrf_token": token, **{f"q-{k}": v for k, v in answers.items()}}
        response = client.post(f"/quiz/{public_id}", data=data)
    elif step == "sign":
        token = csrf_token(client, f"{BASE}/sign")
        evaluations.clear()
        response = client.post(f"{BASE}/sign", data={"csrf_token": token, "confirm": "y",
                                                      "full_name": "Una Once"})  # fmt: skip
    else:
        admin = Auth(app, app.test_client())
        admin.as_person(admin_id)
        form = f"/admin/people/{pid}"
        token = csrf_token(admin.client, form)
        evaluations.clear()
        response = admin.client.post(form, data={
            "csrf_token": token, "name": "Una Once", "email": "una@ladysmith.example",
            "roles": ["volunteer", "parent"],
        })  # fmt: skip
    assert response.status_code in (302, 303), response.get_data(as_text=True)[:2000]
    assert evaluations == [pid]
    run_worker(app)  # every consumer of the change, from the one answer
    assert evaluations == [pid]
    changes = [e for e in events(app, pid) if e["old"] is not None]
    assert changes and changes[-1]["old"] != changes[-1]["new"]


def test_each_change_of_standing_is_announced_once_with_the_old_and_the_new(app, auth, make_person):
    pid = make_person("volunteer", name="Una Once")
    client = auth.as_person(pid)
    (first,) = events(app, pid)
    assert first["old"] is None and first["new"]["standing"] == "not_started"
    url = _module_url("scope")
    client.get(url)  # opened: in progress
    client.post(f"{url}/read", data={"csrf_token": csrf_token(client, url)})
    client.post(f"{url}/read", data={"csrf_token": csrf_token(client, url)})  # nothing new
    standings = [
        (e["old"] and e["old"]["standing"], e["new"]["standing"]) for e in events(app, pid)
    ]
    assert standings[:2] == [(None, "not_started"), ("not_started", "in_progress")]
    completed = [e["new"]["completed"] for e in events(app, pid)]
    assert completed == sorted(completed) and len(set(completed)) == len(completed) - 1


def test_a_change_made_behind_the_apps_back_is_announced_by_the_sweep(app, make_person):
    """Nothing marks a change made in SQL; the trigger makes the stored answer stop counting, and
    the worker's sweep asks the rule again and announces the difference."""
    pid = make_person("staff")
    train_people(app, pid)
    run_worker(app)
    with app.app_context():
        db.session.execute(text("UPDATE person SET active = false WHERE id = :p"), {"p": pid})
        db.session.commit()
    assert events(app, pid)[-1]["new"]["trained"] is True
    run_worker(app, utcnow() + timedelta(minutes=1))  # the sweep runs once a minute
    last = events(app, pid)[-1]
    assert (last["old"]["standing"], last["new"]["standing"]) == ("trained", "inactive")


def test_publishing_leaves_everyone_to_the_worker(
    app, runner, editable_content, make_person, evaluations
):
    app.config["CONTENT_DIR"] = str(editable_content)
    folder = editable_content / "social-media-policy"
    pids = [make_person("staff") for _ in range(3)]
    train_people(app, *pids)
    for name, old, new in (("08-tone.md", "- Engaging", "- Engaging and clear"),
                           ("policy.yaml", 'version: "1.0"', 'version: "1.1"')):  # fmt: skip
        path = folder / name
        path.write_text(path.read_text().replace(old, new, 1))
    evaluations.clear()
    assert runner.invoke(args=["content", "publish"]).exit_code == 0
    assert evaluations == []  # the publisher does not wait for anyone's evaluation
    run_worker(app)
    assert sorted(evaluations) == sorted([*pids, *_others(app, pids)])
    for pid in pids:
        last = events(app, pid)[-1]
        assert (last["old"]["version"], last["new"]["version"]) == ("1.0", "1.1")
        assert last["new"]["trained"] is False


def _others(app, pids: list[int]) -> list[int]:
    with app.app_context():
        return [p for p in db.session.scalars(select(Person.id)) if p not in pids]


def test_bring_up_to_date_is_one_evaluation_each(app, make_person, evaluations):
    pids = [make_person("staff") for _ in range(5)]
    with app.app_context():
        db.session.execute(text("DELETE FROM stored_status"))
        db.session.commit()
        evaluations.clear()
        assert bring_up_to_date(db.session) == 5
    assert sorted(evaluations) == sorted(pids)


# --- the safety net ----------------------------------------------------------------------------

TABLE = re.compile(r'\b(?:FROM|JOIN)\s+"?(\w+)"?', re.IGNORECASE)


def _watched_tables(session) -> set[str]:
    """Tables whose changes bump a status revision, from the database's own triggers."""
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(text(
            "SELECT DISTINCT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_proc p ON p.oid = t.tgfoid WHERE p.proname LIKE '%status_rev' "
            "AND NOT t.tgisinternal"
        ))  # fmt: skip
    else:
        rows = session.execute(text(
            "SELECT DISTINCT tbl_name FROM sqlite_master WHERE type = 'trigger' "
            "AND sql LIKE '%status_rev = status_rev + 1%'"
        ))  # fmt: skip
    return {row[0] for row in rows}


def test_the_triggers_watch_exactly_the_tables_the_rule_reads(app, make_person):
    """Derived from the code, not a list: run the rule for someone with every kind of evidence and
    record the tables its queries read; compare with the tables that carry a revision trigger."""
    pid = make_person("volunteer", name="Val Vol")
    train_people(app, pid)
    with app.app_context():
        read: set[str] = set()

        def record(_conn, _cursor, statement, *_args) -> None:
            read.update(name.lower() for name in TABLE.findall(statement))

        person = db.session.get(Person, pid)
        policy = db.session.scalar(select(Policy))
        record_visit(db.session, person, current_version(db.session, policy).module_versions[0])
        db.session.commit()
        person = db.session.get(Person, pid)
        policy = db.session.get(Policy, policy.id)
        db.session.expire(person)  # what the rule reads of the person is read inside, too
        event.listen(db.engine, "before_cursor_execute", record)
        try:
            statuses_for(db.session, [person], policy)
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
        watched = _watched_tables(db.session)
    assert read == watched, (read - watched, watched - read)


def test_the_answer_served_from_stored_columns_is_the_rules_answer_document_for_document(
    app, make_person, evaluations
):
    """The API builds its answers from the store's typed columns without asking the rule; for
    people in every state that document is the one the rule's own Status gives."""
    trained = make_person("volunteer", name="Zoë Ærøskøbing", email="zoe@ladysmith.example")
    partway = make_person("staff", "governor", name="Pat Partway")
    new = make_person("staff", name="Nell New")
    inactive = make_person("staff", name="Ian Inactive")
    lapsing = make_person("volunteer", name="Lars Lapsed")
    train_people(app, trained, inactive, lapsing)
    with app.app_context():
        policy = db.session.scalar(select(Policy))
        person = db.session.get(Person, partway)
        first = current_version(db.session, policy).module_links[0].module_version.module.slug
        complete_modules(db.session, person, policy, only={first})
        deactivate(db.session.get(Person, inactive))  # trained, then left
        db.session.commit()
        served(lapsing)
        expires = stored(lapsing).valid_until
    people = [trained, partway, new, inactive, lapsing]
    documents = {}
    with app.app_context():
        [ref] = policies()
        refs = [str(pid) for pid in people]
        for now in (utcnow(), expires + timedelta(days=1)):  # today, and once training lapsed
            find_answers(ref, refs, now)  # stores whatever is not stored yet
            evaluations.clear()
            from_columns = {r: json.loads(a.body) for r, a in find_answers(ref, refs, now).items()}
            assert evaluations == []  # every answer came from the stored columns
            for pid in people:
                assert from_columns[str(pid)] == by_the_rule(pid, now)
                documents[pid, now > expires] = from_columns[str(pid)]
    today = {pid: documents[pid, False] for pid in people}
    assert today[trained]["trained"] and today[trained]["person"]["name"] == "Zoë Ærøskøbing"
    assert all(m["completed_at"].endswith("Z") for m in today[trained]["modules"])
    assert [m["status"] for m in today[partway]["modules"]].count("completed") == 1
    assert today[partway]["person"]["roles"] == ["governor", "staff"]
    assert all(m["status"] == "not_started" for m in today[new]["modules"])
    assert today[inactive]["person"]["active"] is False and not today[inactive]["trained"]
    assert {"module": None, "reason": "expired"} in documents[lapsing, True]["missing"]
    assert not documents[lapsing, True]["trained"] and documents[lapsing, False]["trained"]


def test_stored_times_are_written_in_utc_whatever_zone_the_rule_used(app, make_person):
    """The API serves the stored module times as they are (``+00:00`` shown as ``Z``), so the
    store writes every time in UTC."""
    pid = make_person("volunteer")
    train_people(app, pid)
    with app.app_context():
        status = rule_status(pid)
        paris = timezone(timedelta(hours=1))
        shifted = replace(
            status,
            modules=tuple(replace(m, completed_at=m.completed_at.astimezone(paris))
                          for m in status.modules),
        )  # fmt: skip
        written = status_store._values(shifted)["modules"]
        for module, entry in zip(status.modules, written, strict=True):
            assert entry["completed_at"] == module.completed_at.isoformat()
            assert entry["completed_at"].endswith("+00:00")
