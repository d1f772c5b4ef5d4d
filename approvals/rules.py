"""The policy's process for a new account, as rules.

"Anyone wishing to create such an account must present a business case … Who will run the account
(at least two staff members should be named) … the SLT must be satisfied that anyone running a
social media account on behalf of the Federation has read and understood this policy and received
appropriate training." The training part asks the one status rule; nothing here decides "trained".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, selectinload

from approvals.models import (
    AccountApplication,
    AccountRunner,
    ApplicationRunner,
    Decision,
    SocialAccount,
)
from audit.log import note_before_change, record, record_evidence
from core.db import insert_ignoring_conflict, utcnow
from people.models import Person, PersonRole, PersonSchool
from training.models import Policy
from training.status import REASON_TEXT, Status, statuses_for

VISIBILITY = {"open": "Open (anyone can see it)", "private": "Private or closed (members only)"}
PLATFORMS = ["Facebook", "X (Twitter)", "Instagram", "YouTube", "LinkedIn", "TikTok", "Other"]
STAFF_ROLES = ("staff", "slt")
# The policy: staff run accounts, and volunteers and parents may help. Governors and
# administrators are named only when they also hold one of these roles.
RUNNER_ROLES = ("staff", "slt", "volunteer", "parent")
MIN_STAFF_RUNNERS = 2
# Looks like a credential: the app refuses to keep one.
_SECRET_RE = re.compile(r"pass(word)?\s*[:=]|pwd\s*[:=]", re.I)


class ApprovalError(ValueError):
    """Something the process does not allow; the message says why."""


@dataclass(frozen=True)
class ApplicationData:
    name: str
    platform: str
    aim: str
    audience: str
    promotion: str
    visibility: str
    runner_ids: tuple[int, ...]


@dataclass(frozen=True)
class RunnerStatus:
    person: Person
    status: Status | None  # None when no policy is published

    @property
    def is_staff(self) -> bool:
        return self.person.has_role(*STAFF_ROLES)

    @property
    def trained(self) -> bool:
        return self.status is not None and self.status.trained

    def missing_text(self) -> list[str]:
        if not self.person.active:
            return ["has left (deactivated)"]
        if self.status is None:
            return ["no policy has been published"]
        if not self.status.required:
            return ["their roles require no training, so they cannot be counted as trained"]
        # One line per reason, so a runner who has not begun reads as one line, not thirteen.
        titles = {m.slug: m.title for m in self.status.modules}
        by_reason: dict[str, list[str]] = {}
        for m in self.status.missing:
            if m.module is not None:
                by_reason.setdefault(m.reason, []).append(titles[m.module])
        lines = []
        for reason, names in by_reason.items():
            every = len(names) == len(self.status.modules) and len(names) > 1
            which = f"all {len(names)} modules" if every else ", ".join(names)
            lines.append(f"{REASON_TEXT[reason].capitalize()}: {which}")
        lines += [
            f"Signature: {REASON_TEXT[m.reason]}" for m in self.status.missing if m.module is None
        ]
        return lines


def _policies(session: Session) -> list[Policy]:
    return list(session.scalars(select(Policy).order_by(Policy.title)))


def runner_statuses(
    session: Session, people: list[Person], now: datetime | None = None
) -> list[RunnerStatus]:
    """Each runner against every published policy (trained means trained on all of them)."""
    policies = _policies(session)
    if not policies:
        return [RunnerStatus(p, None) for p in people]
    by_policy = [statuses_for(session, people, policy, now) for policy in policies]
    result = []
    for person in people:
        statuses = [s[person.id] for s in by_policy]
        failing = next((s for s in statuses if not s.trained), statuses[0])
        result.append(RunnerStatus(person, failing))
    return result


def runner_candidates(session: Session, applicant: Person) -> list[Person]:
    """The people ``applicant`` may name as runners, by name.

    Staff, volunteers and parents of the applicant's own school(s), plus federation-wide staff (who
    have no school). An applicant with no school works across the federation and may choose from
    everyone who can run an account. Nobody else is listed, so the form is not a staff directory;
    the form refuses anyone not offered.
    """
    query = (
        select(Person)
        .where(
            Person.active.is_(True),
            Person.role_rows.any(PersonRole.role.in_(RUNNER_ROLES)),
        )
        .options(selectinload(Person.role_rows))
        .order_by(func.lower(Person.name), Person.id)
    )
    schools = applicant.schools
    if schools:
        query = query.where(
            or_(
                Person.school_rows.any(PersonSchool.school.in_(schools)),
                and_(
                    ~Person.school_rows.any(),
                    Person.role_rows.any(PersonRole.role.in_(STAFF_ROLES)),
                ),
            )
        )
    return list(session.scalars(query))


def _check_runners(session: Session, runner_ids: tuple[int, ...]) -> list[Person]:
    ids = list(dict.fromkeys(runner_ids))
    people = session.scalars(
        select(Person).where(Person.id.in_(ids)).options(selectinload(Person.role_rows))
    ).all()
    if len(people) != len(ids):
        raise ApprovalError("Choose runners from the people listed.")
    inactive = [p.name for p in people if not p.active]
    if inactive:
        raise ApprovalError(f"{', '.join(inactive)} has left and cannot run an account.")
    staff = [p for p in people if p.has_role(*STAFF_ROLES)]
    if len(staff) < MIN_STAFF_RUNNERS:
        raise ApprovalError(
            f"Name at least {MIN_STAFF_RUNNERS} staff members to run the account "
            f"({len(staff)} of those chosen {'is' if len(staff) == 1 else 'are'} staff). "
            "Volunteers and parents may help as well."
        )
    return list(people)


def submit_application(
    session: Session, applicant: Person, data: ApplicationData
) -> AccountApplication:
    for label, value in (("name", data.name), ("aim", data.aim), ("intended audience", data.audience),
                         ("how it will be promoted", data.promotion)):  # fmt: skip
        if not value.strip():
            raise ApprovalError(f"Say {label}.")
    if data.visibility not in VISIBILITY:
        raise ApprovalError("Say whether the account will be open or private/closed.")
    if data.platform not in PLATFORMS:
        raise ApprovalError("Choose the platform.")
    runners = _check_runners(session, data.runner_ids)
    application = AccountApplication(
        applicant_id=applicant.id,
        name=" ".join(data.name.split())[:200],
        platform=data.platform,
        aim=data.aim.strip(),
        audience=data.audience.strip(),
        promotion=data.promotion.strip(),
        visibility=data.visibility,
        submitted_at=utcnow(),
    )
    application.runner_rows = [ApplicationRunner(person_id=p.id) for p in runners]
    session.add(application)
    session.flush()
    return application


class RunnersNotTrained(ApprovalError):
    def __init__(self, runners: list[RunnerStatus]) -> None:
        self.runners = runners
        names = ", ".join(r.person.name for r in runners if not r.trained or not r.person.active)
        super().__init__(
            f"This account cannot be approved while these runners are not trained: {names}."
        )


class NotIndependent(ApprovalError):
    """The person deciding has a stake in the application (segregation of duties)."""


def conflict_of_interest(application: AccountApplication, person: Person) -> str | None:
    """Why ``person`` may not decide ``application``, or None when they may.

    Whoever made the business case, or is named to run the account, cannot be the one who approves
    it: another member of the senior leadership team decides.
    """
    if application.applicant_id == person.id:
        return (
            "You made this application, so another member of the senior leadership team must "
            "decide it."
        )
    if any(runner.id == person.id for runner in application.runners):
        return (
            "You are named to run this account, so another member of the senior leadership team "
            "must decide it."
        )
    return None


def decide(
    session: Session,
    application: AccountApplication,
    decided_by: Person,
    approve: bool,
    reason: str,
    now: datetime | None = None,
) -> Decision:
    """Approve or reject. Approval is refused unless every runner is trained at this moment."""
    now = now or utcnow()
    if application.decision is not None:
        raise ApprovalError("This application has already been decided.")
    conflict = conflict_of_interest(application, decided_by)
    if conflict:
        raise NotIndependent(conflict)
    reason = reason.strip()
    if not approve and not reason:
        raise ApprovalError("Give a reason for rejecting the application.")
    runners = runner_statuses(session, application.runners, now)
    if approve and not all(r.trained and r.person.active for r in runners):
        raise RunnersNotTrained(runners)
    snapshot = [
        {
            "person_id": r.person.id,
            "name": r.person.name,
            "trained": r.trained,
            "valid_until": r.status.valid_until.isoformat()
            if r.status and r.status.valid_until
            else None,
            "missing": r.missing_text(),
        }
        for r in runners
    ]
    inserted = insert_ignoring_conflict(
        session,
        Decision.__table__,
        {
            "application_id": application.id,
            "approved": approve,
            "reason": reason[:2000],
            "decided_by_id": decided_by.id,
            "decided_at": now,
            "runners_snapshot": snapshot,
        },
    )
    if not inserted:
        raise ApprovalError("This application has already been decided.")
    session.expire(application, ["decision"])
    decision = application.decision
    record_evidence(
        session, "approval.decided", "application_decision", [decision.id],
        actor_id=decided_by.id, subject_type="account_application", subject_id=application.id,
        detail={"approved": approve},
    )  # fmt: skip
    return decision


def record_account(
    session: Session,
    application: AccountApplication,
    admin: Person,
    platform: str,
    handle: str,
    now: datetime | None = None,
) -> SocialAccount:
    """After approval: the account exists. Its address is recorded; its password never is.
    ``now`` is when it was recorded (the present unless given)."""
    if application.state != "approved":
        raise ApprovalError("Only an approved application can have its account recorded.")
    if application.account is not None:
        raise ApprovalError("This account has already been recorded.")
    handle = handle.strip()
    if not handle or len(handle) > 300:
        raise ApprovalError("Give the account's handle or web address.")
    if _SECRET_RE.search(handle):
        raise ApprovalError(
            "That looks like a password. Keep account credentials in the federation's password "
            "manager, never here."
        )
    if platform not in PLATFORMS:
        raise ApprovalError("Choose the platform.")
    now = now or utcnow()
    account = SocialAccount(
        application_id=application.id, platform=platform, handle=handle,
        recorded_by_id=admin.id, recorded_at=now,
    )  # fmt: skip
    account.runner_rows = [
        AccountRunner(person_id=p.id, added_at=now, added_by_id=admin.id)
        for p in application.runners
    ]
    session.add(account)
    session.flush()
    # The register is evidence: the account and each runner row are recorded with their digests.
    record_evidence(
        session, "account.recorded", "social_account", [account.id], actor_id=admin.id,
        detail={"application_id": application.id},
    )  # fmt: skip
    _record_runners(session, "account.runner_added", account, account.runner_rows, admin)
    return account


def _record_runners(
    session: Session, event: str, account: SocialAccount, rows: list[AccountRunner], admin: Person
) -> None:
    record_evidence(
        session, event, "account_runner", [row.id for row in rows], actor_id=admin.id,
        subject_type="social_account", subject_id=account.id,
    )  # fmt: skip


@dataclass(frozen=True)
class RegisterEntry:
    account: SocialAccount
    runners: list[RunnerStatus]

    @property
    def problems(self) -> list[str]:
        """Why the account needs the administrator's attention (the hand-over process)."""
        out = []
        for r in self.runners:
            if not r.person.active:
                out.append(f"{r.person.name} has left")
            elif not r.trained:
                out.append(f"{r.person.name} is no longer trained")
        staff = [r for r in self.runners if r.is_staff and r.person.active]
        if len(staff) < MIN_STAFF_RUNNERS:
            out.append(f"fewer than {MIN_STAFF_RUNNERS} staff run it")
        return out

    @property
    def flagged(self) -> bool:
        return bool(self.problems)


