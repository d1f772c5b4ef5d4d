"""Applications, decisions and the account register in a person's data, and their erasure.

Decisions snapshot each runner's name, and others may have written a name or email into a
business case, a reason or a handle: erasure keeps the records and replaces the name.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from approvals.models import (
    AccountApplication,
    AccountRunner,
    ApplicationRunner,
    Decision,
    SocialAccount,
)
from people.personal_data import Erasure, Export, iso, mentioning


def _decision(decision: Decision | None, pid: int) -> dict[str, Any] | None:
    if decision is None:
        return None
    mine = next((r for r in decision.runners_snapshot if r.get("person_id") == pid), None)
    return {
        "approved": decision.approved,
        "reason": decision.reason,
        "decided_at": iso(decision.decided_at),
        "decided_by_you": decision.decided_by_id == pid,
        # Only this person's own status as the approval rule saw it, never the other runners'.
        "your_status_at_decision": (
            {"trained": mine.get("trained"), "missing": mine.get("missing", [])} if mine else None
        ),
    }


def account_applications(request: Export) -> list[dict[str, Any]]:
    session, pid = request.session, request.person.id
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
            "submitted_at": iso(app.submitted_at),
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


def account_register(request: Export) -> list[dict[str, Any]]:
    pid = request.person.id
    accounts = request.session.scalars(
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
            "recorded_at": iso(a.recorded_at),
            "recorded_by_you": a.recorded_by_id == pid,
            "closed_at": iso(a.closed_at),
            "closed_by_you": a.closed_by_id == pid,
            "you_as_runner": [
                {"added_at": iso(r.added_at), "removed_at": iso(r.removed_at)}
                for r in a.runner_rows
                if r.person_id == pid
            ],
        }
        for a in accounts
    ]


def _as_runner(person_id: int) -> Any:
    return Decision.application_id.in_(
        select(ApplicationRunner.application_id).where(ApplicationRunner.person_id == person_id)
    )


def evidence_to_pseudonymise(
    session: Session, person_id: int, old_name: str, old_email: str
) -> dict[str, list[int]]:
    """The decisions and register entries :func:`erase` will change, found before anything
    changes: the same rows its loops change (erasure refuses if those find another)."""
    decisions = {
        d.id
        for d in session.execute(
            select(Decision.id, Decision.runners_snapshot).where(_as_runner(person_id))
        )
        if any(r.get("person_id") == person_id for r in d.runners_snapshot)
    }
    decisions |= set(
        session.scalars(
            select(Decision.id).where(mentioning((Decision.reason,), old_name, old_email))
        )
    )
    accounts = set(
        session.scalars(
            select(SocialAccount.id).where(
                mentioning((SocialAccount.handle, SocialAccount.close_reason), old_name, old_email)
            )
        )
    )
    return {"application_decision": sorted(decisions), "social_account": sorted(accounts)}


def erase(erasure: Erasure) -> None:
    session, pid = erasure.session, erasure.person_id
    # Approval decisions snapshot each runner's name: keep the snapshot, not the name.
    for decision in session.scalars(select(Decision).where(_as_runner(pid))):
        if any(r.get("person_id") == pid for r in decision.runners_snapshot):
            decision.runners_snapshot = [
                {**r, "name": erasure.new_name} if r.get("person_id") == pid else r
                for r in decision.runners_snapshot
            ]
            erasure.pseudonymised("application_decision", decision.id)
    # Others may have written the name or email into a business case or a reason.
    free_text: list[tuple[Any, tuple[str, ...]]] = [
        (AccountApplication, ("name", "aim", "audience", "promotion")),
        (Decision, ("reason",)),
        (SocialAccount, ("handle", "close_reason")),
    ]
    for model, columns in free_text:
        mentions = erasure.mentions(*(getattr(model, c) for c in columns))
        for row in session.scalars(select(model).where(mentions)):
            for column in columns:
                value = getattr(row, column)
                if value:
                    setattr(row, column, erasure.redact(value))
            if isinstance(row, Decision):
                erasure.pseudonymised("application_decision", row.id)
            elif isinstance(row, SocialAccount):  # the register is digested too
                erasure.pseudonymised("social_account", row.id)
