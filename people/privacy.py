"""A person's own data, and erasing a leaver's personal data once the retention period has passed.

Under UK GDPR a person may have a copy of the personal data held about them (``personal_data``),
and data is kept only as long as its purpose needs (``erase_person``). The purpose here is
evidence: that a named person read and acknowledged a policy version before running a federation
account, for the senior leadership team's approvals and for inspection. Once a leaver is past the
retention period that purpose is spent for their name, but the federation still needs to show
*that* someone in a role and school was trained and signed. So erasure replaces who they were with
a pseudonym and keeps the evidence rows, tied to the pseudonymous id.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, text
from sqlalchemy.orm import Session

from api.models import ApiToken, PrecomputedStatus, Webhook, WebhookDelivery
from approvals.models import (
    AccountApplication,
    AccountRunner,
    ApplicationRunner,
    Decision,
    SocialAccount,
)
from audit.evidence import NotAsRecorded, as_recorded
from audit.log import note_before_change, record, record_evidence, trusted_rows
from audit.models import ErasureMarker
from certificates.models import Certificate
from core.db import utcnow
from lti.models import LtiGradeLink, LtiIdentity, LtiLinkRequest, LtiPlatform
from mfa.models import PasskeyChallenge, RecoveryCode, SecondFactor
from people.models import Person, SignInAttempt
from quizzes.models import QuizAttempt, QuizSubmission
from quizzes.versions import drawn_of
from training.models import (
    Acknowledgement,
    Module,
    ModuleVersion,
    ModuleVisit,
    Policy,
    ReadReceipt,
)

log = logging.getLogger("countersign.privacy")

# Six years after leaving: the period school HR retention schedules keep staff training records
# for (the limitation period for claims), unless COUNTERSIGN_RETENTION_DAYS says otherwise.
DEFAULT_RETENTION_DAYS = 6 * 365

EXPORTED = "personal_data.exported"
# The evidence tables erasure changes (only the columns migration 0011's triggers let it).
EVIDENCE_PSEUDONYMISED = (
    "acknowledgement", "certificate", "application_decision", "social_account",
)  # fmt: skip
ERASED = "person.erased"


class ErasureRefused(ValueError):
    """This person may not be erased (yet); the message says why."""


class ErasureTampered(ErasureRefused):
    """Evidence erasure would change no longer matches the audit log: erasing would re-record
    the change as if it were the application's. Nothing is changed; the mismatch is logged."""


def pseudonym(person_id: int) -> tuple[str, str]:
    """The name and email an erased person keeps: unique because the id is."""
    return f"Erased person #{person_id}", f"erased-{person_id}@erased.invalid"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --- the person's own copy -----------------------------------------------------------------------


