"""The API tokens and webhooks a person created, in their data; what erasure removes here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from api.models import ApiToken, Webhook
from core.outbox import OutboxMessage
from people.personal_data import Erasure, Export, iso


def api_tokens_created(request: Export) -> list[dict[str, Any]]:
    return [
        {
            "name": t.name,
            "prefix": t.prefix,
            "scopes": t.scopes,
            "created_at": iso(t.created_at),
            "last_used_at": iso(t.last_used_at),
            "revoked_at": iso(t.revoked_at),
        }
        for t in request.session.scalars(
            select(ApiToken)
            .where(ApiToken.created_by_id == request.person.id)
            .order_by(ApiToken.id)
        )
    ]


def webhooks_created(request: Export) -> list[dict[str, Any]]:
    return [
        {"url": w.url, "active": w.active, "created_at": iso(w.created_at)}
        for w in request.session.scalars(
            select(Webhook).where(Webhook.created_by_id == request.person.id).order_by(Webhook.id)
        )
    ]


def messages_about(request: Export) -> list[dict[str, Any]]:
    """What Countersign sent, or meant to send, about the person: each outbox message, with its
    kind and what became of it (the webhook events themselves name the person as sent)."""
    return [
        {
            "kind": m.topic,
            "created_at": iso(m.created_at),
            "state": m.state,
            "attempts": m.attempts,
            "done_at": iso(m.done_at),
            **({"event": m.payload.get("event")} if m.topic == "webhook" else {}),
        }
        for m in request.session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.person_id == request.person.id)
            .order_by(OutboxMessage.id)
        )
    ]


def erase_from_deliveries(erasure: Erasure) -> None:
    # Webhook deliveries keep the event as sent, which names the person.
    for delivery in erasure.session.scalars(
        select(OutboxMessage).where(
            OutboxMessage.topic == "webhook", OutboxMessage.person_id == erasure.person_id
        )
    ):
        event = delivery.payload["event"]
        data = event["data"]
        person = {**data["person"], "name": erasure.new_name, "email": erasure.new_email}
        delivery.payload = {
            **delivery.payload,
            "event": {**event, "data": {**data, "person": person}},
        }
