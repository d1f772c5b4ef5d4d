"""THE rule: is this person trained on this policy? Everything else asks here.

:func:`evaluate` is the rule itself, a pure function of the person's evidence; :func:`training_status`
loads that evidence for one person. Callers that need many people load evidence set-based and call
:func:`evaluate` for each, so the rule never forks.

A module is complete when the person has read its *current* version (module versions are shared
between policy versions, so an unchanged module keeps its completion). The person is trained when every
module their roles require is complete and they have signed an acknowledgement of the current policy
version covering those module versions, and that acknowledgement is within the refresher period.
When the latest acknowledgement has expired, only evidence recorded after it counts: the refresher
means doing the modules again and signing again.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import utcnow
from people.models import Person
from quizzes.models import QuizAttempt, QuizSubmission
from training.models import (
    Acknowledgement,
    AcknowledgementModule,
    Module,
    ModuleVersion,
    ModuleVisit,
    Policy,
    PolicyVersion,
    PolicyVersionModule,
    ReadReceipt,
    RequiredModule,
)
from training.publishing import current_version

STANDINGS = ("trained", "in_progress", "not_started", "expired", "outdated", "not_required",
             "inactive")  # fmt: skip

# Why a module, or the acknowledgement, stands between the person and "trained".
NOT_STARTED = "not_started"
NOT_READ = "not_read"
QUIZ_NOT_PASSED = "quiz_not_passed"
NOT_ACKNOWLEDGED = "not_acknowledged"
OUTDATED_VERSION = "outdated_version"
EXPIRED = "expired"
REASONS = (NOT_STARTED, NOT_READ, QUIZ_NOT_PASSED, NOT_ACKNOWLEDGED, OUTDATED_VERSION, EXPIRED)

REASON_TEXT = {
    NOT_STARTED: "not started",
    NOT_READ: "opened but not yet marked as read",
    QUIZ_NOT_PASSED: "quiz not yet passed",
    NOT_ACKNOWLEDGED: "policy not yet signed",
    OUTDATED_VERSION: "completed on an earlier version; the text has changed",
    EXPIRED: "training has expired and is due again",
}


def add_months(moment: datetime, months: int) -> datetime:
    """Calendar months later, on the last day of the month when the day does not exist."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


# --- evidence: plain data the rule reads ------------------------------------------------------


class ModuleInfo(NamedTuple):
    module_id: int
    module_version_id: int
    slug: str
    title: str
    has_quiz: bool = False


@dataclass(frozen=True)
class VersionInfo:
    """The parts of a published policy version the rule needs."""

    id: int
    label: str
    refresher_months: int
    modules: tuple[ModuleInfo, ...]  # in reading order
    required: dict[str, frozenset[int]]  # role -> module ids


@dataclass(frozen=True)
class Receipt:
    module_id: int
    module_version_id: int
    at: datetime


@dataclass(frozen=True)
class Ack:
    id: int
    policy_version_id: int
    refresher_months: int
    at: datetime
    module_version_ids: frozenset[int]


@dataclass
class Evidence:
    receipts: list[Receipt] = field(default_factory=list)
    visited: dict[int, datetime] = field(default_factory=dict)  # module version id -> last opened
    acks: list[Ack] = field(default_factory=list)
    passes: list[tuple[int, datetime]] = field(default_factory=list)  # (module version id, when)


# --- the answer ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleStatus:
    slug: str
    title: str
    module_version_id: int
    state: str  # "not_started", "in_progress" or "completed"
    completed_at: datetime | None
    reason: str | None  # why it is not complete, one of REASONS

    @property
    def complete(self) -> bool:
        return self.state == "completed"


@dataclass(frozen=True)
class Missing:
    module: str | None  # a module slug, or None for the policy-wide acknowledgement
    reason: str

    @property
    def text(self) -> str:
        return REASON_TEXT[self.reason]


@dataclass(frozen=True)
class Status:
    person_id: int
    active: bool
    policy_version_id: int
    version: str
    trained: bool
    valid_until: datetime | None
    modules: tuple[ModuleStatus, ...]
    missing: tuple[Missing, ...]
    acknowledged_at: datetime | None  # the acknowledgement that counts now, if any
    expired_at: datetime | None  # when the last training ran out, if it has
    changes_at: datetime | None = None  # when time alone next changes this answer (an expiry)
    acknowledgement_id: int | None = None  # the acknowledgement that counts now, if any

    @property
    def required(self) -> bool:
        """False when none of the person's roles has anything to do for this policy."""
        return bool(self.modules)

    @property
    def completed_count(self) -> int:
        return sum(1 for m in self.modules if m.complete)

    @property
    def standing(self) -> str:
        """One word for reports: where the person stands, most telling first."""
        if not self.active:
            return "inactive"
        if not self.required:
            return "not_required"
        if self.trained:
            return "trained"
        if self.expired_at is not None:
            return "expired"
        if any(m.reason == OUTDATED_VERSION for m in self.missing):
            return "outdated"
        if any(m.state != "not_started" for m in self.modules) or self.acknowledged_at:
            return "in_progress"
        return "not_started"

    @property
    def ready_to_sign(self) -> bool:
        """Every module complete, and an acknowledgement still needed."""
        return (
            self.active
            and self.required
            and not self.trained
            and self.completed_count == len(self.modules)
        )


