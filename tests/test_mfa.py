"""The second factor: who must use one, authenticator apps with real codes, recovery codes,
throttling, removing a method, and an administrator's reset."""

from __future__ import annotations

import html
import json
import re
import time
from typing import Any

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import delete, func, select, update

from app import create_app
from audit.models import AuditEvent
from core.db import db
from mfa.flow import PENDING
from mfa.models import PasskeyChallenge, RecoveryCode, SecondFactor
from mfa.rules import (
    ENROL,
    SIGN_IN,
    authentication_options,
    keep_challenge,
    relying_party,
    spend_challenge,
)
from mfa.rules import use_passkey as use_passkey_rule
from people.auth import RESET, make_link_token
from people.models import Person, SignInAttempt
from tests.conftest import CSRF_RE, PASSWORD, csrf_token
from tests.smtp_server import SMTPServer
from tests.soft_authenticator import SoftPasskey

PRIVILEGED = ("admin", "slt", "governor")
SECRET_RE = re.compile(r'id="totp-secret">([A-Z2-7 ]+)</code>')
CODE_RE = re.compile(r"<li><code>([a-z2-9]{4}(?:-[a-z2-9]{4}){5})</code></li>")


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"MFA_ROLES": "admin,slt,governor"}


def email_of(app: Flask, person_id: int) -> str:
    with app.app_context():
        return db.session.get(Person, person_id).email


def password_step(
    client: FlaskClient, email: str, password: str = PASSWORD, next_: str = ""
) -> Any:
    token = csrf_token(client, "/sign-in")
    url = f"/sign-in?next={next_}" if next_ else "/sign-in"
    return client.post(url, data={"email": email, "password": password, "csrf_token": token})


def signed_in(client: FlaskClient) -> bool:
    response = client.get("/account/password")
    return response.status_code == 200


def post_form(client: FlaskClient, page: str, action: str, data: dict[str, str]) -> Any:
    return client.post(action, data={**data, "csrf_token": csrf_token(client, page)})


def enrol_app(client: FlaskClient) -> tuple[str, list[str], Any]:
    """Set up an authenticator app while signing in: (secret, recovery codes, response)."""
    page = client.get("/sign-in/second-factor/set-up").get_data(as_text=True)
    secret = SECRET_RE.search(page).group(1).replace(" ", "")
    response = post_form(
        client, "/sign-in/second-factor/set-up", "/sign-in/second-factor/set-up",
        {"code": pyotp.TOTP(secret).now()},
    )  # fmt: skip
    return secret, CODE_RE.findall(response.get_data(as_text=True)), response


def sign_out(client: FlaskClient) -> None:
    token = csrf_token(client, "/account/password")
    client.post("/sign-out", data={"csrf_token": token})


def last_step(app: Flask, person_id: int) -> int:
    with app.app_context():
        return db.session.scalar(
            select(SecondFactor.totp_last_step).where(SecondFactor.person_id == person_id)
        )


def events(app: Flask, name: str) -> list[AuditEvent]:
    with app.app_context():
        return list(db.session.scalars(select(AuditEvent).where(AuditEvent.event == name)))


def code_for(secret: str, step: int) -> str:
    return pyotp.TOTP(secret).at(step * 30)


# --- who must use one ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", PRIVILEGED)
def test_privileged_role_enrols_before_being_signed_in(app, client, make_person, role):
    pid = make_person(role)
    response = password_step(client, email_of(app, pid), next_="/account/password")
    assert response.status_code == 302
    assert response.location.endswith("/sign-in/second-factor/set-up")
    # Half-way: no page but the second step's is open to them.
    assert not signed_in(client)
    assert client.get("/").status_code == 302
    secret, codes, response = enrol_app(client)
    assert response.status_code == 200 and len(codes) == 10
    assert 'href="/account/password"' in response.get_data(as_text=True)  # carries on to next
    assert signed_in(client)
    (enrolled,) = events(app, "second_factor.enrolled")
    assert enrolled.actor_id == pid and '"totp"' in enrolled.detail


