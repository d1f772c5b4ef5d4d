"""xAPI statements: queued in the one outbox from the events that announce evidence, sent to
the LRS by the worker with its back-off.

Reading, quizzes and signing record their evidence and announce it themselves: each really
inserted read receipt, quiz submission and acknowledgement is one ``evidence.recorded`` event
(:mod:`training.evidence`), in the same transaction, so a double submit that records nothing
announces nothing. This package subscribes to that event (only when an LRS is configured, so a
school without one queues no events at all) and, in the worker, turns each into its statement,
timed by the evidence row. Becoming trained arrives as a ``status.changed`` event
(:mod:`training.status_store`), as for webhooks: each acknowledgement that made a person trained
gets one "completed" statement.

Each statement is one ``xapi.statement`` message in the outbox (:mod:`core.outbox`), keyed by the
evidence it reports, so the same statement is never queued twice. The worker PUTs each under its
own statement id, so sending one twice, whether from two workers or after an answer that never
arrived, stores it once. Failures are retried after 1, 5, 30, 120 and 720 minutes, then given up;
an administrator can make given-up statements due again from /admin/xapi/.

An erased person's statements are rewritten under their pseudonym by the erasure itself
(:mod:`xapi.privacy`, registered with the personal-data registry).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, current_app
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from core.config import xapi_endpoint_allowed
from core.db import utcnow
from core.outbox import OutboxMessage, Retry, backlog, enqueue, subscribe, topic
from people.models import Person
from quizzes.models import QuizAttempt, QuizSubmission
from training import evidence
from training.models import (
    Acknowledgement,
    Module,
    ModuleVersion,
    Policy,
    PolicyVersion,
    ReadReceipt,
)
from training.publishing import current_version
from training.status_store import STATUS_CHANGED, current
from xapi import statements as xs

log = logging.getLogger("countersign.xapi")
BACKOFF = tuple(timedelta(minutes=m) for m in (1, 5, 30, 120, 720))  # then give up
TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class Lrs:
    """Where statements go: the LRS's xAPI endpoint (``…/statements`` is added) and credentials."""

    endpoint: str
    username: str = ""
    password: str = ""
    ca_file: str = ""

    @classmethod
    def from_config(cls, config: Any) -> Lrs | None:
        endpoint = (config.get("XAPI_ENDPOINT") or "").strip()
        if not endpoint:
            return None
        return cls(
            endpoint.rstrip("/"),
            config.get("XAPI_USERNAME") or "",
            config.get("XAPI_PASSWORD") or "",
            config.get("XAPI_CA_FILE") or "",
        )


def configured(app: Flask) -> bool:
    return Lrs.from_config(app.config) is not None


# --- queueing ------------------------------------------------------------------------------------


STATEMENT = "xapi.statement"


@dataclass(frozen=True)
class Statement:
    """A statement message as the administrators' page, the personal-data download and the tests
    read it."""

    id: int
    statement_id: str
    event_key: str
    person_id: int | None
    verb: str
    payload: dict
    created_at: datetime
    attempts: int
    last_status: int | None
    last_error: str | None
    sent_at: datetime | None
    gave_up_at: datetime | None
    next_attempt_at: datetime

    @classmethod
    def of(cls, message: OutboxMessage) -> Statement:
        p = message.payload
        return cls(
            message.id, p["statement_id"], (message.key or "").removeprefix(f"{STATEMENT}:"),
            message.person_id, p["verb"], p["statement"], message.created_at, message.attempts,
            message.last_status, message.last_error, message.done_at, message.gave_up_at,
            message.due_at,
        )  # fmt: skip


def statements(session: Session, person_id: int | None = None, *, unsent: bool = False,
               limit: int | None = None, newest_first: bool = False) -> list[Statement]:  # fmt: skip
    query = select(OutboxMessage).where(OutboxMessage.topic == STATEMENT)
    if person_id is not None:
        query = query.where(OutboxMessage.person_id == person_id)
    if unsent:
        query = query.where(OutboxMessage.done_at.is_(None))
    query = query.order_by(OutboxMessage.id.desc() if newest_first else OutboxMessage.id)
    if limit:
        query = query.limit(limit)
    return [Statement.of(m) for m in session.scalars(query)]


def queue(
    session: Session, event_key: str, person_id: int | None, verb: str, statement: dict
) -> bool:
    """Queue one statement in the outbox; False when one for the same event is already queued
    (the event's key is the message's unique key)."""
    return enqueue(
        session, STATEMENT, {"statement_id": statement["id"], "verb": verb, "statement": statement},
        key=f"{STATEMENT}:{event_key}", person_id=person_id,
    )  # fmt: skip


def _actor(person: Person) -> xs.Actor:
    return xs.Actor(name=person.name, email=person.email)


