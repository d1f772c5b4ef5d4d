"""Reports for governors (read-only) and SLT: completion, who is where, exports, evidence packs."""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    render_template,
    request,
    stream_with_context,
)
from flask_login import current_user
from sqlalchemy import select

from api.answers import PolicyRef, policies
from approvals.rules import register
from audit.log import Head, record_separately
from core.db import db, utcnow
from core.web import federation, format_date
from people.auth import roles_required
from people.models import Person
from people.roles import ROLES
from quizzes.models import QuizAttempt, QuizSubmission
from reports import charts, figures
from reports.export import csv_stream
from training.models import (
    Acknowledgement,
    Module,
    ModuleVersion,
    ModuleVisit,
    Policy,
    PolicyVersion,
    ReadReceipt,
)
from training.publishing import current_version
from training.status import REASON_TEXT, statuses_for

reports_bp = Blueprint("reports", __name__, url_prefix="/reports", template_folder="templates")
READERS = ("governor", "slt", "admin")

STANDING_TEXT = {
    "trained": "Trained",
    "in_progress": "In progress",
    "not_started": "Not started",
    "expired": "Expired",
    "outdated": "Earlier version only",
    "not_required": "Not required",
    "inactive": "Deactivated",
}
MODULE_TEXT = {"completed": "Done", "in_progress": "Started", "not_started": "Not started"}


def _policy() -> tuple[PolicyRef | None, list[PolicyRef]]:
    known = policies()
    slug = request.args.get("policy")
    if not known:
        return None, known
    if slug is None:
        return known[0], known
    chosen = next((p for p in known if p.slug == slug), None)
    if chosen is None:
        abort(404)
    return chosen, known


def _version(policy: PolicyRef) -> PolicyVersion:
    version = current_version(db.session, db.session.get(Policy, policy.id))
    if version is None:
        abort(404)
    return version


def _filters() -> tuple[figures.PeopleFilter, list[str]]:
    args, errors = request.args, []
    school, role, status = args.get("school", ""), args.get("role", ""), args.get("status", "")
    schools = {s.code for s in federation().schools}
    if school not in schools | {"", "none"}:
        errors.append("Choose a school from the list.")
        school = ""
    if role not in set(ROLES) | {""}:
        errors.append("Choose a role from the list.")
        role = ""
    if status not in figures.FILTERS:
        errors.append("Choose a status from the list.")
        status = ""
    days_text = args.get("days", "30").strip() or "30"
    days = 30
    if days_text.isascii() and days_text.isdigit() and 1 <= int(days_text) <= 366:
        days = int(days_text)
    else:
        errors.append("Days must be a whole number from 1 to 366.")
    q = " ".join(args.get("q", "").split())[:200]
    return figures.PeopleFilter(school, role, status, days, q), errors


def _page() -> int:
    text = request.args.get("page", "1")
    return int(text) if text.isascii() and text.isdigit() and 0 < int(text) < 100_000 else 1


@reports_bp.get("/")
@roles_required(*READERS)
def index() -> Any:
    policy, known = _policy()
    if policy is None:
        return render_template("reports/index.html", policy=None, policies=known)
    now = utcnow()
    figures.up_to_date(now)
    s = db.session
    schools = {sc.code: sc.name for sc in federation().schools}
    by_school = [c for c in figures.by_school(s, policy.id, schools) if c.required]
    by_role = [c for c in figures.by_role(s, policy.id) if c.required]
    months = figures.signed_per_month(s, policy.id, now)

    def bars(chart_id: str, title: str, groups: list[figures.Completion]) -> Any:
        items = [(g.label, g.percent, f"{g.percent:.0f}% ({g.trained} of {g.required})")
                 for g in groups]  # fmt: skip
        return charts.percent_bars(chart_id, title, items)

    return render_template(
        "reports/index.html", policy=policy, policies=known, version=_version(policy),
        overall=figures.overall(s, policy.id), by_school=by_school, by_role=by_role,
        months=months, now=now,
        school_chart=bars("chart-schools", "Trained, by school", by_school),
        role_chart=bars("chart-roles", "Trained, by role", by_role),
        month_chart=charts.month_columns(
            "chart-months", "Acknowledgements signed each month", months
        ),
    )  # fmt: skip


