"""What reminders are due, when they may be sent, and the one job that queues them.

The job reads only the status store (``stored_status``): it never runs the training rule. Each
reminder due is recorded in ``reminder`` (unique per person, kind and cycle) and queued on the
outbox as one ``reminder.email`` message in the same transaction, due at once or, at night, when
the school's quiet hours end.

"When training became due" is the later of the person's creation and the date their current
policy version took effect: a new starter has N days from joining, and everyone has N days from a
new version that asks more of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from approvals.models import AccountApplication, AccountRunner, SocialAccount
from core import outbox
from core.db import insert_ignoring_conflict, writing
from people.models import Person
from reminders.models import Reminder, ReminderSettings
from training.models import PolicyVersion, StoredStatus
from training.status_store import bring_up_to_date

EMAIL = "reminder.email"  # one message per reminder: send it
RUN = "reminders.run"  # "send now": run the job at once, through the outbox
JOB = "reminders"

NOT_DONE = ("not_started", "in_progress", "outdated")  # required and not yet done
LAPSED = ("expired", "outdated")  # was trained, is not now


def load_settings(session: Session) -> ReminderSettings:
    """The stored settings, or the defaults when an administrator has not changed them."""
    return session.get(ReminderSettings, 1) or ReminderSettings(id=1)


def _zone() -> ZoneInfo:
    return ZoneInfo(current_app.config["TIMEZONE"])


def is_quiet(settings: ReminderSettings, moment: datetime) -> bool:
    """Whether ``moment`` falls in the quiet hours, in the school's time zone."""
    start, end = settings.quiet_from, settings.quiet_until
    if start == end:
        return False
    hour = moment.astimezone(_zone()).hour
    return (hour >= start or hour < end) if start > end else start <= hour < end


def next_allowed(settings: ReminderSettings, moment: datetime) -> datetime:
    """``moment``, or when the quiet hours around it end (the school's morning)."""
    if not is_quiet(settings, moment):
        return moment
    local = moment.astimezone(_zone())
    morning = datetime.combine(local.date(), time(settings.quiet_until), _zone())
    if morning <= local:
        morning = datetime.combine(local.date() + timedelta(days=1), time(settings.quiet_until),
                                   _zone())  # fmt: skip
    return morning.astimezone(UTC)


@dataclass(frozen=True)
class Due:
    person_id: int
    kind: str
    cycle: str
    policy_id: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time(), _zone()).astimezone(UTC)


def learner_reminders(session: Session, settings: ReminderSettings, now: datetime) -> list[Due]:
    """Not done N days after it became due (then every M days, K times at most), expiring in 30
    and in 7 days, expired. Inactive people and those it does not apply to get none."""
    s = StoredStatus
    rows = session.execute(
        # Only the columns needed: an hourly job over everyone must not load each answer's modules.
        select(s.person_id, s.policy_id, s.version, s.standing, s.valid_until, s.expired_at,
               Person.created_at, PolicyVersion.effective)
        .join(Person, Person.id == s.person_id)
        .join(PolicyVersion, PolicyVersion.id == s.policy_version_id)
        .where(Person.active.is_(True), s.active.is_(True))
        .where(s.standing.in_((*NOT_DONE, "trained", "expired")))
        .order_by(s.person_id, s.policy_id)
    ).all()  # fmt: skip
    found: list[Due] = []
    for row in rows:
        created, effective = row.created_at, row.effective
        base = f"{row.policy_id}:{row.version}"
        if row.standing in NOT_DONE and settings.on("not_started"):
            since = max(created, _start_of(effective))
            days = (now - since).days
            if days >= settings.first_after_days:
                n = 1 + (days - settings.first_after_days) // max(settings.every_days, 1)
                if n <= settings.max_times:
                    found.append(Due(row.person_id, "not_started", f"{base}:{n}", row.policy_id,
                                     {"n": n}))  # fmt: skip
        elif row.standing == "trained" and row.valid_until is not None:
            left = row.valid_until - now
            kind = "expiring_7" if left <= timedelta(days=7) else "expiring_30"
            if left <= timedelta(days=30) and settings.on(kind):
                found.append(Due(row.person_id, kind, f"{base}:{row.valid_until.isoformat()}",
                                 row.policy_id))  # fmt: skip
        elif row.standing == "expired" and settings.on("expired"):
            ended = row.expired_at or row.valid_until
            cycle = f"{base}:{ended.isoformat() if ended else ''}"
            found.append(Due(row.person_id, "expired", cycle, row.policy_id))
    return found


