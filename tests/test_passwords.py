"""Password rules: at least 10 characters, at most 256, and never a common or breached password,
with the reason shown at the field on every form that sets one."""

from __future__ import annotations

import re

import pytest

from core.db import db
from people.auth import INVITE, RESET, make_link_token
from people.models import Person
from people.passwords import COMMON_MESSAGE, MAX_LENGTH, common_passwords, password_problem
from people.service import PASSWORD_HASH_METHOD, PeopleError, set_password
from tests.conftest import PASSWORD, csrf_token

REFUSED = [
    ("123456789", "Use at least 10 characters."),
    ("1234567890", COMMON_MESSAGE),
    ("passwordpassword", COMMON_MESSAGE),
    ("PassWordPassWord", COMMON_MESSAGE),  # case does not make it safe
    ("qwertyuiop", COMMON_MESSAGE),
    ("x" * (MAX_LENGTH + 1), f"Use at most {MAX_LENGTH} characters."),
]


def test_the_common_list_ships_with_the_app_and_is_loaded_once():
    words = common_passwords()
    assert len(words) >= 100_000
    assert common_passwords() is words  # read once per process
    assert all(len(w) >= 10 and w == w.lower() for w in words)


@pytest.mark.parametrize("password, message", REFUSED)
def test_password_rules_refuse_with_a_reason(password, message):
    assert password_problem(password) == message
    with pytest.raises(PeopleError, match=re.escape(message)):
        set_password(Person(name="x", email="x@x.example", active=True, auth_version=1), password)


@pytest.mark.parametrize(
    "password", ["ten chars!", "a few unrelated words", PASSWORD, "y" * MAX_LENGTH, "ŝtupo ĉevalo"]
)
def test_long_uncommon_passwords_are_accepted(password):
    assert password_problem(password) is None


def _hash(app, pid: int) -> str | None:
    with app.app_context():
        return db.session.get(Person, pid).password_hash


@pytest.mark.parametrize("purpose", [INVITE, RESET])
@pytest.mark.parametrize("password, message", REFUSED + [("x" * 100_000, "Use at most")])
def test_link_pages_refuse_weak_passwords_at_the_field(
    app, make_person, purpose, password, message
):
    pid = make_person("staff", password=None if purpose == INVITE else PASSWORD)
    before = _hash(app, pid)
    with app.app_context():
        token = make_link_token(app.config["SECRET_KEY"], purpose, db.session.get(Person, pid))
    link = f"/{'invite' if purpose == INVITE else 'reset-password'}/{token}"
    client = app.test_client()
    form = csrf_token(client, link)
    response = client.post(link, data={"password": password, "confirm": password,
                                       "csrf_token": form})  # fmt: skip
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    error = re.search(r'<p class="field-error" id="password-error">(.*?)</p>', page, re.S)
    assert error and message.split(":")[0] in error.group(1)  # at the field, saying why
    assert _hash(app, pid) == before  # nothing changed


@pytest.mark.parametrize("password, message", REFUSED)
def test_change_password_refuses_weak_passwords_at_the_field(app, auth, make_person, password,
                                                             message):  # fmt: skip
    pid = make_person("staff")
    auth.as_person(pid)
    before = _hash(app, pid)
    response = auth.post("/account/password", {"current": PASSWORD, "password": password,
                                               "confirm": password})  # fmt: skip
    assert response.status_code == 400
    error = re.search(r'<p class="field-error" id="password-error">(.*?)</p>',
                      response.get_data(as_text=True), re.S)  # fmt: skip
    assert error and message.split(":")[0] in error.group(1)
    assert _hash(app, pid) == before
    assert auth.client.get("/").status_code == 200  # still signed in


def test_demo_people_get_passwords_the_rules_accept(app):
    from people.demo import seed_demo

    printed: list[str] = []
    with app.app_context():
        assert seed_demo(printed.append)
    passwords = re.findall(r"\S+@demo\.ladysmith\.example\s+(\S+)", "\n".join(printed))
    assert len(passwords) == 6
    assert all(password_problem(p) is None for p in passwords)


@pytest.mark.parametrize(
    "password", ["Sam Smith 2026!", "samsmith-rules", "sam.smith.password", "my countersign pw"]
)
def test_passwords_with_the_persons_name_email_or_the_site_are_refused(app, make_person, password):
    from people.passwords import CONTEXT_MESSAGE

    pid = make_person("staff", name="Sam Smith", email="sam.smith@ladysmith.example", password=None)
    with app.app_context():
        token = make_link_token(app.config["SECRET_KEY"], INVITE, db.session.get(Person, pid))
    client = app.test_client()
    link = f"/invite/{token}"
    response = client.post(link, data={"password": password, "confirm": password,
                                       "csrf_token": csrf_token(client, link)})  # fmt: skip
    assert response.status_code == 400
    error = re.search(r'<p class="field-error" id="password-error">(.*?)</p>',
                      response.get_data(as_text=True), re.S)  # fmt: skip
    assert error and CONTEXT_MESSAGE.split(",")[0] in error.group(1)
    assert _hash(app, pid) is None


@pytest.mark.parametrize("app_config", [{"PASSWORD_HASH_METHOD": ""}])
def test_passwords_are_hashed_and_checked_at_the_production_cost(app, auth, make_person):
    """The rest of the suite hashes cheaply; here a person is made and signs in with what an app
    outside a test run always uses: scrypt at N=2^15, r=8, p=1."""
    person_id = make_person("staff", email="full.cost@ladysmith.example")
    with app.app_context():
        stored = db.session.get(Person, person_id).password_hash
    assert stored.startswith(f"{PASSWORD_HASH_METHOD}$")
    assert auth.sign_in("full.cost@ladysmith.example", "not the password at all").status_code == 400
    assert auth.sign_in("full.cost@ladysmith.example").status_code == 302


def test_a_cheap_hash_setting_is_ignored_outside_a_test_run(tmp_path):
    """``PASSWORD_HASH_METHOD`` exists for the test suite: a deployment that sets it still hashes
    at the production cost."""
    from app import create_app

    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
                      "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1"})  # fmt: skip
    with app.app_context():
        person = Person(name="Full Cost", email="full.cost@ladysmith.example")
        set_password(person, PASSWORD)
    assert person.password_hash.startswith(f"{PASSWORD_HASH_METHOD}$")
    assert PASSWORD_HASH_METHOD == "scrypt:32768:8:1"