def evaluate(
    *,
    person_id: int,
    active: bool,
    roles: Iterable[str],
    version: VersionInfo,
    evidence: Evidence,
    now: datetime,
) -> Status:
    """The rule. Pure: the same evidence always gives the same answer."""
    roles = set(roles)
    required_ids: set[int] = set()
    for role in roles:
        required_ids |= version.required.get(role, frozenset())

    # After an expired acknowledgement, only evidence newer than it counts.
    latest_ack = max(evidence.acks, key=lambda a: a.at, default=None)
    cycle_start: datetime | None = None
    expired_at: datetime | None = None
    changes_at: datetime | None = None
    if latest_ack is not None:
        ends = add_months(latest_ack.at, latest_ack.refresher_months)
        if ends <= now:
            cycle_start, expired_at = latest_ack.at, ends
        else:
            changes_at = ends

    def counts(moment: datetime) -> bool:
        return cycle_start is None or moment > cycle_start

    modules: list[ModuleStatus] = []
    missing: list[Missing] = []
    for module_id, mv_id, slug, title, has_quiz in version.modules:
        if module_id not in required_ids:
            continue
        mine = [r for r in evidence.receipts if r.module_id == module_id]
        read = [r.at for r in mine if r.module_version_id == mv_id and counts(r.at)]
        passed = [at for v, at in evidence.passes if v == mv_id and counts(at)]
        if read and (passed or not has_quiz):
            done = max(min(read), min(passed)) if passed else min(read)
            modules.append(ModuleStatus(slug, title, mv_id, "completed", done, None))
            continue
        if read:  # read, quiz still to pass
            modules.append(ModuleStatus(slug, title, mv_id, "in_progress", None, QUIZ_NOT_PASSED))
            missing.append(Missing(slug, QUIZ_NOT_PASSED))
            continue
        opened = mv_id in evidence.visited and counts(evidence.visited[mv_id])
        if cycle_start is not None and mine:
            reason = EXPIRED
        elif any(r.module_version_id != mv_id for r in mine):
            reason = OUTDATED_VERSION
        elif opened:
            reason = NOT_READ
        else:
            reason = NOT_STARTED
        state = "in_progress" if opened else "not_started"
        modules.append(ModuleStatus(slug, title, mv_id, state, None, reason))
        missing.append(Missing(slug, reason))

    needed = {m.module_version_id for m in modules}
    signed = max(
        (a for a in evidence.acks if a.policy_version_id == version.id and counts(a.at)),
        key=lambda a: a.at,
        default=None,
    )
    if signed is not None and not needed <= signed.module_version_ids:
        signed = None  # roles changed since signing: more modules are now required
    if modules and signed is None:
        missing.append(Missing(None, EXPIRED if cycle_start is not None else NOT_ACKNOWLEDGED))

    trained = active and bool(modules) and not missing
    return Status(
        person_id=person_id,
        active=active,
        policy_version_id=version.id,
        version=version.label,
        trained=trained,
        valid_until=add_months(signed.at, signed.refresher_months) if trained and signed else None,
        modules=tuple(modules),
        missing=tuple(missing),
        acknowledged_at=signed.at if signed else None,
        expired_at=expired_at,
        changes_at=changes_at,
        acknowledgement_id=signed.id if signed else None,
    )


# --- loading evidence ----------------------------------------------------------------------------


def version_info(session: Session, version: PolicyVersion) -> VersionInfo:
    rows = session.execute(
        select(
            Module.id,
            ModuleVersion.id,
            Module.slug,
            ModuleVersion.title,
            PolicyVersionModule.bank_id.is_not(None),
        )
        .join(ModuleVersion, ModuleVersion.module_id == Module.id)
        .join(PolicyVersionModule, PolicyVersionModule.module_version_id == ModuleVersion.id)
        .where(PolicyVersionModule.policy_version_id == version.id)
        .order_by(PolicyVersionModule.position)
    ).all()
    required: dict[str, set[int]] = {}
    for role, module_id in session.execute(
        select(RequiredModule.role, RequiredModule.module_id).where(
            RequiredModule.policy_version_id == version.id
        )
    ):
        required.setdefault(role, set()).add(module_id)
    return VersionInfo(
        id=version.id,
        label=version.label,
        refresher_months=version.refresher_months,
        modules=tuple(ModuleInfo(*row) for row in rows),
        required={role: frozenset(ids) for role, ids in required.items()},
    )


