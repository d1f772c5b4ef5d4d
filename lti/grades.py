"""Grade return (LTI Assignment and Grade Services): the LMS gradebook shows each person's progress,
and 1.0 once they are trained.

Each ``status.changed`` event (:mod:`training.status_store`) works out the person's score on each
line item they launched from, from the event's new standing (the rule is not asked again); a
changed score is queued in the outbox (``lti.score``), and the worker posts it to the platform,
retried with the outbox's back-off until it is accepted or given up. A newer score replaces one not
yet sent, since the platform keeps only the latest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from flask import Flask
from pylti1p3.assignments_grades import AssignmentsGradesService
from pylti1p3.exception import LtiException, LtiServiceException
from pylti1p3.grade import Grade
from pylti1p3.lineitem import LineItem
from pylti1p3.service_connector import ServiceConnector
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.db import utcnow, writing
from core.outbox import GiveUp, OutboxMessage, Retry, enqueue, subscribe, topic
from lti.launch import http_session, registration_for, service_url_ok
from lti.models import LtiGradeLink, LtiIdentity, LtiPlatform
from people.models import Person
from training.models import Policy
from training.status import Status
from training.status_store import STATUS_CHANGED, current_many

log = logging.getLogger("countersign.lti")
BACKOFF = tuple(timedelta(minutes=m) for m in (1, 5, 30, 120, 720))  # then give up
MAX_LINEITEM_PAGES = 20
REPLACED = "Replaced by a newer score before it was sent."


def score_for(status: Status) -> tuple[float, str, str]:
    """(score, activity progress, grading progress): 1.0 when trained, else the share of the
    steps done (each required module, then signing), never 1.0."""
    return score_from(
        trained=status.trained, required=len(status.modules), completed=status.completed_count,
        acknowledged=status.acknowledged_at is not None,
    )  # fmt: skip


def score_from(
    *, trained: bool, required: int, completed: int, acknowledged: bool
) -> tuple[float, str, str]:
    if trained:
        return 1.0, "Completed", "FullyGraded"
    steps = required + 1
    done = completed + (1 if acknowledged else 0)
    share = min(round(done / steps, 4), 0.99)
    return share, ("Initialized" if done == 0 else "InProgress"), "Pending"


SCORE = "lti.score"


@dataclass(frozen=True)
class ScorePost:
    """A score message as the administrators' page shows it."""

    id: int
    link_id: int | None
    score: float
    activity_progress: str
    grading_progress: str
    created_at: datetime
    attempts: int
    last_status: int | None
    last_error: str | None
    sent_at: datetime | None
    gave_up_at: datetime | None
    next_attempt_at: datetime

    @classmethod
    def of(cls, message: OutboxMessage) -> ScorePost:
        p = message.payload
        return cls(
            message.id, p.get("link_id"), p["score"], p["activity"], p["grading"],
            message.created_at, message.attempts, message.last_status, message.last_error,
            message.done_at, message.gave_up_at, message.due_at,
        )  # fmt: skip


def _unsent(session: Session, link: LtiGradeLink) -> list[OutboxMessage]:
    return [
        m
        for m in session.scalars(
            select(OutboxMessage).where(
                OutboxMessage.topic == SCORE,
                OutboxMessage.person_id == link.person_id,
                OutboxMessage.done_at.is_(None),
                OutboxMessage.gave_up_at.is_(None),
            )
        )
        if m.payload.get("link_id") == link.id
    ]


def _queue(
    session: Session, link: LtiGradeLink, score: tuple[float, str, str], now: datetime
) -> bool:
    """Queue ``score`` for ``link`` unless it is the score last queued; a newer score replaces
    one not yet sent (the platform keeps only the latest)."""
    value, activity, grading = score
    if link.last_score == value:
        return False
    for older in _unsent(session, link):
        older.gave_up_at, older.last_error = now, REPLACED
    enqueue(
        session, SCORE,
        {"link_id": link.id, "score": value, "activity": activity, "grading": grading,
         "at": now.isoformat()},
        person_id=link.person_id,
    )  # fmt: skip
    link.last_score = value
    return True


