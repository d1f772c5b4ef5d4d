"""Read and validate a module's question bank (``NN-module.quiz.yaml`` beside ``NN-module.md``).

Problems are collected with file and line, like the rest of the content, so one ``flask content
check`` lists everything an author has to fix.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.yamldoc import Doc, Problem, read_text
from quizzes.types import QUESTION_TYPES, Option

ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
BANK_SUFFIX = ".quiz.yaml"


@dataclass(frozen=True)
class QuizRules:
    """How a module's quiz runs. Defaults are the manifest's ``quiz:`` section, then these."""

    draw: int = 5  # questions drawn per attempt
    pass_mark: int = 80  # percent
    shuffle: bool = True  # options in a new order each attempt
    attempts_before_cooldown: int = 3  # failed attempts in a row before a wait
    cooldown_minutes: int = 15
    show_answers: bool = True  # the review shows the right answers
    time_limit_minutes: int = 60  # an unfinished attempt expires after this


RULE_LIMITS: dict[str, tuple[int, int]] = {
    "draw": (1, 50),
    "pass_mark": (1, 100),
    "attempts_before_cooldown": (1, 100),
    "cooldown_minutes": (0, 7 * 24 * 60),
    "time_limit_minutes": (1, 24 * 60),
}


@dataclass(frozen=True)
class Question:
    id: str
    type: str
    prompt: str
    options: tuple[Option, ...]
    explanation: str
    clause: str
    scenario: str = ""
    line: int | None = field(default=None, compare=False)

    def as_data(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("line")
        data["options"] = [asdict(o) for o in self.options]
        return data


@dataclass(frozen=True)
class Bank:
    path: Path
    questions: tuple[Question, ...]
    rules: QuizRules

    @property
    def bank_hash(self) -> str:
        """Identifies the questions and rules; a new hash means a new bank is published."""
        data = {"questions": [q.as_data() for q in self.questions], "rules": asdict(self.rules)}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def bank_path(module_path: Path) -> Path:
    return module_path.with_name(module_path.name.removesuffix(".md") + BANK_SUFFIX)


def plain(text: str) -> str:
    """Text as a reader sees it: without emphasis markers, whitespace collapsed."""
    return " ".join(text.replace("*", "").split())


def load_rules(doc: Doc, key: str, base: QuizRules) -> QuizRules:
    """``key`` in ``doc`` holds rule overrides on top of ``base``."""
    raw = doc.data.get(key)
    if raw is None:
        return base
    if not isinstance(raw, dict):
        doc.problem(key, f"'{key}' must map rule names to values")
        return base
    values = asdict(base)
    for name, value in raw.items():
        if name not in values:
            doc.problem(key, f"unknown quiz rule {name!r}; rules are {', '.join(values)}")
        elif isinstance(values[name], bool):
            if not isinstance(value, bool):
                doc.problem(key, f"quiz rule {name!r} must be true or false, not {value!r}")
            else:
                values[name] = value
        else:
            low, high = RULE_LIMITS[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                doc.problem(key, f"quiz rule {name!r} must be a whole number from {low} to {high}")
            else:
                values[name] = value
    return QuizRules(**values)


def load_bank(
    path: Path, module_body: str, rules: QuizRules, problems: list[Problem]
) -> Bank | None:
    """The bank at ``path`` for a module whose Markdown body is ``module_body``."""
    text = read_text(path, problems)
    if text is None:
        return None
    before = len(problems)
    doc = Doc(path, text, problems)
    if len(problems) > before:
        return None
    raw = doc.data.get("questions")
    items = doc.child("questions")
    if not isinstance(raw, list) or not raw or items is None:
        doc.problem(
            "questions" if "questions" in doc.lines else None, "'questions' must list the questions"
        )
        return None
    body = plain(module_body)
    seen: dict[str, int] = {}
    questions: list[Question] = []
    for data, node in zip(raw, items.value, strict=True):
        question = _question(Doc.nested(doc, node, data), body, seen)
        if question is not None:
            questions.append(question)
    if len(questions) == len(raw) and len(questions) < rules.draw:
        doc.problem(
            "questions",
            f"{len(questions)} questions is too few to draw {rules.draw} per attempt; "
            "add questions or lower 'draw' in the manifest's quiz rules",
        )
    if len(problems) > before:
        return None
    return Bank(path, tuple(questions), rules)


def _question(q: Doc, body: str, seen: dict[str, int]) -> Question | None:
    line = q.offset + 1
    if not q.data:
        q.problem(None, "each question must be a mapping with id, type, prompt, …")
        return None
    before = len(q.problems)
    qid = q.text("id", max_length=80)
    if qid and not ID_RE.match(qid):
        q.problem("id", f"question id {qid!r} must be lower-case letters, digits and hyphens")
    if qid in seen:
        q.problem("id", f"question id {qid!r} is also used on line {seen[qid]}")
    seen.setdefault(qid, line)
    code = q.text("type", max_length=20)
    qtype = QUESTION_TYPES.get(code)
    if code and qtype is None:
        q.problem("type", f"unknown question type {code!r}; types are {', '.join(QUESTION_TYPES)}")
    # Whitespace is collapsed: text is shown as HTML anyway, and it keeps Moodle round trips exact.
    prompt = " ".join(q.text("prompt", max_length=1000).split())
    scenario = " ".join(q.text("scenario", required=code == "scenario", max_length=2000).split())
    explanation = " ".join(q.text("explanation", max_length=2000).split())
    clause = q.text("clause", max_length=500)
    if clause and plain(clause) not in body:
        q.problem("clause", f"the clause {clause!r} is not in the module's text (quote it exactly)")

    options: list[Option] = []
    before_options = len(q.problems)
    if code == "true_false":
        answer = q.data.get("answer")
        if not isinstance(answer, bool):
            q.problem(
                "answer" if "answer" in q.lines else None,
                "a true_false question needs 'answer: true' or 'answer: false'",
            )
        if "options" in q.data:
            q.problem("options", "a true_false question has 'answer', not 'options'")
        options = [
            Option("true", "True", answer is True),
            Option("false", "False", answer is False),
        ]
    elif qtype is not None:
        options = _options(q)
    if qtype is not None and options and len(q.problems) == before_options:
        for message in qtype.check(options):
            q.problem("options" if "options" in q.lines else None, message)
    if len(q.problems) > before:
        return None
    return Question(qid, code, prompt, tuple(options), explanation, clause, scenario, line)


def _options(q: Doc) -> list[Option]:
    raw = q.data.get("options")
    if not isinstance(raw, list) or not 2 <= len(raw) <= 8:
        q.problem("options" if "options" in q.lines else None, "a question needs 2 to 8 options")
        return []
    options: list[Option] = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict) or not str(entry.get("text", "")).strip():
            q.problem("options", f"option {index + 1} needs a 'text'")
            continue
        oid = str(entry.get("id", "abcdefgh"[index])).strip()
        if not ID_RE.match(oid) or any(o.id == oid for o in options):
            q.problem("options", f"option id {oid!r} must be unique and use a-z, 0-9 and hyphens")
            continue
        correct = entry.get("correct", False)
        if not isinstance(correct, bool):
            q.problem("options", f"option {index + 1}: 'correct' must be true or false")
            continue
        options.append(Option(oid, " ".join(str(entry["text"]).split()), correct))
    return options
