"""One outbox and one worker for everything Countersign does after a commit.

A package that has something to do later (announce a status change, POST a webhook, send a grade
to a learning platform, a statement to a Learning Record Store, render a certificate, email a
reminder) writes a message to the ``outbox`` table in the same transaction as the change that
causes it, so the message exists exactly when the change does. Each *topic* has one handler,
registered by the package that owns it (:func:`topic`); jobs that fall due with time alone
(reminders, expiries, digests) register with :func:`periodic`.

The worker (``flask worker``; ``flask worker --once`` for cron) claims due messages, runs their
handlers and records each attempt on the message itself: attempts, the last status and error, when
it was done, or when it gave up. A failed attempt is tried again after a back-off. Claims are
leases: ``claimed_until`` is set in a short transaction of its own (on PostgreSQL with ``FOR UPDATE
SKIP LOCKED``, so any number of workers on any number of machines share the queue without waiting
for each other or taking the same message); a worker killed mid-delivery leaves its claim to
expire, and the message is taken again, so nothing is lost. A receiver may therefore, rarely, see
a message twice: each carries a stable id to recognise it by.

Two kinds of handler:

- *local* handlers only write to the database (for example turning one ``status.changed`` event
  into a delivery for each webhook). They run inside the transaction that marks the message done,
  so their writes and "done" commit together, exactly once.
- *remote* handlers talk to another system. They run with no write transaction open (on SQLite a
  slow remote must not hold the one write lock learners need), then the outcome is recorded.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, current_app
from sqlalchemy import JSON, ForeignKey, Index, String, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base, UTCDateTime, db, insert_ignoring_conflict, utcnow, writing

log = logging.getLogger("countersign.worker")

# After the nth failed attempt, wait BACKOFF[n - 1]; after the last, give up.
BACKOFF = tuple(timedelta(minutes=m) for m in (1, 5, 30, 120, 720))
LEASE = timedelta(minutes=5)  # a claim not finished by then is taken again
BATCH = 50
PERIODIC = "periodic"


class OutboxMessage(Base):
    """Something to do after a commit, and the record of every attempt to do it."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "done_at", "gave_up_at", "due_at"),
        Index("ix_outbox_topic", "topic", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    topic: Mapped[str] = mapped_column(String(60))
    # Unique when set: the same event queued twice (two workers, a double submit) is one message.
    key: Mapped[str | None] = mapped_column(String(200), unique=True)
    # Whose data the payload carries, for the personal-data download and erasure.
    person_id: Mapped[int | None] = mapped_column(ForeignKey("person.id", ondelete="SET NULL"))
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    gave_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def state(self) -> str:
        if self.done_at is not None:
            return "sent"
        if self.gave_up_at is not None:
            return "failed"
        return "retrying" if self.attempts else "queued"


class Retry(Exception):  # noqa: N818 - an outcome, not an error
    """This attempt failed and may succeed later. ``error`` is shown to administrators: generic
    words, never a remote server's own text."""

    def __init__(self, error: str, status: int | None = None, after: timedelta | None = None):
        super().__init__(error)
        self.error, self.status, self.after = error, status, after


class GiveUp(Exception):  # noqa: N818 - an outcome, not an error
    """This message can never be done (its target is gone, it is refused for good)."""

    def __init__(self, error: str, status: int | None = None):
        super().__init__(error)
        self.error, self.status = error, status


Handler = Callable[[Session, OutboxMessage], int | None]  # may return a status code to record


@dataclass(frozen=True)
class Topic:
    name: str
    handle: Handler
    remote: bool
    backoff: tuple[timedelta, ...] = BACKOFF


@dataclass(frozen=True)
class Periodic:
    name: str
    run: Callable[[Session, datetime], Any]
    every: timedelta


Subscriber = Callable[[Session, OutboxMessage], None]


@dataclass
class Registry:
    topics: dict[str, Topic] = field(default_factory=dict)
    periodic: dict[str, Periodic] = field(default_factory=dict)
    subscribers: dict[str, list[Subscriber]] = field(default_factory=dict)
    wake: threading.Event = field(default_factory=threading.Event)


def registry(app: Flask | None = None) -> Registry:
    app = app or current_app
    return app.extensions.setdefault("countersign.outbox", Registry())


def topic(
    app: Flask, name: str, handle: Handler, *, remote: bool,
    backoff: tuple[timedelta, ...] = BACKOFF,
) -> None:  # fmt: skip
    """Register the one handler of ``name`` messages (a package does this in its ``init_app``)."""
    topics = registry(app).topics
    if name in topics:
        raise ValueError(f"outbox topic {name!r} already has a handler")
    topics[name] = Topic(name, handle, remote, backoff)


def subscribe(app: Flask, event: str, subscriber: Subscriber) -> None:
    """Have ``subscriber(session, message)`` called for every ``event`` message. An event with
    subscribers is handled by calling each in turn in one transaction with marking it done: a
    subscriber queues its own messages (a delivery per webhook, a grade per gradebook), so an event
    is fanned out exactly once, and a subscriber that fails makes the whole event wait and retry."""
    registry(app).subscribers.setdefault(event, []).append(subscriber)


def periodic(
    app: Flask, name: str, run: Callable[[Session, datetime], Any], every: timedelta
) -> None:
    """Register a job that falls due with time: ``run(session, now)`` once per ``every``, on one
    worker only, whichever gets there first."""
    registry(app).periodic[name] = Periodic(name, run, every)


def enqueue(
    session: Session, topic_name: str, payload: dict[str, Any], *, key: str | None = None,
    person_id: int | None = None, due_at: datetime | None = None,
) -> bool:  # fmt: skip
    """Queue a message in the caller's transaction; False when ``key`` is already queued."""
    now = utcnow()
    values = {
        "topic": topic_name, "key": key, "person_id": person_id, "payload": payload,
        "created_at": now, "due_at": due_at or now, "attempts": 0,
    }  # fmt: skip
    if key is None:
        session.add(OutboxMessage(**values))
        return True
    return insert_ignoring_conflict(session, OutboxMessage.__table__, values)


def publish(
    session: Session, event: str, payload: dict[str, Any], *, key: str | None = None,
    person_id: int | None = None,
) -> bool:  # fmt: skip
    """Queue an event for its subscribers in the caller's transaction; nothing when no package
    subscribes to it (an event only some schools use adds no rows where nobody listens). False
    when nothing was queued."""
    if not registry().subscribers.get(event):
        return False
    return enqueue(session, event, payload, key=key, person_id=person_id)


def enqueue_many(session: Session, topic_name: str, messages: list[dict[str, Any]]) -> None:
    """Queue many messages of one topic in one statement; each is ``{"payload", "key",
    "person_id"}``, and one whose key is already queued is left out."""
    if not messages:
        return
    from sqlalchemy.dialects import postgresql, sqlite

    now = utcnow()
    rows = [
        {"topic": topic_name, "key": m.get("key"), "person_id": m.get("person_id"),
         "payload": m["payload"], "created_at": now, "due_at": now, "attempts": 0}
        for m in messages
    ]  # fmt: skip
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(OutboxMessage).on_conflict_do_nothing(), rows)


