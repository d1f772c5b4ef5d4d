"""A person's second factors in their data (the methods, never their secrets); erasure removes
them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select

from mfa.models import PasskeyChallenge, RecoveryCode, SecondFactor
from people.personal_data import Erasure, Export, iso


def second_factor(request: Export) -> dict[str, Any]:
    session, pid = request.session, request.person.id
    return {
        "methods": [
            {
                "method": factor.method_name,
                "label": factor.label,
                "set_up_at": iso(factor.created_at),
                "last_used_at": iso(factor.last_used_at),
            }
            for factor in session.scalars(
                select(SecondFactor).where(SecondFactor.person_id == pid).order_by(SecondFactor.id)
            )
        ],
        "recovery_codes_left": session.scalar(
            select(func.count())
            .select_from(RecoveryCode)
            .where(RecoveryCode.person_id == pid, RecoveryCode.used_at.is_(None))
        ),
    }


def erase(erasure: Erasure) -> None:
    for model in (SecondFactor, RecoveryCode, PasskeyChallenge):
        erasure.session.execute(delete(model).where(model.person_id == erasure.person_id))
