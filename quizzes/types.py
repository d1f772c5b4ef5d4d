"""The question types, in one registry: how each is checked when authored and graded when answered.

A type is a small object rather than a branch in the grader, so adding one (or finding how one
behaves) means looking in one place. Registering two types under one code fails at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    id: str
    text: str
    correct: bool


@dataclass(frozen=True)
class QuestionType:
    code: str
    label: str
    multiple_answers: bool  # checkboxes rather than radio buttons
    check: Callable[[Sequence[Option]], list[str]]  # problems with an authored question's options
    hint: str = ""  # shown to the learner under the prompt


QUESTION_TYPES: dict[str, QuestionType] = {}


def register(question_type: QuestionType) -> QuestionType:
    if question_type.code in QUESTION_TYPES:
        raise ValueError(f"question type {question_type.code!r} is registered twice")
    QUESTION_TYPES[question_type.code] = question_type
    return question_type


def _one_correct(options: Sequence[Option]) -> list[str]:
    correct = sum(o.correct for o in options)
    if correct == 0:
        return ["no option is marked 'correct: true'"]
    if correct > 1:
        return [f"{correct} options are marked correct; this type has exactly one right answer"]
    return []


def _several_correct(options: Sequence[Option]) -> list[str]:
    correct = sum(o.correct for o in options)
    problems = []
    if correct == 0:
        problems.append("no option is marked 'correct: true'")
    elif correct == 1:
        problems.append("only one option is correct; use type 'single' for one right answer")
    if correct == len(options):
        problems.append("every option is correct; include at least one wrong option")
    return problems


register(QuestionType("single", "Single choice", False, _one_correct, "Choose one answer."))
register(
    QuestionType(
        "multiple", "Select all that apply", True, _several_correct, "Select all that apply."
    )
)
register(QuestionType("true_false", "True or false", False, _one_correct, "True or false?"))
register(QuestionType("scenario", "Scenario", False, _one_correct, "Choose one answer."))


def is_right(options: Sequence[Option], selected: set[str]) -> bool:
    """All or nothing: exactly the correct options, whatever the type."""
    return selected == {o.id for o in options if o.correct}