@pytest.mark.parametrize("role", ("staff", "volunteer", "parent"))
def test_other_roles_sign_in_with_a_password_alone(app, client, make_person, role):
    pid = make_person(role)
    response = password_step(client, email_of(app, pid))
    assert response.status_code == 302 and response.location == "/"
    assert signed_in(client)


@pytest.mark.parametrize("app_config", [{"MFA_ROLES": ""}])
def test_empty_roles_setting_means_nobody_needs_one(app, client, make_person):
    pid = make_person("admin")
    response = password_step(client, email_of(app, pid))
    assert response.status_code == 302 and response.location == "/"
    assert signed_in(client)


def test_unknown_role_in_the_setting_stops_the_app_starting(app):
    with pytest.raises(ValueError, match="wizard"):
        create_app({**app.config, "MFA_ROLES": "admin,wizard"})


def test_default_setting_is_admin_slt_and_governor(tmp_path):
    application = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "SECRET_KEY": "k"})
    assert application.config["MFA_ROLES"] == "admin,slt,governor"


def test_reset_link_does_not_skip_the_second_factor(app, client, make_person):
    pid = make_person("admin")
    with app.app_context():
        token = make_link_token(app.config["SECRET_KEY"], RESET, db.session.get(Person, pid))
    url = f"/reset-password/{token}"
    new = "a new long enough password"
    response = post_form(client, url, url, {"password": new, "confirm": new})
    assert response.status_code == 302
    assert response.location.endswith("/sign-in/second-factor/set-up")
    assert not signed_in(client)


# --- the half-signed state ------------------------------------------------------------------------


def test_password_step_alone_never_signs_in_and_expires(app, client, make_person):
    pid = make_person("slt")
    secret, _, _ = enrol_after_password(app, client, pid)
    sign_out(client)
    response = password_step(client, email_of(app, pid))
    assert response.location.endswith("/sign-in/second-factor")
    with client.session_transaction() as state:
        assert "_user_id" not in state
        state[PENDING] = {**state[PENDING], "t": int(time.time()) - 301}
    # Five minutes on, even a right code is too late: back to the password.
    response = post_form(
        client, "/sign-in", "/sign-in/second-factor", {"code": pyotp.TOTP(secret).now()}
    )
    assert response.status_code == 302 and response.location.startswith("/sign-in")
    assert not signed_in(client)


def test_person_with_a_method_cannot_set_up_another_with_only_the_password(
    app, client, make_person
):
    pid = make_person("admin")
    enrol_after_password(app, client, pid)
    sign_out(client)
    password_step(client, email_of(app, pid))
    response = client.get("/sign-in/second-factor/set-up")
    assert response.status_code == 302 and response.location.endswith("/sign-in/second-factor")
    response = post_form(
        client, "/sign-in/second-factor", "/sign-in/second-factor/set-up", {"code": "123456"}
    )
    assert response.status_code == 302 and response.location.endswith("/sign-in/second-factor")
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(SecondFactor)) == 1


def enrol_after_password(app: Flask, client: FlaskClient, pid: int) -> tuple[str, list[str], Any]:
    password_step(client, email_of(app, pid))
    return enrol_app(client)


# --- authenticator apps ---------------------------------------------------------------------------


def test_right_code_signs_in_and_wrong_code_is_refused(app, client, make_person):
    pid = make_person("governor")
    secret, _, _ = enrol_after_password(app, client, pid)
    sign_out(client)
    password_step(client, email_of(app, pid), next_="/reports/")
    step = last_step(app, pid)
    wrong = f"{(int(code_for(secret, step + 1)) + 1) % 1_000_000:06d}"
    response = post_form(
        client, "/sign-in/second-factor", "/sign-in/second-factor", {"code": wrong}
    )
    assert response.status_code == 400
    assert "That code is not right" in response.get_data(as_text=True)
    assert not signed_in(client)
    response = post_form(
        client, "/sign-in/second-factor", "/sign-in/second-factor",
        {"code": code_for(secret, step + 1)},
    )  # fmt: skip
    assert response.status_code == 302 and response.location == "/reports/"
    assert signed_in(client)
    with app.app_context():
        outcomes = db.session.scalars(
            select(SignInAttempt.succeeded).where(SignInAttempt.email == email_of(app, pid))
        ).all()
    assert outcomes == [True, False, True]  # enrolment, the wrong code, the right one
    asked = events(app, "sign_in.password_accepted")
    assert [(e.actor_id, e.detail) for e in asked] == [
        (pid, '{"next_step":"set_up"}'),
        (pid, '{"next_step":"second_factor"}'),
    ]