def personal_data(
    session: Session, person: Person, verify_url: Callable[[str], str], now: datetime | None = None
) -> dict[str, Any]:
    """Everything held about ``person``, as JSON-ready data.

    Only their own records. Where a record involves other people (an application naming several
    runners) it gives only what the app already shows this person: the names of the runners they
    chose on their own applications, and, where someone else named them as a runner, the account
    and the decision, without anyone else's name or training status.
    """
    pid = person.id
    module_title = (
        select(ModuleVersion.id, ModuleVersion.title, ModuleVersion.text_hash, Policy.title)
        .join(Module, Module.id == ModuleVersion.module_id)
        .join(Policy, Policy.id == Module.policy_id)
    )
    titles = {
        mv_id: {"module": title, "text_hash": text_hash, "policy": policy}
        for mv_id, title, text_hash, policy in session.execute(module_title)
    }

    def module(mv_id: int) -> dict[str, str]:
        return titles.get(mv_id, {"module": "", "text_hash": "", "policy": ""})

    visits = [
        {**module(v.module_version_id), "first_at": _iso(v.first_at), "last_at": _iso(v.last_at)}
        for v in session.scalars(
            select(ModuleVisit).where(ModuleVisit.person_id == pid).order_by(ModuleVisit.first_at)
        )
    ]
    reads = [
        {**module(r.module_version_id), "at": _iso(r.at), "sequence": r.seq}
        for r in session.scalars(
            select(ReadReceipt).where(ReadReceipt.person_id == pid).order_by(ReadReceipt.at)
        )
    ]
    attempts = []
    taken = session.execute(
        select(QuizAttempt, QuizSubmission)
        .outerjoin(QuizSubmission, QuizSubmission.attempt_id == QuizAttempt.id)
        .where(QuizAttempt.person_id == pid)
        .order_by(QuizAttempt.started_at, QuizAttempt.id)
    ).all()
    # The questions each attempt asked, every question version read once.
    asked = drawn_of(session, [attempt.question_refs for attempt, _ in taken])
    for (attempt, submission), drawn in zip(taken, asked, strict=True):
        questions = []
        for q in drawn:
            options = []
            for o in q["options"]:
                option = {"id": o["id"], "text": o["text"]}
                # The answer key only where the person's own review shows it.
                if attempt.show_answers and submission is not None:
                    option["correct"] = bool(o.get("correct"))
                options.append(option)
            questions.append(
                {
                    "key": q["key"],
                    "type": q["type"],
                    "scenario": q.get("scenario", ""),
                    "prompt": q["prompt"],
                    "options": options,
                    "answer_given": (submission.answers.get(q["key"], []) if submission else None),
                }
            )
        attempts.append(
            {
                **module(attempt.module_version_id),
                "attempt": attempt.public_id,
                "started_at": _iso(attempt.started_at),
                "pass_mark": attempt.pass_mark,
                "submitted_at": _iso(submission.submitted_at) if submission else None,
                "correct": submission.correct if submission else None,
                "total": submission.total if submission else None,
                "score": submission.score if submission else None,
                "passed": submission.passed if submission else None,
                "questions": questions,
            }
        )
    acknowledgements = [
        {
            "policy": a.policy_version.title,
            "version": a.policy_version.label,
            "sequence": a.seq,
            "signed_at": _iso(a.at),
            "typed_name": a.typed_name,
            "declaration": a.declaration,
            "ip_address": a.ip,
            "browser": a.user_agent,
            "modules": [module(link.module_version_id) for link in a.module_links],
        }
        for a in session.scalars(
            select(Acknowledgement)
            .where(Acknowledgement.person_id == pid)
            .order_by(Acknowledgement.at, Acknowledgement.id)
        )
    ]
    certificates = [
        {
            "code": c.code,
            "name": c.person_name,
            "policy": c.policy_title,
            "version": c.version_label,
            "modules": c.module_titles,
            "issued_at": _iso(c.issued_at),
            "valid_until": _iso(c.valid_until),
            "verify_url": verify_url(c.code),
        }
        for c in session.scalars(
            select(Certificate).where(Certificate.person_id == pid).order_by(Certificate.issued_at)
        )
    ]
    return {
        "format": "countersign-personal-data/1",
        "produced_at": _iso(now or utcnow()),
        "profile": {
            "id": pid,
            "name": person.name,
            "email": person.email,
            "roles": person.roles,
            "schools": person.schools,
            "active": person.active,
            "has_password": person.password_hash is not None,
            "created_at": _iso(person.created_at),
            "deactivated_at": _iso(person.deactivated_at),
        },
        "module_visits": visits,
        "read_receipts": reads,
        "quiz_attempts": attempts,
        "acknowledgements": acknowledgements,
        "certificates": certificates,
        "account_applications": _applications(session, pid),
        "account_register": _register(session, pid),
        "sign_in_attempts": [
            {"at": _iso(a.at), "ip_address": a.ip, "succeeded": a.succeeded}
            for a in session.scalars(
                select(SignInAttempt)
                .where(SignInAttempt.email == person.email)
                .order_by(SignInAttempt.at)
            )
        ],
        "api_tokens_created": [
            {
                "name": t.name,
                "prefix": t.prefix,
                "scopes": t.scopes,
                "created_at": _iso(t.created_at),
                "last_used_at": _iso(t.last_used_at),
                "revoked_at": _iso(t.revoked_at),
            }
            for t in session.scalars(
                select(ApiToken).where(ApiToken.created_by_id == pid).order_by(ApiToken.id)
            )
        ],
        "webhooks_created": [
            {"url": w.url, "active": w.active, "created_at": _iso(w.created_at)}
            for w in session.scalars(
                select(Webhook).where(Webhook.created_by_id == pid).order_by(Webhook.id)
            )
        ],
        # The methods, never their secrets, keys or code hashes.
        "second_factor": {
            "methods": [
                {
                    "method": factor.method_name,
                    "label": factor.label,
                    "set_up_at": _iso(factor.created_at),
                    "last_used_at": _iso(factor.last_used_at),
                }
                for factor in session.scalars(
                    select(SecondFactor)
                    .where(SecondFactor.person_id == pid)
                    .order_by(SecondFactor.id)
                )
            ],
            "recovery_codes_left": session.scalar(
                select(func.count())
                .select_from(RecoveryCode)
                .where(RecoveryCode.person_id == pid, RecoveryCode.used_at.is_(None))
            ),
        },
        "learning_platform_accounts": [
            {
                "platform": name,
                "platform_user_id": identity.subject,
                "linked_at": _iso(identity.created_at),
                "last_launch_at": _iso(identity.last_launch_at),
                "grades_sent_to": [
                    {"course": course, "line_item": lineitem}
                    for course, lineitem in session.execute(
                        select(LtiGradeLink.context_title, LtiGradeLink.lineitem_url)
                        .where(LtiGradeLink.identity_id == identity.id)
                        .order_by(LtiGradeLink.id)
                    )
                ],
            }
            for identity, name in session.execute(
                select(LtiIdentity, LtiPlatform.name)
                .join(LtiPlatform, LtiIdentity.platform_id == LtiPlatform.id)
                .where(LtiIdentity.person_id == pid)
                .order_by(LtiIdentity.id)
            )
        ],
    }


