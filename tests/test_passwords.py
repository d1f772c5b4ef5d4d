"""Password rules: at least 10 characters, at most 256, and never a common or breached password,
with the reason shown at the field on every form that sets one."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading

import pytest

from core import low_priority
from core.db import db
from people import service
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


# --- password work at a low CPU priority -----------------------------------------------------


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's priority is Linux's")
def test_password_work_runs_at_the_lowest_cpu_priority(app, auth, make_person, monkeypatch):
    """A rush of sign-ins must not slow the pages of people already signed in: every password
    hashed, and every password checked (right, wrong, or for an unknown email), is worked out on
    a thread at nice 19, never on the request's own thread."""
    if _niceness() >= low_priority.NICENESS:
        pytest.skip("the tests already run at the lowest priority: nothing to tell apart")
    seen: list[tuple[str, int, int]] = []
    real_check, real_hash = service.check_password_hash, service.generate_password_hash

    def check(*args: str) -> bool:
        seen.append(("check", _niceness(), threading.get_native_id()))
        return real_check(*args)

    def make(*args: str) -> str:
        seen.append(("hash", _niceness(), threading.get_native_id()))
        return real_hash(*args)

    monkeypatch.setattr(service, "check_password_hash", check)
    monkeypatch.setattr(service, "generate_password_hash", make)
    make_person("staff", email="rush@ladysmith.example")
    assert auth.sign_in("rush@ladysmith.example", "not the password at all").status_code == 400
    assert auth.sign_in("nobody.here@ladysmith.example").status_code == 400
    assert auth.sign_in("rush@ladysmith.example").status_code == 302
    assert [kind for kind, _, _ in seen].count("check") == 3 and ("hash" in {k for k, _, _ in seen})
    assert {nice for _, nice, _ in seen} == {low_priority.NICENESS}
    assert threading.get_native_id() not in {thread for _, _, thread in seen}


def test_a_worker_forked_after_a_password_check_checks_passwords_too():
    """gunicorn forks its workers from a process that may have checked a password already (with
    --preload): the pool's threads do not survive a fork, so a worker makes its own."""
    assert low_priority.run(len, "parent") == 6
    pid = os.fork()
    if pid == 0:  # the child: a hang would be killed by the alarm, and the test fail
        signal.alarm(20)
        try:
            os._exit(0 if low_priority.run(len, "child") == 5 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_passwords_are_still_checked_where_priorities_cannot_be_changed(monkeypatch):
    """A system call filter may forbid changing a thread's priority: the work then runs at the
    normal priority, and sign-ins still work."""

    def forbidden(*_args: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", forbidden)
    monkeypatch.setattr(low_priority, "_pool", None)
    try:
        hashed = low_priority.run(service.generate_password_hash, PASSWORD, "pbkdf2:sha256:1")
        assert low_priority.run(service.check_password_hash, hashed, PASSWORD) is True
    finally:
        low_priority._executor().shutdown()
