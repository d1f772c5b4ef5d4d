"""xAPI: each read, quiz attempt, signature and completion reaches a real LRS, once, with retry."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from core.db import db, utcnow
from core.outbox import OutboxMessage
from people.service import deactivate
from tests import lrs as lrs_server
from tests.conftest import csrf_token, run_worker, wrong_answers
from tests.test_journey import BASE, VOLUNTEER_MODULES, complete_modules, pass_quiz, read_modules
from xapi.outbox import STATEMENT, Lrs, Statement, put_statement, statements
from xapi.statements import ACCEPTED, COMPLETED, FAILED, MODULE_TYPE, PASSED, READ

pytestmark = pytest.mark.usefixtures("published")

ACTIVITY = "http://countersign.test/policies/social-media-policy"


@pytest.fixture(scope="session")
def lrs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lrs_server.Lrs]:
    if not lrs_server.PYTHON.exists():
        pytest.skip(".venv-lrs is missing: `make venv-lrs` (part of `make test`) creates the LRS")
    server = lrs_server.start(tmp_path_factory.mktemp("lrs"))
    yield server
    server.stop()


@pytest.fixture
def app_config(lrs: lrs_server.Lrs) -> dict:
    return {
        "XAPI_ENDPOINT": lrs.endpoint,
        "XAPI_USERNAME": lrs_server.USERNAME,
        "XAPI_PASSWORD": lrs_server.PASSWORD,
    }


def unique_email() -> str:
    return f"xapi-{uuid.uuid4().hex[:12]}@ladysmith.example"


def sign(client, name: str):
    return client.post(f"{BASE}/sign", data={"csrf_token": csrf_token(client, "/"), "confirm": "y",
                                             "full_name": name})  # fmt: skip


def stored(app) -> list[Statement]:
    with app.app_context():
        return statements(db.session)


def make_due(app, *ids: int) -> None:
    """Bring these statements' next try forward to now (as if the back-off had passed)."""
    with app.app_context():
        query = update(OutboxMessage).where(OutboxMessage.topic == STATEMENT)
        if ids:
            query = query.where(OutboxMessage.id.in_(ids))
        db.session.execute(query.values(due_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()


def test_a_learners_journey_reaches_the_lrs_once_each(app, auth, make_person, lrs) -> None:
    email = unique_email()
    client = auth.as_person(make_person("volunteer", name="Vera Volunteer", email=email))
    first, *rest = VOLUNTEER_MODULES
    read_modules(client, [first])
    failed_url = pass_quiz(app, client, first, answers=wrong_answers)
    pass_quiz(app, client, first)
    complete_modules(app, client, rest)
    assert sign(client, "Vera Volunteer").status_code == 302

    # Double submits: the same read, the same quiz answers, the same signature again.
    read_modules(client, [first])
    again = client.post(failed_url, data={"csrf_token": csrf_token(client, "/")})
    assert again.status_code in (302, 303)
    sign(client, "Vera Volunteer")
    run_worker(app)

    held = lrs.statements(email)
    verbs = Counter(s["verb"]["id"] for s in held)
    modules = len(VOLUNTEER_MODULES)
    assert verbs == {READ: modules, PASSED: modules, FAILED: 1, ACCEPTED: 1, COMPLETED: 1}
    assert len({s["id"] for s in held}) == len(held)
    assert {s["actor"]["mbox"] for s in held} == {f"mailto:{email}"}
    assert {s["actor"]["name"] for s in held} == {"Vera Volunteer"}

    module_ids = {f"{ACTIVITY}/modules/{slug}" for slug in VOLUNTEER_MODULES}
    for s in held:
        if s["verb"]["id"] in (READ, PASSED, FAILED):
            assert s["object"]["id"] in module_ids
            assert s["object"]["definition"]["type"] == MODULE_TYPE
            assert s["context"]["contextActivities"]["parent"][0]["id"] == ACTIVITY
        else:
            assert s["object"]["id"] == ACTIVITY
    failed = next(s for s in held if s["verb"]["id"] == FAILED)
    assert failed["object"]["id"] == f"{ACTIVITY}/modules/{first}"
    assert failed["result"]["success"] is False
    assert failed["result"]["score"]["raw"] < failed["result"]["score"]["max"]
    passed = [s for s in held if s["verb"]["id"] == PASSED]
    assert all(s["result"]["success"] is True for s in passed)
    assert all(s["result"]["score"]["scaled"] >= 0.8 for s in passed)
    assert all(0 <= s["result"]["score"]["raw"] <= s["result"]["score"]["max"] for s in passed)

    rows = stored(app)
    assert len(rows) == len(held)
    assert {r.statement_id for r in rows} == {s["id"] for s in held}
    assert all(r.sent_at is not None and r.last_error is None for r in rows)


def _dead_endpoint() -> str:
    return f"http://127.0.0.1:{lrs_server.free_port()}/xAPI"


def test_statements_wait_while_the_lrs_is_down_and_are_sent_once_later(
    app, auth, make_person, runner, lrs
) -> None:
    email = unique_email()
    learner = make_person("volunteer", name="Dora Down", email=email)
    admin = make_person("admin", name="Ada Admin")
    app.config["XAPI_ENDPOINT"] = _dead_endpoint()
    client = auth.as_person(learner)
    read_modules(client, VOLUNTEER_MODULES[:2])
    run_worker(app)
    rows = stored(app)
    assert len(rows) == 2
    assert all(r.sent_at is None and r.attempts == 1 and r.last_error for r in rows)
    assert "refused" in rows[0].last_error.lower()
    assert lrs.statements(email) == []

    client.post("/sign-out", data={"csrf_token": csrf_token(client, "/")})
    auth.as_person(admin)
    page = client.get("/admin/xapi/").get_data(as_text=True)
    assert rows[0].last_error in page and "Dora Down" not in page and email in page
    assert "Retry now" in page

    # The LRS is back: the worker sends what is due (the first retry is due after a minute).
    app.config["XAPI_ENDPOINT"] = lrs.endpoint
    run_worker(app)
    assert lrs.statements(email) == []
    make_due(app, rows[0].id)
    run_worker(app)
    assert len(lrs.statements(email)) == 1

    # The other one: sent again by an administrator's "Retry now".
    response = client.post(
        "/admin/xapi/retry", data={"csrf_token": csrf_token(client, "/admin/xapi/")}
    )
    assert response.status_code == 302
    run_worker(app)
    held = lrs.statements(email)
    assert sorted(s["id"] for s in held) == sorted(r.statement_id for r in rows)
    assert all(r.sent_at is not None for r in stored(app))
    assert "Nothing waiting" in client.get("/admin/xapi/").get_data(as_text=True)

    # Sent again after an answer that never arrived: the LRS still holds it once.
    outcome = put_statement(
        Lrs(lrs.endpoint, lrs_server.USERNAME, lrs_server.PASSWORD),
        rows[0].statement_id,
        rows[0].payload,
    )
    assert outcome.stored
    assert len(lrs.statements(email)) == 2
    status = runner.invoke(args=["xapi", "status"])
    assert "sent: 2" in status.output and "given up: 0" in status.output


def test_repeated_failures_are_given_up_and_can_be_retried(app, make_person, runner) -> None:
    from training.models import ModuleVersion, Policy
    from training.progress import record_read
    from training.publishing import current_version

    app.config["XAPI_ENDPOINT"] = _dead_endpoint()
    person_id = make_person("volunteer", email=unique_email())
    with app.app_context():
        s = db.session
        policy = s.scalar(select(Policy))
        version = current_version(s, policy)
        module_version = s.get(ModuleVersion, version.module_links[0].module_version_id)
        from people.models import Person

        assert record_read(s, s.get(Person, person_id), policy, module_version)
        s.commit()
    for _ in range(6):
        make_due(app)
        run_worker(app)
    with app.app_context():
        (row,) = statements(db.session)
        assert row.gave_up_at is not None and row.attempts == 6 and row.sent_at is None
    assert "given up: 1" in runner.invoke(args=["xapi", "status"]).output


def test_nothing_is_queued_when_xapi_is_not_configured(app, auth, make_person) -> None:
    app.config["XAPI_ENDPOINT"] = ""
    client = auth.as_person(make_person("volunteer", name="Nina None", email=unique_email()))
    complete_modules(app, client, VOLUNTEER_MODULES)
    assert sign(client, "Nina None").status_code == 302
    with app.app_context():
        assert statements(db.session) == []


def test_the_admin_page_is_for_administrators_and_retry_needs_csrf(app, auth, make_person) -> None:
    assert app.test_client().get("/admin/xapi/").status_code == 302  # to sign in
    client = auth.as_person(make_person("staff", "slt", "governor"))
    assert client.get("/admin/xapi/").status_code == 403
    assert client.post("/admin/xapi/retry").status_code in (400, 403)
    client.post("/sign-out", data={"csrf_token": csrf_token(client, "/")})
    auth.as_person(make_person("admin"))
    page = client.get("/admin/xapi/").get_data(as_text=True)
    assert "Sending to" in page and "/xAPI" in page
    assert lrs_server.PASSWORD not in page
    assert client.post("/admin/xapi/retry").status_code == 400  # no CSRF token
    app.config["XAPI_ENDPOINT"] = ""
    assert "xAPI is off" in client.get("/admin/xapi/").get_data(as_text=True)


def test_erasing_a_leaver_replaces_their_name_and_email_in_the_outbox(app, auth, make_person):
    from people.models import Person
    from people.privacy import erase_person

    email = unique_email()
    person_id = make_person("volunteer", name="Eric Erased", email=email)
    app.config["XAPI_ENDPOINT"] = _dead_endpoint()
    read_modules(auth.as_person(person_id), VOLUNTEER_MODULES[:1])
    run_worker(app)  # the statement is queued (and waits: the LRS is down)
    with app.app_context():
        s = db.session
        person = s.get(Person, person_id)
        deactivate(person, at=utcnow() - timedelta(days=2))
        s.commit()
        erase_person(s, person_id, actor_id=None, retention_days=1)
        s.commit()
        (row,) = statements(s)
        assert email not in str(row.payload) and "Eric" not in str(row.payload)
        assert row.payload["actor"]["mbox"] == f"mailto:{s.get(Person, person_id).email}"
