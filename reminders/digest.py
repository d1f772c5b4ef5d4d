"""The weekly digest for SLT and governors, and the policy owner's review reminder.

Both read only stored answers and the register's own tables; neither runs the training rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from approvals.models import AccountApplication, AccountRunner, Decision, SocialAccount
from approvals.rules import MIN_STAFF_RUNNERS, STAFF_ROLES
from core.web import federation
from people.models import Person, PersonRole
from people.roles import role_code
from reminders.models import DigestChoice
from training.models import Policy, StoredStatus
from training.publishing import current_version

READERS = ("slt", "governor")  # who may have the digest
NOT_TRAINED = ("not_started", "in_progress", "outdated", "expired")


def wants_digest(session: Session, person: Person) -> bool:
    """An SLT member or governor gets the digest unless they switched it off."""
    if not person.active or not person.has_role(*READERS):
        return False
    choice = session.get(DigestChoice, person.id)
    return choice is None or choice.weekly_digest


def digest_readers(session: Session) -> list[int]:
    off = select(DigestChoice.person_id).where(DigestChoice.weekly_digest.is_(False))
    return list(
        session.scalars(
            select(Person.id)
            .join(PersonRole, PersonRole.person_id == Person.id)
            .where(Person.active.is_(True), PersonRole.role.in_(READERS), Person.id.not_in(off))
            .distinct()
            .order_by(Person.id)
        )
    )


def set_digest(session: Session, person: Person, on: bool) -> None:
    from core.db import utcnow

    choice = session.get(DigestChoice, person.id)
    if choice is None:
        session.add(DigestChoice(person_id=person.id, weekly_digest=on, changed_at=utcnow()))
    else:
        choice.weekly_digest, choice.changed_at = on, utcnow()


@dataclass
class Digest:
    overdue: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # school: rows
    expiring: list[tuple[str, str, datetime]] = field(default_factory=list)
    flagged: list[tuple[str, list[str]]] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)

    @property
    def overdue_count(self) -> int:
        return sum(len(rows) for rows in self.overdue.values())


def weekly_digest(session: Session, now: datetime) -> Digest:
    """Who is not trained (by school), whose training expires within 30 days, which accounts
    the register flags, and which applications wait for a decision."""
    digest = Digest()
    fed = federation()
    rows = session.execute(
        select(StoredStatus, Person, Policy.title)
        .join(Person, Person.id == StoredStatus.person_id)
        .join(Policy, Policy.id == StoredStatus.policy_id)
        .where(Person.active.is_(True), StoredStatus.active.is_(True))
        .options(selectinload(Person.school_rows))
        .order_by(Person.name, Policy.title)
    ).all()
    soon = now + timedelta(days=30)
    for status, person, title in rows:
        if status.standing in NOT_TRAINED:
            for school in person.schools or [""]:
                name = fed.school_name(school) if school else "No school"
                digest.overdue.setdefault(name, []).append(
                    (person.name, title, status.standing.replace("_", " "))
                )
        elif status.standing == "trained" and status.valid_until and status.valid_until <= soon:
            digest.expiring.append((person.name, title, status.valid_until))
    digest.overdue = dict(sorted(digest.overdue.items()))
    digest.flagged = flagged_accounts(session)
    digest.waiting = list(
        session.scalars(
            select(AccountApplication.name)
            .outerjoin(Decision, Decision.application_id == AccountApplication.id)
            .where(Decision.id.is_(None))
            .order_by(AccountApplication.submitted_at)
        )
    )
    return digest


def flagged_accounts(session: Session) -> list[tuple[str, list[str]]]:
    """Open accounts whose runners left, are not trained (by their stored answers), or are too
    few staff: the register's own checks, from the status store."""
    untrained = set(
        session.scalars(select(StoredStatus.person_id).where(StoredStatus.standing != "trained"))
    )
    found = []
    accounts = session.scalars(
        select(SocialAccount).where(SocialAccount.closed_at.is_(None)).order_by(SocialAccount.id)
    )
    for account in accounts:
        runners = [
            r.person
            for r in session.scalars(
                select(AccountRunner).where(
                    AccountRunner.account_id == account.id, AccountRunner.removed_at.is_(None)
                )
            )
        ]
        problems = [f"{p.name} has left" for p in runners if not p.active]
        problems += [f"{p.name} is no longer trained" for p in runners
                     if p.active and p.id in untrained]  # fmt: skip
        staff = [p for p in runners if p.active and p.has_role(*STAFF_ROLES)]
        if len(staff) < MIN_STAFF_RUNNERS:
            problems.append(f"fewer than {MIN_STAFF_RUNNERS} staff run it")
        if problems:
            found.append((f"{account.platform}: {account.handle}", problems))
    return found


# --- the policy owner ----------------------------------------------------------------------------


def owners(session: Session, owner: str) -> list[int]:
    """The people a policy's free-text ``owner`` names: a person (by name or email), a role
    ("SLT", "Senior Leadership Team", "Governors"), or, when it names no one, SLT and admins."""
    text = " ".join(owner.split()).casefold()
    active = select(Person.id).where(Person.active.is_(True))
    by_person = list(
        session.scalars(active.where((Person.email == text) | (Person.name.ilike(owner.strip()))))
    )
    if by_person:
        return by_person
    role = role_code(owner)
    if role is None:
        words = set(text.replace("(", " ").replace(")", " ").split())
        if "senior leadership" in text or "slt" in words:
            role = "slt"
        elif words & {"governor", "governors", "governing"}:
            role = "governor"
    roles = (role,) if role else ("slt", "admin")
    return list(
        session.scalars(
            active.join(PersonRole, PersonRole.person_id == Person.id)
            .where(PersonRole.role.in_(roles))
            .distinct()
            .order_by(Person.id)
        )
    )


def reviews_due(session: Session, now: datetime) -> list[tuple[Policy, object]]:
    """Policies whose version in force is to be reviewed within 30 days (and not yet past)."""
    today = now.date()
    found = []
    for policy in session.scalars(select(Policy).order_by(Policy.id)):
        version = current_version(session, policy, today)
        if version and version.next_review and 0 <= (version.next_review - today).days <= 30:
            found.append((policy, version))
    return found
