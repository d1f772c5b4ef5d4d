"""The xAPI statements about a person, as sent (or waiting to be sent) to the Learning Record
Store, in their data. Erasure rewrites them under the pseudonym (``xapi.outbox.redact``, run when
the person's row is erased)."""

from __future__ import annotations

from typing import Any

from people.personal_data import Export, iso
from xapi.outbox import statements


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