def test_a_code_is_never_accepted_twice(app, client, make_person):
    pid = make_person("admin")
    secret, _, _ = enrol_after_password(app, client, pid)
    sign_out(client)
    password_step(client, email_of(app, pid))
    used = code_for(secret, last_step(app, pid))  # the code that set the app up
    response = post_form(client, "/sign-in/second-factor", "/sign-in/second-factor", {"code": used})
    assert response.status_code == 400 and not signed_in(client)
    fresh = code_for(secret, last_step(app, pid) + 1)
    response = post_form(
        client, "/sign-in/second-factor", "/sign-in/second-factor", {"code": fresh}
    )
    assert response.status_code == 302 and signed_in(client)
    sign_out(client)
    password_step(client, email_of(app, pid))
    response = post_form(
        client, "/sign-in/second-factor", "/sign-in/second-factor", {"code": fresh}
    )
    assert response.status_code == 400 and not signed_in(client)


def test_codes_are_throttled_like_passwords_even_a_right_one(app, client, make_person):
    pid = make_person("admin")
    secret, _, _ = enrol_after_password(app, client, pid)
    sign_out(client)
    password_step(client, email_of(app, pid))
    step = last_step(app, pid)
    wrong = f"{(int(code_for(secret, step + 1)) + 1) % 1_000_000:06d}"
    for _ in range(5):
        response = post_form(
            client, "/sign-in/second-factor", "/sign-in/second-factor", {"code": wrong}
        )
        assert response.status_code == 400
    response = post_form(
        client, "/sign-in/second-factor", "/sign-in/second-factor",
        {"code": code_for(secret, step + 1)},
    )  # fmt: skip
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert "Too many attempts" in response.get_data(as_text=True)
    assert not signed_in(client)
    assert last_step(app, pid) == step  # the right code was not even looked at
    # The failures count for the email: its password is throttled too, from a new browser.
    other = app.test_client()
    assert password_step(other, email_of(app, pid)).status_code == 429


# --- recovery codes -------------------------------------------------------------------------------


def test_recovery_codes_are_single_use_and_kept_only_as_hashes(app, client, make_person):
    pid = make_person("slt")
    _, codes, _ = enrol_after_password(app, client, pid)
    assert len(set(codes)) == 10
    with app.app_context():
        stored = db.session.scalars(select(RecoveryCode.code_hash)).all()
    assert len(stored) == 10
    assert not {c.replace("-", "") for c in codes} & {h for h in stored}
    assert not any(c.replace("-", "") in h or c in h for c in codes for h in stored)
    sign_out(client)
    password_step(client, email_of(app, pid))
    action = "/sign-in/second-factor/recovery"
    response = post_form(client, "/sign-in/second-factor", action, {"recovery_code": codes[3]})
    assert response.status_code == 302
    assert "9 left" in client.get(response.location).get_data(as_text=True)
    assert signed_in(client)
    (used,) = events(app, "second_factor.recovery_used")
    assert used.actor_id == pid and '"codes_left":9' in used.detail
    sign_out(client)
    password_step(client, email_of(app, pid))
    response = post_form(client, "/sign-in/second-factor", action, {"recovery_code": codes[3]})
    assert response.status_code == 400 and not signed_in(client)
    assert "already used" in response.get_data(as_text=True)
    # Typed in capitals and spaces instead of hyphens, another code still works.
    typed = codes[4].upper().replace("-", " ")
    response = post_form(client, "/sign-in/second-factor", action, {"recovery_code": typed})
    assert response.status_code == 302 and signed_in(client)


