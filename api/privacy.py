"""The API tokens and webhooks a person created, in their data; what erasure removes here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select

from api.models import ApiToken, PrecomputedStatus, Webhook, WebhookDelivery
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


def erase_stored_answers(erasure: Erasure) -> None:
    # Derived answers hold the name and email in their JSON; they are rebuilt on the next lookup.
    erasure.session.execute(
        delete(PrecomputedStatus).where(PrecomputedStatus.person_id == erasure.person_id)
    )


def erase_from_deliveries(erasure: Erasure) -> None:
    # Webhook deliveries keep the event as sent, which names the person.
    session = erasure.session
    about_them = [
        delivery_id
        for delivery_id, payload in session.execute(
            select(WebhookDelivery.id, WebhookDelivery.payload)
        )
        if ((payload.get("data") or {}).get("person") or {}).get("id") == erasure.person_id
    ]
    for delivery in session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.id.in_(about_them))
    ):
        data = delivery.payload["data"]
        person = {**data["person"], "name": erasure.new_name, "email": erasure.new_email}
        delivery.payload = {**delivery.payload, "data": {**data, "person": person}}
