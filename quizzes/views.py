"""Taking a module's quiz: introduction, the questions, the result with a review."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from core.db import db, utcnow
from core.forms import Form
from core.security_log import flag
from people.auth import roles_required
from quizzes.attempts import (
    AlreadySubmitted,
    AttemptExpired,
    AttemptNotFound,
    BadAnswers,
    CoolingDown,
    Unanswered,
    find_attempt,
    quiz_state,
    rules_of,
    start_attempt,
    submit_attempt,
)
from quizzes.authoring import item_statistics
from quizzes.models import QuizAttempt, QuizBank
from quizzes.types import QUESTION_TYPES
from training.models import ModuleVersion, Policy
from training.publishing import find_module, published_policies
from training.status import QUIZ_NOT_PASSED
from training.status_store import for_page

quiz_bp = Blueprint("quiz", __name__, template_folder="templates")


def _quiz_module(slug: str, module_slug: str) -> tuple[Policy, Any, QuizBank]:
    found = find_module(db.session, slug, module_slug)
    if found is None or found[2].bank_id is None:
        abort(404)
    policy, _version, link = found
    return policy, link, db.session.get(QuizBank, link.bank_id)


def _module_of(attempt: QuizAttempt) -> tuple[Policy, ModuleVersion]:
    mv = db.session.get(ModuleVersion, attempt.module_version_id)
    return db.session.get(Policy, mv.module.policy_id), mv


@quiz_bp.route("/policies/<slug>/modules/<module_slug>/quiz", methods=["GET", "POST"])
@login_required
def intro(slug: str, module_slug: str) -> Any:
    policy, link, bank = _quiz_module(slug, module_slug)
    s = db.session
    status = for_page(s, current_user, policy)
    entry = next((m for m in status.modules if m.module_version_id == link.module_version_id), None)
    rules = rules_of(bank)
    state = quiz_state(s, current_user, link.module_version_id, rules, utcnow())
    may_start = entry is not None and (entry.complete or entry.reason == QUIZ_NOT_PASSED)
    form = Form()
    if request.method == "POST" and form.validate_on_submit():
        if not may_start:
            flash("Read the module and mark it as read before taking its quiz.", "info")
            return redirect(url_for("training.module", slug=slug, module_slug=module_slug))
        try:
            attempt = start_attempt(s, current_user, link.module_version_id, bank)
        except CoolingDown:
            s.rollback()
        else:
            s.commit()
            return redirect(url_for("quiz.attempt", public_id=attempt.public_id))
    return render_template(
        "quizzes/intro.html", policy=policy, module_version=link.module_version, rules=rules,
        state=state, entry=entry, may_start=may_start, form=form,
    )  # fmt: skip


def _my_attempt(public_id: str) -> QuizAttempt:
    """The signed-in person's attempt; anyone else's is simply not found."""
    try:
        return find_attempt(db.session, current_user, public_id)
    except AttemptNotFound:
        abort(404)


def _answers_from(form: Any) -> dict[str, list[str]]:
    """Only the question fields are answers; anything else a browser sends is ignored."""
    return {
        name[2:]: [v for v in form.getlist(name) if v]
        for name in form
        if name.startswith("q-") and len(name) <= 82
    }


@quiz_bp.route("/quiz/<public_id>", methods=["GET", "POST"])
@login_required
def attempt(public_id: str) -> Any:
    s = db.session
    attempt = _my_attempt(public_id)
    policy, module_version = _module_of(attempt)
    if attempt.submission is not None and request.method == "GET":
        return redirect(url_for("quiz.result", public_id=public_id))
    form = Form()
    selected: dict[str, list[str]] = {}
    message, unanswered, status = None, [], 200
    if request.method == "POST":
        if not form.validate_on_submit():
            abort(400)
        selected = _answers_from(request.form)
        try:
            submit_attempt(s, current_user, public_id, selected)
            s.commit()
            return redirect(url_for("quiz.result", public_id=public_id))
        except AlreadySubmitted as exc:
            s.rollback()
            flash(str(exc), "info")
            return redirect(url_for("quiz.result", public_id=public_id)), 303
        except Unanswered as exc:
            s.rollback()
            message, unanswered, status = str(exc), exc.keys, 400
        except (AttemptExpired, BadAnswers) as exc:
            s.rollback()
            message, status = str(exc), 400 if isinstance(exc, BadAnswers) else 410
            if isinstance(exc, BadAnswers):
                flag("quiz_answers_refused", str(exc))
    expired = attempt.submission is None and attempt.expires_at <= utcnow()
    return render_template(
        "quizzes/attempt.html", attempt=attempt, policy=policy, module_version=module_version,
        form=form,
        selected=selected, message=message, unanswered=unanswered, expired=expired,
        types=QUESTION_TYPES,
    ), status  # fmt: skip


@quiz_bp.route("/quiz/<public_id>/result")
@login_required
def result(public_id: str) -> Any:
    s = db.session
    attempt = _my_attempt(public_id)
    if attempt.submission is None:
        return redirect(url_for("quiz.attempt", public_id=public_id))
    policy, module_version = _module_of(attempt)
    bank = s.get(QuizBank, attempt.bank_id)
    state = quiz_state(s, current_user, attempt.module_version_id, rules_of(bank), utcnow())
    status = for_page(s, current_user, policy)
    following = next((m for m in status.modules if not m.complete), None)
    return render_template(
        "quizzes/result.html", attempt=attempt, submission=attempt.submission, policy=policy,
        module_version=module_version, state=state, status=status, following=following,
        types=QUESTION_TYPES,
    )  # fmt: skip


# --- authors ---------------------------------------------------------------------------------------


@quiz_bp.route("/authoring/quizzes")
@roles_required("slt", "admin")
def banks() -> Any:
    s = db.session
    rows = []
    for policy, version in published_policies(s):
        for link in version.module_links:
            bank = s.get(QuizBank, link.bank_id) if link.bank_id else None
            rows.append((policy, link.module_version, bank))
    return render_template("quizzes/banks.html", rows=rows)


@quiz_bp.route("/authoring/quizzes/<slug>/<module_slug>")
@roles_required("slt", "admin")
def bank(slug: str, module_slug: str) -> Any:
    policy, link, bank = _quiz_module(slug, module_slug)
    stats = item_statistics(db.session, link.module_version.module)
    order = request.args.get("order", "bank")
    questions = list(bank.questions)
    if order == "wrong":
        questions.sort(key=lambda q: -(stats[q.key].wrong_rate if q.key in stats else -1))
    return render_template(
        "quizzes/bank.html", policy=policy, module_version=link.module_version, bank=bank,
        rules=rules_of(bank), questions=questions, stats=stats, order=order, types=QUESTION_TYPES,
    )  # fmt: skip