def _refs(
    session: Session, module_version_id: int
) -> tuple[Policy, xs.PolicyRef, xs.ModuleRef] | None:
    """The policy (with the label of its version in force) and the module of a module version."""
    row = session.execute(
        select(ModuleVersion.title, Module.slug, Policy)
        .join(Module, Module.id == ModuleVersion.module_id)
        .join(Policy, Policy.id == Module.policy_id)
        .where(ModuleVersion.id == module_version_id)
    ).one_or_none()
    if row is None:
        return None
    title, slug, policy = row
    version = current_version(session, policy)
    ref = xs.PolicyRef(policy.slug, policy.title, version.label if version else "")
    return policy, ref, xs.ModuleRef(slug, title)


def queue_read(session: Session, base_url: str, receipt: ReadReceipt) -> bool:
    refs = _refs(session, receipt.module_version_id)
    person = session.get(Person, receipt.person_id)
    if refs is None or person is None:
        return False
    _, policy, module = refs
    statement = xs.read_statement(
        str(uuid.uuid4()), receipt.at, _actor(person), base_url, policy, module
    )
    return queue(session, f"read:{receipt.id}", person.id, xs.READ, statement)


def queue_quiz(session: Session, base_url: str, submission: QuizSubmission) -> bool:
    attempt = session.get(QuizAttempt, submission.attempt_id)
    refs = _refs(session, attempt.module_version_id) if attempt else None
    person = session.get(Person, attempt.person_id) if attempt else None
    if refs is None or person is None:
        return False
    _, policy, module = refs
    statement = xs.quiz_statement(
        str(uuid.uuid4()), submission.submitted_at, _actor(person), base_url, policy, module,
        correct=submission.correct, total=submission.total, passed=submission.passed,
    )  # fmt: skip
    return queue(session, f"quiz:{attempt.id}", person.id, statement["verb"]["id"], statement)


def _policy_ref(session: Session, policy_version_id: int) -> xs.PolicyRef:
    version, policy = session.execute(
        select(PolicyVersion, Policy)
        .join(Policy, Policy.id == PolicyVersion.policy_id)
        .where(PolicyVersion.id == policy_version_id)
    ).one()
    return xs.PolicyRef(policy.slug, policy.title, version.label)


def queue_acknowledgement(session: Session, base_url: str, ack: Acknowledgement) -> bool:
    person = session.get(Person, ack.person_id)
    if person is None:
        return False
    policy = _policy_ref(session, ack.policy_version_id)
    statement = xs.acknowledgement_statement(
        str(uuid.uuid4()), ack.at, _actor(person), base_url, policy, ack.declaration
    )
    return queue(session, f"ack:{ack.id}", person.id, xs.ACCEPTED, statement)


def queue_completions(
    session: Session, base_url: str, person_ids: Iterable[int] | None, now: datetime | None = None
) -> int:
    """Queue "completed" for each reported acknowledgement that has made its signer trained.

    Only acknowledgements whose own statement is in the outbox are candidates, so turning xAPI on
    reports training done from then on, not a backlog of past completions without their steps.
    """
    now = now or utcnow()
    query = select(OutboxMessage.key, OutboxMessage.person_id).where(
        OutboxMessage.topic == STATEMENT,
        OutboxMessage.person_id.is_not(None),
        or_(
            OutboxMessage.key.like(f"{STATEMENT}:ack:%"),
            OutboxMessage.key.like(f"{STATEMENT}:completed:%"),
        ),
    )
    if person_ids is not None:
        query = query.where(OutboxMessage.person_id.in_(list(person_ids)))
    found = session.execute(query).all()
    completed = {key.rsplit(":", 1)[1] for key, _ in found if ":completed:" in key}
    acks = [
        (key.removeprefix(f"{STATEMENT}:"), person_id)
        for key, person_id in found
        if ":ack:" in key and key.rsplit(":", 1)[1] not in completed
    ]
    queued = 0
    for event_key, person_id in acks:
        ack = session.get(Acknowledgement, int(event_key.split(":", 1)[1]))
        person = session.get(Person, person_id)
        if ack is None or person is None:
            continue
        policy = session.get(Policy, ack.policy_version.policy_id)
        try:
            status = current(session, person, policy, now)
        except LookupError:
            continue
        if not status.trained or status.acknowledgement_id != ack.id:
            continue
        statement = xs.completion_statement(
            str(uuid.uuid4()), now, _actor(person), base_url,
            _policy_ref(session, ack.policy_version_id),
        )  # fmt: skip
        queued += queue(session, f"completed:{ack.id}", person.id, xs.COMPLETED, statement)
    return queued


# --- sending -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    stored: bool
    status: int | None
    error: str | None


@functools.lru_cache(maxsize=4)
def _tls_context(ca_file: str) -> ssl.SSLContext:
    """Certificate and host-name checks on, made once per trust setting (loading the system's
    store takes milliseconds, too long to repeat for every statement)."""
    return ssl.create_default_context(cafile=ca_file or None)


