"""What each demo person did, replayed as the app would have recorded it.

A :class:`Learner` acts at moments in the past: opening modules, marking them read, taking quizzes,
signing. Before each step it asks the real rule (:func:`training.status.evaluate`, with the version
that was in force at that moment and only the evidence recorded before it) what the person still had
to do, and does only what the app would have allowed then: a module is read again only when it no
longer counts, a quiz is started only after reading, answers are graded by
:func:`quizzes.attempts.grade` against the questions drawn for that attempt, and a signature is
recorded only when the person was ready to sign, covering exactly the module versions they had
completed. The rows are kept as plain data and inserted in bulk afterwards.

A *story* says where the person should end up (trained, part-way, never started, expired, trained on
an earlier version, or left); the functions at the bottom choose moments that lead there.
"""

from __future__ import annotations

import random
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from demo.history import Bank, Timeline, Version
from quizzes.attempts import Grade, draw, grade
from quizzes.types import QUESTION_TYPES
from training.progress import declaration_for
from training.status import (
    QUIZ_NOT_PASSED,
    Ack,
    Evidence,
    Receipt,
    Status,
    add_months,
    evaluate,
)

STORIES = ("trained", "in_progress", "not_started", "expired", "outdated", "leaver")

USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 Safari/537.36 Edg/130.0.0.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-A546B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.6 Safari/605.1.15",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
)

# Sittings start in the working day and end well before midnight, when versions change over.
LATEST_START = timedelta(hours=6)


def minutes(value: float) -> timedelta:
    return timedelta(minutes=value)


def references(drawn: list[dict], bank: Bank) -> list[list]:
    """What an attempt stores of the questions drawn (see :mod:`quizzes.versions`): each
    question's version, its id and key in the bank, and the order its options were shown in."""
    return [
        [
            bank.versions[q["question_id"]],
            q["question_id"],
            q["key"],
            [o["id"] for o in q["options"]],
        ]
        for q in drawn
    ]


@dataclass(slots=True)
class Attempt:
    """A quiz attempt's row (with the references to the questions drawn for it), and its
    submission's row (None: started and left)."""

    row: dict[str, Any]
    submission: dict[str, Any] | None


@dataclass
class Draft:
    """One demo person and everything recorded about them, before they have an id."""

    name: str
    email: str
    roles: tuple[str, ...]
    schools: tuple[str, ...]
    story: str
    created_at: datetime
    seed: str  # their own random stream, so a person's history never depends on the others'
    key: str | None = None  # a member of the cast (see demo.population)
    active: bool = True
    deactivated_at: datetime | None = None
    has_password: bool = False
    school_network: int = 0  # which school's network they sign from, when at work
    visits: dict[int, list[datetime]] = field(default_factory=dict)  # mv -> [first, last]
    receipts: list[tuple[int, int, datetime]] = field(default_factory=list)  # mv, seq, at
    attempts: list[Attempt] = field(default_factory=list)
    acks: list[tuple[dict[str, Any], tuple[int, ...]]] = field(default_factory=list)

    @property
    def last_activity(self) -> datetime | None:
        moments = [last for _, last in self.visits.values()]
        moments += [a.submission["submitted_at"] for a in self.attempts if a.submission]
        moments += [a.row["started_at"] for a in self.attempts]
        moments += [a["at"] for a, _ in self.acks]
        return max(moments, default=None)


