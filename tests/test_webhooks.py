"""Webhooks: signed events when trained status changes, retried with back-off."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select

from api.models import Webhook
from api.webhooks import BACKOFF, DELIVERY, EVENT, AddressRefused, create_webhook
from audit.models import AuditEvent
from core.db import db, utcnow
from core.outbox import OutboxMessage, enqueue
from people.models import Person
from tests.conftest import Auth, complete_modules, run_worker
from tests.serving import QUICK_STOP
from tests.smtp_server import make_ca
from training.models import Policy
from training.status import add_months

pytestmark = pytest.mark.usefixtures("published")


class Receiver(ThreadingHTTPServer):
    """An HTTP endpoint on 127.0.0.1 that answers with the statuses it is told to, in turn."""

    def __init__(
        self, statuses: list[int], tls: ssl.SSLContext | None = None, location: str = ""
    ) -> None:
        self.statuses, self.received = list(statuses), []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N805
                body = handler.rfile.read(int(handler.headers["Content-Length"]))
                self.received.append((dict(handler.headers), body))
                code = self.statuses.pop(0) if self.statuses else 200
                handler.send_response(code)
                if location:
                    handler.send_header("Location", location)
                handler.end_headers()

            def do_GET(handler) -> None:  # noqa: N805
                self.received.append((dict(handler.headers), b"GET"))
                handler.send_response(200)
                handler.end_headers()

            def log_message(handler, *args) -> None:  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        threading.Thread(target=self.serve_forever, args=(QUICK_STOP,), daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


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
    response = auth.post("/policies/social-media-policy/sign", {"confirm": "y", "full_name": name})
    run_worker(app)  # the worker delivers what the signature changed
    return response


def deliveries(app) -> list[OutboxMessage]:
    with app.app_context():
        found = list(db.session.scalars(
            select(OutboxMessage).where(OutboxMessage.topic == DELIVERY).order_by(OutboxMessage.id)
        ))  # fmt: skip
        db.session.expunge_all()
        return found


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
    (delivery,) = deliveries(app)
    assert delivery.done_at is not None and delivery.last_status == 200
    assert headers["X-Countersign-Delivery"] == str(delivery.id)


def test_a_leaver_sends_trained_false(app, receiver, hook, make_person):
    pid = make_person("volunteer", name="Val Vol")
    sign_through_pages(app, pid, "Val Vol")
    admin = Auth(app, app.test_client())
    admin.as_person(make_person("admin"))
    admin.post(f"/admin/people/{pid}/deactivate")
    run_worker(app)
    assert [json.loads(b)["data"]["trained"] for _, b in receiver.received] == [True, False]


def test_failed_deliveries_are_retried_with_back_off_then_given_up(
    app, receiver, hook, make_person
):
    receiver.statuses = [500, 503]
    pid = make_person("volunteer", name="Val Vol")
    sign_through_pages(app, pid, "Val Vol")
    (delivery,) = deliveries(app)
    assert delivery.done_at is None and delivery.attempts == 1
    assert delivery.last_error == "the receiving server answered 500"
    first_retry = delivery.due_at
    assert first_retry - delivery.last_attempt_at == BACKOFF[0]
    run_worker(app)
    assert deliveries(app)[0].attempts == 1  # not due yet
    run_worker(app, first_retry)
    (delivery,) = deliveries(app)
    assert delivery.attempts == 2 and delivery.last_status == 503
    run_worker(app, delivery.due_at)
    (delivery,) = deliveries(app)
    assert delivery.attempts == 3 and delivery.done_at is not None
    assert len(receiver.received) == 3
    assert len({b for _, b in receiver.received}) == 1  # the same event each time

    receiver.statuses = [500] * 10
    with app.app_context():
        enqueue(db.session, DELIVERY, {"webhook_id": 1, "event": {"type": "x", "data": {}}})
        db.session.commit()
    moment = utcnow()
    for _ in range(len(BACKOFF) + 1):
        run_worker(app, moment)
        moment += timedelta(days=1)
    delivery = deliveries(app)[-1]
    assert delivery.gave_up_at is not None and delivery.attempts == len(BACKOFF) + 1
    assert delivery.state == "failed"


def test_expiry_is_noticed_by_the_sweep(app, receiver, hook, make_person):
    pid = make_person("volunteer", name="Val Vol")
    sign_through_pages(app, pid, "Val Vol")
    later = add_months(utcnow(), 12) + timedelta(days=1)
    run_worker(app, later)  # the worker's sweep, a year on
    run_worker(app, later)  # announced once
    assert [json.loads(b)["data"]["trained"] for _, b in receiver.received] == [True, False]


def test_webhooks_page_shows_the_secret_once_and_the_deliveries(app, auth, make_person, receiver):
    auth.as_person(make_person("admin"))
    response = auth.post("/admin/webhooks/", {"url": receiver.url})
    assert "Its signing secret" in response.get_data(as_text=True)
    bad = auth.post("/admin/webhooks/", {"url": "ftp://nope"})
    assert bad.status_code == 400
    assert "Its signing secret" not in auth.client.get("/admin/webhooks/").get_data(as_text=True)


# --- where events may go (F5) ---

REFUSED_ADDRESSES = [
    "http://hooks.example/x",  # not encrypted
    "https://127.0.0.1/x",
    "https://127.1/x",
    "https://0x7f000001/x",
    "https://2130706433/x",
    "https://0177.0.0.1/x",
    "https://localhost/x",
    "https://[::1]/x",
    "https://[::ffff:127.0.0.1]/x",
    "https://[::ffff:7f00:1]/x",
    "https://[2002:7f00:1::]/x",  # 6to4 wrapping of 127.0.0.1
    "https://[64:ff9b::a00:1]/x",  # NAT64 wrapping of 10.0.0.1
    "https://0.0.0.0/x",
    "https://[::]/x",
    "https://10.0.0.5/x",
    "https://172.16.3.4/x",
    "https://192.168.1.1/x",
    "https://100.64.0.1/x",
    "https://169.254.169.254/latest/meta-data",
    "https://[fe80::1]/x",
    "https://[fd00::1]/x",
    "https://224.0.0.1/x",
    "https://[ff02::1]/x",
    "https://240.0.0.1/x",
    "https://192.0.2.1/x",
    "https://internal.example/x",  # a name for a private address
    "https://mixed.example/x",  # one public and one loopback address
    "https://user:secret@hooks.example/x",
    "ftp://hooks.example/x",
]
NAMES = {
    "hooks.example": ["8.8.8.8"],
    "localhost": ["127.0.0.1", "::1"],
    "internal.example": ["10.1.2.3"],
    "mixed.example": ["8.8.8.8", "127.0.0.1"],
}


def fake_dns(host: str, port: int) -> list[str]:
    if host not in NAMES:
        raise OSError(f"{host} not found")
    return NAMES[host]


@pytest.fixture
def strict(app):
    """Production rules: no plain http or loopback, and names resolved by fake_dns."""
    app.config.update(WEBHOOKS_ALLOW_HTTP_LOOPBACK=False, WEBHOOKS_RESOLVER=fake_dns)
    return app


def webhook_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Webhook))


def test_private_loopback_and_reserved_webhook_addresses_are_refused(strict):
    with strict.app_context():
        for url in REFUSED_ADDRESSES:
            with pytest.raises(AddressRefused):
                create_webhook(db.session, url, None)
            db.session.rollback()
        create_webhook(db.session, "https://hooks.example/events", None)
        db.session.commit()
    assert webhook_count(strict) == 1


def test_webhook_form_says_why_an_address_is_refused(strict, auth, make_person):
    auth.as_person(make_person("admin"))
    response = auth.post("/admin/webhooks/", {"url": "https://169.254.169.254/latest"})
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "Countersign does not send events to 169.254.169.254: it is a link-local address" in page
    plain = auth.post("/admin/webhooks/", {"url": "http://hooks.example/x"})
    assert plain.status_code == 400
    assert "must start https://" in plain.get_data(as_text=True)
    assert webhook_count(strict) == 0


def test_cli_refuses_a_private_webhook_address(strict):
    result = strict.test_cli_runner().invoke(args=["webhooks", "add", "https://0x7f000001/x"])
    assert result.exit_code != 0
    assert "loopback" in result.output
    assert webhook_count(strict) == 0


def test_plain_http_only_to_loopback_and_only_in_development(app, strict):
    with app.app_context():
        with pytest.raises(AddressRefused):
            create_webhook(db.session, "http://127.0.0.1:8080/x", None)
        db.session.rollback()
        app.config["WEBHOOKS_ALLOW_HTTP_LOOPBACK"] = True
        create_webhook(db.session, "http://127.0.0.1:8080/x", None)
        for url in ("http://hooks.example/x", "http://10.0.0.5/x", "https://10.0.0.5/x"):
            with pytest.raises(AddressRefused):
                create_webhook(db.session, url, None)
        db.session.commit()
    assert webhook_count(app) == 1


def _deliver_once(app, url: str) -> OutboxMessage:
    with app.app_context():
        hook = Webhook(url=url, secret="s")  # added directly: as if registered earlier
        db.session.add(hook)
        db.session.flush()
        payload = {"type": EVENT, "data": {"person": {"id": 1}, "trained": True}}
        enqueue(db.session, DELIVERY, {"webhook_id": hook.id, "event": payload})
        db.session.commit()
    run_worker(app)
    return deliveries(app)[-1]


def test_a_name_that_turns_into_loopback_after_registration_gets_nothing(strict, receiver):
    answers = {"rebind.example": ["8.8.8.8"]}
    strict.config["WEBHOOKS_RESOLVER"] = lambda host, port: answers[host]
    url = f"https://rebind.example:{receiver.port}/hook"
    with strict.app_context():
        create_webhook(db.session, url, None)  # public when registered
        db.session.commit()
    answers["rebind.example"] = ["127.0.0.1"]  # then the name is pointed at the server itself
    delivery = _deliver_once(strict, url)
    assert delivery.done_at is None and delivery.attempts == 1
    assert delivery.last_error == "not sent: the address is not on the internet"
    assert receiver.received == []


def test_delivery_connects_to_the_checked_address_and_verifies_the_name(app, tmp_path):
    """hooks.example does not resolve on this machine: the delivery reached the receiver only
    because it connected to the address that was checked, with the name in SNI and Host."""
    made = make_ca(tmp_path, names=("hooks.example",))
    impostor = make_ca(tmp_path / "impostor", names=("other.example",))
    app.config.update(
        WEBHOOKS_RESOLVER=lambda host, port: ["127.0.0.1"], WEBHOOKS_CA_FILE=str(made.ca_file)
    )
    good, bad = Receiver([], tls=made.server_context), Receiver([], tls=impostor.server_context)
    try:
        delivered = _deliver_once(app, f"https://hooks.example:{good.port}/hook")
        refused = _deliver_once(app, f"https://hooks.example:{bad.port}/hook")
    finally:
        for server in (good, bad):
            server.shutdown()
            server.server_close()
    assert delivered.done_at is not None and delivered.last_status == 200
    ((headers, _),) = good.received
    assert headers["Host"] == f"hooks.example:{good.port}"
    assert refused.done_at is None and bad.received == []
    assert refused.last_error == "could not connect securely (certificate not accepted)"


def test_redirects_are_never_followed(app):
    sink = Receiver([])
    redirector = Receiver([302], location=f"http://127.0.0.1:{sink.port}/internal-only")
    try:
        delivery = _deliver_once(app, f"http://127.0.0.1:{redirector.port}/hook")
    finally:
        for server in (sink, redirector):
            server.shutdown()
            server.server_close()
    assert delivery.done_at is None and delivery.last_status == 302
    assert (
        delivery.last_error
        == "the receiving server answered 302 (a redirect, which is not followed)"
    )
    assert len(redirector.received) == 1 and sink.received == []


def test_deliveries_page_shows_generic_reasons_not_the_remote_error(app, auth, make_person):
    closed = Receiver([])
    port = closed.port
    closed.shutdown()
    closed.server_close()
    _deliver_once(app, f"http://127.0.0.1:{port}/hook")
    auth.as_person(make_person("admin"))
    page = auth.client.get("/admin/webhooks/").get_data(as_text=True)
    assert "could not connect" in page
    assert "refused" not in page.lower() and "Errno" not in page


def test_webhook_added_and_stopped_are_audited(app, auth, make_person, receiver):
    admin = make_person("admin")
    auth.as_person(admin)
    auth.post("/admin/webhooks/", {"url": receiver.url})
    with app.app_context():
        hook_id = db.session.scalar(select(Webhook.id))
    auth.post(f"/admin/webhooks/{hook_id}/stop", form_url="/admin/webhooks/")
    with app.app_context():
        rows = db.session.scalars(
            select(AuditEvent).where(AuditEvent.event.like("webhook.%")).order_by(AuditEvent.seq)
        ).all()
    assert [(r.event, r.actor_id, r.subject_id) for r in rows] == [
        ("webhook.added", admin, str(hook_id)),
        ("webhook.stopped", admin, str(hook_id)),
    ]
    assert "127.0.0.1" not in rows[0].detail