# --- the person's own methods ---------------------------------------------------------------------


def test_person_cannot_remove_their_last_method_while_their_role_needs_one(
    app, client, make_person
):
    pid = make_person("admin")
    enrol_after_password(app, client, pid)
    with app.app_context():
        (first,) = db.session.scalars(select(SecondFactor.id)).all()
    url = f"/account/second-factor/{first}/remove"
    response = post_form(client, "/account/second-factor", url, {})
    page = client.get(response.location).get_data(as_text=True)
    assert "you cannot remove your only one" in page
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(SecondFactor)) == 1
    # With a second method added, the first can go.
    page = client.get("/account/second-factor/authenticator").get_data(as_text=True)
    secret = SECRET_RE.search(page).group(1).replace(" ", "")
    response = post_form(
        client, "/account/second-factor/authenticator", "/account/second-factor/authenticator",
        {"code": pyotp.TOTP(secret).now()},
    )  # fmt: skip
    assert response.status_code == 302
    response = post_form(client, "/account/second-factor", url, {})
    assert "Authenticator app removed." in client.get(response.location).get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(SecondFactor)) == 1
        assert db.session.scalar(select(func.count()).select_from(RecoveryCode)) == 10
    (removed,) = events(app, "second_factor.removed")
    assert removed.actor_id == pid and removed.subject_id == str(first)
    assert len(events(app, "second_factor.enrolled")) == 2


def test_nobody_removes_another_persons_method(app, client, make_person):
    owner = make_person("admin")
    enrol_after_password(app, client, owner)
    sign_out(client)
    with app.app_context():
        (factor,) = db.session.scalars(select(SecondFactor.id)).all()
    other = app.test_client()
    password_step(other, email_of(app, make_person("staff")))
    url = f"/account/second-factor/{factor}/remove"
    response = post_form(other, "/account/second-factor", url, {})
    assert "not one of yours" in other.get(response.location).get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(SecondFactor)) == 1


# --- an administrator's reset ---------------------------------------------------------------------


@pytest.fixture
def smtp():
    with SMTPServer() as server:
        yield server


def test_admin_reset_is_audited_emailed_and_asks_to_enrol_again(app, make_person, smtp):
    app.config.update(
        SMTP_HOST="127.0.0.1", SMTP_PORT=smtp.server_address[1], SMTP_STARTTLS=False,
        SMTP_FROM="training@ladysmith.example",
    )  # fmt: skip
    admin = make_person("admin")
    governor = make_person("governor", email="gwen@ladysmith.example")
    gov_client, admin_client = app.test_client(), app.test_client()
    enrol_after_password(app, gov_client, governor)
    enrol_after_password(app, admin_client, admin)
    assert "Reset second factor" in admin_client.get(f"/admin/people/{governor}").get_data(
        as_text=True
    )
    url = f"/admin/people/{governor}/second-factor/reset"
    page = admin_client.get(url).get_data(as_text=True)
    assert "Yes, reset the second factor" in page  # a confirmation first
    response = post_form(admin_client, url, url, {})
    assert response.status_code == 302
    with app.app_context():
        left = db.session.scalar(
            select(func.count()).select_from(SecondFactor).where(SecondFactor.person_id == governor)
        )
        codes = db.session.scalar(
            select(func.count()).select_from(RecoveryCode).where(RecoveryCode.person_id == governor)
        )
    assert (left, codes) == (0, 0)
    (reset,) = events(app, "second_factor.reset")
    assert (reset.actor_id, reset.subject_id) == (admin, str(governor))
    assert not signed_in(gov_client)  # signed out everywhere
    deadline = time.monotonic() + 10
    while not smtp.received and time.monotonic() < deadline:
        time.sleep(0.05)
    ((to, message),) = smtp.received
    assert to == ["gwen@ladysmith.example"]
    body = message.get_payload(decode=True).decode()
    assert "removed the second factor" in body and "http://countersign.test/sign-in" in body
    response = password_step(gov_client, "gwen@ladysmith.example")
    assert response.location.endswith("/sign-in/second-factor/set-up")