def _decision(decision: Decision | None, pid: int) -> dict[str, Any] | None:
    if decision is None:
        return None
    mine = next((r for r in decision.runners_snapshot if r.get("person_id") == pid), None)
    return {
        "approved": decision.approved,
        "reason": decision.reason,
        "decided_at": _iso(decision.decided_at),
        "decided_by_you": decision.decided_by_id == pid,
        # Only this person's own status as the approval rule saw it, never the other runners'.
        "your_status_at_decision": (
            {"trained": mine.get("trained"), "missing": mine.get("missing", [])} if mine else None
        ),
    }


def _applications(session: Session, pid: int) -> list[dict[str, Any]]:
    named = select(ApplicationRunner.application_id).where(ApplicationRunner.person_id == pid)
    decided = select(Decision.application_id).where(Decision.decided_by_id == pid)
    rows = session.scalars(
        select(AccountApplication)
        .where(
            or_(
                AccountApplication.applicant_id == pid,
                AccountApplication.id.in_(named),
                AccountApplication.id.in_(decided),
            )
        )
        .order_by(AccountApplication.submitted_at, AccountApplication.id)
    )
    result = []
    for app in rows:
        applied = app.applicant_id == pid
        entry: dict[str, Any] = {
            "id": app.id,
            "account_name": app.name,
            "platform": app.platform,
            "submitted_at": _iso(app.submitted_at),
            "state": app.state,
            "you_applied": applied,
            "you_are_a_runner": any(r.person_id == pid for r in app.runner_rows),
            "decision": _decision(app.decision, pid),
        }
        if applied:
            # The person wrote the business case and chose the runners, so it is theirs to see.
            entry.update(
                aim=app.aim,
                audience=app.audience,
                promotion=app.promotion,
                visibility=app.visibility,
                runners=sorted(r.person.name for r in app.runner_rows),
            )
        result.append(entry)
    return result


