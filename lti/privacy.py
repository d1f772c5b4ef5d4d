"""A person's accounts on learning platforms, in their data; erasure unlinks them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select

from core.outbox import OutboxMessage
from lti.grades import SCORE
from lti.models import LtiGradeLink, LtiIdentity, LtiLinkRequest, LtiPlatform
from people.personal_data import Erasure, Export, iso


def learning_platform_accounts(request: Export) -> list[dict[str, Any]]:
    session = request.session
    return [
        {
            "platform": name,
            "platform_user_id": identity.subject,
            "linked_at": iso(identity.created_at),
            "last_launch_at": iso(identity.last_launch_at),
            "grades_sent_to": [
                {"course": course, "line_item": lineitem}
                for course, lineitem in session.execute(
                    select(LtiGradeLink.context_title, LtiGradeLink.lineitem_url)
                    .where(LtiGradeLink.identity_id == identity.id)
                    .order_by(LtiGradeLink.id)
                )
            ],
        }
        for identity, name in session.execute(
            select(LtiIdentity, LtiPlatform.name)
            .join(LtiPlatform, LtiIdentity.platform_id == LtiPlatform.id)
            .where(LtiIdentity.person_id == request.person.id)
            .order_by(LtiIdentity.id)
        )
    ]


def erase(erasure: Erasure) -> None:
    # The LMS's id for them (and where their grades went): a later launch links to nobody.
    erasure.session.execute(delete(LtiIdentity).where(LtiIdentity.person_id == erasure.person_id))
    erasure.session.execute(
        delete(LtiLinkRequest).where(LtiLinkRequest.person_id == erasure.person_id)
    )
    # The scores sent (or waiting) to their gradebooks go with the links they were for.
    erasure.session.execute(
        delete(OutboxMessage).where(
            OutboxMessage.topic == SCORE, OutboxMessage.person_id == erasure.person_id
        )
    )
