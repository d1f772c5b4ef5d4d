"""The learner's journey: dashboard → module → "I have read this" → sign → confirmation; history."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from certificates.downloads import certificates_of
from core.db import db, utcnow, writing
from core.web import client_ip, federation
from training.forms import AcknowledgeForm, ReadForm
from training.models import (
    Acknowledgement,
    Module,
    ModuleVersion,
    ModuleVisit,
    Policy,
    PolicyVersion,
    ReadReceipt,
)
from training.progress import (
    AckRequest,
    AlreadySigned,
    NameMismatch,
    NotReadyToSign,
    acknowledge,
    declaration_for,
    record_read,
    record_visit,
)
from training.publishing import current_version, published_policies, upcoming_version
from training.status import QUIZ_NOT_PASSED, REASON_TEXT, Status
from training.status_store import for_page

training_bp = Blueprint("training", __name__, template_folder="templates")


def demote_headings(html: str) -> str:
    """Module headings one level down, for a page where each module is itself a section."""
    return re.sub(r"<(/?)h([2-5])\b", lambda m: f"<{m[1]}h{int(m[2]) + 1}", html)


def _policy_or_404(slug: str) -> tuple[Policy, PolicyVersion]:
    policy = db.session.scalar(select(Policy).where(Policy.slug == slug))
    version = current_version(db.session, policy) if policy else None
    if policy is None or version is None:
        abort(404)
    return policy, version


def _resume_target(policy: Policy, status: Status) -> str | None:
    """Where the person left off: the unfinished module they opened last, else the first one."""
    unfinished = [m for m in status.modules if not m.complete]
    if not unfinished:
        return None
    last_opened = db.session.scalar(
        select(ModuleVisit.module_version_id)
        .where(
            ModuleVisit.person_id == status.person_id,
            ModuleVisit.module_version_id.in_([m.module_version_id for m in unfinished]),
        )
        .order_by(ModuleVisit.last_at.desc())
        .limit(1)
    )
    target = next((m for m in unfinished if m.module_version_id == last_opened), unfinished[0])
    return url_for("training.module", slug=policy.slug, module_slug=target.slug)


def _next_unfinished(policy: Policy, status: Status, after: int) -> str | None:
    """The next unfinished module in reading order after ``after``, wrapping round."""
    ids = [m.module_version_id for m in status.modules]
    start = ids.index(after) + 1 if after in ids else 0
    for module in status.modules[start:] + status.modules[:start]:
        if not module.complete:
            return url_for("training.module", slug=policy.slug, module_slug=module.slug)
    return None


@training_bp.route("/")
@login_required
def dashboard() -> Any:
    items = []
    summaries: dict[int, str] = {}
    for policy, version in published_policies(db.session):
        status = for_page(db.session, current_user, policy)
        upcoming = upcoming_version(db.session, policy)
        items.append((policy, version, status, _resume_target(policy, status), upcoming))
        summaries.update((mv.id, mv.summary) for mv in version.module_versions)
    return render_template(
        "training/dashboard.html", items=items, reasons=REASON_TEXT, summaries=summaries
    )


@training_bp.route("/policies/<slug>/modules/<module_slug>")
@login_required
def module(slug: str, module_slug: str) -> Any:
    policy, version = _policy_or_404(slug)
    versions = version.module_versions
    index = next((i for i, mv in enumerate(versions) if mv.module.slug == module_slug), None)
    if index is None:
        abort(404)
    module_version = versions[index]
    status = for_page(db.session, current_user, policy)
    entry = next((m for m in status.modules if m.module_version_id == module_version.id), None)
    if entry is not None and not entry.complete:
        with writing(db.session):
            record_visit(db.session, current_user, module_version)
    has_quiz = (
        next(lk.bank_id for lk in version.module_links if lk.module_version_id == module_version.id)
        is not None
    )
    required = [m for m in status.modules]
    position = next(
        (i for i, m in enumerate(required) if m.module_version_id == module_version.id), None
    )
    return render_template(
        "training/module.html",
        policy=policy,
        version=version,
        module_version=module_version,
        entry=entry,
        status=status,
        position=position,
        previous=versions[index - 1] if index > 0 else None,
        following=versions[index + 1] if index + 1 < len(versions) else None,
        form=ReadForm(),
        reasons=REASON_TEXT,
        has_quiz=has_quiz,
    )


@training_bp.route("/policies/<slug>/modules/<module_slug>/read", methods=["POST"])
@login_required
def mark_read(slug: str, module_slug: str) -> Any:
    policy, version = _policy_or_404(slug)
    module_version = next(
        (mv for mv in version.module_versions if mv.module.slug == module_slug), None
    )
    if module_version is None:
        abort(404)
    ReadForm()  # CSRF is enforced globally
    s = db.session
    status = for_page(s, current_user, policy)
    if not any(m.module_version_id == module_version.id for m in status.modules):
        flash("This module is not part of your training, so there is nothing to record.", "info")
        return redirect(url_for("training.module", slug=slug, module_slug=module_slug))
    if record_read(s, current_user, policy, module_version):
        s.commit()
    status = for_page(s, current_user, policy)
    flash(f"“{module_version.title}” is marked as read.", "success")
    entry = next(m for m in status.modules if m.module_version_id == module_version.id)
    if entry.reason == QUIZ_NOT_PASSED:
        return redirect(url_for("quiz.intro", slug=slug, module_slug=module_slug))
    following = _next_unfinished(policy, status, after=module_version.id)
    if following:
        return redirect(following)
    if status.ready_to_sign:
        return redirect(url_for("training.sign", slug=slug))
    return redirect(url_for("training.dashboard"))


@training_bp.route("/policies/<slug>/sign", methods=["GET", "POST"])
@login_required
def sign(slug: str) -> Any:
    policy, version = _policy_or_404(slug)
    s = db.session
    status = for_page(s, current_user, policy)
    declaration = declaration_for(version.title, version.label, federation().name)
    form = AcknowledgeForm()
    if status.trained:
        return redirect(url_for("training.signed", slug=slug))
    if not status.ready_to_sign:
        flash("Finish every module on your list before signing.", "info")
        return redirect(url_for("training.dashboard"))
    if form.validate_on_submit():
        request_data = AckRequest(
            typed_name=form.full_name.data or "",
            declaration=declaration,
            ip=client_ip(),
            user_agent=request.headers.get("User-Agent", "")[:500],
        )
        try:
            acknowledge(s, current_user, policy, request_data)
            s.commit()
        except AlreadySigned:
            s.rollback()
            return redirect(url_for("training.signed", slug=slug))
        except NotReadyToSign:
            s.rollback()
            return redirect(url_for("training.dashboard"))
        except NameMismatch as exc:
            s.rollback()
            form.full_name.errors = [str(exc)]
        else:
            return redirect(url_for("training.signed", slug=slug))
    return render_template(
        "training/sign.html", policy=policy, version=version, status=status, form=form,
        declaration=declaration,
    ), (400 if request.method == "POST" else 200)  # fmt: skip


@training_bp.route("/policies/<slug>/signed")
@login_required
def signed(slug: str) -> Any:
    policy, version = _policy_or_404(slug)
    status = for_page(db.session, current_user, policy)
    if not status.trained:
        return redirect(url_for("training.dashboard"))
    return render_template("training/signed.html", policy=policy, version=version, status=status)


@training_bp.route("/policies/<slug>/full")
@login_required
def full_policy(slug: str) -> Any:
    """The whole policy on one page, to read straight through or print."""
    policy, version = _policy_or_404(slug)
    sections = [(mv, demote_headings(mv.html)) for mv in version.module_versions]
    return render_template("training/full.html", policy=policy, version=version, sections=sections)


@training_bp.route("/history")
@login_required
def history() -> Any:
    s = db.session
    reads = s.execute(
        select(ReadReceipt.at, ModuleVersion.title, ModuleVersion.text_hash, Policy.title)
        .join(ModuleVersion, ModuleVersion.id == ReadReceipt.module_version_id)
        .join(Module, Module.id == ModuleVersion.module_id)
        .join(Policy, Policy.id == Module.policy_id)
        .where(ReadReceipt.person_id == current_user.id)
        .order_by(ReadReceipt.at.desc())
    ).all()
    acks = s.scalars(
        select(Acknowledgement)
        .where(Acknowledgement.person_id == current_user.id)
        .order_by(Acknowledgement.at.desc())
    ).all()
    statuses = [(p, v, for_page(s, current_user, p)) for p, v in published_policies(db.session)]
    return render_template(
        "training/history.html", reads=reads, acks=acks, statuses=statuses, now=utcnow(),
        certificates=certificates_of(s, current_user.id),
    )  # fmt: skip
