"""With SMTP settings, invitations and reset links are emailed instead of shown."""

from __future__ import annotations

import re
import time

import pytest

from tests.conftest import csrf_token
from tests.smtp_server import SMTPServer


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
