"""The policy's history for the demo: an earlier edition, and which version was in force when.

People trained "on an old version" are only possible when an earlier version exists whose text
differs from the one in force now. When the database has none, the demo publishes one through the
real loader and publisher: it copies the policy's folder, gives the copy an earlier version label and
effective date, adds a paragraph to one module every audience reads, and publishes that copy. The
publication is then dated to before the edition took effect, as it would have been, so the version
in force now stays the newest and ``flask content publish`` still finds nothing to do.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from quizzes.attempts import rules_of
from quizzes.bank import QuizRules
from quizzes.models import Question, QuizBank
from quizzes.versions import bank_versions
from training.loader import ModuleSource, PolicySource, load_all, load_policy
from training.models import Policy, PolicyVersion, PolicyVersionModule
from training.publishing import publish
from training.status import VersionInfo, add_months, version_info

# Months of history the demo spreads people's training over (more when the refresher period is
# long, so that some training has had time to expire).
HISTORY_MONTHS = 18
# A version is published this long before it takes effect.
PUBLISHED_AHEAD = timedelta(days=14)
EARLIER_NOTE = (
    "*This paragraph is from the earlier wording of this module; it was taken out in version "
    "{label}.*"
)


class HistoryError(Exception):
    """The policy's history cannot be prepared; the message says why."""


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


@dataclass(frozen=True)
class BankQuestion:
    """A question as :func:`quizzes.attempts.draw` reads it, copied out of the ORM row once (a
    large demo draws it tens of thousands of times)."""

    id: int
    key: str
    type: str
    prompt: str
    scenario: str
    options: list
    explanation: str
    clause: str

    @classmethod
    def of(cls, q: Question) -> BankQuestion:
        return cls(q.id, q.key, q.type, q.prompt, q.scenario, q.options, q.explanation, q.clause)


@dataclass(frozen=True)
class Bank:
    """A published question bank as a quiz attempt uses it."""

    id: int
    rules: QuizRules
    questions: tuple[BankQuestion, ...]
    versions: dict[int, int]  # question id -> its question version's id (attempts refer to it)


@dataclass(frozen=True)
class Version:
    """A published policy version with what the demo needs to act on it."""

    id: int
    label: str
    title: str
    effective: date
    published_at: datetime
    refresher_months: int
    info: VersionInfo
    banks: dict[int, Bank | None]  # module version id -> its quiz in this version


class Timeline:
    """Which version of a policy was in force at any moment.

    As :func:`training.publishing.current_version` answers, restricted to the versions that had
    been published by then: the version a person saw at that moment.
    """

    def __init__(self, slug: str, versions: list[Version], now: datetime) -> None:
        self.slug = slug
        self.versions = sorted(versions, key=lambda v: (v.effective, v.published_at, v.id))
        self.now = now
        self.current = self.in_force(now)
        self.current_since = self._since(self.current, now) if self.current else now
        before = self.in_force(self.current_since - timedelta(microseconds=1))
        self.previous = before if before is not self.current else None
        self.previous_since = (
            self._since(self.previous, self.current_since) if self.previous else None
        )
        starts = [v.published_at for v in self.versions]
        self.first_start = min(starts) if starts else now
        refresher = self.current.refresher_months if self.current else 12
        self.months = max(HISTORY_MONTHS, refresher + 6)
        self.start = add_months(now, -self.months)

    def in_force(self, at: datetime) -> Version | None:
        published = [v for v in self.versions if v.published_at <= at]
        effective = [v for v in published if v.effective <= at.date()]
        pool = effective or published
        return pool[-1] if pool else None

    def _since(self, version: Version, until: datetime) -> datetime:
        """When ``version`` came into force, given that it was in force just before ``until``."""
        moments = {m for v in self.versions for m in (v.published_at, midnight(v.effective))}
        since = until
        for moment in sorted((m for m in moments if m < until), reverse=True):
            if self.in_force(moment) is not version:
                break
            since = moment
        return since


def load_timeline(session: Session, policy: Policy, now: datetime) -> Timeline:
    banks: dict[int, Bank] = {}
    versions = []
    for row in session.scalars(
        select(PolicyVersion).where(PolicyVersion.policy_id == policy.id)
    ).all():
        links = session.execute(
            select(PolicyVersionModule.module_version_id, PolicyVersionModule.bank_id).where(
                PolicyVersionModule.policy_version_id == row.id
            )
        ).all()
        for _, bank_id in links:
            if bank_id is not None and bank_id not in banks:
                bank = session.get(QuizBank, bank_id)
                questions = tuple(BankQuestion.of(q) for q in bank.questions)
                asked = bank_versions(session, questions)
                banks[bank_id] = Bank(bank.id, rules_of(bank), questions, asked)
        versions.append(
            Version(
                id=row.id,
                label=row.label,
                title=row.title,
                effective=row.effective,
                published_at=row.published_at,
                refresher_months=row.refresher_months,
                info=version_info(session, row),
                banks={mv: banks[b] if b is not None else None for mv, b in links},
            )
        )
    return Timeline(policy.slug, versions, now)


# --- making the history ---------------------------------------------------------------------------