def wake(app: Flask | None = None) -> None:
    """Tell a worker running in this process that there is something to do now."""
    registry(app).wake.set()


# --- the worker --------------------------------------------------------------------------------


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"[:100]


@dataclass
class Pass:
    """What one pass of the worker did."""

    done: int = 0
    retrying: int = 0
    gave_up: int = 0
    skipped: int = 0

    @property
    def handled(self) -> int:
        return self.done + self.retrying + self.gave_up


def _queue_periodic(session: Session, now: datetime) -> None:
    """One message per periodic job and time slot: the unique key makes it one across workers."""
    jobs = registry().periodic.values()
    if not jobs:
        return
    with writing(session):
        for job in jobs:
            seconds = int(job.every.total_seconds())
            slot = int(now.timestamp()) // seconds * seconds
            enqueue(session, PERIODIC, {"job": job.name, "at": now.isoformat()},
                    key=f"{PERIODIC}:{job.name}:{slot}", due_at=now)  # fmt: skip


def claim(session: Session, worker: str, limit: int, now: datetime, lease: timedelta) -> list[int]:
    """Take up to ``limit`` due messages for ``worker``, in a transaction of their own."""
    due = (
        select(OutboxMessage.id)
        .where(
            OutboxMessage.done_at.is_(None),
            OutboxMessage.gave_up_at.is_(None),
            OutboxMessage.due_at <= now,
            (OutboxMessage.claimed_until.is_(None)) | (OutboxMessage.claimed_until < now),
        )
        .order_by(OutboxMessage.due_at, OutboxMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite's writer lock serialises claims
    )
    with writing(session):
        ids = list(session.scalars(due))
        if ids:
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_(ids))
                .values(claimed_by=worker, claimed_until=now + lease)
            )
    return ids


