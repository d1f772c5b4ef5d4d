"""Webhooks: signed events when trained status changes, retried with back-off."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from api.models import WebhookDelivery
from api.webhooks import BACKOFF, create_webhook, deliver_due, detect_changes
from core.db import db, utcnow
from people.models import Person
from tests.conftest import Auth, complete_modules
from training.models import Policy
from training.status import add_months

pytestmark = pytest.mark.usefixtures("published")


class Receiver(ThreadingHTTPServer):
    """An HTTP endpoint on 127.0.0.1 that answers with the statuses it is told to, in turn."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses, self.received = list(statuses), []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N805
                body = handler.rfile.read(int(handler.headers["Content-Length"]))
                self.received.append((dict(handler.headers), body))
                code = self.statuses.pop(0) if self.statuses else 200
                handler.send_response(code)
                handler.end_headers()

            def log_message(handler, *args) -> None:  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@pytest.fixture
def app_config():
    return {"WEBHOOKS_SYNC": True}


@pytest.fixture
def receiver():
    server = Receiver([])
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def hook(app, receiver):
    with app.app_context():
        webhook = create_webhook(db.session, receiver.url, None)
        db.session.commit()
        return webhook.secret


def sign_through_pages(app, pid, name):
    with app.app_context():
        person, policy = db.session.get(Person, pid), db.session.scalar(select(Policy))
        complete_modules(db.session, person, policy)
        db.session.commit()
    auth = Auth(app, app.test_client())
    auth.as_person(pid)
    return auth.post("/policies/social-media-policy/sign", {"confirm": "y", "full_name": name})


def test_becoming_trained_sends_a_signed_event(app, receiver, hook, make_person):
    pid = make_person("volunteer", name="Val Vol", email="val@ladysmith.example")
    assert sign_through_pages(app, pid, "Val Vol").status_code == 302
    ((headers, body),) = receiver.received
    expected = "sha256=" + hmac.new(hook.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Countersign-Signature"] == expected
    assert headers["X-Countersign-Event"] == "training_status.changed"
    event = json.loads(body)
    assert event["data"]["person"]["email"] == "val@ladysmith.example"
    assert event["data"]["trained"] is True and event["data"]["valid_until"].endswith("Z")
    with app.app_context():
        delivery = db.session.scalar(select(WebhookDelivery))
        assert delivery.delivered_at is not None and delivery.last_status == 200


def test_a_leaver_sends_trained_false(app, receiver, hook, make_person):
    pid = make_person("volunteer", name="Val Vol")
    sign_through_pages(app, pid, "Val Vol")
    admin = Auth(app, app.test_client())
    admin.as_person(make_person("admin"))
    admin.post(f"/admin/people/{pid}/deactivate")
    assert [json.loads(b)["data"]["trained"] for _, b in receiver.received] == [True, False]


def test_failed_deliveries_are_retried_with_back_off_then_given_up(
    app, receiver, hook, make_person
):
    receiver.statuses = [500, 503]
    pid = make_person("volunteer", name="Val Vol")
    sign_through_pages(app, pid, "Val Vol")
    with app.app_context():
        delivery = db.session.scalar(select(WebhookDelivery))
        assert delivery.delivered_at is None and delivery.attempts == 1
        assert delivery.last_error == "HTTP 500"
        first_retry = delivery.next_attempt_at
        assert first_retry - delivery.last_attempt_at == BACKOFF[0]
        assert deliver_due(db.session) == 0  # not due yet
        assert deliver_due(db.session, first_retry) == 0  # 503
        assert deliver_due(db.session, first_retry + BACKOFF[1]) == 1
        delivery = db.session.scalar(select(WebhookDelivery))
        assert delivery.attempts == 3 and delivery.delivered_at is not None
    assert len(receiver.received) == 3
    assert len({b for _, b in receiver.received}) == 1  # the same event each time

    receiver.statuses = [500] * 10
    with app.app_context():
        db.session.execute(WebhookDelivery.__table__.delete())
        db.session.add(WebhookDelivery(webhook_id=1, event_id="e", payload={"type": "x", "data": {}},
                                       next_attempt_at=utcnow(), attempts=0))  # fmt: skip
        db.session.commit()
        moment = utcnow()
        for _ in range(len(BACKOFF) + 1):
            deliver_due(db.session, moment)
            moment += timedelta(days=1)
        delivery = db.session.scalar(select(WebhookDelivery))
        assert delivery.gave_up_at is not None and delivery.attempts == len(BACKOFF) + 1


def test_expiry_is_noticed_by_the_sweep(app, receiver, hook, make_person):
    pid = make_person("volunteer", name="Val Vol")
    sign_through_pages(app, pid, "Val Vol")
    with app.app_context():
        later = add_months(utcnow(), 12) + timedelta(days=1)
        assert detect_changes(db.session, None, later) == 1
        db.session.commit()
        assert detect_changes(db.session, None, later) == 0  # announced once
        deliver_due(db.session, later)
    assert [json.loads(b)["data"]["trained"] for _, b in receiver.received] == [True, False]


def test_webhooks_page_shows_the_secret_once_and_the_deliveries(app, auth, make_person, receiver):
    auth.as_person(make_person("admin"))
    response = auth.post("/admin/webhooks/", {"url": receiver.url})
    assert "Its signing secret" in response.get_data(as_text=True)
    bad = auth.post("/admin/webhooks/", {"url": "ftp://nope"})
    assert bad.status_code == 400
    assert "Its signing secret" not in auth.client.get("/admin/webhooks/").get_data(as_text=True)
