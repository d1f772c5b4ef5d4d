"""xAPI statements come from the events the domain functions announce, never from watching the
database session: each piece of evidence announces itself once, in its own transaction, and the
worker turns the announcement into its statement."""

from __future__ import annotations

import ast
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import func, select

from core.config import ROOT
from core.db import db, utcnow
from core.outbox import OutboxMessage
from people.models import Person
from people.service import deactivate
from quizzes.models import QuizAttempt, QuizSubmission
from tests import lrs as lrs_server
from tests.conftest import csrf_token, run_worker, wrong_answers
from tests.test_journey import BASE, VOLUNTEER_MODULES, complete_modules, pass_quiz, read_modules
from training.evidence import EVIDENCE_RECORDED
from training.models import Acknowledgement, ModuleVersion, Policy, ReadReceipt
from training.progress import record_read
from training.publishing import current_version
from xapi import statements as xs
from xapi.outbox import STATEMENT, statements

pytestmark = pytest.mark.usefixtures("published")

DOWN = {
    # An LRS that is down: statements are queued and wait, which is all these tests look at.
    "XAPI_ENDPOINT": f"http://127.0.0.1:{lrs_server.free_port()}/xAPI",
    "XAPI_USERNAME": "countersign",
    "XAPI_PASSWORD": "not-sent-anywhere",
}


def unique_email() -> str:
    return f"events-{uuid.uuid4().hex[:12]}@ladysmith.example"


def sign(client, name: str):
    return client.post(f"{BASE}/sign", data={"csrf_token": csrf_token(client, "/"), "confirm": "y",
                                             "full_name": name})  # fmt: skip


def topics(app: Flask) -> Counter:
    with app.app_context():
        rows = db.session.execute(
            select(OutboxMessage.topic, func.count()).group_by(OutboxMessage.topic)
        ).all()
    return Counter(dict(rows))


def journey(app: Flask, client, name: str) -> str:
    """Read a module, fail then pass its quiz, finish the rest and sign; then submit the same
    read, quiz answers and signature again. Returns the failed attempt's address."""
    first, *rest = VOLUNTEER_MODULES
    read_modules(client, [first])
    failed_url = pass_quiz(app, client, first, answers=wrong_answers)
    pass_quiz(app, client, first)
    complete_modules(app, client, rest)
    assert sign(client, name).status_code == 302
    read_modules(client, [first])
    client.post(failed_url, data={"csrf_token": csrf_token(client, "/")})
    sign(client, name)
    return failed_url