def prepare_history(
    session: Session, policy: Policy, content_dir: Path, now: datetime, backdate: bool
) -> str | None:
    """Make sure an earlier, different version of ``policy`` exists; return what was done.

    With ``backdate`` (the database holds demo people only), versions published later than a
    fortnight before they took effect are dated back to then, so that the demo's history never has
    anyone sign a version before it was published.
    """
    if backdate:
        _backdate(session, policy)
    timeline = load_timeline(session, policy, now)
    current = timeline.current
    if current is None:
        return None
    if current.effective > now.date():
        return (
            f"{policy.title}: version {current.label} takes effect on {current.effective}; "
            "no earlier edition was added, so nobody is shown as trained on an earlier version."
        )
    mine = {m.module_version_id for m in current.info.modules}
    for version in timeline.versions:
        if (
            version.id != current.id
            and version.effective < current.effective
            and {m.module_version_id for m in version.info.modules} != mine
        ):
            return None  # a real earlier edition already makes the history
    label = _earlier_label(current.label, {v.label for v in timeline.versions})
    effective = min(
        add_months(now, -timeline.months - 1).date(),
        add_months(midnight(current.effective), -3).date(),
    )
    source = _source_for(policy, content_dir)
    changed = _changed_module(source)
    with tempfile.TemporaryDirectory(prefix="countersign-demo-") as tmp:
        folder = Path(tmp) / source.path.name
        shutil.copytree(source.path, folder)
        _edit_manifest(folder / "policy.yaml", label, effective)
        page = folder / changed.path.name
        note = EARLIER_NOTE.format(label=current.label)
        page.write_text(page.read_text(encoding="utf-8").rstrip("\n") + f"\n\n{note}\n")
        publish(session, load_policy(folder))
    earlier = session.scalar(
        select(PolicyVersion).where(
            PolicyVersion.policy_id == policy.id, PolicyVersion.label == label
        )
    )
    published = midnight(effective) - PUBLISHED_AHEAD + timedelta(hours=9)
    published = min(published, current.published_at - timedelta(days=1))
    _date_publication(session, earlier, published)
    session.flush()
    return (
        f"{policy.title}: published the earlier version {label} (in force from {effective}; "
        f"module “{changed.title}” differs), so some people trained on a version that has "
        "since changed."
    )


def _source_for(policy: Policy, content_dir: Path) -> PolicySource:
    conventional = content_dir / policy.slug  # the folder is named after the slug, as a rule
    if (conventional / "policy.yaml").is_file():
        source = load_policy(conventional)
        if source.slug == policy.slug:
            return source
    for source in load_all(content_dir):
        if source.slug == policy.slug:
            return source
    raise HistoryError(
        f"{policy.title}: its folder is no longer in {content_dir}, so no earlier version "
        "was added and nobody is shown as trained on one."
    )


def _changed_module(source: PolicySource) -> ModuleSource:
    """The module the earlier edition words differently: one every audience must read, so that
    anyone, whatever their role, can have trained on the earlier wording."""
    counts = {
        m.slug: sum(m.slug in slugs for slugs in source.audiences.values()) for m in source.modules
    }
    most = max(counts.values())
    return [m for m in source.modules if counts[m.slug] == most][-1]


def _earlier_label(label: str, taken: set[str]) -> str:
    candidates = []
    match = re.fullmatch(r"(\d+)\.(\d+)", label)
    if match:
        major, minor = int(match[1]), int(match[2])
        if minor > 0:
            candidates.append(f"{major}.{minor - 1}")
        elif major > 0:
            candidates.append(f"{major - 1}.9")
    candidates += [f"pre-{label}"] + [f"pre-{label}-{n}" for n in range(2, 100)]
    return next(c for c in candidates if c not in taken and len(c) <= 40)


def _edit_manifest(path: Path, label: str, effective: date) -> None:
    text = path.read_text(encoding="utf-8")
    for key, value in (("version", f'"{label}"'), ("effective", effective.isoformat())):
        text, found = re.subn(rf"^{key}:.*$", f"{key}: {value}", text, count=1, flags=re.M)
        if not found:
            raise HistoryError(f"{path}: no '{key}:' line, so no earlier version was added")
    review = add_months(midnight(effective), 12).date().isoformat()
    text = re.sub(r"^next_review:.*$", f"next_review: {review}", text, count=1, flags=re.M)
    path.write_text(text, encoding="utf-8")


def _date_publication(session: Session, version: PolicyVersion, published: datetime) -> None:
    """Date a version's publication (and the texts and banks first published with it) back."""
    version.published_at = published
    for link in version.module_links:
        if link.module_version.created_at > published:
            link.module_version.created_at = published
        if link.bank_id is not None:
            bank = session.get(QuizBank, link.bank_id)
            if bank.created_at > published:
                bank.created_at = published


def _backdate(session: Session, policy: Policy) -> None:
    versions = session.scalars(
        select(PolicyVersion)
        .where(PolicyVersion.policy_id == policy.id)
        .order_by(PolicyVersion.published_at, PolicyVersion.id)
    ).all()
    floor: datetime | None = None
    for version in versions:
        wanted = midnight(version.effective) - PUBLISHED_AHEAD + timedelta(hours=9)
        # Only ever earlier, and never before the version published ahead of it.
        if version.published_at > wanted and (floor is None or wanted > floor):
            _date_publication(session, version, wanted)
        floor = version.published_at
    session.flush()