def test_admin_cannot_reset_their_own_second_factor(app, client, make_person):
    admin = make_person("admin")
    enrol_after_password(app, client, admin)
    page = client.get(f"/admin/people/{admin}").get_data(as_text=True)
    assert "Reset second factor" not in page
    url = f"/admin/people/{admin}/second-factor/reset"
    token = csrf_token(client, f"/admin/people/{admin}")
    response = client.post(url, data={"csrf_token": token})
    assert response.status_code == 302
    assert "cannot reset your own" in client.get(response.location).get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(SecondFactor)) == 1
    assert not events(app, "second_factor.reset")


def test_only_administrators_reset(app, client, make_person):
    target = make_person("governor")
    slt = make_person("slt")
    enrol_after_password(app, client, slt)
    url = f"/admin/people/{target}/second-factor/reset"
    assert client.get(url).status_code == 403
    token = csrf_token(client, "/account/password")
    assert client.post(url, data={"csrf_token": token}).status_code == 403


def test_setup_says_privileged_demo_people_set_up_a_second_factor(app, runner):
    result = runner.invoke(args=["setup", "--demo"])
    assert result.exit_code == 0, result.output
    assert "asked to set up a second factor" in result.output
    assert "Administrator" in result.output.split("second factor")[-1]


def test_changing_the_second_factor_needs_a_recent_sign_in(app, client, make_person):
    pid = make_person("admin")
    secret, _, _ = enrol_after_password(app, client, pid)
    with app.app_context():
        (factor,) = db.session.scalars(select(SecondFactor.id)).all()
    token = csrf_token(client, "/account/second-factor")
    with client.session_transaction() as state:
        state["_started"] -= 11 * 60  # signed in eleven minutes ago (and active since)
    response = client.post(f"/account/second-factor/{factor}/remove", data={"csrf_token": token})
    assert response.status_code == 302
    assert response.location == "/sign-in?next=/account/second-factor"
    assert not signed_in(client)
    response = client.get("/account/second-factor/authenticator")
    assert response.status_code == 302 and response.location.startswith("/sign-in")
    # A full sign-in again, and the change is possible.
    password_step(client, email_of(app, pid), next_="/account/second-factor")
    response = post_form(
        client, "/sign-in/second-factor", "/sign-in/second-factor",
        {"code": code_for(secret, last_step(app, pid) + 1)},
    )  # fmt: skip
    assert response.location == "/account/second-factor"
    assert client.get("/account/second-factor/authenticator").status_code == 200


def test_giving_the_password_again_does_not_reset_the_count_of_wrong_codes(
    app, client, make_person
):
    pid = make_person("admin")
    secret, _, _ = enrol_after_password(app, client, pid)
    sign_out(client)
    step = last_step(app, pid)
    wrong = f"{(int(code_for(secret, step + 1)) + 1) % 1_000_000:06d}"
    password_step(client, email_of(app, pid))
    for _ in range(4):
        post_form(client, "/sign-in/second-factor", "/sign-in/second-factor", {"code": wrong})
    response = password_step(client, email_of(app, pid))  # the password alone is no success
    assert response.location.endswith("/sign-in/second-factor")
    post_form(client, "/sign-in/second-factor", "/sign-in/second-factor", {"code": wrong})
    response = post_form(
        client, "/sign-in/second-factor", "/sign-in/second-factor",
        {"code": code_for(secret, step + 1)},
    )  # fmt: skip
    assert response.status_code == 429 and not signed_in(client)


# --- passkeys, server side (the browser test drives a real one) ------------------------------------

OPTIONS_RE = re.compile(r'data-options="([^"]*)"')


def passkey_page(client: FlaskClient, url: str) -> tuple[dict, str]:
    """The passkey options and the CSRF token of one showing of a page (each makes a challenge)."""
    page = client.get(url).get_data(as_text=True)
    options = json.loads(html.unescape(OPTIONS_RE.search(page).group(1)))
    match = CSRF_RE.search(page)
    return options, match.group(1) or match.group(2)