def runner_reminders(session: Session, settings: ReminderSettings) -> list[Due]:
    """A runner of an open account whose training has lapsed is told which account is at risk."""
    if not settings.on("account_at_risk"):
        return []
    rows = session.execute(
        select(StoredStatus, SocialAccount.id)
        .join(AccountRunner, AccountRunner.person_id == StoredStatus.person_id)
        .join(SocialAccount, SocialAccount.id == AccountRunner.account_id)
        .join(Person, Person.id == StoredStatus.person_id)
        .where(AccountRunner.removed_at.is_(None), SocialAccount.closed_at.is_(None))
        .where(Person.active.is_(True), StoredStatus.standing.in_(LAPSED))
        .order_by(StoredStatus.person_id, SocialAccount.id)
    ).all()
    found = []
    for row, account_id in rows:
        ended = row.expired_at or row.valid_until
        cycle = f"{row.policy_id}:{row.version}:{ended.isoformat() if ended else ''}:{account_id}"
        found.append(Due(row.person_id, "account_at_risk", cycle, row.policy_id,
                         {"account_id": account_id}))  # fmt: skip
    return found


def leader_reminders(session: Session, settings: ReminderSettings, now: datetime) -> list[Due]:
    """Mondays, the weekly digest for SLT and governors who want it; 30 days before a policy's
    review date, its owner."""
    from reminders.digest import digest_readers, owners, reviews_due

    found = []
    local = now.astimezone(_zone())
    if settings.on("digest") and local.weekday() == 0:
        year, week, _ = local.isocalendar()
        found += [Due(pid, "digest", f"{year}-W{week:02d}") for pid in digest_readers(session)]
    if settings.on("review_due"):
        for policy, version in reviews_due(session, now):
            cycle = f"{policy.id}:{version.label}:{version.next_review.isoformat()}"
            found += [Due(pid, "review_due", cycle, policy.id, {"version_id": version.id})
                      for pid in owners(session, version.owner)]  # fmt: skip
    return found


def queue(session: Session, due: Due, settings: ReminderSettings, now: datetime) -> bool:
    """Record ``due`` and queue its email, unless it was already: True when queued now."""
    when = next_allowed(settings, now)
    values = {"person_id": due.person_id, "kind": due.kind, "cycle": due.cycle,
              "policy_id": due.policy_id, "detail": due.detail, "created_at": now,
              "due_at": when}  # fmt: skip
    if not insert_ignoring_conflict(session, Reminder.__table__, values):
        return False
    reminder_id = session.scalar(
        select(Reminder.id).where(
            Reminder.person_id == due.person_id,
            Reminder.kind == due.kind,
            Reminder.cycle == due.cycle,
        )  # fmt: skip
    )
    outbox.enqueue(session, EMAIL, {"reminder_id": reminder_id}, key=f"{EMAIL}:{reminder_id}",
                   person_id=due.person_id, due_at=when)  # fmt: skip
    return True


def run(session: Session, now: datetime) -> int:
    """The reminder job: bring the status store up to date, then queue every reminder due.
    Returns how many were queued."""
    bring_up_to_date(session, now=now)
    settings = load_settings(session)
    queued = 0
    with writing(session):
        due = learner_reminders(session, settings, now) + runner_reminders(session, settings)
        for one in due + leader_reminders(session, settings, now):
            queued += queue(session, one, settings, now)
    return queued


def still_applies(session: Session, reminder: Reminder) -> bool:
    """Checked at send time: a learner who finished overnight is not reminded in the morning."""
    person = session.get(Person, reminder.person_id)
    if person is None or not person.active or person.erased_at is not None:
        return False
    if reminder.kind == "digest":
        from reminders.digest import wants_digest

        return wants_digest(session, person)
    if reminder.policy_id is None or reminder.kind == "review_due":
        return True
    row = session.get(StoredStatus, (reminder.person_id, reminder.policy_id))
    if row is None or not row.active:
        return False
    wanted = {"not_started": NOT_DONE, "expiring_30": ("trained",), "expiring_7": ("trained",),
              "expired": ("expired",), "account_at_risk": LAPSED}  # fmt: skip
    return row.standing in wanted.get(reminder.kind, (row.standing,))


def account_name(session: Session, account_id: int) -> str:
    account = session.get(SocialAccount, account_id)
    if account is None:
        return "an account"
    application = session.get(AccountApplication, account.application_id)
    name = application.name if application else account.handle
    return f"{name} ({account.platform}: {account.handle})"


def save_settings(session: Session, values: dict[str, Any]) -> ReminderSettings:
    """Store the administrators' settings (in the caller's transaction)."""
    from core.db import utcnow

    settings = session.get(ReminderSettings, 1)
    if settings is None:
        settings = ReminderSettings(id=1)
        session.add(settings)
    for name, value in values.items():
        setattr(settings, name, value)
    settings.updated_at = utcnow()
    return settings


def run_now(session: Session, message: Any) -> None:
    """The ``reminders.run`` handler: "send now" on the admin page."""
    from core.db import utcnow

    run(session, utcnow())
