"""Applying for an account, SLT's queue and decision, recording the account, the register."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.orm import selectinload
from wtforms.fields.choices import SelectChoice

from approvals.forms import (
    ApplicationForm,
    CloseForm,
    DecisionForm,
    RecordAccountForm,
    TransferForm,
)
from approvals.models import AccountApplication, SocialAccount
from approvals.rules import (
    VISIBILITY,
    ApplicationData,
    ApprovalError,
    NotIndependent,
    RunnersNotTrained,
    close,
    conflict_of_interest,
    decide,
    record_account,
    register,
    runner_candidates,
    runner_statuses,
    submit_application,
    transfer,
)
from core.db import db
from people.auth import roles_required
from people.models import Person
from people.roles import ROLES

approvals_bp = Blueprint("approvals", __name__, url_prefix="/accounts", template_folder="templates")
APPLICANTS = ("staff", "slt", "admin")
REVIEWERS = ("slt", "admin")
READERS = ("slt", "admin", "governor")


def _people_choices(applicant: Person) -> list[SelectChoice]:
    """Only the people ``applicant`` may choose (see ``runner_candidates``), never the directory."""
    people = runner_candidates(db.session, applicant)
    return [
        SelectChoice(p.id, f"{p.name} ({', '.join(ROLES[r] for r in p.roles)})") for p in people
    ]


def _application_or_404(application_id: int) -> AccountApplication:
    application = db.session.get(AccountApplication, application_id)
    if application is None:
        abort(404)
    # Applicants see their own; reviewers and governors see all. Others: it does not exist.
    if application.applicant_id != current_user.id and not current_user.has_role(*READERS):
        abort(404)
    return application


@approvals_bp.route("/apply", methods=["GET", "POST"])
@roles_required(*APPLICANTS)
def apply() -> Any:
    form = ApplicationForm()
    form.runners.choices = _people_choices(current_user)
    if form.validate_on_submit():
        data = ApplicationData(
            name=form.name.data, platform=form.platform.data, aim=form.aim.data,
            audience=form.audience.data, promotion=form.promotion.data,
            visibility=form.visibility.data, runner_ids=tuple(form.runners.data),
        )  # fmt: skip
        try:
            application = submit_application(db.session, current_user, data)
        except ApprovalError as exc:
            db.session.rollback()
            form.runners.errors = [str(exc)]
        else:
            db.session.commit()
            flash("Your business case is with the senior leadership team.", "success")
            return redirect(url_for("approvals.application", application_id=application.id))
    return render_template("approvals/apply.html", form=form), (
        400 if request.method == "POST" else 200
    )


@approvals_bp.route("/applications")
@roles_required(*APPLICANTS, *READERS)
def applications() -> Any:
    query = (
        select(AccountApplication)
        .options(selectinload(AccountApplication.decision))
        .order_by(AccountApplication.submitted_at.desc())
    )
    if not current_user.has_role(*READERS):
        query = query.where(AccountApplication.applicant_id == current_user.id)
    rows = db.session.scalars(query).all()
    pending = [a for a in rows if a.state == "pending"]
    decided = [a for a in rows if a.state != "pending"]
    return render_template("approvals/applications.html", pending=pending, decided=decided)


@approvals_bp.route("/applications/<int(max=2147483647):application_id>", methods=["GET", "POST"])
@roles_required(*APPLICANTS, *READERS)
def application(application_id: int) -> Any:
    application = _application_or_404(application_id)
    form = DecisionForm()
    record_form = RecordAccountForm(formdata=None, platform=application.platform)
    status = 200
    if request.method == "POST":
        if not current_user.has_role(*REVIEWERS):
            abort(403)
        if form.validate_on_submit():
            try:
                decide(db.session, application, current_user, form.decision.data == "approve",
                       form.reason.data or "")  # fmt: skip
            except RunnersNotTrained as exc:
                db.session.rollback()
                form.form_errors.append(str(exc))
                status = 409
            except NotIndependent as exc:
                db.session.rollback()
                form.form_errors.append(str(exc))
                status = 403
            except ApprovalError as exc:
                db.session.rollback()
                form.form_errors.append(str(exc))
                status = 400
            else:
                db.session.commit()
                flash(f"The application is {application.state}.", "success")
                return redirect(url_for("approvals.application", application_id=application.id))
        else:
            status = 400
    runners = runner_statuses(db.session, application.runners)
    return render_template(
        "approvals/application.html", application=application, runners=runners, form=form,
        record_form=record_form, visibility=VISIBILITY,
        can_approve=all(r.trained and r.person.active for r in runners),
        conflict=conflict_of_interest(application, current_user),
        # Module-by-module detail is for those who decide or oversee, not for colleagues.
        show_detail=current_user.has_role(*READERS),
    ), status  # fmt: skip


@approvals_bp.route("/applications/<int(max=2147483647):application_id>/account", methods=["POST"])
@roles_required("admin")
def record(application_id: int) -> Any:
    application = _application_or_404(application_id)
    form = RecordAccountForm()
    if form.validate_on_submit():
        try:
            account = record_account(db.session, application, current_user, form.platform.data,
                                     form.handle.data)  # fmt: skip
        except ApprovalError as exc:
            db.session.rollback()
            flash(str(exc), "error")
        else:
            db.session.commit()
            flash("The account is on the register.", "success")
            return redirect(url_for("approvals.account", account_id=account.id))
    else:
        for errors in form.errors.values():
            for message in errors:
                flash(str(message), "error")
    return redirect(url_for("approvals.application", application_id=application.id))


@approvals_bp.route("/register")
@roles_required(*READERS)
def register_page() -> Any:
    entries = register(db.session, include_closed=request.args.get("closed") == "1")
    return render_template("approvals/register.html", entries=entries)


@approvals_bp.route("/register/<int(max=2147483647):account_id>", methods=["GET", "POST"])
@roles_required(*READERS)
def account(account_id: int) -> Any:
    account = db.session.get(SocialAccount, account_id)
    if account is None:
        abort(404)
    transfer_form = TransferForm(prefix="transfer")
    transfer_form.runners.choices = _people_choices(current_user)
    close_form = CloseForm(prefix="close")
    status = 200
    if request.method == "POST":
        if not current_user.has_role("admin"):
            abort(403)
        action = request.form.get("action")
        chosen = transfer_form if action == "transfer" else close_form
        if chosen.validate_on_submit():
            try:
                if action == "transfer":
                    transfer(db.session, account, current_user, tuple(transfer_form.runners.data))
                else:
                    close(db.session, account, current_user, close_form.reason.data)
            except ApprovalError as exc:
                db.session.rollback()
                chosen.form_errors.append(str(exc))
                status = 409 if isinstance(exc, RunnersNotTrained) else 400
            else:
                db.session.commit()
                flash("The account was closed." if action == "close" else "The account has new runners.",
                      "success")  # fmt: skip
                return redirect(url_for("approvals.account", account_id=account.id))
        else:
            status = 400
    elif not transfer_form.runners.data:
        transfer_form.runners.data = [p.id for p in account.current_runners]
    entry = next(
        (e for e in register(db.session, include_closed=True) if e.account.id == account.id), None
    )
    return render_template(
        "approvals/account.html", account=account, entry=entry, transfer_form=transfer_form,
        close_form=close_form,
    ), status  # fmt: skip
