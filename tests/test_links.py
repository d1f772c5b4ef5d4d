"""Reset and invitation links: never in a log, shown only to the administrator who asked, and
every link issued is in the audit log (who asked, for whom, how it went out)."""

from __future__ import annotations

import json
import logging
import re
import socket
import time

import pytest
from sqlalchemy import select

from audit.models import AuditEvent
from core.db import db
from tests.conftest import csrf_token
from tests.smtp_server import SMTPServer

TOKEN = re.compile(r"/(?:invite|reset-password)/([A-Za-z0-9_.\-]{20,})")


@pytest.fixture
def smtp():
    with SMTPServer() as server:
        yield server


def _use_smtp(app, smtp) -> None:
    app.config.update(SMTP_HOST="127.0.0.1", SMTP_PORT=smtp.server_address[1],
                      SMTP_STARTTLS=False, SMTP_FROM="training@ladysmith.example")  # fmt: skip


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(smtp, count: int) -> list:
    deadline = time.monotonic() + 10
    while len(smtp.received) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return smtp.received


def _events(app, name: str) -> list[AuditEvent]:
    with app.app_context():
        return list(db.session.scalars(select(AuditEvent).where(AuditEvent.event == name)))


@pytest.fixture
def everything_logged(caplog):
    """Every logger, every level: what would reach any log file."""
    caplog.set_level(logging.DEBUG)
    for name in ("countersign", "countersign.people", "countersign.mail", "werkzeug"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    return caplog


def _tokens_in(text: str) -> set[str]:
    return set(TOKEN.findall(text))


def _assert_not_logged(caplog, tokens: set[str]) -> None:
    assert tokens, "the test must have seen the links it checks"
    logged = (
        "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
        + caplog.text
    )
    for token in tokens:
        assert token not in logged


@pytest.fixture
def admin(auth, make_person):
    auth.as_person(make_person("admin", name="Alex Admin"))
    return auth


def test_reset_link_never_logged_without_email_settings(app, auth, make_person, everything_logged):
    pid = make_person("staff", email="r@ladysmith.example")
    token = csrf_token(auth.client, "/forgot-password")
    page = auth.client.post(
        "/forgot-password", data={"email": "r@ladysmith.example", "csrf_token": token}
    ).get_data(as_text=True)
    assert "Ask your administrator" in page and "/reset-password/" not in page
    assert "reset-password" not in everything_logged.text
    assert _events(app, "link.reset_issued") == []  # no email: no link exists
    (asked,) = _events(app, "password.reset_requested")
    assert asked.subject_id is None and asked.actor_id is None  # nothing says who exists
    assert str(pid) not in json.dumps(asked.detail)


def test_reset_link_never_logged_when_emailed(app, auth, make_person, smtp, everything_logged):
    _use_smtp(app, smtp)
    pid = make_person("staff", email="r@ladysmith.example")
    token = csrf_token(auth.client, "/forgot-password")
    for email in ("r@ladysmith.example", "nobody@ladysmith.example"):
        auth.client.post("/forgot-password", data={"email": email, "csrf_token": token})
    ((to, message),) = _wait_for(smtp, 1)
    assert to == ["r@ladysmith.example"]
    _assert_not_logged(everything_logged, _tokens_in(message.get_payload(decode=True).decode()))
    (issued,) = _events(app, "link.reset_issued")
    assert (issued.actor_id, issued.subject_type, issued.subject_id) == (None, "person", str(pid))
    assert json.loads(issued.detail) == {"via": "email"}
    assert len(_events(app, "password.reset_requested")) == 1  # the unknown address


def test_invitation_link_shown_once_to_the_admin_and_never_logged(
    app, admin, make_person, everything_logged
):
    pid = make_person("volunteer", name="Val Vol", password=None)
    url = f"/admin/people/{pid}"
    response = admin.post(f"{url}/invite", form_url=url)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    tokens = _tokens_in(page)
    assert len(tokens) == 1
    _assert_not_logged(everything_logged, tokens)
    # Not carried in the session cookie (a flash message) either: the next page has no link.
    assert not _tokens_in(admin.client.get(url).get_data(as_text=True))
    (issued,) = _events(app, "link.invite_issued")
    admin_id = int(_events(app, "sign_in.succeeded")[-1].actor_id)
    assert (issued.actor_id, issued.subject_id) == (admin_id, str(pid))
    assert json.loads(issued.detail) == {"via": "screen"}


def test_invitation_emailed_is_audited_and_never_logged(
    app, admin, make_person, smtp, everything_logged
):
    _use_smtp(app, smtp)
    pid = make_person("volunteer", name="Val Vol", password=None)
    url = f"/admin/people/{pid}"
    response = admin.post(f"{url}/invite", form_url=url)
    assert response.status_code == 302
    ((_to, message),) = _wait_for(smtp, 1)
    tokens = _tokens_in(message.get_payload(decode=True).decode())
    _assert_not_logged(everything_logged, tokens)
    assert not _tokens_in(admin.client.get(response.location).get_data(as_text=True))
    (issued,) = _events(app, "link.invite_issued")
    assert json.loads(issued.detail) == {"via": "email"} and issued.subject_id == str(pid)


def test_invitation_email_failing_shows_the_link_to_the_admin_but_never_logs_it(
    app, admin, make_person, everything_logged
):
    app.config.update(SMTP_HOST="127.0.0.1", SMTP_PORT=_closed_port(), SMTP_STARTTLS=False)
    pid = make_person("volunteer", name="Val Vol", email="val@ladysmith.example", password=None)
    url = f"/admin/people/{pid}"
    response = admin.post(f"{url}/invite", form_url=url)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "could not be sent" in page
    tokens = _tokens_in(page)
    _assert_not_logged(everything_logged, tokens)
    assert "val@ladysmith.example" not in everything_logged.text  # ids only in the log
    assert json.loads(_events(app, "link.invite_issued")[0].detail) == {"via": "screen"}


def test_invite_all_links_never_logged_and_each_audited(app, admin, make_person, everything_logged):
    ids = [make_person("parent", name=f"Parent {n}", password=None) for n in range(3)]
    response = admin.post("/admin/people/invite-all", form_url="/admin/people")
    tokens = _tokens_in(response.get_data(as_text=True))
    assert len(tokens) == 3
    _assert_not_logged(everything_logged, tokens)
    issued = _events(app, "link.invite_issued")
    assert sorted(int(e.subject_id) for e in issued) == sorted(ids)


def test_people_add_command_prints_the_link_but_never_logs_it(app, runner, everything_logged):
    result = runner.invoke(args=["people", "add", "--name", "Nia New", "--email",
                                 "nia@ladysmith.example", "--roles", "staff"])  # fmt: skip
    assert result.exit_code == 0, result.output
    tokens = _tokens_in(result.output)
    _assert_not_logged(everything_logged, tokens)
    (issued,) = _events(app, "link.invite_issued")
    assert json.loads(issued.detail) == {"via": "command"}


def test_a_logged_link_would_be_caught(everything_logged):
    """The check above looks where a link would be: a logger at any level, or its arguments."""
    logging.getLogger("countersign.people").debug("link %s", "/invite/" + "x" * 30)
    with pytest.raises(AssertionError):
        _assert_not_logged(everything_logged, {"x" * 30})


# --- name and email changes are audited -----------------------------------------------------------


def test_name_and_email_changes_are_audited_with_ids_only(app, admin, make_person):
    pid = make_person("staff", name="Old Name", email="old@ladysmith.example")
    url = f"/admin/people/{pid}"
    done = admin.post(url, {"name": "New Name", "email": "new@ladysmith.example",
                            "roles": ["staff"]})  # fmt: skip
    assert done.status_code == 302
    admin_id = int(_events(app, "sign_in.succeeded")[-1].actor_id)
    for event in ("person.name_changed", "person.email_changed"):
        (row,) = _events(app, event)
        assert (row.actor_id, row.subject_type, row.subject_id) == (admin_id, "person", str(pid))
        for value in ("Old Name", "New Name", "old@", "new@"):
            assert value not in (row.detail or "")
    # Saving without a change records nothing more.
    admin.post(url, {"name": "New Name", "email": "new@ladysmith.example", "roles": ["staff"]})
    assert len(_events(app, "person.name_changed")) == 1
    assert len(_events(app, "person.email_changed")) == 1


def test_a_name_changed_by_import_is_audited(app, make_person):
    from core.web import federation
    from people.service import import_people

    pid = make_person("staff", name="Old Name", email="imp@ladysmith.example")
    with app.test_request_context():
        import_people(db.session, "name,email,roles,schools\nNew Name,imp@ladysmith.example,staff,\n",
                      federation())  # fmt: skip
        db.session.commit()
    (row,) = _events(app, "person.name_changed")
    assert row.subject_id == str(pid)
    assert _events(app, "person.email_changed") == []


# --- the server's access log ---------------------------------------------------------------------


def test_link_tokens_never_reach_the_access_log(app, make_person, database_url, tmp_path):
    """gunicorn as ``make run`` starts it: the request line, the path and the Referer of every
    request made from a set-password page are logged without the link's token."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import requests

    from core.config import ROOT
    from people.auth import RESET, make_link_token
    from people.models import Person

    pid = make_person("staff")
    with app.app_context():
        token = make_link_token(app.config["SECRET_KEY"], RESET, db.session.get(Person, pid))
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    env = {
        **os.environ,
        "COUNTERSIGN_DATABASE_URL": database_url,
        "COUNTERSIGN_SECRET_KEY": app.config["SECRET_KEY"],
        "COUNTERSIGN_BASE_URL": "http://127.0.0.1",
        "COUNTERSIGN_CONTENT_DIR": str(ROOT / "content"),
    }
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "--workers", "1", "--bind", "127.0.0.1:0",
         "--access-logfile", str(access), "--error-logfile", str(errors),
         "--logger-class", "core.access_log.Redacting", "wsgi:app"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None and time.monotonic() < deadline:
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", errors.read_text()
                              if errors.exists() else "")  # fmt: skip
            port = found and found.group(1)
            time.sleep(0.05)
        assert port, errors.read_text()
        base = f"http://127.0.0.1:{port}"
        page = f"{base}/reset-password/{token}"
        assert requests.get(page, timeout=30).status_code == 200
        requests.get(f"{base}/static/countersign.css", headers={"Referer": page}, timeout=30)
        requests.get(f"{base}/invite/{token}?x=1", timeout=30)
        requests.get(f"{base}/lti/connect/{token}", timeout=30)
        deadline = time.monotonic() + 10
        while access.read_text().count("\n") < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        logged = access.read_text()
        assert logged.count("/reset-password/[redacted]") == 2  # the request line, the Referer
        assert "/invite/[redacted]" in logged
        assert "/lti/connect/[redacted]" in logged  # the emailed link that connects an LMS account
        assert token not in logged and token not in errors.read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)
