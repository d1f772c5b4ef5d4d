"""With SMTP settings, invitations and reset links are emailed instead of shown."""

from __future__ import annotations

import logging
import re
import socket
import time

import pytest
from sqlalchemy import select

from core.db import db
from core.mail import MailError, MailFailure, send_mail, warn_about_plaintext
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


def _address_on_the_network() -> str:
    """This machine's address on its network (not loopback), for a server "elsewhere"."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
        except OSError:
            pytest.skip("no network address to listen on")
        address = probe.getsockname()[0]
    if address.startswith("127.") or address == "0.0.0.0":
        pytest.skip("no network address to listen on")
    return address


@pytest.fixture
def remote_smtp():
    with SMTPServer(host=_address_on_the_network()) as server:
        yield server


def _plain_to(app, server, **extra):
    host, port = server.server_address[:2]
    app.config.update(SMTP_HOST=host, SMTP_PORT=port, SMTP_STARTTLS=False, **extra)


def test_links_never_go_unencrypted_to_another_machine(app, auth, make_person, remote_smtp):
    _plain_to(app, remote_smtp)
    with app.app_context(), pytest.raises(MailError) as failure:
        send_mail(app.config, "s@ladysmith.example", "Reset", "a link")
    assert failure.value.reason == "plaintext"
    make_person("staff", email="s@ladysmith.example")
    token = csrf_token(auth.client, "/forgot-password")
    auth.client.post("/forgot-password", data={"email": "s@ladysmith.example", "csrf_token": token})
    assert _wait_for(lambda: len(_failures(app)) >= 2)
    assert remote_smtp.received == []
    auth.as_person(make_person("admin"))
    page = auth.client.get("/admin/people").get_data(as_text=True)
    assert "Email is not being sent" in page and "COUNTERSIGN_SMTP_ALLOW_PLAINTEXT" in page


def test_plaintext_to_another_machine_only_when_allowed_and_warned(
    app, remote_smtp, caplog, database_url
):
    from app import create_app

    caplog.set_level(logging.WARNING, logger="countersign")
    _plain_to(app, remote_smtp)
    settings = {"DATABASE_URL": database_url, "SECRET_KEY": "k", "SMTP_STARTTLS": False,
                "SMTP_HOST": remote_smtp.server_address[0]}  # fmt: skip
    create_app(settings)
    assert "no email will be sent" in caplog.text
    caplog.clear()
    create_app({**settings, "SMTP_ALLOW_PLAINTEXT": "true"})
    assert "COUNTERSIGN_SMTP_ALLOW_PLAINTEXT is on" in caplog.text
    app.config["SMTP_ALLOW_PLAINTEXT"] = "true"
    with app.app_context():
        send_mail(app.config, "s@ladysmith.example", "Hello", "body")
    assert len(remote_smtp.received) == 1
    # Credentials still never go in clear, allowed or not.
    app.config.update(SMTP_USERNAME="u", SMTP_PASSWORD=SECRET)
    with app.app_context(), pytest.raises(MailError) as failure:
        send_mail(app.config, "s@ladysmith.example", "Hello", "body")
    assert failure.value.reason == "insecure_credentials" and remote_smtp.auth == []


def test_a_mail_server_on_this_machine_needs_no_tls_and_no_warning(app, smtp, caplog):
    caplog.set_level(logging.WARNING, logger="countersign")
    warn_about_plaintext(app)  # the app's settings: 127.0.0.1 without STARTTLS
    assert "COUNTERSIGN_SMTP" not in caplog.text
    with app.app_context():
        send_mail(app.config, "s@ladysmith.example", "Hello", "body")
    assert len(smtp.received) == 1