def queue_scores(
    session: Session, person_ids: list[int] | None, now: datetime | None = None
) -> int:
    """Queue a score for every grade link (of these people) whose score has changed, from the
    stored answers; returns how many."""
    now = now or utcnow()
    query = select(LtiGradeLink)
    if person_ids is not None:
        query = query.where(LtiGradeLink.person_id.in_(person_ids))
    links = session.scalars(query.order_by(LtiGradeLink.id)).all()
    queued = 0
    by_policy: dict[int, list[LtiGradeLink]] = {}
    for link in links:
        by_policy.setdefault(link.policy_id, []).append(link)
    for policy_id, policy_links in by_policy.items():
        policy = session.get(Policy, policy_id)
        people = session.scalars(
            select(Person).where(Person.id.in_({link.person_id for link in policy_links}))
        ).all()
        try:
            statuses = current_many(session, list(people), policy, now)
        except LookupError:  # nothing published yet
            continue
        for link in policy_links:
            status = statuses[link.person_id]
            if status.required:
                queued += _queue(session, link, score_for(status), now)
    session.flush()
    return queued


def post_score(session: Session, message: OutboxMessage) -> int:
    """The worker's handler: post one score to its line item. No transaction is open while the
    platform is called; a line item found or made on the way is remembered on the link."""
    found = session.execute(
        select(LtiGradeLink, LtiIdentity, LtiPlatform, Policy)
        .join(LtiIdentity, LtiGradeLink.identity_id == LtiIdentity.id)
        .join(LtiPlatform, LtiIdentity.platform_id == LtiPlatform.id)
        .join(Policy, LtiGradeLink.policy_id == Policy.id)
        .where(LtiGradeLink.id == message.payload.get("link_id"))
    ).first()
    if found is None:
        raise GiveUp("The link to the platform no longer exists.")
    link, identity, platform, policy = found
    post = ScorePost.of(message)
    session.commit()
    error, status, lineitem = _post(post, link, identity, platform, policy, {})
    if lineitem and not link.lineitem_url and service_url_ok(lineitem, platform):
        with writing(session):
            session.execute(
                update(LtiGradeLink)
                .where(LtiGradeLink.id == link.id, LtiGradeLink.lineitem_url.is_(None))
                .values(lineitem_url=lineitem)
            )
    if error is not None:
        raise Retry(error, status)
    return status or 200


class GradeService(AssignmentsGradesService):
    """Reads a course's line items a bounded number of pages, all on the platform's own hosts."""

    def __init__(self, connector: ServiceConnector, data: Any, platform: LtiPlatform) -> None:
        super().__init__(connector, data)
        self.platform, self.pages = platform, 0

    def get_lineitems_page(self, lineitems_url: str | None = None) -> tuple[list, str | None]:
        self.pages += 1
        if self.pages > MAX_LINEITEM_PAGES:
            raise LtiException(
                f"The course's line items run to more than {MAX_LINEITEM_PAGES} pages."
            )
        url = lineitems_url or self._service_data["lineitems"]
        if not service_url_ok(url, self.platform):
            raise LtiException("The platform named a line item address on another host.")
        return super().get_lineitems_page(url)


