"""Ending sessions: an administrator signs one person out everywhere, and a person ends all their
sessions but the one they are using. Each is audited; the ended sessions stop at their next request."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import select

from audit.models import AuditEvent
from core.db import db
from core.web import SESSION_STARTED
from people.models import Person
from tests.conftest import Auth, csrf_token
from tests.lti_platform import TestPlatform
from tests.test_hardening import _age_session
from tests.test_lti import register


def _signed_in(app: Flask, person_id: int):
    """A fresh browser, signed in as the person."""
    return Auth(app, app.test_client()).as_person(person_id)


def _ended_events(app: Flask, person_id: int) -> list[tuple[int | None, dict]]:
    with app.app_context():
        rows = db.session.scalars(
            select(AuditEvent).where(
                AuditEvent.event == "sessions.ended", AuditEvent.subject_id == str(person_id)
            )
        ).all()
        return [(row.actor_id, json.loads(row.detail)) for row in rows]


def _version(app: Flask, person_id: int) -> int:
    with app.app_context():
        return db.session.get(Person, person_id).auth_version


def test_admin_signs_a_person_out_everywhere(app, make_person) -> None:
    person, admin = make_person("staff", name="Sam Staff"), make_person("admin")
    laptop, phone = _signed_in(app, person), _signed_in(app, person)
    assert laptop.get("/").status_code == phone.get("/").status_code == 200
    office = _signed_in(app, admin)
    url = f"/admin/people/{person}/sign-out-everywhere"
    assert "Sign out everywhere…" in office.get(f"/admin/people/{person}").get_data(as_text=True)
    before = _version(app, person)
    confirm = office.get(url)
    assert confirm.status_code == 200
    assert "Sign Sam Staff out everywhere?" in confirm.get_data(as_text=True)
    assert _version(app, person) == before  # asking first changes nothing
    assert _ended_events(app, person) == []

    response = office.post(url, data={"csrf_token": csrf_token(office, url)})
    assert response.status_code == 302
    for browser in (laptop, phone):
        page = browser.get("/")
        assert page.status_code == 302 and "/sign-in" in page.headers["Location"]
    assert _ended_events(app, person) == [(admin, {"kept_current": False})]
    assert office.get("/admin/people").status_code == 200  # the administrator carries on
    assert _signed_in(app, person).get("/").status_code == 200  # the person may sign in again


def test_admin_sign_out_everywhere_needs_the_form_token(app, make_person) -> None:
    person, admin = make_person("staff"), make_person("admin")
    browser = _signed_in(app, person)
    office = _signed_in(app, admin)
    before = _version(app, person)
    response = office.post(f"/admin/people/{person}/sign-out-everywhere", data={})
    assert response.status_code == 400
    assert _version(app, person) == before
    assert browser.get("/").status_code == 200
    assert _ended_events(app, person) == []


def test_only_administrators_sign_others_out(app, make_person) -> None:
    person, slt = make_person("staff"), make_person("slt")
    office = _signed_in(app, slt)
    url = f"/admin/people/{person}/sign-out-everywhere"
    before = _version(app, person)
    token = csrf_token(office, "/account/password")
    assert office.post(url, data={"csrf_token": token}).status_code == 403
    assert _version(app, person) == before


def test_person_ends_their_other_sessions_and_keeps_this_one(app, make_person) -> None:
    person = make_person("staff")
    here, elsewhere = _signed_in(app, person), _signed_in(app, person)
    with here.session_transaction() as state:
        state[SESSION_STARTED] -= 3600  # signed in an hour ago
        started = state[SESSION_STARTED]
    page = here.get("/account/password").get_data(as_text=True)
    assert "Sign out everywhere else" in page

    response = here.post(
        "/account/sign-out-others", data={"csrf_token": csrf_token(here, "/account/password")}
    )
    assert response.status_code == 302
    assert here.get("/").status_code == 200
    other = elsewhere.get("/")
    assert other.status_code == 302 and "/sign-in" in other.headers["Location"]
    with here.session_transaction() as state:  # no longer-lived session for having asked
        assert state[SESSION_STARTED] == started
    assert _ended_events(app, person) == [(person, {"kept_current": True})]


def test_ending_other_sessions_needs_the_form_token(app, make_person) -> None:
    person = make_person("staff")
    here, elsewhere = _signed_in(app, person), _signed_in(app, person)
    assert here.post("/account/sign-out-others", data={}).status_code == 400
    assert elsewhere.get("/").status_code == 200
    assert _ended_events(app, person) == []


# --- sessions opened by a launch from a learning platform -----------------------------------------


@pytest.fixture
def lms(app: Flask) -> Iterator[TestPlatform]:
    """A learning platform registered with Countersign, ready to launch."""
    tool = app.test_client()
    platform = TestPlatform(tool_jwks=lambda: tool.get("/lti/jwks.json").get_json()).start()
    register(app, platform)
    yield platform
    platform.stop()


def _launched(app: Flask, lms: TestPlatform):
    browser = app.test_client()
    response, _, _ = lms.launch(browser)
    assert response.status_code == 302 and browser.get("/").status_code == 200
    return browser


def test_a_session_from_the_lms_times_out_when_idle_like_any_other(app, lms) -> None:
    browser = _launched(app, lms)
    _age_session(browser, idle=59 * 60)
    assert browser.get("/").status_code == 200
    _age_session(browser, idle=61 * 60)
    response = browser.get("/")
    assert response.status_code == 302 and "/sign-in" in response.location


def test_a_session_from_the_lms_ends_after_the_absolute_lifetime(app, lms) -> None:
    browser = _launched(app, lms)
    _age_session(browser, lived=12 * 3600 + 60)
    response = browser.get("/")
    assert response.status_code == 302 and "/sign-in" in response.location


def test_sign_out_everywhere_ends_a_session_from_the_lms(app, lms, make_person) -> None:
    browser = _launched(app, lms)
    with app.app_context():
        person = db.session.scalar(select(Person).order_by(Person.id.desc())).id
    office = _signed_in(app, make_person("admin"))
    url = f"/admin/people/{person}/sign-out-everywhere"
    assert office.post(url, data={"csrf_token": csrf_token(office, url)}).status_code == 302
    response = browser.get("/")
    assert response.status_code == 302 and "/sign-in" in response.location
