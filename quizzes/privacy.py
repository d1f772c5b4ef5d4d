"""The quiz attempts in a person's data: what they were asked, what they answered, how it went."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from people.personal_data import Export, iso
from quizzes.models import QuizAttempt, QuizSubmission
from quizzes.versions import drawn_of
from training.privacy import module_of, module_titles


def quiz_attempts(request: Export) -> list[dict[str, Any]]:
    titles = module_titles(request)
    attempts = []
    taken = request.session.execute(
        select(QuizAttempt, QuizSubmission)
        .outerjoin(QuizSubmission, QuizSubmission.attempt_id == QuizAttempt.id)
        .where(QuizAttempt.person_id == request.person.id)
        .order_by(QuizAttempt.started_at, QuizAttempt.id)
    ).all()
    # The questions each attempt asked, every question version read once.
    asked = drawn_of(request.session, [attempt.question_refs for attempt, _ in taken])
    for (attempt, submission), drawn in zip(taken, asked, strict=True):
        questions = []
        for q in drawn:
            options = []
            for o in q["options"]:
                option = {"id": o["id"], "text": o["text"]}
                # The answer key only where the person's own review shows it.
                if attempt.show_answers and submission is not None:
                    option["correct"] = bool(o.get("correct"))
                options.append(option)
            questions.append(
                {
                    "key": q["key"],
                    "type": q["type"],
                    "scenario": q.get("scenario", ""),
                    "prompt": q["prompt"],
                    "options": options,
                    "answer_given": (submission.answers.get(q["key"], []) if submission else None),
                }
            )
        attempts.append(
            {
                **module_of(titles, attempt.module_version_id),
                "attempt": attempt.public_id,
                "started_at": iso(attempt.started_at),
                "pass_mark": attempt.pass_mark,
                "submitted_at": iso(submission.submitted_at) if submission else None,
                "correct": submission.correct if submission else None,
                "total": submission.total if submission else None,
                "score": submission.score if submission else None,
                "passed": submission.passed if submission else None,
                "questions": questions,
            }
        )
    return attempts