def _record(
    session: Session, message: OutboxMessage, topic_: Topic, now: datetime,
    outcome: Exception | None, status: int | None,
) -> str:  # fmt: skip
    message.attempts += 1
    message.last_attempt_at = now
    message.claimed_by = message.claimed_until = None
    if outcome is None:
        message.done_at, message.last_status, message.last_error = now, status, None
        return "done"
    message.last_status = getattr(outcome, "status", None)
    message.last_error = (getattr(outcome, "error", None) or "failed")[:500]
    if isinstance(outcome, GiveUp) or message.attempts > len(topic_.backoff):
        message.gave_up_at = now
        return "gave_up"
    after = getattr(outcome, "after", None) or topic_.backoff[message.attempts - 1]
    message.due_at = now + after
    return "retrying"


def _process(session: Session, message_id: int, worker: str, now: datetime) -> str:
    topics = registry().topics
    message = session.get(OutboxMessage, message_id, populate_existing=True)
    if message is None or message.claimed_by != worker or message.done_at or message.gave_up_at:
        session.rollback()
        return "skipped"  # another worker took it over after this one's lease ran out
    found = topics.get(message.topic)
    if message.topic == PERIODIC:
        found = _periodic_topic()
    elif found is None and message.topic in registry().subscribers:
        found = _fan_out_topic(message.topic)
    if found is None:  # an event nobody listens to (yet): nothing to do
        found = Topic(message.topic, lambda _session, _message: None, remote=False)
    if found.remote:
        session.commit()  # no transaction open while another system answers
        outcome, status = _handle(found, session, message, session.commit, session.rollback)
        with writing(session):
            message = session.get_one(OutboxMessage, message_id, populate_existing=True)
            if message.claimed_by != worker:
                return "skipped"
            return _record(session, message, found, utcnow(), outcome, status)
    session.commit()
    with writing(session):
        message = session.get_one(OutboxMessage, message_id, populate_existing=True)
        if message.claimed_by != worker:
            return "skipped"
        savepoint = session.begin_nested()
        outcome, status = _handle(found, session, message, savepoint.commit, savepoint.rollback)
        return _record(session, message, found, utcnow(), outcome, status)


def _handle(
    found: Topic, session: Session, message: OutboxMessage,
    keep: Callable[[], Any], undo: Callable[[], Any],
) -> tuple[Exception | None, int | None]:  # fmt: skip
    """Run the handler; keep its writes when it succeeds, undo them when it fails. Returns the
    failure (None when it succeeded) and the status code it reported."""
    try:
        status = found.handle(session, message)
        keep()
        return None, status
    except (Retry, GiveUp) as exc:
        undo()
        return exc, None
    except Exception as exc:
        undo()
        log.exception("outbox message %s (%s) failed", message.id, message.topic)
        return Retry(f"failed: {type(exc).__name__}"), None


def _fan_out_topic(name: str) -> Topic:
    def fan_out(session: Session, message: OutboxMessage) -> None:
        for subscriber in registry().subscribers[name]:
            subscriber(session, message)

    return Topic(name, fan_out, remote=False)


