"""The figures governors and SLT read: completion by school and role, who is where, and when.

Every figure comes from the stored answers of the one rule (``stored_status``, kept by
:mod:`training.status_store`): :func:`up_to_date` first brings any out-of-date answer up to date, then the
figures are plain aggregations in the database, so a report of thousands of people is one page of
SQL rather than thousands of evaluations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from core.db import db, utcnow
from people.models import Person, PersonRole, PersonSchool
from people.roles import ROLES
from training.models import Acknowledgement, PolicyVersion, StoredStatus
from training.status_store import bring_up_to_date

NO_SCHOOL = ""  # people who work across the federation

# The filters of the people table: (value, label). "expiring" takes a number of days.
FILTERS = {
    "": "Everyone who must be trained",
    "not_trained": "Not trained",
    "never_trained": "Never trained",
    "expiring": "Trained, expiring soon",
    "expired": "Training expired",
    "outdated": "Trained on an earlier version only",
    "trained": "Trained",
    "inactive": "Deactivated (left)",
}
DUE = ("in_progress", "not_started", "expired", "outdated")  # must be trained and are not


def up_to_date(now: datetime | None = None) -> int:
    """Bring every stored answer up to date; returns how many were recomputed."""
    return bring_up_to_date(db.session, now=now)


@dataclass
class Completion:
    """People who must be trained, in one group (a school or a role)."""

    key: str
    label: str
    counts: dict[str, int] = field(default_factory=dict)  # standing -> people

    @property
    def required(self) -> int:
        return sum(n for s, n in self.counts.items() if s not in ("not_required", "inactive"))

    @property
    def trained(self) -> int:
        return self.counts.get("trained", 0)

    @property
    def due(self) -> int:
        return sum(self.counts.get(s, 0) for s in DUE)

    @property
    def percent(self) -> float:
        return 100.0 * self.trained / self.required if self.required else 0.0


def _grouped(
    session: Session, policy_id: int, column: Any, join: Any, school: str | None = None
) -> dict[str, dict]:
    query = (
        select(column, StoredStatus.standing, func.count())
        .select_from(StoredStatus)
        .outerjoin(join, join.c.person_id == StoredStatus.person_id)
        .where(StoredStatus.policy_id == policy_id)
        .group_by(column, StoredStatus.standing)
    )
    if school is not None:
        query = query.where(
            StoredStatus.person_id.in_(
                select(PersonSchool.person_id).where(PersonSchool.school == school)
            )
        )
    rows = session.execute(query).all()
    out: dict[str, dict] = {}
    for key, standing, count in rows:
        out.setdefault(key or NO_SCHOOL, {})[standing] = count
    return out


def by_school(session: Session, policy_id: int, schools: dict[str, str]) -> list[Completion]:
    """Completion per school (a person in two schools counts in both), then federation-wide."""
    table = PersonSchool.__table__
    grouped = _grouped(session, policy_id, table.c.school, table)
    names = {**schools, NO_SCHOOL: "Federation-wide"}
    return [Completion(code, names.get(code, code), grouped.get(code, {})) for code in names]


def by_role(session: Session, policy_id: int, school: str | None = None) -> list[Completion]:
    """Completion per role (a person with two roles counts in both), optionally in one school."""
    table = PersonRole.__table__
    grouped = _grouped(session, policy_id, table.c.role, table, school)
    return [Completion(code, label, grouped.get(code, {})) for code, label in ROLES.items()]


def overall(session: Session, policy_id: int) -> Completion:
    counts = dict(
        session.execute(
            select(StoredStatus.standing, func.count())
            .where(StoredStatus.policy_id == policy_id)
            .group_by(StoredStatus.standing)
        ).all()
    )
    return Completion("all", "Everyone", counts)


def _month(session: Session, column: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(column, "YYYY-MM")
    return func.strftime("%Y-%m", column)


def months_back(now: datetime, count: int) -> list[str]:
    """The last ``count`` months as "YYYY-MM", oldest first, ending with ``now``'s month."""
    year, month = now.year, now.month
    out = []
    for _ in range(count):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return out[::-1]


def signed_per_month(
    session: Session, policy_id: int, now: datetime | None = None, months: int = 12
) -> list[tuple[str, int]]:
    """Acknowledgements signed in each of the last ``months`` months (any version)."""
    now = now or utcnow()
    keys = months_back(now, months)
    start = datetime.strptime(keys[0] + "-01", "%Y-%m-%d").replace(tzinfo=now.tzinfo)
    month = _month(session, Acknowledgement.at)
    counts = dict(
        session.execute(
            select(month, func.count())
            .join(PolicyVersion, PolicyVersion.id == Acknowledgement.policy_version_id)
            .where(PolicyVersion.policy_id == policy_id, Acknowledgement.at >= start)
            .group_by(month)
        ).all()
    )
    return [(key, counts.get(key, 0)) for key in keys]