@reports_bp.get("/people")
@roles_required(*READERS)
def people() -> Any:
    policy, known = _policy()
    if policy is None:
        abort(404)
    f, errors = _filters()
    s = db.session
    figures.up_to_date()
    size = current_app.config["PAGE_SIZE"]
    page = _page()
    rows, total = figures.people_page(s, policy.id, f, page, size)
    pages = max(1, (total + size - 1) // size)
    version = _version(policy)
    modules = [(mv.module.slug, mv.title) for mv in version.module_versions]
    return render_template(
        "reports/people.html", policy=policy, policies=known, rows=rows, total=total,
        page=page, pages=pages, f=f, errors=errors, modules=modules, roles=ROLES,
        filters=figures.FILTERS, standing_text=STANDING_TEXT, module_text=MODULE_TEXT,
        details=figures.roles_and_schools(s, [r.person_id for r in rows]),
        reason_text=REASON_TEXT, version=version,
    ), (400 if errors else 200)  # fmt: skip


@reports_bp.get("/people.csv")
@roles_required(*READERS)
def people_csv() -> Any:
    policy, _ = _policy()
    if policy is None:
        abort(404)
    f, errors = _filters()
    if errors:
        abort(400)
    figures.up_to_date()
    version = _version(policy)
    modules = [(mv.module.slug, mv.title) for mv in version.module_versions]
    school_names = {sc.code: sc.name for sc in federation().schools}
    header = ["Name", "Email", "Roles", "Schools", "Status", "Modules done", "Modules required",
              "Valid until"] + [title for _, title in modules]  # fmt: skip

    def rows() -> Any:
        s = db.session  # kept open while the body streams (stream_with_context)
        batch: list[figures.Row] = []
        for row in figures.people_rows(s, policy.id, f):
            batch.append(row)
            if len(batch) == 500:
                yield from _csv_rows(s, batch, modules, school_names)
                batch = []
        yield from _csv_rows(s, batch, modules, school_names)

    record_separately(
        "export.people_csv", actor_id=current_user.id, subject_type="policy", subject_id=policy.id,
        detail={"school": f.school, "role": f.role, "status": f.status},
    )  # fmt: skip
    filename = f"{policy.slug}-people-{utcnow():%Y-%m-%d}.csv"
    return Response(
        stream_with_context(csv_stream(header, rows())),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _csv_rows(s: Any, batch: list, modules: list, school_names: dict) -> Any:
    details = figures.roles_and_schools(s, [r.person_id for r in batch])
    for r in batch:
        roles, schools = details[r.person_id]
        yield [
            r.name,
            r.email,
            "; ".join(ROLES.get(x, x) for x in roles),
            "; ".join(school_names.get(x, x) for x in schools) or "Federation-wide",
            STANDING_TEXT.get(r.standing, r.standing),
            r.completed,
            r.required,
            r.valid_until.date().isoformat() if r.valid_until else "",
        ] + [MODULE_TEXT.get(r.modules.get(slug, ""), "Not required") for slug, _ in modules]


@reports_bp.get("/people/<int(max=2147483647):person_id>")
@roles_required(*READERS)
def person(person_id: int) -> Any:
    s = db.session
    who = s.get(Person, person_id)
    if who is None:
        abort(404)
    statuses = []
    for ref in policies():
        policy = s.get(Policy, ref.id)
        if current_version(s, policy) is not None:
            statuses.append((policy, statuses_for(s, [who], policy)[who.id]))
    reads = s.execute(
        select(ReadReceipt.at, ModuleVersion.title)
        .join(ModuleVersion, ModuleVersion.id == ReadReceipt.module_version_id)
        .where(ReadReceipt.person_id == person_id)
        .order_by(ReadReceipt.at.desc())
    ).all()
    visits = s.execute(
        select(ModuleVisit.first_at, ModuleVisit.last_at, ModuleVersion.title)
        .join(ModuleVersion, ModuleVersion.id == ModuleVisit.module_version_id)
        .where(ModuleVisit.person_id == person_id)
        .order_by(ModuleVisit.last_at.desc())
    ).all()
    attempts = s.execute(
        select(QuizAttempt.started_at, ModuleVersion.title, QuizSubmission)
        .join(ModuleVersion, ModuleVersion.id == QuizAttempt.module_version_id)
        .join(Module, Module.id == ModuleVersion.module_id)
        .outerjoin(QuizSubmission, QuizSubmission.attempt_id == QuizAttempt.id)
        .where(QuizAttempt.person_id == person_id)
        .order_by(QuizAttempt.started_at.desc())
    ).all()
    acks = s.scalars(
        select(Acknowledgement)
        .where(Acknowledgement.person_id == person_id)
        .order_by(Acknowledgement.at.desc())
    ).all()
    return render_template(
        "reports/person.html", who=who, statuses=statuses, reads=reads, visits=visits,
        attempts=attempts, acks=acks, roles=ROLES, reason_text=REASON_TEXT,
        certificates=_certificates(person_id),
    )  # fmt: skip


def _certificates(person_id: int) -> list[Any]:
    from certificates.models import Certificate

    return list(
        db.session.scalars(
            select(Certificate)
            .where(Certificate.person_id == person_id)
            .order_by(Certificate.issued_at.desc())
        )
    )


def pack_pdf(html: str, base_url: str) -> bytes:
    """The evidence pack as PDF, fetching nothing (no URL, no local file), as certificates do.

    The base URL is the configured address, never the request's Host header.
    """
    from weasyprint import HTML

    from certificates.render import NoFetching

    return HTML(string=html, base_url=base_url, url_fetcher=NoFetching()).write_pdf()


@reports_bp.get("/schools/<school>/evidence.pdf")
@roles_required(*READERS)
def evidence_pack(school: str) -> Any:
    names = {sc.code: sc.name for sc in federation().schools}
    if school not in names:
        abort(404)
    policy, _ = _policy()
    if policy is None:
        abort(404)
    now = utcnow()
    figures.up_to_date(now)
    s = db.session
    version = _version(policy)
    groups = figures.by_school(s, policy.id, names)
    here = next(g for g in groups if g.key == school)
    by_role = [c for c in figures.by_role(s, policy.id, school) if c.required]
    overdue = figures.overdue_in_school(s, policy.id, school)
    entry = record_separately(
        "export.evidence_pack", actor_id=current_user.id, subject_type="school", subject_id=school
    )
    html = render_template(
        "reports/pack.html", school=names[school], policy=policy, version=version, now=now,
        here=here, by_role=by_role, overdue=overdue, entries=register(s, now=now),
        standing_text=STANDING_TEXT, reason_text=REASON_TEXT,
        generated=format_date(now), audit_head=Head(entry.seq, entry.hash),
    )  # fmt: skip
    pdf = pack_pdf(html, current_app.config["BASE_URL"])
    filename = f"evidence-{school}-{now:%Y-%m-%d}.pdf"
    return Response(
        pdf,
        mimetype="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
