"""The demo's social media accounts, made through the approval rules themselves.

Each application is submitted with :func:`approvals.rules.submit_application` (at least two staff
runners, all active), decided with :func:`approvals.rules.decide` at a moment in the past (so the
rule checks that every runner was trained *then* and keeps its snapshot), and recorded with
:func:`approvals.rules.record_account`, each given its moment in the story (the register is
evidence: its rows are digested as written, never re-dated afterwards); the demo dates the
application itself.

Two accounts need attention on the register: one runner of "Junior sport" has left since, and the
runners of the early years group were approved over a year ago and one of them has let her training
lapse. One application waits for a decision because one of its runners is part-way through.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from approvals.rules import (
    ApplicationData,
    ApprovalError,
    decide,
    record_account,
    submit_application,
)
from demo.learning import Draft
from people.models import Person
from people.service import deactivate
from training.loader import Federation


@dataclass(frozen=True)
class AccountSpec:
    name: str  # "{school}" is the school's name
    school: int  # index into the federation's schools
    platform: str
    handle: str  # "{tag}" is the school's name run together, e.g. LadysmithJunior
    visibility: str
    aim: str
    audience: str
    promotion: str
    applicant: str  # cast keys (demo.population.CAST)
    runners: tuple[str, ...]
    decider: str | None  # None: still waiting for a decision
    long_ago: bool = False  # approved when the runners first trained, over a year ago
    leaver: str | None = None  # a runner who has left since


ACCOUNTS = (
    AccountSpec(
        "{school} Facebook page", 1, "Facebook", "https://www.facebook.com/{tag}", "open",
        "Share news, celebrations and reminders with families and the village.",
        "Parents and carers, and the local community.",
        "The weekly newsletter, the school website and the noticeboard by the gate.",
        "a2", ("a1", "a2", "a3"), "head",
    ),
    AccountSpec(
        "{school} on Instagram", 0, "Instagram", "@{tag}", "open",
        "Show pupils' work and the life of the school to families.",
        "Parents and carers of pupils at the school.",
        "A link in the newsletter and a poster in the entrance.",
        "b1", ("b1", "b2"), "head",
    ),
    AccountSpec(
        "{school} sport and PE", 1, "X (Twitter)", "@{tag}Sport", "open",
        "Fixtures, results and after-school clubs.",
        "Families, and the schools we play against.",
        "Mentioned in assemblies and on the sports page of the website.",
        "c2", ("c1", "c2"), "head_junior", leaver="c1",
    ),
    AccountSpec(
        "{school} early years group", 0, "Facebook", "https://www.facebook.com/groups/{tag}EYFS",
        "private",
        "Keep Reception families up to date: trips, reading books, what to bring.",
        "Parents and carers of children in Reception, admitted by the class teacher.",
        "An invitation in the welcome pack each September.",
        "d2", ("d1", "d2"), "head", long_ago=True,
    ),
    AccountSpec(
        "{school} Year 6 residential blog", 1, "YouTube", "https://www.youtube.com/@{tag}Year6",
        "private",
        "Short daily videos from the Year 6 residential trip, so families can follow along.",
        "Parents and carers of Year 6 pupils, through unlisted links.",
        "A letter home before the trip.",
        "a1", ("a1", "e1"), None,
    ),
)  # fmt: skip
REASON = "The business case is clear and every runner is trained."


def make_accounts(
    session: Session,
    cast: dict[str, Draft],
    ids: dict[str, int],
    federation: Federation,
    now: datetime,
    rng: random.Random,
) -> list[str]:
    """Apply, decide and record each account; returns a line for each that could not be made."""
    problems = []
    schools = list(federation.schools)
    for spec in ACCOUNTS:
        school = schools[spec.school % len(schools)].name if schools else federation.name
        tag = "".join(w for w in school.split() if w.lower() != "school")
        name = spec.name.format(school=school)
        try:
            with session.begin_nested():
                _make(session, spec, name, tag, cast, ids, now, rng)
        except ApprovalError as exc:
            problems.append(f"{name}: not created ({exc})")
    return problems


def _signed(draft: Draft, first: bool) -> datetime | None:
    moments = sorted(ack["at"] for ack, _ in draft.acks)
    return (moments[0] if first else moments[-1]) if moments else None


def _make(
    session: Session,
    spec: AccountSpec,
    name: str,
    tag: str,
    cast: dict[str, Draft],
    ids: dict[str, int],
    now: datetime,
    rng: random.Random,
) -> None:
    keys = {spec.applicant, "admin", *spec.runners} | ({spec.decider} if spec.decider else set())
    person = {key: session.get(Person, ids[key]) for key in keys}
    signed = [_signed(cast[key], spec.long_ago) for key in spec.runners]
    ready = max((s for s in signed if s is not None), default=now - timedelta(days=3))
    application = submit_application(
        session,
        person[spec.applicant],
        ApplicationData(
            name=name,
            platform=spec.platform,
            aim=spec.aim,
            audience=spec.audience,
            promotion=spec.promotion,
            visibility=spec.visibility,
            runner_ids=tuple(ids[key] for key in spec.runners),
        ),
    )
    if spec.decider is None:
        application.submitted_at = now - timedelta(days=rng.uniform(1, 3))
        session.flush()
        return
    if spec.long_ago:  # approved while the runners' first training was fresh
        decided = ready + timedelta(days=rng.uniform(2, 4))
    else:
        decided = ready + (now - ready) * rng.uniform(0.2, 0.35)
    applicant_joined = cast[spec.applicant].created_at + timedelta(days=1)
    application.submitted_at = max(applicant_joined, ready - timedelta(days=rng.uniform(3, 8)))
    session.flush()
    decide(session, application, person[spec.decider], True, REASON, now=decided)
    recorded = decided + min((now - decided) * 0.2, timedelta(days=rng.uniform(1, 3)))
    record_account(
        session, application, person["admin"], spec.platform, spec.handle.format(tag=tag),
        now=recorded,
    )  # fmt: skip
    if spec.leaver:
        left = recorded + (now - recorded) * rng.uniform(0.4, 0.7)
        deactivate(person[spec.leaver], at=left)
    session.flush()
