"""Refused and suspicious requests leave one line each in the application log (ASVS V16.3.1 to
V16.3.3): whoever watches the logs sees a password being guessed, a token being tried, a form
being forged or a role being overstepped, without the log holding a secret or a name."""

from __future__ import annotations

import logging

import pytest

from people.auth import ThrottlePolicy
from tests.conftest import PASSWORD, csrf_token
from tests.test_quizzes import _start, _submit, pytestmark_db, right_answers

LOGGER = "countersign.security"


@pytest.fixture
def security_lines(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger=LOGGER)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == LOGGER]

    return lines


def _one(lines: list[str], event: str) -> str:
    found = [line for line in lines if line.startswith(f"event={event} ")]
    assert len(found) == 1, lines
    return found[0]


def test_a_refused_api_token_is_logged_without_the_token(client, security_lines) -> None:
    response = client.get(
        "/api/v1/people/1/training-status",
        headers={"Authorization": "Bearer cs_guessed-token-value"},
    )
    assert response.status_code == 401
    line = _one(security_lines(), "unauthenticated")
    assert (
        "status=401 method=GET path=/api/v1/people/1/training-status ip=127.0.0.1 person=-" in line
    )
    assert "guessed-token-value" not in line


def test_a_page_beyond_the_persons_role_is_logged_with_their_id(
    app, auth, make_person, security_lines
) -> None:
    person = make_person("staff")
    client = auth.as_person(person)
    assert client.get("/admin/people").status_code == 403
    line = _one(security_lines(), "forbidden")
    assert f"status=403 method=GET path=/admin/people ip=127.0.0.1 person={person}" in line


def test_a_form_without_its_csrf_token_is_logged(client, security_lines) -> None:
    response = client.post("/sign-in", data={"email": "a@ladysmith.example", "password": "x"})
    assert response.status_code == 400
    line = _one(security_lines(), "csrf_failed")
    assert "path=/sign-in" in line and 'reason="The CSRF token is missing."' in line


def test_a_wrong_password_is_logged_without_the_email_or_password(
    app, auth, make_person, security_lines
) -> None:
    make_person("staff", email="guessed@ladysmith.example")
    response = auth.sign_in("guessed@ladysmith.example", "Not-the-password-1")
    assert response.status_code == 400
    line = _one(security_lines(), "sign_in_failed")
    assert "status=400 method=POST path=/sign-in" in line
    assert "guessed" not in line and "Not-the-password" not in line


def test_a_throttled_sign_in_is_logged(app, auth, make_person, security_lines) -> None:
    make_person("staff", email="target@ladysmith.example")
    for _ in range(ThrottlePolicy().free_failures):
        auth.sign_in("target@ladysmith.example", "Wrong-password-123")
    response = auth.sign_in("target@ladysmith.example", PASSWORD)
    assert response.status_code == 429
    lines = security_lines()
    failed = [line for line in lines if line.startswith("event=sign_in_failed ")]
    assert len(failed) == ThrottlePolicy().free_failures
    assert "status=429 method=POST path=/sign-in" in _one(lines, "throttled")


@pytestmark_db
def test_quiz_answers_that_were_never_offered_are_logged(
    app, auth, make_person, security_lines
) -> None:
    person = make_person("staff")
    client = auth.as_person(person)
    url, attempt = _start(app, client, "use-of-images")
    forged = {**right_answers(attempt), attempt.drawn[0]["key"]: ["zzz"]}
    assert _submit(client, url, forged).status_code == 400
    line = _one(security_lines(), "quiz_answers_refused")
    assert f"person={person}" in line and "not one of the options" in line


def test_link_tokens_and_query_strings_never_reach_the_security_log(client, security_lines) -> None:
    token = "s3cret-link-token-value"
    client.post(f"/reset-password/{token}?next=/private-{token}", data={"password": "x"})
    lines = security_lines()
    assert lines, "the forged form post is logged"
    assert all(token not in line for line in lines), lines
    assert "path=/reset-password/[redacted]" in lines[0]


def test_ordinary_pages_and_a_right_password_log_nothing(
    app, auth, make_person, security_lines
) -> None:
    client = auth.as_person(make_person("staff"))
    assert client.get("/").status_code == 200
    token = csrf_token(client, "/")
    assert token
    assert security_lines() == []


def test_a_refused_lms_launch_is_logged_with_its_reason(client, security_lines) -> None:
    response = client.post("/lti/launch", data={"state": "x", "id_token": "not.a.jwt"})
    assert response.status_code == 400
    line = _one(security_lines(), "lti_refused")
    assert "path=/lti/launch" in line and 'reason="The launch could not be read"' in line
    assert "not.a.jwt" not in line


def test_an_email_in_an_api_path_never_reaches_the_logs(client, security_lines) -> None:
    from core.access_log import redact

    for path in (
        "/api/v1/people/vic.volunteer@ladysmith.example/training-status",
        "/api/v1/people/vic.volunteer%40ladysmith.example/training-status",
    ):
        client.get(path, headers={"Authorization": "Bearer cs_nope"})
        assert redact(f'"GET {path} HTTP/1.1"') == (
            '"GET /api/v1/people/[email]/training-status HTTP/1.1"'
        )
    lines = security_lines()
    assert len(lines) == 2 and all("ladysmith" not in line for line in lines), lines
    assert redact("/api/v1/people/42/training-status") == "/api/v1/people/42/training-status"


@pytest.mark.parametrize(
    "forged",
    [
        "x%0A2026-12-05T11:40:00.000Z WARNING countersign.security: event=sign_in_failed",
        "x%22%20ip=203.0.113.7%20person=3%20x=%22",
        "x%0D%09%1B[2J%C2%85%E2%80%A8",
    ],
)
def test_a_path_cannot_forge_lines_or_fields_in_the_security_log(
    client, security_lines, forged
) -> None:
    client.get(f"/api/v1/people/{forged}/training-status")
    (line,) = security_lines()
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line.count(" ip=") == 1 and line.count(" person=") == 1
    assert " ip=127.0.0.1 person=-" in line and line.isprintable()