def _register(session: Session, pid: int) -> list[dict[str, Any]]:
    accounts = session.scalars(
        select(SocialAccount)
        .where(
            or_(
                SocialAccount.id.in_(
                    select(AccountRunner.account_id).where(AccountRunner.person_id == pid)
                ),
                SocialAccount.recorded_by_id == pid,
                SocialAccount.closed_by_id == pid,
            )
        )
        .order_by(SocialAccount.id)
    )
    return [
        {
            "platform": a.platform,
            "handle": a.handle,
            "recorded_at": _iso(a.recorded_at),
            "recorded_by_you": a.recorded_by_id == pid,
            "closed_at": _iso(a.closed_at),
            "closed_by_you": a.closed_by_id == pid,
            "you_as_runner": [
                {"added_at": _iso(r.added_at), "removed_at": _iso(r.removed_at)}
                for r in a.runner_rows
                if r.person_id == pid
            ],
        }
        for a in accounts
    ]


def record_export(session: Session, person: Person) -> None:
    record(session, EXPORTED, actor_id=person.id, subject_type="person", subject_id=person.id)


# --- erasure -------------------------------------------------------------------------------------


def erasure_refusal(person: Person, retention_days: int, now: datetime | None = None) -> str | None:
    """Why this person may not be erased now, in plain words; None when they may be."""
    if person.erased_at is not None:
        return "This person's personal data has already been erased."
    if person.active or person.deactivated_at is None:
        return "Only a deactivated person (a leaver) can be erased. Deactivate them first."
    due = person.deactivated_at + timedelta(days=retention_days)
    if (now or utcnow()) < due:
        return (
            f"Their records are kept for {retention_days} days after they left: they can be "
            f"erased from {due:%d %B %Y}."
        )
    return None