class Learner:
    """One person working through one policy over time."""

    def __init__(
        self, draft: Draft, timeline: Timeline, rng: random.Random, federation: str
    ) -> None:
        self.draft, self.timeline, self.rng, self.federation = draft, timeline, rng, federation
        self.now = timeline.now
        self.evidence = Evidence()
        self.clock = draft.created_at
        self.read_seq: Counter[int] = Counter()
        self.ack_seq: Counter[int] = Counter()
        self.user_agent = rng.choice(USER_AGENTS)

    # --- the rule, as it stood at a moment ------------------------------------------------------

    def status(self, version: Version, at: datetime) -> Status:
        return evaluate(
            person_id=0,
            active=True,
            roles=self.draft.roles,
            version=version.info,
            evidence=self.evidence,
            now=at,
        )

    # --- actions ------------------------------------------------------------------------------

    def sitting(
        self, start: datetime, share: float | None = None, ending: str | None = None
    ) -> bool:
        """Work through the unfinished modules in reading order, in one sitting.

        ``share`` of them (all when None); ``ending`` leaves the last one unfinished: "opened"
        (the next module opened, not read), "failed" (its quiz failed) or "abandoned" (a quiz
        attempt started and left). Returns False when there was nothing the person could do.
        """
        at = max(start, self.clock + minutes(45))
        version = self.timeline.in_force(at)
        if version is None or at > self.now - minutes(30):
            return False
        status = self.status(version, at)
        todo = [m for m in status.modules if not m.complete]
        if not todo:
            return False
        count = len(todo) if share is None else min(len(todo), max(1, round(share * len(todo))))
        modules = {m.module_version_id: m for m in version.info.modules}
        for index, entry in enumerate(todo[:count]):
            mv = entry.module_version_id
            at += minutes(self.rng.uniform(0.3, 3))
            if not self._still(version, at + minutes(60)):  # room for the module and its quiz
                break
            self._visit(mv, at)
            if entry.reason != QUIZ_NOT_PASSED:  # reading that already counts is not recorded
                at += minutes(self.rng.uniform(2, 9))
                self._read(modules[mv].module_id, mv, at)
            bank = version.banks.get(mv)
            if bank is None:
                continue
            last = index == count - 1
            at = self._quiz(mv, bank, at, ending if last else None)
        if ending == "opened" and count < len(todo) and self._still(version, at + minutes(5)):
            at += minutes(self.rng.uniform(0.5, 3))
            self._visit(todo[count].module_version_id, at)
        self.clock = at
        return True

    def sign(self) -> bool:
        """Sign the version in force, as the sign page allows only when every module is done."""
        at = self.clock + minutes(self.rng.uniform(1, 4))
        version = self.timeline.in_force(at)
        if version is None or at >= self.now:
            return False
        status = self.status(version, at)
        if not status.ready_to_sign:
            return False
        seq = self.ack_seq[version.id]
        self.ack_seq[version.id] += 1
        name = self.draft.name
        typed = name.lower() if self.rng.random() < 0.08 else name  # the match ignores case
        covered = tuple(m.module_version_id for m in status.modules)
        self.draft.acks.append(
            (
                {
                    "policy_version_id": version.id,
                    "seq": seq,
                    "declaration": declaration_for(version.title, version.label, self.federation),
                    "typed_name": typed,
                    "at": at,
                    "ip": self._ip(at),
                    "user_agent": self.user_agent,
                },
                covered,
            )
        )
        self.evidence.acks.append(
            Ack(-len(self.evidence.acks) - 1, version.id, version.refresher_months, at,
                frozenset(covered))
        )  # fmt: skip
        self.clock = at
        return True

    def _still(self, version: Version, at: datetime) -> bool:
        return at < self.now and self.timeline.in_force(at) is version

    def _visit(self, mv: int, at: datetime) -> None:
        self.draft.visits.setdefault(mv, [at, at])[1] = at
        self.evidence.visited[mv] = at

    def _read(self, module_id: int, mv: int, at: datetime) -> None:
        self.draft.receipts.append((mv, self.read_seq[mv], at))
        self.read_seq[mv] += 1
        self.evidence.receipts.append(Receipt(module_id, mv, at))

    def _quiz(self, mv: int, bank: Bank, at: datetime, ending: str | None) -> datetime:
        if ending == "abandoned":
            return self._attempt(mv, bank, at, None)
        if ending == "failed":
            for _ in range(self.rng.choice((1, 1, 2))):
                at = self._attempt(mv, bank, at, False)
            return at
        # Never three fails in a row, so the cool-down never stands in the way.
        for fails in range(3):
            passing = fails == 2 or self.rng.random() < (0.8 if fails == 0 else 0.85)
            at = self._attempt(mv, bank, at, passing)
            if passing:
                break
            if self.rng.random() < 0.5:  # "Re-read the module" before trying again
                at += minutes(self.rng.uniform(2, 6))
                self._visit(mv, at)
        return at

    def _attempt(self, mv: int, bank: Bank, at: datetime, passing: bool | None) -> datetime:
        """Start an attempt (and submit it unless ``passing`` is None)."""
        rules = bank.rules
        started = at + minutes(self.rng.uniform(0.2, 1))
        drawn = draw(bank.questions, rules.draw, rules.shuffle, self.rng)
        attempt = {
            "public_id": secrets.token_urlsafe(16),
            "module_version_id": mv,
            "bank_id": bank.id,
            "started_at": started,
            "expires_at": started + minutes(rules.time_limit_minutes),
            "pass_mark": rules.pass_mark,
            "show_answers": rules.show_answers,
            "question_refs": references(drawn, bank),
        }
        if passing is None:
            self.draft.attempts.append(Attempt(attempt, None))
            return started + minutes(1)
        answers, result = self._answers(drawn, passing, rules.pass_mark)
        took = min(rules.time_limit_minutes * 0.9, self.rng.uniform(1.5, 8))
        submitted = started + minutes(took)
        submission = {
            "submitted_at": submitted,
            "answers": answers,
            "correct": result.correct,
            "total": result.total,
            "score": result.score,
            "passed": result.passed,
        }
        self.draft.attempts.append(Attempt(attempt, submission))
        if result.passed:
            self.evidence.passes.append((mv, submitted))
        return submitted

    def _answers(
        self, drawn: list[dict], passing: bool, pass_mark: int
    ) -> tuple[dict[str, list[str]], Grade]:
        """Answers that pass or fail as wanted (a wrong answer now and then when passing, two or
        three when failing), graded as the server grades them."""
        wrong = self.rng.choice((0, 0, 1)) if passing else self.rng.choice((2, 3))
        answers = self._answer_with(drawn, min(wrong, len(drawn)))
        result = grade(drawn, answers, pass_mark)
        if result.passed != passing:  # a pass mark that one wrong answer misses, say
            answers = self._answer_with(drawn, 0 if passing else len(drawn))
            result = grade(drawn, answers, pass_mark)
        return answers, result

    def _answer_with(self, drawn: list[dict], wrong: int) -> dict[str, list[str]]:
        missed = set(self.rng.sample(range(len(drawn)), wrong))
        answers = {}
        for index, question in enumerate(drawn):
            options = question["options"]
            right = [o["id"] for o in options if o["correct"]]
            if index not in missed:
                answers[question["key"]] = right
                continue
            others = [o["id"] for o in options if not o["correct"]]
            if QUESTION_TYPES[question["type"]].multiple_answers:
                if len(right) > 1 and self.rng.random() < 0.5:
                    chosen = set(right) - {self.rng.choice(right)}  # missed one
                else:
                    chosen = set(right) | {self.rng.choice(others)}  # one too many
                answers[question["key"]] = [o["id"] for o in options if o["id"] in chosen]
            else:
                answers[question["key"]] = [self.rng.choice(others)]
        return answers

    def _ip(self, at: datetime) -> str:
        """From the school's network in the working day, from home otherwise."""
        if "staff" in self.draft.roles and at.weekday() < 5 and 7 <= at.hour < 17:
            school = self.draft.school_network + 10
            return f"10.{school}.{self.rng.randint(0, 15)}.{self.rng.randint(2, 250)}"
        network = self.rng.choice(("192.0.2", "198.51.100", "203.0.113"))  # documentation ranges
        return f"{network}.{self.rng.randint(1, 254)}"


