"""Webhooks: tell other systems when someone's trained status changes.

Each person's last announced status per policy is kept (``StatusSnapshot``); after anything that may
change a status, the rule is asked again and every difference becomes an event, queued for each
active webhook. Deliveries are POSTed as JSON signed with HMAC-SHA256 of the body under the
webhook's secret, and retried with back-off until they succeed or give up. ``flask webhooks run``
(from cron, every minute) retries what is due and notices expiries, which no request announces.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from api.models import StatusSnapshot, Webhook, WebhookDelivery
from core.db import utcnow
from people.models import Person
from training.models import Policy
from training.publishing import current_version
from training.status import statuses_for

log = logging.getLogger("countersign.webhooks")
EVENT = "training_status.changed"
BACKOFF = [timedelta(minutes=m) for m in (1, 5, 30, 120, 720)]  # then give up
TIMEOUT_SECONDS = 10


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def create_webhook(session: Session, url: str, created_by_id: int | None) -> Webhook:
    url = url.strip()
    if not url.startswith(("https://", "http://")) or len(url) > 500 or " " in url:
        raise ValueError("Give the full address that receives events, starting https://.")
    webhook = Webhook(url=url, secret=secrets.token_urlsafe(32), created_by_id=created_by_id)
    session.add(webhook)
    session.flush()
    return webhook


def detect_changes(
    session: Session, person_ids: list[int] | None, now: datetime | None = None
) -> int:
    """Compare statuses with the last announced ones; queue an event for each change."""
    now = now or utcnow()
    hooks = session.scalars(select(Webhook).where(Webhook.active.is_(True))).all()
    query = select(Person).options(selectinload(Person.role_rows))
    if person_ids is not None:
        query = query.where(Person.id.in_(person_ids))
    people = session.scalars(query).all()
    queued = 0
    for policy in session.scalars(select(Policy)):
        version = current_version(session, policy, now.date())
        if version is None or not people:
            continue
        statuses = statuses_for(session, list(people), policy, now)
        known = {
            s.person_id: s
            for s in session.scalars(
                select(StatusSnapshot).where(
                    StatusSnapshot.policy_id == policy.id,
                    StatusSnapshot.person_id.in_([p.id for p in people]),
                )
            )
        }
        for person in people:
            status = statuses[person.id]
            snapshot = known.get(person.id)
            if snapshot is not None and snapshot.trained == status.trained:
                continue
            if snapshot is None:
                session.add(
                    StatusSnapshot(
                        person_id=person.id, policy_id=policy.id, trained=status.trained, at=now
                    )
                )
                if not status.trained:
                    continue  # someone new and untrained: nothing has changed yet
            else:
                snapshot.trained, snapshot.at = status.trained, now
            payload = {
                "id": str(uuid.uuid4()),
                "type": EVENT,
                "occurred_at": now.isoformat().replace("+00:00", "Z"),
                "data": {
                    "person": {"id": person.id, "email": person.email, "name": person.name},
                    "policy": {"slug": policy.slug, "version": status.version},
                    "trained": status.trained,
                    "valid_until": status.valid_until.isoformat().replace("+00:00", "Z")
                    if status.valid_until
                    else None,
                    "missing": [{"module": m.module, "reason": m.reason} for m in status.missing],
                },
            }
            for hook in hooks:
                session.add(
                    WebhookDelivery(
                        webhook_id=hook.id,
                        event_id=payload["id"],
                        payload=payload,
                        created_at=now,
                        next_attempt_at=now,
                        attempts=0,
                    )  # fmt: skip
                )
                queued += 1
    session.flush()
    return queued


def deliver_due(session: Session, now: datetime | None = None, limit: int = 100) -> int:
    """Attempt every delivery that is due; returns how many succeeded."""
    now = now or utcnow()
    due = session.scalars(
        select(WebhookDelivery)
        .where(
            WebhookDelivery.delivered_at.is_(None),
            WebhookDelivery.gave_up_at.is_(None),
            WebhookDelivery.next_attempt_at <= now,
        )
        .order_by(WebhookDelivery.id)
        .limit(limit)
    ).all()
    ok = 0
    for delivery in due:
        ok += _attempt(session, delivery, now)
        session.commit()
    return ok


def _attempt(session: Session, delivery: WebhookDelivery, now: datetime) -> bool:
    hook = session.get(Webhook, delivery.webhook_id)
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    request = urllib.request.Request(
        hook.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "Countersign-Webhooks/1",
            "X-Countersign-Event": delivery.payload["type"],
            "X-Countersign-Delivery": str(delivery.id),
            "X-Countersign-Signature": sign(hook.secret, body),
        },
    )
    delivery.attempts += 1
    delivery.last_attempt_at = now
    try:
        # add_webhook accepts only http:// and https:// addresses, never file: or others.
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # nosec B310
            delivery.last_status = response.status
        delivery.delivered_at = now
        delivery.last_error = None
        return True
    except urllib.error.HTTPError as exc:
        delivery.last_status, delivery.last_error = exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        delivery.last_status, delivery.last_error = None, str(getattr(exc, "reason", exc))[:500]
    if delivery.attempts > len(BACKOFF):
        delivery.gave_up_at = now
    else:
        delivery.next_attempt_at = now + BACKOFF[delivery.attempts - 1]
    return False


def init_app(app: Flask) -> None:
    """Listen for status changes; queue events and make the first delivery attempt at once."""
    from core.db import db
    from core.events import status_may_change

    def on_change(sender: Flask, person_ids: list[int] | None, **_: Any) -> None:
        if sender is not app:
            return
        session = db.session
        if not session.scalar(select(Webhook.id).where(Webhook.active.is_(True)).limit(1)):
            return
        from core.db import writing

        with writing(session):
            queued = detect_changes(session, person_ids)
        if queued and not app.config.get("WEBHOOKS_SYNC"):
            threading.Thread(target=_deliver_in_background, args=(app,), daemon=True).start()
        elif queued:
            deliver_due(session)

    status_may_change.connect(on_change, weak=False)


def _deliver_in_background(app: Flask) -> None:
    from core.db import db

    with app.app_context():
        try:
            deliver_due(db.session)
        except Exception:  # a failed delivery is retried by `flask webhooks run`
            log.exception("webhook delivery failed")
