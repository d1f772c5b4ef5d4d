"""The one worker: claims are exclusive, back-off is recorded, and a killed worker loses nothing.

Deliveries go to a real HTTP receiver on 127.0.0.1 that records each delivery id it is sent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import func, select

from api.models import Webhook
from api.webhooks import DELIVERY, EVENT
from core import outbox
from core.config import ROOT
from core.db import db, utcnow
from core.outbox import OutboxMessage, enqueue
from tests.conftest import run_worker
from tests.serving import QUICK_STOP

FLASK = Path(sys.executable).with_name("flask")


class Receiver(ThreadingHTTPServer):
    """Answers 200 to every POST and counts deliveries by their id; ``hold`` keeps requests
    waiting (a slow receiver) until released."""

    daemon_threads = True

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.hold = threading.Event()
        self.hold.set()
        self.arrived = threading.Event()
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N805
                handler.rfile.read(int(handler.headers["Content-Length"]))
                self.arrived.set()
                self.hold.wait(30)
                with self.lock:
                    self.seen[handler.headers["X-Countersign-Delivery"]] += 1
                handler.send_response(200)
                handler.end_headers()

            def log_message(handler, *args) -> None:  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, args=(QUICK_STOP,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.hold.set()
    server.shutdown()
    server.server_close()


def queue_deliveries(app, url: str, count: int) -> list[int]:
    with app.app_context():
        hook = Webhook(url=url, secret="s")
        db.session.add(hook)
        db.session.flush()
        for n in range(count):
            event = {"id": f"e{n}", "type": EVENT, "data": {"person": {"id": n}}}
            enqueue(db.session, DELIVERY, {"webhook_id": hook.id, "event": event})
        db.session.commit()
        return list(  # in order: rows come back in whatever order the table holds them
            db.session.scalars(
                select(OutboxMessage.id)
                .where(OutboxMessage.topic == DELIVERY)
                .order_by(OutboxMessage.id)
            )
        )


def test_four_workers_deliver_each_message_exactly_once(app, receiver, database_url):
    """On PostgreSQL the claim is ``FOR UPDATE SKIP LOCKED``: four workers run at once and never
    take the same message. (On SQLite, where one worker is the rule, the writer lock serialises
    claims, and the outcome is the same.)"""
    ids = queue_deliveries(app, receiver.url, 120)
    start = threading.Barrier(4)
    passes: list[outbox.Pass] = []
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with app.app_context():
                start.wait()
                passes.append(outbox.run_once(f"worker-{n}", limit=5))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(map(int, receiver.seen)) == ids  # every one delivered...
    assert set(receiver.seen.values()) == {1}  # ...exactly once
    handled = [p.done for p in passes]
    if database_url.startswith("postgresql"):
        assert sum(1 for n in handled if n) >= 2, handled  # the work was shared
    with app.app_context():
        left = db.session.scalar(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.done_at.is_(None))
        )
        assert left == 0


def _worker_env(database_url: str, instance: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERSIGN_")}
    env.update(
        FLASK_APP="app",
        COUNTERSIGN_DATABASE_URL=database_url,
        COUNTERSIGN_SECRET_KEY="test-secret-key-not-for-production",
        COUNTERSIGN_WEBHOOKS_ALLOW_HTTP_LOOPBACK="true",
        COUNTERSIGN_MFA_ROLES="",
    )
    return env


@pytest.mark.integration  # a real `flask worker` process, killed
def test_a_worker_killed_mid_delivery_loses_nothing(app, receiver, database_url, tmp_path):
    """``flask worker`` is killed (SIGKILL) while a receiver is answering its delivery. The claim
    it held expires, and the next worker delivers the message: nothing is lost, and a receiver
    that recognises deliveries by their id sees the same one again at most."""
    (message_id,) = queue_deliveries(app, receiver.url, 1)
    receiver.hold.clear()  # the receiver takes the request and does not answer yet
    worker = subprocess.Popen(
        [str(FLASK), "worker", "--poll", "0.2"],
        cwd=ROOT,
        env=_worker_env(database_url, tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert receiver.arrived.wait(60), worker.stderr.read1().decode() if worker.stderr else ""
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        if worker.stderr:
            worker.stderr.close()
    receiver.hold.set()
    time.sleep(0.2)  # the held request completes with nobody to hear its answer
    with app.app_context():
        held = db.session.get(OutboxMessage, message_id)
        assert held.done_at is None and held.claimed_by is not None  # claimed, never finished
        lease_end = held.claimed_until
    run_worker(app)  # a worker now leaves it alone: the claim still holds
    with app.app_context():
        assert db.session.get(OutboxMessage, message_id).done_at is None
    run_worker(app, lease_end + timedelta(seconds=1))  # the claim has expired: taken again
    with app.app_context():
        message = db.session.get(OutboxMessage, message_id)
        assert message.done_at is not None and message.attempts == 1
    assert receiver.seen[str(message_id)] >= 1


def test_a_failing_handler_is_retried_with_back_off_and_shown(app):
    calls: list[int] = []

    def flaky(session, message) -> None:
        calls.append(message.id)
        if len(calls) < 3:
            raise outbox.Retry("could not connect", status=503)

    outbox.topic(app, "test.flaky", flaky, remote=True)
    with app.app_context():
        enqueue(db.session, "test.flaky", {})
        db.session.commit()
    run_worker(app)
    with app.app_context():
        (message,) = db.session.scalars(
            select(OutboxMessage).where(OutboxMessage.topic == "test.flaky")
        ).all()
        assert (message.state, message.attempts, message.last_status) == ("retrying", 1, 503)
        assert message.due_at - message.last_attempt_at == outbox.BACKOFF[0]
        counts = outbox.backlog(db.session)["test.flaky"]
        assert counts == {"queued": 0, "retrying": 1, "sent": 0, "failed": 0}
    run_worker(app, utcnow() + outbox.BACKOFF[0])
    run_worker(app, utcnow() + outbox.BACKOFF[0] + outbox.BACKOFF[1])
    with app.app_context():
        message = db.session.scalar(
            select(OutboxMessage).where(OutboxMessage.topic == "test.flaky")
        )
        assert message.state == "sent" and message.attempts == 3 and message.last_error is None


def test_the_same_key_is_queued_once(app):
    with app.app_context():
        assert enqueue(db.session, "test.once", {}, key="k")
        assert not enqueue(db.session, "test.once", {}, key="k")
        db.session.commit()
        assert (
            db.session.scalar(
                select(func.count()).select_from(OutboxMessage).where(OutboxMessage.key == "k")
            )
            == 1
        )


def test_worker_once_runs_from_the_command_line(app, runner, receiver):
    queue_deliveries(app, receiver.url, 3)
    result = runner.invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert "done" in result.output
    assert len(receiver.seen) == 3