def enrol_passkey(app: Flask, client: FlaskClient, pid: int) -> SoftPasskey:
    password_step(client, email_of(app, pid))
    key = SoftPasskey("countersign.test", "http://countersign.test")
    options, token = passkey_page(client, "/sign-in/second-factor/set-up")
    response = client.post(
        "/sign-in/second-factor/set-up/passkey",
        data={"credential": key.register(options), "csrf_token": token},
    )
    assert response.status_code == 200 and "Your recovery codes" in response.get_data(as_text=True)
    return key


def use_passkey(client: FlaskClient, answer: str, token: str) -> Any:
    return client.post(
        "/sign-in/second-factor/passkey", data={"credential": answer, "csrf_token": token}
    )


def test_passkey_signs_in_and_its_challenge_works_once(app, client, make_person):
    pid = make_person("admin")
    key = enrol_passkey(app, client, pid)
    assert signed_in(client)
    sign_out(client)
    password_step(client, email_of(app, pid))
    stale, _ = passkey_page(client, "/sign-in/second-factor")
    # The page is shown again before the answer comes back: the earlier challenge is gone.
    _, token = passkey_page(client, "/sign-in/second-factor")
    response = use_passkey(client, key.assert_(stale), token)
    assert response.status_code == 400 and not signed_in(client)
    options, token = passkey_page(client, "/sign-in/second-factor")
    answer = key.assert_(options)
    response = use_passkey(client, answer, token)
    assert response.status_code == 302 and signed_in(client)
    # The same answer again, in a new sign-in: refused.
    sign_out(client)
    password_step(client, email_of(app, pid))
    _, token = passkey_page(client, "/sign-in/second-factor")
    assert use_passkey(client, answer, token).status_code == 400 and not signed_in(client)


class CounterStaysZero(SoftPasskey):
    """A synced platform passkey: its signature counter is always 0, so the counter cannot tell a
    replayed answer from a new one."""

    def assert_(self, options: dict, origin: str | None = None) -> str:
        self.sign_count = -1
        return super().assert_(options, origin)


def copy_of(app: Flask, client: FlaskClient) -> FlaskClient:
    """A new browser holding the same session cookie as ``client`` has now."""
    name = app.session_interface.get_cookie_name(app)
    cookie = next(c for c in client._cookies.values() if c.key == name)
    other = app.test_client()
    other.set_cookie(name, cookie.value, domain=cookie.domain)
    return other


def test_passkey_answer_replayed_with_an_old_cookie_is_refused(app, client, make_person):
    pid = make_person("admin")
    key = enrol_passkey(app, client, pid)
    key.__class__ = CounterStaysZero
    sign_out(client)
    password_step(client, email_of(app, pid))
    options, token = passkey_page(client, "/sign-in/second-factor")
    answer = key.assert_(options)
    saved = [copy_of(app, client) for _ in range(2)]  # the cookie as it was before the answer
    response = use_passkey(client, answer, token)
    assert response.status_code == 302 and signed_in(client)
    for replay in saved:
        response = use_passkey(replay, answer, token)
        assert response.status_code == 400 and not signed_in(replay)
        assert "The page was out of date" in response.get_data(as_text=True)


def test_passkey_enrolment_answer_works_once_even_with_a_copied_cookie(app, client, make_person):
    pid = make_person("admin")
    enrol_passkey(app, client, pid)  # signed in, with a first passkey
    key = SoftPasskey("countersign.test", "http://countersign.test")
    options, token = passkey_page(client, "/account/second-factor/passkey")
    copy = copy_of(app, client)
    answer = key.register(options)
    url = "/account/second-factor/passkey"
    assert client.post(url, data={"credential": answer, "csrf_token": token}).status_code == 302
    with app.app_context():
        db.session.execute(
            delete(SecondFactor).where(
                SecondFactor.label == "Passkey", SecondFactor.id != min_factor_id(pid)
            )
        )
        db.session.commit()  # the new key is removed again: only the spent challenge stops a replay
    response = copy.post(url, data={"credential": answer, "csrf_token": token})
    assert response.status_code == 400
    assert "The page was out of date" in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(SecondFactor)) == 1