class TestWithAnLrs:
    @pytest.fixture
    def app_config(self) -> dict:
        return DOWN

    def test_each_piece_of_evidence_queues_its_statement_once_through_its_event(
        self, app, auth, make_person
    ) -> None:
        person_id = make_person("volunteer", name="Evi Event", email=unique_email())
        client = auth.as_person(person_id)
        journey(app, client, "Evi Event")
        modules = len(VOLUNTEER_MODULES)

        # Announced by the requests themselves, one event per row inserted (the double submits
        # inserted nothing and announced nothing); no statement exists before the worker runs.
        with app.app_context():
            s = db.session
            events = [
                m.payload
                for m in s.scalars(
                    select(OutboxMessage).where(OutboxMessage.topic == EVIDENCE_RECORDED)
                )
            ]
            receipts = s.scalars(select(ReadReceipt).where(ReadReceipt.person_id == person_id))
            submissions = s.scalars(
                select(QuizSubmission)
                .join(QuizAttempt, QuizAttempt.id == QuizSubmission.attempt_id)
                .where(QuizAttempt.person_id == person_id)
            )
            acks = s.scalars(select(Acknowledgement).where(Acknowledgement.person_id == person_id))
            rows = {
                **{("read", r.id): r.at for r in receipts},
                **{("quiz", q.id): q.submitted_at for q in submissions},
                **{("ack", a.id): a.at for a in acks},
            }
            assert sorted((e["kind"], e["id"]) for e in events) == sorted(rows)
            assert Counter(e["kind"] for e in events) == {"read": modules, "quiz": modules + 1,
                                                          "ack": 1}  # fmt: skip
            assert {e["person_id"] for e in events} == {person_id}
            assert statements(s) == []

        run_worker(app)
        run_worker(app)  # a second pass finds nothing more to queue
        with app.app_context():
            queued = statements(db.session)
        verbs = Counter(st.verb for st in queued)
        assert verbs == {xs.READ: modules, xs.PASSED: modules, xs.FAILED: 1, xs.ACCEPTED: 1,
                         xs.COMPLETED: 1}  # fmt: skip
        assert len({st.event_key for st in queued}) == len(queued)
        # Each statement is timed by its evidence row, not by when the worker built it.
        by_key = {st.event_key: st for st in queued}
        with app.app_context():
            s = db.session
            for (kind, row_id), at in rows.items():
                key = f"ack:{row_id}" if kind == "ack" else f"read:{row_id}"
                if kind == "quiz":
                    key = f"quiz:{s.get(QuizSubmission, row_id).attempt_id}"
                assert by_key[key].payload["timestamp"] == xs.timestamp(at)
        assert all(st.payload["actor"]["name"] == "Evi Event" for st in queued)

    def test_a_double_read_announces_and_queues_nothing_more(self, app, make_person) -> None:
        person_id = make_person("volunteer", email=unique_email())
        with app.app_context():
            s = db.session
            policy = s.scalar(select(Policy))
            version = current_version(s, policy)
            module_version = s.get(ModuleVersion, version.module_links[0].module_version_id)
            assert record_read(s, s.get(Person, person_id), policy, module_version)
            s.commit()
            assert not record_read(s, s.get(Person, person_id), policy, module_version)
            s.commit()
        assert topics(app)[EVIDENCE_RECORDED] == 1
        run_worker(app)
        run_worker(app)
        with app.app_context():
            (statement,) = statements(db.session)
        assert statement.verb == xs.READ

    def test_completion_is_queued_when_the_status_change_is_handled_before_the_signature(
        self, app, auth, make_person
    ) -> None:
        """Two workers may take the signature's event and the status change in either order."""
        client = auth.as_person(make_person("volunteer", name="Olly Order", email=unique_email()))
        complete_modules(app, client, VOLUNTEER_MODULES)
        run_worker(app)
        assert sign(client, "Olly Order").status_code == 302
        later = utcnow() + timedelta(hours=1)
        with app.app_context():
            s = db.session
            (signed,) = [
                m
                for m in s.scalars(
                    select(OutboxMessage).where(OutboxMessage.topic == EVIDENCE_RECORDED)
                )
                if m.payload["kind"] == "ack"
            ]
            signed.due_at = later  # the status change goes first
            s.commit()
        run_worker(app)
        with app.app_context():
            assert {st.verb for st in statements(db.session)} == {xs.READ, xs.PASSED}
        run_worker(app, now=later)
        with app.app_context():
            verbs = Counter(st.verb for st in statements(db.session))
        assert verbs[xs.ACCEPTED] == 1 and verbs[xs.COMPLETED] == 1

    def test_a_statement_built_after_its_person_was_erased_names_the_pseudonym(
        self, app, auth, make_person
    ) -> None:
        from people.privacy import erase_person

        email = unique_email()
        person_id = make_person("volunteer", name="Ernie Early", email=email)
        read_modules(auth.as_person(person_id), VOLUNTEER_MODULES[:1])
        with app.app_context():
            s = db.session
            deactivate(s.get(Person, person_id), at=utcnow() - timedelta(days=2))
            s.commit()
            erase_person(s, person_id, actor_id=None, retention_days=1)
            s.commit()
            pseudonym = s.get(Person, person_id).email
        run_worker(app)  # the read was announced before the erasure, built after it
        with app.app_context():
            (row,) = statements(db.session)
        assert email not in str(row.payload) and "Ernie" not in str(row.payload)
        assert row.payload["actor"]["mbox"] == f"mailto:{pseudonym}"


def test_without_an_lrs_evidence_queues_only_what_it_always_did(app, auth, make_person) -> None:
    """No subscriber, no event: a school without an LRS gets no rows for it."""
    client = auth.as_person(make_person("volunteer", name="Nora Nolrs", email=unique_email()))
    before = topics(app)  # publishing the content queued its own
    journey(app, client, "Nora Nolrs")
    assert set(topics(app) - before) == {"status.changed"}
    run_worker(app)
    found = topics(app)
    assert EVIDENCE_RECORDED not in found and STATEMENT not in found


# --- nothing watches the session behind the domain functions' backs -----------------------------


def session_listeners(app: Flask) -> dict[str, set[str]]:
    """Every listener on the app's database sessions (any session event), by event name: the
    modules they live in."""
    with app.extensions["countersign.db"]() as session:
        dispatch = session.dispatch
        found = {
            name: {getattr(fn, "__module__", "?") for fn in getattr(dispatch, name)}
            for name in dispatch._event_names
        }
    return {name: modules for name, modules in found.items() if modules}


@pytest.mark.parametrize("app_config", [{}, DOWN], ids=["no-lrs", "lrs"])
def test_only_the_status_store_listens_on_database_sessions(app) -> None:
    found = session_listeners(app)
    assert found == {
        "after_commit": {"training.status_store"},
        "after_rollback": {"training.status_store"},
    }


def test_the_xapi_package_registers_no_database_event_listener() -> None:
    """Derived from the source: no ``event.listen``/``listens_for`` anywhere in ``xapi/``."""
    calls = set()
    for path in sorted((ROOT / "xapi").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("listen", "listens_for"):
                calls.add(f"{path.name}:{node.lineno}")
    assert not calls