def _redact(text: str, needles: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, replacement in needles:
        text = pattern.sub(replacement, text)
    return text


def erase_person(
    session: Session,
    person_id: int,
    *,
    actor_id: int | None,
    retention_days: int,
    now: datetime | None = None,
) -> Person:
    """Replace a leaver's personal data with a pseudonym, keeping the evidence of training.

    Runs in the caller's transaction and commits nothing: the caller commits once, so the erasure
    happens whole or not at all. Raises ErasureRefused for an active person, a leaver still within
    the retention period, or someone already erased.
    """
    now = now or utcnow()
    # Locked and read afresh, so two administrators erasing at once cannot both pass the checks.
    person = session.scalar(
        select(Person)
        .where(Person.id == person_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if person is None:
        raise ErasureRefused("There is no such person.")
    refusal = erasure_refusal(person, retention_days, now)
    if refusal:
        raise ErasureRefused(refusal)
    old_name, old_email = person.name, person.email
    new_name, new_email = pseudonym(person.id)
    needles = [
        (re.compile(re.escape(old_email), re.IGNORECASE), new_email),
        (re.compile(rf"(?<!\w){re.escape(old_name)}(?!\w)", re.IGNORECASE), new_name),
    ]

    # Erasure re-records each changed evidence row's digest. Only over the digest the chain holds
    # for it: a row changed behind the application's back would otherwise pass as recorded. So
    # every row it will change is checked first, and nothing is changed if one does not match.
    checked = _evidence_to_pseudonymise(session, person.id, old_name, old_email)
    # The person's row too: that they left, and when, is what allows erasure at all, so it must
    # be what the chain recorded (a leaving date set behind the application's back erases no one).
    checked["person"] = [person.id]
    try:
        was = as_recorded(session, checked, trusted=trusted_rows(session))
    except NotAsRecorded as exc:
        log.error("person %s: not erased: %s", person.id, exc)
        raise ErasureTampered(
            "Their evidence does not match the audit log, so nothing was erased: "
            + "; ".join(exc.problems)
        ) from exc

    note_before_change(session, "person", [person.id])  # its erasure is recorded over this
    # The evidence tables refuse changes (migrations 0011, 0017) except the pseudonymising ones
    # to this person's rows while the marker exists; it is removed again below, before the
    # caller commits.
    _begin_erasure(session, person.id)
    changed: dict[str, set[int]] = {t: set() for t in EVIDENCE_PSEUDONYMISED}

    session.execute(delete(SignInAttempt).where(SignInAttempt.email == old_email))
    # The LMS's id for them (and where their grades went): a later launch links to nobody.
    session.execute(delete(LtiIdentity).where(LtiIdentity.person_id == person.id))
    session.execute(delete(LtiLinkRequest).where(LtiLinkRequest.person_id == person.id))
    session.execute(delete(SecondFactor).where(SecondFactor.person_id == person.id))
    session.execute(delete(RecoveryCode).where(RecoveryCode.person_id == person.id))
    session.execute(delete(PasskeyChallenge).where(PasskeyChallenge.person_id == person.id))
    # Derived answers hold the name and email in their JSON; they are rebuilt on the next lookup.
    session.execute(delete(PrecomputedStatus).where(PrecomputedStatus.person_id == person.id))
    for ack in session.scalars(
        select(Acknowledgement).where(Acknowledgement.person_id == person.id)
    ):
        # The row itself (version, time, the modules covered) is the evidence the policy needs.
        ack.typed_name = ""
        ack.ip = ""
        ack.user_agent = ""
        changed["acknowledgement"].add(ack.id)
    for certificate in session.scalars(
        select(Certificate).where(Certificate.person_id == person.id)
    ):
        certificate.person_name = new_name
        certificate.pdf = None
        certificate.pdf_sha256 = None
        changed["certificate"].add(certificate.id)
    # Approval decisions snapshot each runner's name: keep the snapshot, not the name.
    for decision in session.scalars(
        select(Decision).where(
            Decision.application_id.in_(
                select(ApplicationRunner.application_id).where(
                    ApplicationRunner.person_id == person.id
                )
            )
        )
    ):
        if any(r.get("person_id") == person.id for r in decision.runners_snapshot):
            decision.runners_snapshot = [
                {**r, "name": new_name} if r.get("person_id") == person.id else r
                for r in decision.runners_snapshot
            ]
            changed["application_decision"].add(decision.id)
    # Others may have written the name or email into a business case or a reason.
    free_text = [
        (AccountApplication, ("name", "aim", "audience", "promotion")),
        (Decision, ("reason",)),
        (SocialAccount, ("handle", "close_reason")),
    ]
    for model, columns in free_text:
        mentions = [
            func.lower(getattr(model, c)).contains(needle.lower(), autoescape=True)
            for c in columns
            for needle in (old_name, old_email)
        ]
        for row in session.scalars(select(model).where(or_(*mentions))):
            for column in columns:
                value = getattr(row, column)
                if value:
                    setattr(row, column, _redact(value, needles))
            if isinstance(row, Decision):
                changed["application_decision"].add(row.id)
            elif isinstance(row, SocialAccount):  # the register is digested too
                changed["social_account"].add(row.id)
    # Webhook deliveries keep the event as sent, which names the person.
    about_them = [
        delivery_id
        for delivery_id, payload in session.execute(
            select(WebhookDelivery.id, WebhookDelivery.payload)
        )
        if ((payload.get("data") or {}).get("person") or {}).get("id") == person.id
    ]
    for delivery in session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.id.in_(about_them))
    ):
        data = delivery.payload["data"]
        delivery.payload = {
            **delivery.payload,
            "data": {**data, "person": {**data["person"], "name": new_name, "email": new_email}},
        }

    person.name, person.email = new_name, new_email
    person.password_hash = None
    person.auth_version += 1
    person.erased_at = now
    session.flush()
    _end_erasure(session, person.id)
    unchecked = {f"{t} {i}" for t, ids in changed.items() for i in ids - set(checked[t])}
    if unchecked:  # a row appeared meanwhile: the caller rolls back
        raise ErasureTampered(f"Evidence changed during erasure: {', '.join(sorted(unchecked))}")
    # The chain records each pseudonymised row's new digest, so verify checks it as it now is,
    # and the digest it had, so verify can tell it was re-recorded over the right one.
    for table, ids in changed.items():
        record_evidence(
            session, "evidence.pseudonymised", table, ids, actor_id=actor_id,
            detail={"person": person.id}, was=was[table],
        )  # fmt: skip
    # The person's row is digested too: the chain holds the pseudonym from now on.
    record_evidence(session, ERASED, "person", [person.id], actor_id=actor_id)
    return person


def _evidence_to_pseudonymise(
    session: Session, person_id: int, old_name: str, old_email: str
) -> dict[str, list[int]]:
    """The ids of the evidence rows erasure will change, found before anything changes: the same
    rows the loops in :func:`erase_person` change (it refuses if those find another)."""
    decisions = {
        d.id
        for d in session.execute(
            select(Decision.id, Decision.runners_snapshot).where(
                Decision.application_id.in_(
                    select(ApplicationRunner.application_id).where(
                        ApplicationRunner.person_id == person_id
                    )
                )
            )
        )
        if any(r.get("person_id") == person_id for r in d.runners_snapshot)
    }
    mentions = [
        func.lower(Decision.reason).contains(needle.lower(), autoescape=True)
        for needle in (old_name, old_email)
    ]
    decisions |= set(session.scalars(select(Decision.id).where(or_(*mentions))))
    accounts = set(
        session.scalars(
            select(SocialAccount.id).where(
                or_(
                    *(
                        func.lower(getattr(SocialAccount, column)).contains(
                            needle.lower(), autoescape=True
                        )
                        for column in ("handle", "close_reason")
                        for needle in (old_name, old_email)
                    )
                )
            )
        )
    )
    return {
        "acknowledgement": list(
            session.scalars(
                select(Acknowledgement.id).where(Acknowledgement.person_id == person_id)
            )
        ),
        "certificate": list(
            session.scalars(select(Certificate.id).where(Certificate.person_id == person_id))
        ),
        "application_decision": sorted(decisions),
        "social_account": sorted(accounts),
    }


def _begin_erasure(session: Session, person_id: int) -> None:
    """Open this person's evidence rows to pseudonymising. On PostgreSQL only the owner's function
    may write the marker (migration 0017: the application role cannot); SQLite has no roles."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT countersign_erasure_begin(:p)"), {"p": person_id})
    else:
        session.execute(insert(ErasureMarker.__table__).values(person_id=person_id))


def _end_erasure(session: Session, person_id: int) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT countersign_erasure_end(:p)"), {"p": person_id})
    else:
        session.execute(delete(ErasureMarker).where(ErasureMarker.person_id == person_id))


def expired_leavers(
    session: Session, retention_days: int, now: datetime | None = None
) -> list[int]:
    """Ids of every leaver past the retention period and not yet erased."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    return list(
        session.scalars(
            select(Person.id)
            .where(
                Person.active.is_(False),
                Person.erased_at.is_(None),
                Person.deactivated_at.is_not(None),
                Person.deactivated_at <= cutoff,
            )
            .order_by(Person.id)
        )
    )


def retention_days(config: Any) -> int:
    """COUNTERSIGN_RETENTION_DAYS, or the default; a bad value is an error, never a silent zero."""
    value = config.get("RETENTION_DAYS", DEFAULT_RETENTION_DAYS)
    try:
        days = int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"COUNTERSIGN_RETENTION_DAYS must be a whole number of days, not {value!r}"
        )
    if days < 0:
        raise ValueError("COUNTERSIGN_RETENTION_DAYS cannot be negative")
    return days