def _post(
    post: ScorePost,
    link: LtiGradeLink,
    identity: LtiIdentity,
    platform: LtiPlatform,
    policy: Policy,
    connectors: dict[int, ServiceConnector],
) -> tuple[str | None, int | None, str | None]:
    """Send one score: (error or None, HTTP status, the line item's URL if it had to be found)."""
    lineitem = link.lineitem_url
    try:
        if not platform.active:
            raise LtiException("The platform's registration has been switched off.")
        connector = connectors.get(platform.id)
        if connector is None:
            connector = ServiceConnector(registration_for(platform, tool_key=True), http_session())
            connectors[platform.id] = connector
        data = {"scope": list(link.scopes), "lineitem": lineitem, "lineitems": link.lineitems_url}
        service = GradeService(connector, data, platform)
        if not lineitem:
            lineitem = _line_item(service, policy, link).get_id()
            if not service_url_ok(lineitem, platform):
                raise LtiException("The platform's line item is not on its own host.")
            service = GradeService(connector, {**data, "lineitem": lineitem}, platform)
        grade = (
            Grade()
            .set_score_given(post.score)
            .set_score_maximum(1)
            .set_activity_progress(post.activity_progress)
            .set_grading_progress(post.grading_progress)
            .set_timestamp(post.created_at.isoformat(timespec="milliseconds"))
            .set_user_id(identity.subject)
        )
        service.put_grade(grade)
        return None, 200, lineitem
    except LtiServiceException as exc:
        status = exc.response.status_code
        return f"HTTP {status}: {exc.response.text[:300]}", status, lineitem
    except (LtiException, requests.RequestException) as exc:
        return (str(exc)[:500] or type(exc).__name__), None, lineitem
    except Exception as exc:  # an answer of a shape nobody foresaw must not stop the others
        log.exception("grade post %s failed", post.id)
        return f"Unexpected answer from the platform ({type(exc).__name__})", None, lineitem


def _line_item(service: AssignmentsGradesService, policy: Policy, link: LtiGradeLink) -> Any:
    """The activity's line item when the launch named only the course's list: found by its tag,
    else created."""
    wanted = (
        LineItem()
        .set_label(f"{policy.title} training")
        .set_score_maximum(1)
        .set_tag(f"countersign:{policy.slug}")
        .set_resource_id(policy.slug)
        .set_resource_link_id(link.resource_link_id)
    )
    return service.find_or_create_lineitem(wanted, find_by="tag")


def retry_failed(session: Session, now: datetime | None = None) -> int:
    """Make scores that failed or were given up due now (not those a newer score replaced)."""
    now = now or utcnow()
    result = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.topic == SCORE,
            OutboxMessage.done_at.is_(None),
            OutboxMessage.last_error.is_not(None),
            OutboxMessage.last_error != REPLACED,
        )
        .values(gave_up_at=None, due_at=now, claimed_by=None, claimed_until=None)
    )
    return result.rowcount or 0


def failing(session: Session) -> int:
    """Scores not accepted yet after at least one try (not those a newer one replaced)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(
                OutboxMessage.topic == SCORE,
                OutboxMessage.done_at.is_(None),
                OutboxMessage.last_error.is_not(None),
                OutboxMessage.last_error != REPLACED,
            )
        )
        or 0
    )


def recent(session: Session, limit: int = 50) -> list[ScorePost]:
    """The latest score messages, newest first."""
    return [
        ScorePost.of(m)
        for m in session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.topic == SCORE)
            .order_by(OutboxMessage.id.desc())
            .limit(limit)
        )
    ]


def queue_for(session: Session, person_ids: list[int]) -> int:
    """Queue these people's changed scores (the worker posts them)."""
    if not session.scalar(
        select(LtiGradeLink.id).where(LtiGradeLink.person_id.in_(person_ids)).limit(1)
    ):
        return 0
    return queue_scores(session, person_ids)


def on_status_changed(session: Session, message: OutboxMessage) -> None:
    """The person's score on each line item of this policy, from the event's new standing."""
    change = message.payload
    new = change["new"]
    if not new["required"]:
        return
    links = session.scalars(
        select(LtiGradeLink).where(
            LtiGradeLink.person_id == change["person_id"],
            LtiGradeLink.policy_id == change["policy_id"],
        )
    ).all()
    score = score_from(
        trained=new["trained"], required=new["required"], completed=new["completed"],
        acknowledged=new["acknowledgement_id"] is not None,
    )  # fmt: skip
    now = utcnow()
    for link in links:
        _queue(session, link, score, now)
    session.flush()


def init_app(app: Flask) -> None:
    """Scores follow ``status.changed`` events; the worker posts each, with the one back-off."""
    subscribe(app, STATUS_CHANGED, on_status_changed)
    topic(app, SCORE, post_score, remote=True, backoff=BACKOFF)