def load_evidence(session: Session, person_ids: list[int], policy: Policy) -> dict[int, Evidence]:
    """Evidence for many people in a fixed number of queries."""
    evidence = {pid: Evidence() for pid in person_ids}
    if not person_ids:
        return evidence
    for pid, module_id, mv_id, at in session.execute(
        select(
            ReadReceipt.person_id,
            ModuleVersion.module_id,
            ReadReceipt.module_version_id,
            ReadReceipt.at,
        )
        .join(ModuleVersion, ModuleVersion.id == ReadReceipt.module_version_id)
        .join(Module, Module.id == ModuleVersion.module_id)
        .where(Module.policy_id == policy.id, ReadReceipt.person_id.in_(person_ids))
    ):
        evidence[pid].receipts.append(Receipt(module_id, mv_id, at))
    for pid, mv_id, last_at in session.execute(
        select(ModuleVisit.person_id, ModuleVisit.module_version_id, ModuleVisit.last_at)
        .join(ModuleVersion, ModuleVersion.id == ModuleVisit.module_version_id)
        .join(Module, Module.id == ModuleVersion.module_id)
        .where(Module.policy_id == policy.id, ModuleVisit.person_id.in_(person_ids))
    ):
        evidence[pid].visited[mv_id] = last_at
    for pid, mv_id, at in session.execute(
        select(QuizAttempt.person_id, QuizAttempt.module_version_id, QuizSubmission.submitted_at)
        .join(QuizSubmission, QuizSubmission.attempt_id == QuizAttempt.id)
        .join(ModuleVersion, ModuleVersion.id == QuizAttempt.module_version_id)
        .join(Module, Module.id == ModuleVersion.module_id)
        .where(
            Module.policy_id == policy.id,
            QuizAttempt.person_id.in_(person_ids),
            QuizSubmission.passed.is_(True),
        )
    ):
        evidence[pid].passes.append((mv_id, at))
    acks = session.execute(
        select(
            Acknowledgement.id,
            Acknowledgement.person_id,
            Acknowledgement.policy_version_id,
            PolicyVersion.refresher_months,
            Acknowledgement.at,
        )
        .join(PolicyVersion, PolicyVersion.id == Acknowledgement.policy_version_id)
        .where(PolicyVersion.policy_id == policy.id, Acknowledgement.person_id.in_(person_ids))
    ).all()
    covered: dict[int, set[int]] = {}
    if acks:
        for ack_id, mv_id in session.execute(
            select(
                AcknowledgementModule.acknowledgement_id, AcknowledgementModule.module_version_id
            ).where(AcknowledgementModule.acknowledgement_id.in_([a[0] for a in acks]))
        ):
            covered.setdefault(ack_id, set()).add(mv_id)
    for ack_id, pid, pv_id, months, at in acks:
        evidence[pid].acks.append(
            Ack(ack_id, pv_id, months, at, frozenset(covered.get(ack_id, ())))
        )
    return evidence


def statuses_for(
    session: Session, people: list[Person], policy: Policy, now: datetime | None = None
) -> dict[int, Status]:
    """The rule for many people at once, in a fixed number of queries."""
    now = now or utcnow()
    version = current_version(session, policy, now.date())
    if version is None:
        raise LookupError(f"policy {policy.slug!r} has no published version")
    info = version_info(session, version)
    evidence = load_evidence(session, [p.id for p in people], policy)
    return {
        p.id: evaluate(
            person_id=p.id,
            active=p.active,
            roles=p.roles,
            version=info,
            evidence=evidence[p.id],
            now=now,
        )  # fmt: skip
        for p in people
    }


def training_status(
    session: Session, person: Person, policy: Policy, now: datetime | None = None
) -> Status:
    """Is ``person`` trained on ``policy`` now, and if not, what is missing?"""
    now = now or utcnow()
    version = current_version(session, policy, now.date())
    if version is None:
        raise LookupError(f"policy {policy.slug!r} has no published version")
    evidence = load_evidence(session, [person.id], policy)[person.id]
    return evaluate(
        person_id=person.id,
        active=person.active,
        roles=person.roles,
        version=version_info(session, version),
        evidence=evidence,
        now=now,
    )
