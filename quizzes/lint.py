"""Giveaways: patterns across a question bank that let a test-wise learner pass without reading.

Each is a warning, not an error: ``flask content check`` lists them with file and line, and the
content still publishes. A question's own warnings point at its line; a pattern across a bank
points at the bank's file, and one across a whole policy at each bank it spans.

- True/false questions whose key is False far more often than True (or the reverse): a guesser
  who always answers the common key scores well. Warned outside 35–65% true.
- Select-all questions that all (or 80% or more) have the same number of right options: a
  guesser learns to tick that many.
- Single-answer questions whose key is the longest option in more than 40% of them.
- A distractor built on an absolute word (only, always, never) where the key has none: absolutes
  mark wrong answers, so they are easy to rule out.
- An explanation that points at an option by its position ("option B", "the first answer"):
  options are shuffled, so the position is wrong for most learners.
- An explanation whose modal verb (must, should, may) differs from its clause's: "should" where
  the policy says "must" teaches the wrong rule.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from core.yamldoc import Problem
from quizzes.bank import Bank, Question

TRUE_SHARE = (0.35, 0.65)
LONGEST_KEY_SHARE = 0.40
# Select-all questions: all of them with the same number of right options, or nearly all (one
# odd one out among fifteen teaches the pattern just as well).
SAME_RIGHT_COUNT_SHARE = 0.80
# Fewer questions of a kind than this say nothing about a pattern.
MIN_TRUE_FALSE = 4
MIN_SELECT_ALL = 3
MIN_SINGLE = 5
SINGLE_ANSWER = {"single", "scenario"}

ABSOLUTE = re.compile(r"\b(only|always|never)\b", re.IGNORECASE)
# "option B", "answer (c)", "the answer is 2", "the first option", "all of the above". A lower-case
# letter on its own is the article ("the answer is a disclaimer"), so letters count only in
# capitals or in brackets.
POSITION = re.compile(
    r"\b(?i:options?|answers?|choices?)(?:\s+is)?\s*(?:\([a-hA-H1-8]\)|[A-H1-8])(?![\w'’-])"
    r"|\b(?i:first|second|third|fourth|fifth|last)\s+(?i:option|answer|choice)\b"
    r"|\b(?i:option|answer|choice)\s+(?i:above|below)\b|\b(?i:all|none|both) of the above\b"
)
MODAL = re.compile(r"\b(must|should|may)\b", re.IGNORECASE)


def modals(text: str) -> set[str]:
    """The modal verbs of obligation and permission in ``text``, lower-cased."""
    return {m.lower() for m in MODAL.findall(text)}


def question_warnings(path: Path, question: Question) -> list[Problem]:
    """The warnings about one question on its own."""
    found: list[Problem] = []

    def warn(message: str) -> None:
        found.append(Problem(path, question.line, f"question {question.id!r}: {message}"))

    keys = [o for o in question.options if o.correct]
    wrong = [o for o in question.options if not o.correct]
    if question.type != "true_false" and not any(ABSOLUTE.search(k.text) for k in keys):
        for option in wrong:
            word = ABSOLUTE.search(option.text)
            if word:
                warn(
                    f"the wrong option {option.text!r} says {word.group(0)!r} and no right one "
                    "does: absolute words give wrong answers away"
                )
    position = POSITION.search(question.explanation)
    if position:
        warn(
            f"the explanation points at an option by its position ({position.group(0)!r}); "
            "options are shuffled, so name the option by what it says"
        )
    said, policy = modals(question.explanation), modals(question.clause)
    if said and policy and not said & policy:
        warn(
            f"the explanation says {' / '.join(sorted(said))!r} where its clause says "
            f"{' / '.join(sorted(policy))!r}: use the policy's own word"
        )
    return found


def _share_warnings(scope: str, questions: Sequence[Question]) -> list[str]:
    messages: list[str] = []
    true_false = [q for q in questions if q.type == "true_false"]
    if len(true_false) >= MIN_TRUE_FALSE:
        true = sum(1 for q in true_false for o in q.options if o.id == "true" and o.correct)
        share = true / len(true_false)
        if not TRUE_SHARE[0] <= share <= TRUE_SHARE[1]:
            messages.append(
                f"{true} of {len(true_false)} true/false questions {scope} are keyed True "
                f"({share:.0%}); keep between {TRUE_SHARE[0]:.0%} and {TRUE_SHARE[1]:.0%} so that "
                "always answering one way does not pay"
            )
    select_all = [q for q in questions if q.type == "multiple"]
    if len(select_all) >= MIN_SELECT_ALL:
        counts = Counter(sum(o.correct for o in q.options) for q in select_all)
        right, same = counts.most_common(1)[0]
        if same / len(select_all) >= SAME_RIGHT_COUNT_SHARE:
            messages.append(
                f"{same} of {len(select_all)} select-all questions {scope} have exactly {right} "
                "right options; vary how many are right"
            )
    single = [q for q in questions if q.type in SINGLE_ANSWER]
    if len(single) >= MIN_SINGLE:
        longest = sum(1 for q in single if _key_is_longest(q))
        if longest / len(single) > LONGEST_KEY_SHARE:
            messages.append(
                f"in {longest} of {len(single)} single-answer questions {scope} the right "
                f"option is the longest ({longest / len(single):.0%}, more than "
                f"{LONGEST_KEY_SHARE:.0%}); make some wrong options as full as the right one"
            )
    return messages


def _key_is_longest(question: Question) -> bool:
    keys = [len(o.text) for o in question.options if o.correct]
    others = [len(o.text) for o in question.options if not o.correct]
    return len(keys) == 1 and bool(others) and keys[0] > max(others)


def giveaways(banks: Iterable[Bank]) -> list[Problem]:
    """Every giveaway warning for the banks of one policy: each question's, each bank's, and the
    policy's as a whole (reported once, at the first bank)."""
    banks = list(banks)
    found: list[Problem] = []
    for bank in banks:
        for question in bank.questions:
            found.extend(question_warnings(bank.path, question))
        for message in _share_warnings("in this bank", bank.questions):
            found.append(Problem(bank.path, None, message))
    if len(banks) > 1:
        everything = [q for bank in banks for q in bank.questions]
        for message in _share_warnings("across the policy", everything):
            found.append(Problem(banks[0].path.parent, None, message))
    return found