# --- the people table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PeopleFilter:
    school: str = ""  # a school code, "none" for federation-wide, "" for all
    role: str = ""
    status: str = ""  # a key of FILTERS
    days: int = 30  # for "expiring"
    q: str = ""  # part of a name or email


@dataclass(frozen=True)
class Row:
    person_id: int
    name: str
    email: str
    active: bool
    standing: str
    completed: int
    required: int
    valid_until: datetime | None
    modules: dict[str, str]  # module slug -> "completed", "in_progress" or "not_started"
    missing: list[dict]


def _people_query(policy_id: int, f: PeopleFilter, now: datetime) -> Select:
    query = (
        select(
            Person.id,
            Person.name,
            Person.email,
            Person.active,
            StoredStatus.standing,
            StoredStatus.completed,
            StoredStatus.required,
            StoredStatus.valid_until,
            StoredStatus.modules,
            StoredStatus.missing,
        )  # fmt: skip
        .join(StoredStatus, StoredStatus.person_id == Person.id)
        .where(StoredStatus.policy_id == policy_id)
    )
    if f.school == "none":
        query = query.where(~Person.id.in_(select(PersonSchool.person_id)))
    elif f.school:
        query = query.where(
            Person.id.in_(select(PersonSchool.person_id).where(PersonSchool.school == f.school))
        )
    if f.role:
        query = query.where(
            Person.id.in_(select(PersonRole.person_id).where(PersonRole.role == f.role))
        )
    standing = StoredStatus.standing
    if f.status == "inactive":
        query = query.where(standing == "inactive")
    elif f.status == "trained":
        query = query.where(standing == "trained")
    elif f.status == "not_trained":
        query = query.where(standing.in_(DUE))
    elif f.status == "never_trained":
        query = query.where(standing.in_(("in_progress", "not_started")))
    elif f.status in ("expired", "outdated"):
        query = query.where(standing == f.status)
    elif f.status == "expiring":
        query = query.where(
            standing == "trained", StoredStatus.valid_until <= now + timedelta(days=f.days)
        )
    else:
        query = query.where(standing.not_in(("inactive", "not_required")))
    if f.q:
        like = "%" + f.q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(
            or_(
                func.lower(Person.name).like(like, escape="\\"),
                Person.email.like(like, escape="\\"),
            )
        )
    return query


def _row(values: Any) -> Row:
    pid, name, email, active, standing, completed, required, valid_until, modules, missing = values
    return Row(
        pid, name, email, active, standing, completed, required, valid_until,
        {m["slug"]: m["state"] for m in modules}, [{"module": m["module"], "reason": m["reason"]}
                                                   for m in missing],
    )  # fmt: skip


def people_page(
    session: Session, policy_id: int, f: PeopleFilter, page: int, size: int,
    now: datetime | None = None,
) -> tuple[list[Row], int]:  # fmt: skip
    """One page of the people table, by name, and how many people match in all."""
    query = _people_query(policy_id, f, now or utcnow())
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.execute(
        query.order_by(func.lower(Person.name), Person.id).limit(size).offset((page - 1) * size)
    ).all()
    return [_row(r) for r in rows], total


def people_rows(
    session: Session, policy_id: int, f: PeopleFilter, now: datetime | None = None
) -> Iterator[Row]:
    """Every matching person, streamed in batches (constant memory, for exports)."""
    query = _people_query(policy_id, f, now or utcnow()).order_by(
        func.lower(Person.name), Person.id
    )
    result = session.execute(query.execution_options(yield_per=500, stream_results=True))
    for values in result:
        yield _row(values)


def roles_and_schools(session: Session, person_ids: list[int]) -> dict[int, tuple[list, list]]:
    """Each person's roles and schools, for a page of people (two queries)."""
    out: dict[int, tuple[list, list]] = {pid: ([], []) for pid in person_ids}
    if not person_ids:
        return out
    for pid, role in session.execute(
        select(PersonRole.person_id, PersonRole.role).where(PersonRole.person_id.in_(person_ids))
    ):
        out[pid][0].append(role)
    for pid, school in session.execute(
        select(PersonSchool.person_id, PersonSchool.school).where(
            PersonSchool.person_id.in_(person_ids)
        )
    ):
        out[pid][1].append(school)
    return out


def overdue_in_school(session: Session, policy_id: int, school: str) -> list[Row]:
    """Everyone at a school who must be trained and is not, by name."""
    f = PeopleFilter(school=school, status="not_trained")
    query = _people_query(policy_id, f, utcnow()).order_by(func.lower(Person.name), Person.id)
    return [_row(r) for r in session.execute(query)]
