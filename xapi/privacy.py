"""The xAPI statements about a person, as sent (or waiting to be sent) to the Learning Record
Store, in their data; erasure rewrites them under the pseudonym."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from core.outbox import OutboxMessage
from people.personal_data import Erasure, Export, iso
from xapi import statements as xs
from xapi.outbox import STATEMENT, statements


def xapi_statements(request: Export) -> list[dict[str, Any]]:
    return [
        {
            "statement_id": s.statement_id,
            "verb": s.verb,
            "statement": s.payload,
            "queued_at": iso(s.created_at),
            "sent_at": iso(s.sent_at),
            "gave_up_at": iso(s.gave_up_at),
        }
        for s in statements(request.session, request.person.id)
    ]


def erase_statements(erasure: Erasure) -> None:
    """The person's statements, sent or not, name them by their pseudonym from now on (statements
    already sent are the LRS's records: erasing them there is the LRS's own process). Statements
    not yet built from their evidence name the pseudonym when they are (``xapi.outbox``)."""
    actor = xs.agent(xs.Actor(name=erasure.new_name, email=erasure.new_email))
    for message in erasure.session.scalars(
        select(OutboxMessage).where(
            OutboxMessage.topic == STATEMENT, OutboxMessage.person_id == erasure.person_id
        )
    ):
        statement = {**message.payload["statement"], "actor": actor}
        message.payload = {**message.payload, "statement": statement}
