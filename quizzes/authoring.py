"""For authors (SLT and administrators): each bank with its answer key, and how questions fare."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from quizzes.models import QuizAttempt, QuizSubmission
from quizzes.versions import drawn_of
from training.models import Module, ModuleVersion


@dataclass(frozen=True)
class ItemStats:
    key: str
    answered: int  # submitted attempts that drew this question
    wrong: int

    @property
    def wrong_rate(self) -> float:
        return self.wrong / self.answered if self.answered else 0.0


def item_statistics(session: Session, module: Module) -> dict[str, ItemStats]:
    """How often each question (by its id, across editions of the bank) was answered wrongly."""
    rows = session.execute(
        select(QuizAttempt.question_refs, QuizSubmission.answers)
        .join(QuizSubmission, QuizSubmission.attempt_id == QuizAttempt.id)
        .join(ModuleVersion, ModuleVersion.id == QuizAttempt.module_version_id)
        .where(ModuleVersion.module_id == module.id)
    ).all()
    asked = drawn_of(session, [refs for refs, _ in rows])
    answered: dict[str, int] = {}
    wrong: dict[str, int] = {}
    for drawn, (_, answers) in zip(asked, rows, strict=True):
        for q in drawn:
            key = q["key"]
            right = sorted(o["id"] for o in q["options"] if o["correct"])
            answered[key] = answered.get(key, 0) + 1
            if sorted(answers.get(key, [])) != right:
                wrong[key] = wrong.get(key, 0) + 1
    return {key: ItemStats(key, n, wrong.get(key, 0)) for key, n in answered.items()}