# --- stories: choosing moments that lead where the person should end up ----------------------------


def moment(
    rng: random.Random, low: datetime, high: datetime, early: bool = False
) -> datetime | None:
    """A moment between ``low`` and ``high``, in the working day when there is room; None when
    there is no room at all. ``early`` favours the start (people tend to train when asked to)."""
    if high - low < timedelta(hours=1):
        return None
    at = low + (high - low) * (rng.random() ** (1.8 if early else 1.0))
    daytime = at.replace(hour=rng.randint(7, 16), minute=rng.randint(0, 59), second=0)
    return daytime if low <= daytime <= high else at


def study_all(learner: Learner, last: datetime, low: datetime) -> None:
    """Everything unfinished, in one to three sittings ending at ``last``."""
    rng = learner.rng
    earlier = []
    at = last
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        at -= timedelta(days=rng.uniform(1, 12))
        if at < low:
            break
        earlier.append(at)
    for start in reversed(earlier):
        learner.sitting(start, share=rng.uniform(0.3, 0.6))
    learner.sitting(last)


def _bounds(learner: Learner) -> tuple[Timeline, datetime, datetime, timedelta]:
    timeline = learner.timeline
    joined = learner.draft.created_at + timedelta(days=1)
    latest = learner.now - LATEST_START
    months = timeline.current.refresher_months if timeline.current else 12
    refresher = learner.now - add_months(learner.now, -months)
    return timeline, joined, latest, refresher