def _periodic_topic() -> Topic:
    def run(session: Session, message: OutboxMessage) -> None:
        job = registry().periodic.get(message.payload.get("job", ""))
        if job is None:
            raise GiveUp("no such job")
        # The moment the slot began (a pass run for a later moment, in tests, runs jobs then).
        at = message.payload.get("at")
        job.run(session, max(datetime.fromisoformat(at), utcnow()) if at else utcnow())

    return Topic(PERIODIC, run, remote=True, backoff=(timedelta(minutes=1),))


def run_once(
    worker: str | None = None, *, limit: int = BATCH, now: datetime | None = None,
    lease: timedelta | None = None,
) -> Pass:  # fmt: skip
    """One pass: queue what time has made due, then claim and handle due messages until none are
    left (or ``limit`` per claim, repeatedly). Returns what was done."""
    worker = worker or worker_name()
    lease = lease or timedelta(seconds=int(current_app.config.get("WORKER_LEASE_SECONDS", 300)))
    session = db.session
    result = Pass()
    _queue_periodic(session, now or utcnow())
    while True:
        ids = claim(session, worker, limit, now or utcnow(), lease)
        if not ids:
            return result
        for message_id in ids:
            try:
                outcome = _process(session, message_id, worker, now or utcnow())
            except Exception:  # bookkeeping itself failed (the database went away): lease expires
                session.rollback()
                log.exception("outbox message %s could not be processed", message_id)
                outcome = "skipped"
            if outcome == "done":
                result.done += 1
            elif outcome == "retrying":
                result.retrying += 1
            elif outcome == "gave_up":
                result.gave_up += 1
            else:
                result.skipped += 1


def run_forever(app: Flask, poll_seconds: float = 5.0) -> None:
    """``flask worker``: passes until SIGTERM or SIGINT, sleeping between them unless woken."""
    stop = threading.Event()
    events = registry(app).wake

    def _stop(*_: Any) -> None:
        stop.set()
        events.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    worker = worker_name()
    log.info("worker %s started", worker)
    while not stop.is_set():
        with app.app_context():
            try:
                result = run_once(worker)
                if result.handled:
                    log.info(
                        "worker: %d done, %d to retry, %d given up",
                        result.done, result.retrying, result.gave_up,
                    )  # fmt: skip
            except Exception:
                log.exception("worker pass failed; trying again shortly")
        events.wait(poll_seconds)
        events.clear()
    log.info("worker %s stopped", worker)


def backlog(session: Session) -> dict[str, dict[str, int]]:
    """Per topic: messages queued, retrying, sent and failed (for the admin pages)."""
    done = OutboxMessage.done_at.is_not(None)
    gave_up = OutboxMessage.gave_up_at.is_not(None)
    rows = session.execute(
        select(OutboxMessage.topic, done, gave_up, OutboxMessage.attempts, func.count()).group_by(
            OutboxMessage.topic, done, gave_up, OutboxMessage.attempts
        )
    ).all()
    counts: dict[str, dict[str, int]] = {}
    for name, done, gave_up, tried, n in rows:
        state = "sent" if done else "failed" if gave_up else "retrying" if tried else "queued"
        bucket = counts.setdefault(name, {"queued": 0, "retrying": 0, "sent": 0, "failed": 0})
        bucket[state] += n
    return counts


def prune(session: Session, now: datetime) -> int:
    """Forget finished messages: a periodic job's after a day, the rest after ``OUTBOX_KEEP_DAYS``
    (90 by default: the admin pages show what was sent, failed and retried in that time)."""
    from sqlalchemy import delete

    keep = timedelta(days=int(current_app.config.get("OUTBOX_KEEP_DAYS", 90)))
    finished = (OutboxMessage.done_at.is_not(None)) | (OutboxMessage.gave_up_at.is_not(None))
    with writing(session):
        periodic_done = session.execute(
            delete(OutboxMessage).where(
                OutboxMessage.topic == PERIODIC,
                finished,
                OutboxMessage.created_at < now - timedelta(days=1),
            )  # fmt: skip
        ).rowcount
        old = session.execute(
            delete(OutboxMessage).where(finished, OutboxMessage.created_at < now - keep)
        ).rowcount
    return (periodic_done or 0) + (old or 0)


def init_app(app: Flask) -> None:
    periodic(app, "outbox.prune", prune, timedelta(hours=1))