def register(
    session: Session, include_closed: bool = False, now: datetime | None = None
) -> list[RegisterEntry]:
    query = select(SocialAccount).order_by(SocialAccount.platform, SocialAccount.handle)
    if not include_closed:
        query = query.where(SocialAccount.closed_at.is_(None))
    accounts = list(session.scalars(query))
    people = list({p.id: p for a in accounts for p in a.current_runners}.values())
    statuses = {r.person.id: r for r in runner_statuses(session, people, now)} if people else {}
    return [RegisterEntry(a, [statuses[p.id] for p in a.current_runners]) for a in accounts]


def transfer(
    session: Session, account: SocialAccount, admin: Person, runner_ids: tuple[int, ...]
) -> None:
    """Hand the account to other runners, who must all be trained now."""
    if account.closed_at is not None:
        raise ApprovalError("This account is closed.")
    people = _check_runners(session, runner_ids)
    statuses = runner_statuses(session, people)
    if not all(r.trained for r in statuses):
        raise RunnersNotTrained(statuses)
    now = utcnow()
    keep = {p.id for p in people}
    current = {row.person_id: row for row in account.runner_rows if row.removed_at is None}
    note_before_change(session, "account_runner", [row.id for row in current.values()])
    removed, added = [], []
    for person_id, row in current.items():
        if person_id not in keep:
            row.removed_at = now
            removed.append(row)
    for person in people:
        if person.id not in current:
            added.append(AccountRunner(person_id=person.id, added_at=now, added_by_id=admin.id))
            account.runner_rows.append(added[-1])
    session.flush()
    _record_runners(session, "account.runner_removed", account, removed, admin)
    _record_runners(session, "account.runner_added", account, added, admin)
    record(
        session, "account.handed_over", actor_id=admin.id, subject_type="social_account",
        subject_id=account.id,
        detail={
            "added": " ".join(str(p.id) for p in people if p.id not in current),
            "removed": " ".join(str(i) for i in sorted(current) if i not in keep),
        },
    )  # fmt: skip


def close(session: Session, account: SocialAccount, admin: Person, reason: str) -> None:
    if account.closed_at is not None:
        raise ApprovalError("This account is already closed.")
    if not reason.strip():
        raise ApprovalError("Say why the account is being closed.")
    note_before_change(session, "social_account", [account.id])
    account.closed_at = utcnow()
    account.closed_by_id = admin.id
    account.close_reason = reason.strip()[:2000]
    session.flush()
    record_evidence(session, "account.closed", "social_account", [account.id], actor_id=admin.id)