def put_statement(lrs: Lrs, statement_id: str, payload: dict) -> Outcome:
    """PUT one statement under its id. An LRS that already holds the id answers 204 (the same
    statement) or 409 (xAPI: a statement with that id exists); either way it is stored there, and
    as ids are made fresh for each event and never reused, what is stored is this statement."""
    if not xapi_endpoint_allowed(lrs.endpoint):
        return Outcome(
            False, None, "The xAPI endpoint must be https:// (plain http:// only to this machine)."
        )
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Countersign-xAPI/1",
        "X-Experience-API-Version": xs.VERSION,
    }
    if lrs.username or lrs.password:
        credentials = f"{lrs.username}:{lrs.password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    url = f"{lrs.endpoint}/statements?statementId={statement_id}"
    request = urllib.request.Request(url, data=body, method="PUT", headers=headers)
    try:
        # The scheme is checked above: only https:// (http:// to loopback), never file: or others.
        # The LRS's certificate and host name are checked (system store, or XAPI_CA_FILE).
        context = _tls_context(lrs.ca_file)
        with urllib.request.urlopen(  # nosec B310
            request, timeout=TIMEOUT_SECONDS, context=context
        ) as response:
            return Outcome(True, response.status, None)
    except urllib.error.HTTPError as exc:
        with exc:
            detail = exc.read(300).decode("utf-8", "replace")
        if exc.code == 409:
            return Outcome(True, 409, None)
        return Outcome(False, exc.code, f"HTTP {exc.code}: {detail}"[:500])
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return Outcome(False, None, str(getattr(exc, "reason", exc))[:500])


def send_statement(session: Session, message: OutboxMessage) -> int:
    """The worker's handler: PUT one statement to the LRS."""
    lrs = Lrs.from_config(current_app.config)
    if lrs is None:
        raise Retry("not sent: no Learning Record Store is configured")
    session.commit()  # nothing held open while the LRS answers
    outcome = put_statement(lrs, message.payload["statement_id"], message.payload["statement"])
    if not outcome.stored:
        raise Retry(outcome.error or "not stored", outcome.status)
    return outcome.status or 200


def retry_failed(session: Session, now: datetime | None = None) -> int:
    """Make every unsent statement that has failed (or been given up) due now, back-off reset."""
    now = now or utcnow()
    result = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.topic == STATEMENT,
            OutboxMessage.done_at.is_(None),
            or_(OutboxMessage.attempts > 0, OutboxMessage.gave_up_at.is_not(None)),
        )
        .values(gave_up_at=None, due_at=now, attempts=0, claimed_by=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


@dataclass(frozen=True)
class Counts:
    sent: int
    pending: int  # not yet tried
    failing: int  # tried, will be tried again
    given_up: int

    @property
    def total(self) -> int:
        return self.sent + self.pending + self.failing + self.given_up


def counts(session: Session) -> Counts:
    found = backlog(session).get(STATEMENT, {})
    return Counts(
        found.get("sent", 0), found.get("queued", 0), found.get("retrying", 0),
        found.get("failed", 0),
    )  # fmt: skip


# --- wiring --------------------------------------------------------------------------------------


def init_app(app: Flask) -> None:
    """Subscribe to new evidence (only with an LRS configured) and to status changes, and
    register the sender of statements."""
    if configured(app):
        subscribe(app, evidence.EVIDENCE_RECORDED, _on_evidence_recorded)
    subscribe(app, STATUS_CHANGED, _on_status_changed)
    topic(app, STATEMENT, send_statement, remote=True, backoff=BACKOFF)


def _lock_person(session: Session, person_id: int) -> Person | None:
    """The person as they are now, read under a key-share lock: an erasure (which locks the row
    for update) either has committed, so the statement names the pseudonym, or waits until this
    statement is queued, and then rewrites it too."""
    return session.scalar(
        select(Person)
        .where(Person.id == person_id)
        .with_for_update(read=True, key_share=True)
        .execution_options(populate_existing=True)
    )


def _on_evidence_recorded(session: Session, message: OutboxMessage) -> None:
    """New evidence: its statement, timed by the evidence row (not by when it is sent)."""
    if not configured(current_app):
        return
    base_url = current_app.config["BASE_URL"]
    event = message.payload
    if _lock_person(session, event["person_id"]) is None:
        return
    kind = event["kind"]
    if kind == evidence.READ:
        receipt = session.get(ReadReceipt, event["id"])
        if receipt is not None:
            queue_read(session, base_url, receipt)
    elif kind == evidence.QUIZ:
        submission = session.get(QuizSubmission, event["id"])
        if submission is not None:
            queue_quiz(session, base_url, submission)
    elif kind == evidence.ACKNOWLEDGEMENT:
        ack = session.get(Acknowledgement, event["id"])
        if ack is not None and queue_acknowledgement(session, base_url, ack):
            # The status.changed this signature caused may have been handled first (another
            # worker): completion is looked for here too, and queued once either way.
            queue_completions(session, base_url, [ack.person_id])


def _on_status_changed(session: Session, message: OutboxMessage) -> None:
    """Someone became trained: their acknowledgement's "completed" statement."""
    new = message.payload["new"]
    if not new["trained"] or not configured(current_app):
        return
    queue_completions(session, current_app.config["BASE_URL"], [message.payload["person_id"]])