def min_factor_id(pid: int) -> int:
    return db.session.scalar(select(func.min(SecondFactor.id)).where(SecondFactor.person_id == pid))


def test_a_passkey_challenge_is_spent_once_and_only_by_its_person(app, make_person):
    pid, other = make_person("admin"), make_person("slt")
    with app.app_context():
        keep_challenge(db.session, pid, SIGN_IN, b"c" * 32)
        db.session.commit()
        assert not spend_challenge(db.session, other, SIGN_IN, b"c" * 32)
        assert not spend_challenge(db.session, pid, ENROL, b"c" * 32)
        assert spend_challenge(db.session, pid, SIGN_IN, b"c" * 32)
        db.session.commit()
        assert not spend_challenge(db.session, pid, SIGN_IN, b"c" * 32)
        assert db.session.scalar(select(func.count()).select_from(PasskeyChallenge)) == 0


def test_passkey_counter_moves_only_from_the_value_checked(app, client, make_person):
    pid = make_person("admin")
    key = enrol_passkey(app, client, pid)
    with app.app_context():
        person = db.session.get(Person, pid)
        factor = db.session.scalar(select(SecondFactor).where(SecondFactor.person_id == pid))
        checked = factor.sign_count
        # Another request uses the key in between: the row moves on, this one still holds `checked`.
        db.session.execute(
            update(SecondFactor).where(SecondFactor.id == factor.id).values(sign_count=checked + 5),
            execution_options={"synchronize_session": False},
        )
        options, challenge = authentication_options(
            db.session, person, relying_party(app.config, "x")
        )
        assert factor.sign_count == checked
        answer = key.assert_(json.loads(options))
        assert (
            use_passkey_rule(db.session, person, answer, challenge, relying_party(app.config, "x"))
            is None
        )


def test_passkey_answer_for_another_site_or_person_is_refused(app, client, make_person):
    pid = make_person("admin")
    key = enrol_passkey(app, client, pid)
    other_key = enrol_passkey(app, app.test_client(), make_person("slt"))
    sign_out(client)
    password_step(client, email_of(app, pid))
    for answer in (
        lambda o: key.assert_(o, origin="https://countersign.test.evil.example"),
        lambda o: other_key.assert_(o),  # someone else's passkey
        lambda o: SoftPasskey("countersign.test", "http://countersign.test").assert_(o),
    ):
        options, token = passkey_page(client, "/sign-in/second-factor")
        response = use_passkey(client, answer(options), token)
        assert response.status_code == 400, response.get_data(as_text=True)
        assert "That passkey is not one set up for your account." in response.get_data(as_text=True)
        assert not signed_in(client)
    options, token = passkey_page(client, "/sign-in/second-factor")
    assert use_passkey(client, key.assert_(options), token).status_code == 302


def test_anyone_who_sets_one_up_is_asked_for_it(app, client, make_person):
    pid = make_person("staff")
    password_step(client, email_of(app, pid))
    page = client.get("/account/second-factor/authenticator").get_data(as_text=True)
    secret = SECRET_RE.search(page).group(1).replace(" ", "")
    response = post_form(
        client, "/account/second-factor/authenticator", "/account/second-factor/authenticator",
        {"code": pyotp.TOTP(secret).now()},
    )  # fmt: skip
    assert len(CODE_RE.findall(response.get_data(as_text=True))) == 10  # with the first method
    sign_out(client)
    response = password_step(client, email_of(app, pid))
    assert response.location.endswith("/sign-in/second-factor") and not signed_in(client)


def test_a_sign_in_with_the_second_factor_trusts_the_browser(app, client, make_person):
    """The device mark (which exempts the browser from the per-address throttle) is given only
    when both steps are done, never after the password alone."""
    pid = make_person("admin")
    password_step(client, email_of(app, pid))
    assert not any(c.key == "countersign_device" for c in client._cookies.values())
    enrol_passkey(app, client, pid)
    assert signed_in(client)
    assert any(c.key == "countersign_device" for c in client._cookies.values())
