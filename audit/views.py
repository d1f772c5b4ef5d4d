"""The audit log pages: governors and administrators browse it and check its chain."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, current_app, render_template, request
from sqlalchemy import and_, func, or_, select

from audit import anchor
from audit.log import EVENTS, head, verify
from audit.models import AuditEvent
from core.db import db
from people.auth import roles_required
from people.models import Person

audit_bp = Blueprint("audit", __name__, url_prefix="/audit", template_folder="templates")
READERS = ("governor", "admin")


@audit_bp.app_template_filter("fromjson")
def _fromjson(text: str) -> dict[str, Any]:
    value = json.loads(text or "{}")
    return value if isinstance(value, dict) else {}


def _day(name: str, errors: list[str]) -> date | None:
    value = request.args.get(name, "").strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value) if len(value) == 10 else _bad(name, errors)
    except ValueError:
        return _bad(name, errors)


def _bad(name: str, errors: list[str]) -> None:
    label = {"since": "From", "until": "To"}[name]
    errors.append(f"{label} must be a date written YYYY-MM-DD, for example 2026-09-01.")
    return None


def _start_of(day: date) -> datetime:
    local = datetime.combine(day, time.min, ZoneInfo(current_app.config["TIMEZONE"]))
    return local.astimezone(UTC)


@audit_bp.get("/")
@roles_required(*READERS)
def index() -> Any:
    args = request.args
    errors: list[str] = []
    event = args.get("event", "")
    if event and event not in EVENTS:
        errors.append("Choose an event from the list.")
        event = ""
    person_text = args.get("person", "").strip()
    person_id = None
    if person_text:
        if person_text.isascii() and person_text.isdigit() and int(person_text) < 2**31:
            person_id = int(person_text)
        else:
            errors.append("Person must be a person's number, as shown on their record.")
    since, until = _day("since", errors), _day("until", errors)
    before_text = args.get("before", "")
    before = int(before_text) if before_text.isascii() and before_text.isdigit() else None
    if before is not None and before >= 2**31:
        before = None

    conditions = []
    if event:
        conditions.append(AuditEvent.event == event)
    if person_id is not None:
        conditions.append(
            or_(
                AuditEvent.actor_id == person_id,
                and_(AuditEvent.subject_type == "person", AuditEvent.subject_id == str(person_id)),
            )
        )
    if since:
        conditions.append(AuditEvent.at >= _start_of(since))
    if until:
        conditions.append(AuditEvent.at < _start_of(until + timedelta(days=1)))
    page_conditions = conditions + ([AuditEvent.seq < before] if before else [])
    size = current_app.config["PAGE_SIZE"]
    s = db.session
    rows = s.scalars(
        select(AuditEvent).where(*page_conditions).order_by(AuditEvent.seq.desc()).limit(size + 1)
    ).all()
    more = len(rows) > size
    rows = rows[:size]
    total = s.scalar(select(func.count()).select_from(AuditEvent).where(*conditions))
    ids = {r.actor_id for r in rows if r.actor_id} | {
        int(r.subject_id) for r in rows if r.subject_type == "person" and r.subject_id.isdigit()
    }
    names = dict(s.execute(select(Person.id, Person.name).where(Person.id.in_(ids))).all())
    return render_template(
        "audit/index.html", rows=rows, names=names, events=EVENTS, head=head(s), total=total,
        more=more, errors=errors, event=event, person=person_text,
        since=args.get("since", "") if since else "", until=args.get("until", "") if until else "",
    ), (400 if errors else 200)  # fmt: skip


@audit_bp.get("/check")
@roles_required(*READERS)
def check() -> Any:
    """The same check as ``flask audit verify``: against the head recorded outside the database
    when there is one, so rows removed from the end are reported here too."""
    recorded, unreadable = None, None
    path = anchor.head_file(current_app)
    if path is not None:
        try:
            recorded = anchor.latest(path)
        except (OSError, ValueError) as exc:
            unreadable = f"The recorded head cannot be read ({exc}): rows removed from the end "
            "would not show here."
    result = verify(db.session, recorded.head if recorded else None)
    if unreadable:
        result.problems.insert(0, unreadable)
    return render_template(
        "audit/check.html", result=result, recorded=recorded, head_file=path is not None
    )