def trained(learner: Learner, variant: str | None = None, latest: datetime | None = None) -> None:
    """Trained now: signed the version in force within the refresher period.

    ``fresh``: did it all on this version. ``carried``: signed the earlier version, then redid
    only the changed module and signed again. ``renewed``: signed long ago, it expired, and they
    did the refresher.
    """
    timeline, joined, last_start, refresher = _bounds(learner)
    now, rng = learner.now, learner.rng
    latest = latest or last_start
    variant = variant or rng.choices(("fresh", "carried", "renewed"), (5, 3, 2))[0]
    since = timeline.current_since
    if variant == "carried" and timeline.previous_since is not None:
        low = max(timeline.previous_since, now - refresher + timedelta(days=30), joined)
        first = moment(rng, low, since - LATEST_START)
        if first is not None:
            study_all(learner, first, low)
            learner.sign()
            second = moment(rng, max(since, learner.clock) + timedelta(hours=1), latest, early=True)
            if second is not None:
                learner.sitting(second)
                learner.sign()
            return
    if variant == "renewed":
        low = max(timeline.start, timeline.first_start, joined)
        first = moment(rng, low, now - refresher - timedelta(days=45))
        if first is not None:
            study_all(learner, first, low)
            learner.sign()
            low = max(learner.clock + refresher + timedelta(days=1), since + timedelta(hours=1))
            second = moment(rng, low, latest, early=True)
            if second is not None:
                study_all(learner, second, low)
                learner.sign()
            return
    low = max(since + timedelta(hours=1), now - refresher + timedelta(days=1), joined)
    if latest - low < timedelta(days=1):
        latest = last_start
    last = moment(rng, low, latest, early=True)
    if last is not None:
        study_all(learner, last, low)
        learner.sign()


def in_progress(learner: Learner) -> None:
    """Part-way through the version in force: some modules done, perhaps a quiz failed."""
    timeline, joined, latest, _ = _bounds(learner)
    rng = learner.rng
    low = max(timeline.current_since + timedelta(hours=1), joined)
    at = moment(rng, low, latest)
    if at is None:
        return
    ending = rng.choices((None, "opened", "failed", "abandoned", "ready"), (4, 2, 3, 1, 1))[0]
    if ending == "ready":  # everything done, not yet signed
        study_all(learner, at, low)
        return
    if rng.random() < 0.3 and at - timedelta(days=3) > low:
        learner.sitting(at - timedelta(days=rng.uniform(1, 3)), share=rng.uniform(0.2, 0.4))
    learner.sitting(at, share=rng.uniform(0.15, 0.75), ending=ending)


def not_started(learner: Learner) -> None:
    """Invited, but has not opened anything yet."""


def expired(learner: Learner, latest: datetime | None = None) -> None:
    """Trained once, longer ago than the refresher period; some have begun the refresher."""
    timeline, joined, last_start, refresher = _bounds(learner)
    now, rng = learner.now, learner.rng
    low = max(timeline.start, timeline.first_start, joined)
    first = moment(rng, low, latest or now - refresher - timedelta(days=1))
    if first is None:
        return in_progress(learner)
    study_all(learner, first, low)
    learner.sign()
    if latest is None and rng.random() < 0.35:
        again = moment(rng, learner.clock + refresher + timedelta(days=1), last_start)
        if again is not None:
            learner.sitting(
                again, share=rng.uniform(0.15, 0.6), ending=rng.choice((None, "failed"))
            )


def outdated(learner: Learner) -> None:
    """Trained (or nearly) on the earlier version, and not yet back for the changed module."""
    timeline, joined, _, refresher = _bounds(learner)
    now, rng = learner.now, learner.rng
    if timeline.previous_since is None:
        return in_progress(learner)
    high = timeline.current_since - LATEST_START
    low = max(timeline.previous_since, now - refresher + timedelta(days=1), joined)
    first = moment(rng, low, high) if rng.random() < 0.75 else None
    if first is not None:
        study_all(learner, first, low)
        learner.sign()
        return
    low = max(timeline.previous_since, joined)
    first = moment(rng, low, high)
    if first is None:
        return in_progress(learner)
    study_all(learner, first, low)  # every module read, never signed


LIVES: dict[str, Callable[[Learner], None]] = {
    "trained": trained,
    "in_progress": in_progress,
    "not_started": not_started,
    "expired": expired,
    "outdated": outdated,
}
