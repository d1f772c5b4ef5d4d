"""With SMTP settings, invitations and reset links are emailed instead of shown."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import select

from core.db import db
from core.mail import MailError, MailFailure, send_mail
from tests.conftest import csrf_token
from tests.smtp_server import SMTPServer, make_ca


@pytest.fixture
def smtp():
    with SMTPServer() as server:
        yield server


@pytest.fixture
def app_config(smtp):
    return {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": smtp.server_address[1],
        "SMTP_STARTTLS": False,
        "SMTP_FROM": "training@ladysmith.example",
    }


def test_invitation_is_emailed_when_smtp_is_configured(app, auth, make_person, smtp):
    auth.as_person(make_person("admin"))
    pid = make_person("parent", name="Pat Parent", email="pat@ladysmith.example", password=None)
    response = auth.post(f"/admin/people/{pid}/invite", form_url=f"/admin/people/{pid}")
    page = auth.client.get(response.location).get_data(as_text=True)
    assert "An email with the link was sent to pat@ladysmith.example." in page
    assert "/invite/" not in page  # the link goes to the person, not the screen
    ((to, message),) = smtp.received
    assert to == ["pat@ladysmith.example"]
    assert message["From"] == "training@ladysmith.example"
    assert "Set up your Ladysmith Federation training account" in message["Subject"]
    link = re.search(
        r"http://countersign\.test(/invite/\S+)", message.get_payload(decode=True).decode()
    ).group(1)
    assert app.test_client().get(link).status_code == 200


def test_reset_link_is_emailed(auth, make_person, smtp):
    make_person("staff", email="s@ladysmith.example")
    token = csrf_token(auth.client, "/forgot-password")
    auth.client.post("/forgot-password", data={"email": "s@ladysmith.example", "csrf_token": token})
    deadline = time.monotonic() + 10  # sent in the background, so the page does not wait
    while not smtp.received and time.monotonic() < deadline:
        time.sleep(0.05)
    ((to, message),) = smtp.received
    assert to == ["s@ladysmith.example"]
    assert "/reset-password/" in message.get_payload(decode=True).decode()


# --- TLS: the mail server must prove who it is before it sees a password or a link (F4) ---

SECRET = "smtp-secret-pw"


def _tls_settings(app, server, **extra):
    settings = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": server.server_address[1],
        "SMTP_STARTTLS": True,
        "SMTP_SSL": False,
        "SMTP_USERNAME": "countersign@ladysmith.example",
        "SMTP_PASSWORD": SECRET,
    }
    app.config.update({**settings, **extra})


def _wait_for(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def _failures(app):
    with app.app_context():
        return db.session.scalars(select(MailFailure).order_by(MailFailure.id)).all()


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
def test_untrusted_mail_server_gets_no_password_and_no_message(app, tmp_path, caplog, implicit):
    made = make_ca(tmp_path, self_signed=True)
    with SMTPServer(made.server_context, implicit=implicit) as server:
        _tls_settings(app, server, SMTP_SSL=implicit)
        with app.app_context(), pytest.raises(MailError) as failure:
            send_mail(app.config, "s@ladysmith.example", "Reset", "a link")
    assert failure.value.reason == "tls_certificate"
    assert server.auth == [] and server.received == []
    logged = [r for r in caplog.records if r.name == "countersign.mail"]
    assert logged and "certificate not accepted" in logged[0].getMessage()
    assert SECRET not in caplog.text
    assert _wait_for(lambda: _failures(app))
    (row,) = _failures(app)
    assert row.reason == "tls_certificate" and SECRET not in row.detail


def test_mail_server_certificate_for_another_name_is_refused(app, tmp_path):
    made = make_ca(tmp_path, names=("mail.elsewhere.example",))
    with SMTPServer(made.server_context) as server:
        _tls_settings(app, server, SMTP_CA_FILE=str(made.ca_file))
        with app.app_context(), pytest.raises(MailError) as failure:
            send_mail(app.config, "s@ladysmith.example", "Reset", "a link")
    assert failure.value.reason == "tls_certificate"
    assert "mismatch" in failure.value.detail.lower()
    assert server.auth == [] and server.received == []
    assert _wait_for(lambda: _failures(app))


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
def test_mail_is_delivered_over_tls_to_a_server_the_ca_file_trusts(app, tmp_path, implicit):
    made = make_ca(tmp_path)
    with SMTPServer(made.server_context, implicit=implicit) as server:
        _tls_settings(app, server, SMTP_SSL=implicit, SMTP_CA_FILE=str(made.ca_file))
        with app.app_context():
            send_mail(app.config, "s@ladysmith.example", "Reset", "a link")
    ((to, message),) = server.received
    assert to == ["s@ladysmith.example"] and message["Subject"] == "Reset"
    assert len(server.auth) == 1  # the password went over the verified connection
    assert _failures(app) == []


def test_password_is_never_sent_unencrypted_to_another_machine(app, smtp, caplog):
    app.config.update(
        SMTP_HOST="192.0.2.10", SMTP_STARTTLS=False, SMTP_USERNAME="u", SMTP_PASSWORD=SECRET
    )
    with app.app_context(), pytest.raises(MailError) as failure:
        send_mail(app.config, "s@ladysmith.example", "Reset", "a link")
    assert failure.value.reason == "insecure_credentials"
    assert SECRET not in caplog.text
    assert _wait_for(lambda: _failures(app))


def test_password_may_go_unencrypted_to_a_server_on_this_machine(app, smtp):
    app.config.update(SMTP_STARTTLS=False, SMTP_USERNAME="u", SMTP_PASSWORD="local-pw")
    with app.app_context():
        send_mail(app.config, "s@ladysmith.example", "Hello", "body")
    assert len(smtp.received) == 1 and len(smtp.auth) == 1


def test_administrator_is_shown_that_email_is_failing(app, auth, make_person, tmp_path):
    made = make_ca(tmp_path, self_signed=True)
    with SMTPServer(made.server_context) as server:
        _tls_settings(app, server)
        make_person("staff", email="s@ladysmith.example")
        token = csrf_token(auth.client, "/forgot-password")
        auth.client.post(
            "/forgot-password", data={"email": "s@ladysmith.example", "csrf_token": token}
        )
        assert _wait_for(lambda: _failures(app))
    assert server.auth == [] and server.received == []
    auth.as_person(make_person("admin"))
    page = auth.client.get("/admin/people").get_data(as_text=True)
    assert "Email is not being sent" in page
    assert "certificate not accepted" in page and "COUNTERSIGN_SMTP_CA_FILE" in page
    assert SECRET not in page


def test_an_unreadable_ca_file_is_reported_not_ignored(app, smtp, tmp_path):
    app.config.update(SMTP_STARTTLS=True, SMTP_CA_FILE=str(tmp_path / "missing.pem"))
    with app.app_context(), pytest.raises(MailError) as failure:
        send_mail(app.config, "s@ladysmith.example", "Hello", "body")
    assert failure.value.reason == "tls" and "SMTP_CA_FILE" in failure.value.detail
    assert smtp.received == []
    assert _wait_for(lambda: _failures(app))
