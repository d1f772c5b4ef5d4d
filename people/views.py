"""Sign-in, invitations and password reset; the administrator's people pages."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import (
    Blueprint,
    abort,
    after_this_request,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy import func, or_, select
from wtforms.fields.choices import SelectChoice

from audit.log import record
from core.db import db, may_write, reads_only, writing
from core.mail import recent_failures as recent_mail_failures
from core.mail import send_mail, send_mail_later, smtp_configured
from core.security_log import flag
from core.web import (
    SESSION_STARTED,
    client_ip,
    external_url,
    federation,
    fresh_sign_in_for_changes,
    signed_in_recently,
)
from mfa.flow import needs_second_step, start_second_step
from people.auth import (
    DEVICE_MAX_AGE,
    INVITE,
    RESET,
    LinkError,
    ThrottlePolicy,
    device_token,
    device_trusted,
    local_path,
    lock_sign_in,
    make_link_token,
    person_for_token,
    record_attempt,
    reset_mail_allowed,
    retry_after,
    roles_required,
)
from people.forms import (
    ChangePasswordForm,
    ConfirmForm,
    ForgotPasswordForm,
    ImportForm,
    PersonForm,
    SetPasswordForm,
    SignInForm,
)
from people.models import Person, PersonRole, PersonSchool
from people.privacy import (
    ErasureRefused,
    erase_person,
    erasure_refusal,
    personal_data,
    record_export,
    retention_days,
)
from people.roles import ROLES
from people.service import (
    IMPORT_COLUMNS,
    ImportFailed,
    PeopleError,
    PersonData,
    changes_how_they_sign_in,
    check_password,
    create_person,
    deactivate,
    end_sessions,
    find_by_email,
    import_people,
    reactivate,
    set_password,
    update_person,
)
from training.publishing import published_policies
from training.status import REASON_TEXT, statuses_for, training_status

log = logging.getLogger("countersign.people")
auth_bp = Blueprint("auth", __name__, template_folder="templates")
admin_bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates")


def safe_next(target: str | None) -> str:
    """Only redirect within this site: a path, never another host or scheme."""
    return local_path(target) or url_for("training.dashboard")


# --- sign-in -------------------------------------------------------------------------------------


def _device_cookie() -> str:
    secure = current_app.config.get("SESSION_COOKIE_SECURE")
    return "__Host-countersign_device" if secure else "countersign_device"


def trusted_device(person: Person | None) -> bool:
    """Whether this browser holds the person's device mark (exempt from the per-address count)."""
    token = request.cookies.get(_device_cookie())
    return device_trusted(current_app.config["SECRET_KEY"], token, person)


def trust_this_device(person: Person) -> None:
    """Give this browser a fresh device mark for the person; called at each full sign-in."""
    token = device_token(current_app.config["SECRET_KEY"], person)

    @after_this_request
    def _set(response: Any) -> Any:
        response.set_cookie(
            _device_cookie(), token, max_age=DEVICE_MAX_AGE, path="/", httponly=True,
            secure=bool(current_app.config.get("SESSION_COOKIE_SECURE")), samesite="Lax",
        )  # fmt: skip
        return response


@auth_bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    if current_user.is_authenticated:
        return redirect(safe_next(request.args.get("next")))
    form = SignInForm()
    status = 200
    if form.validate_on_submit():
        email = form.email.data.strip().lower()
        ip = client_ip()
        s = db.session
        # Check the password (scrypt: slow by design) before taking the write lock, which on SQLite
        # every writer shares: held through scrypt, concurrent sign-ins wait out the busy timeout.
        reads_only()
        known = find_by_email(s, email)
        password_ok = check_password(known, form.password.data)
        trusted = trusted_device(known)
        s.commit()
        may_write()
        lock_sign_in(s, email)
        wait = retry_after(s, email, ip, ThrottlePolicy(), trusted_device=trusted)
        if wait:
            minutes = max(1, round(wait / 60))
            form.form_errors.append(
                f"Too many attempts. Wait {minutes} minute{'s' if minutes != 1 else ''} and try again."
            )
            response = current_app.make_response(
                (render_template("people/sign_in.html", form=form), 429)
            )
            response.headers["Retry-After"] = str(wait)
            return response
        person = find_by_email(s, email)
        ok = password_ok and person is not None and person.active
        if ok and needs_second_step(s, person):
            # Not signed in yet: the second step records this sign-in, passed or failed.
            s.commit()
            return start_second_step(s, person, request.args.get("next"))
        attempt = record_attempt(s, email, ip, ok)
        # The attempt's row holds the email and address; the log holds only ids.
        record(
            s, "sign_in.succeeded" if ok else "sign_in.failed",
            actor_id=person.id if person is not None else None,
            subject_type="sign_in_attempt", subject_id=attempt.id,
        )  # fmt: skip
        s.commit()
        if ok:
            session.clear()  # a fresh session at sign-in: nothing carried from before
            session.permanent = True
            login_user(person)
            trust_this_device(person)
            return redirect(safe_next(request.args.get("next")))
        form.form_errors.append("The email address or password is not right.")
        flag("sign_in_failed")
        status = 400
    elif request.method == "POST":
        status = 400
    return render_template("people/sign_in.html", form=form), status


@auth_bp.route("/sign-out", methods=["POST"])
def sign_out() -> Any:
    if current_user.is_authenticated:
        # Ends this person's sessions everywhere: a copied session cookie stops working too.
        current_user.auth_version += 1
        record(db.session, "sign_out", actor_id=current_user.id)
        db.session.commit()
    logout_user()
    session.clear()
    flash("You have signed out.", "success")
    then = request.form.get("next")
    return redirect(
        url_for("auth.sign_in", next=safe_next(then)) if then else url_for("auth.sign_in")
    )


@auth_bp.route("/account/password", methods=["GET", "POST"])
@login_required
def change_password() -> Any:
    form = ChangePasswordForm()
    if form.validate_on_submit():
        if not check_password(current_user, form.current.data):
            form.current.errors = ["Your current password is not right."]
        else:
            try:
                set_password(current_user, form.password.data)  # ends every other session
            except PeopleError as exc:
                form.password.errors = [str(exc)]
                return render_template("people/change_password.html", form=form), 400
            record(db.session, "password.changed", actor_id=current_user.id)
            db.session.commit()
            login_user(current_user._get_current_object())  # this one carries on
            flash("Your password is changed. You have been signed out everywhere else.", "success")
            return redirect(url_for("training.dashboard"))
    return render_template("people/change_password.html", form=form), (
        400 if request.method == "POST" else 200
    )


@auth_bp.route("/account/sign-out-others", methods=["POST"])
@login_required
def sign_out_others() -> Any:
    """End every session of this person but the one asking (CSRF-checked like every form)."""
    started = session.get(SESSION_STARTED)
    end_sessions(db.session, current_user, current_user.id, keep_current=True)
    db.session.commit()
    login_user(current_user._get_current_object())  # this one carries on, under the new version
    session[SESSION_STARTED] = started  # ...with the absolute lifetime it already had
    flash("You have been signed out everywhere else. This session carries on.", "success")
    return redirect(url_for("auth.change_password"))


def _link_message(person: Person, purpose: str, link: str) -> tuple[str, str]:
    subject = {
        INVITE: f"Set up your {federation().name} training account",
        RESET: f"Reset your {federation().name} training password",
    }[purpose]
    body = (
        f"Hello {person.name},\n\nUse this link to set your password:\n{link}\n\n"
        "The link works once. If you did not expect this email you can ignore it.\n"
    )
    return subject, body


def _link_issued(person: Person, purpose: str, via: str, by_id: int | None) -> None:
    """Who asked for a link for whom, and how it went out; never the link itself."""
    record(
        db.session, f"link.{purpose}_issued", actor_id=by_id, subject_type="person",
        subject_id=person.id, detail={"via": via},
    )  # fmt: skip


def _show_links(links: list[tuple[Person, str]], emailed_failed: bool = False) -> Any:
    """The links, on this page only: not logged, not kept in the session, not cached."""
    return render_template(
        "people/invitation_links.html", links=links, emailed_failed=emailed_failed
    )


def _issue_link_by_admin(person: Person, purpose: str) -> Any:
    """Email the link when email is set up; otherwise, or when sending fails, show it once to
    the administrator who asked. Links never reach a log: anyone reading one could use it."""
    token = make_link_token(current_app.config["SECRET_KEY"], purpose, person)
    endpoint = "auth.accept_invite" if purpose == INVITE else "auth.reset_password"
    link = external_url(endpoint, token=token)
    subject, body = _link_message(person, purpose, link)
    if smtp_configured(current_app.config):
        try:
            send_mail(current_app.config, person.email, subject, body)
        except OSError as exc:
            log.warning("could not send %s email to person %s: %s", purpose, person.id, exc)
            flash(f"The email could not be sent ({exc}). Give them this link instead.", "error")
        else:
            _link_issued(person, purpose, "email", current_user.id)
            db.session.commit()
            flash(f"An email with the link was sent to {person.email}.", "success")
            return redirect(url_for("admin.person", person_id=person.id))
    _link_issued(person, purpose, "screen", current_user.id)
    db.session.commit()
    return _show_links([(person, link)], emailed_failed=smtp_configured(current_app.config))


@auth_bp.route("/account/data.json")
@login_required
def my_data() -> Any:
    """Everything held about the signed-in person, as a file to keep (UK GDPR right of access)."""
    s = db.session
    data = personal_data(
        s, current_user, lambda code: external_url("certificates.verify", code=code)
    )
    with writing(s):
        record_export(s, current_user)
    return current_app.response_class(
        json.dumps(data, indent=2, ensure_ascii=False),
        mimetype="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="my-data-{current_user.id}.json"',
            "Cache-Control": "no-store",
        },
    )


@auth_bp.route("/forgot-password", methods=["GET", "POST"])
def forgot_password() -> Any:
    form = ForgotPasswordForm()
    if form.validate_on_submit():
        s = db.session
        person = find_by_email(s, form.email.data)
        emailed = smtp_configured(current_app.config)
        allowed = person is not None and person.active and reset_mail_allowed(s, person)
        if person is not None and person.active and not allowed:
            flag("reset_mail_limited")
        if allowed and emailed:
            token = make_link_token(current_app.config["SECRET_KEY"], RESET, person)
            link = external_url("auth.reset_password", token=token)
            _link_issued(person, RESET, "email", None)
            s.commit()
            subject, body = _link_message(person, RESET, link)
            send_mail_later(current_app.config, person.email, subject, body)
        else:
            # No link: unknown, a leaver, enough links sent this hour, or no email to send it by
            # (the page says to ask an administrator). One row either way, so the answer takes
            # as long whoever asks.
            record(s, "password.reset_requested")
            s.commit()
        # The same answer whether or not the address is known.
        return render_template(
            "people/reset_sent.html",
            email=form.email.data,
            emailed=smtp_configured(current_app.config),
        )
    return render_template("people/forgot_password.html", form=form), (
        400 if request.method == "POST" else 200
    )


def _set_password_page(purpose: str, token: str) -> Any:
    max_age = current_app.config["INVITE_MAX_AGE" if purpose == INVITE else "RESET_MAX_AGE"]
    s = db.session
    try:
        person = person_for_token(s, current_app.config["SECRET_KEY"], purpose, token, max_age)
    except LinkError as exc:
        return render_template("people/link_error.html", message=str(exc)), 400
    form = SetPasswordForm()
    if form.validate_on_submit():
        first_password = person.password_hash is None
        try:
            set_password(person, form.password.data)
        except PeopleError as exc:
            form.password.errors = [str(exc)]
        else:
            record(
                s, "password.reset", actor_id=person.id, detail={"link": purpose}
            )  # fmt: skip
            if first_password:  # a launch-made account claimed: its launch's link must be confirmed
                from lti.links import account_claimed

                account_claimed(s, person, person.id)
            s.commit()
            if needs_second_step(s, person):  # the link stands in for the password only
                response = start_second_step(s, person, None)
                flash("Your password is set. Now the second step of signing in.", "success")
                return response
            # The link proved who they are: sign them straight in, in a fresh session.
            session.clear()
            session.permanent = True
            login_user(person)
            flash("Your password is set and you are signed in.", "success")
            return redirect(url_for("training.dashboard"))
    return render_template("people/set_password.html", form=form, person=person, purpose=purpose), (
        400 if request.method == "POST" else 200
    )


@auth_bp.route("/invite/<token>", methods=["GET", "POST"])
def accept_invite(token: str) -> Any:
    return _set_password_page(INVITE, token)


@auth_bp.route("/reset-password/<token>", methods=["GET", "POST"])
def reset_password(token: str) -> Any:
    return _set_password_page(RESET, token)


# --- administrators ------------------------------------------------------------------------------


def _person_or_404(person_id: int) -> Person:
    person = db.session.get(Person, person_id)
    if person is None:
        abort(404)
    return person


def _person_form(person: Person | None = None) -> PersonForm:
    form = PersonForm(obj=None)
    form.schools.choices = [SelectChoice(s.code, s.name) for s in federation().schools]
    if person is not None and request.method == "GET":
        form.name.data, form.email.data = person.name, person.email
        form.roles.data, form.schools.data = person.roles, person.schools
    return form


def _data(form: PersonForm) -> PersonData:
    return PersonData(
        form.name.data or "", form.email.data or "", tuple(form.roles.data or ()),
        tuple(form.schools.data or ()),
    )  # fmt: skip


@admin_bp.route("/people")
@roles_required("admin")
def people() -> Any:
    q = request.args.get("q", "").strip()[:100]
    role = request.args.get("role", "")
    school = request.args.get("school", "")
    state = request.args.get("state", "active")
    page = request.args.get("page", 1, type=int) or 1
    page = max(1, min(page, 100000))
    query = select(Person)
    if q:
        like = f"%{q.lower()}%"
        query = query.where(or_(func.lower(Person.name).like(like), Person.email.like(like)))
    if role in ROLES:
        query = query.where(
            Person.id.in_(select(PersonRole.person_id).where(PersonRole.role == role))
        )
    if school == "none":
        query = query.where(~Person.id.in_(select(PersonSchool.person_id)))
    elif school:
        query = query.where(
            Person.id.in_(select(PersonSchool.person_id).where(PersonSchool.school == school))
        )
    if state in ("active", "inactive"):
        query = query.where(Person.active.is_(state == "active"))
    s = db.session
    total = s.scalar(select(func.count()).select_from(query.subquery()))
    size = current_app.config["PAGE_SIZE"]
    rows = s.scalars(
        query.order_by(func.lower(Person.name), Person.id).limit(size).offset((page - 1) * size)
    ).all()
    pages = max(1, (total + size - 1) // size)
    policies = [
        (version, statuses_for(s, list(rows), policy)) for policy, version in published_policies(s)
    ]
    uninvited = s.scalar(
        select(func.count()).where(Person.active.is_(True), Person.password_hash.is_(None))
    )
    return render_template(
        "people/people.html", people=rows, total=total, page=page, pages=pages,
        q=q, role=role, school=school, state=state, roles=ROLES, form=ConfirmForm(),
        policies=policies, uninvited=uninvited,
        mail_failures=recent_mail_failures() if smtp_configured(current_app.config) else [],
    )  # fmt: skip


@admin_bp.route("/people/invite-all", methods=["POST"])
@roles_required("admin")
@fresh_sign_in_for_changes
def invite_all() -> Any:
    """Invitations for every active person who has no password yet (e.g. after an import)."""
    s = db.session
    waiting = s.scalars(
        select(Person)
        .where(Person.active.is_(True), Person.password_hash.is_(None))
        .order_by(func.lower(Person.name))
    ).all()
    if not waiting:
        flash("Everyone active already has a password.", "info")
        return redirect(url_for("admin.people"))
    links = [
        (p, external_url("auth.accept_invite",
                         token=make_link_token(current_app.config["SECRET_KEY"], INVITE, p)))
        for p in waiting
    ]  # fmt: skip
    emailed = smtp_configured(current_app.config)
    for person, link in links:
        if emailed:
            subject, body = _link_message(person, INVITE, link)
            send_mail_later(current_app.config, person.email, subject, body)
        _link_issued(person, INVITE, "email" if emailed else "screen", current_user.id)
    s.commit()
    if emailed:
        flash(f"Invitations are being emailed to {len(links)} people.", "success")
        return redirect(url_for("admin.people"))
    return _show_links(links)


@admin_bp.route("/people/new", methods=["GET", "POST"])
@roles_required("admin")
@fresh_sign_in_for_changes
def new_person() -> Any:
    form = _person_form()
    if form.validate_on_submit():
        try:
            person = create_person(db.session, _data(form), federation(), current_user.id)
        except PeopleError as exc:
            form.form_errors.append(str(exc))
        else:
            db.session.commit()
            flash(f"{person.name} was added. Send them an invitation to set a password.", "success")
            return redirect(url_for("admin.person", person_id=person.id))
    return render_template("people/person_form.html", form=form, person=None), (
        400 if request.method == "POST" else 200
    )


@admin_bp.route("/people/<int(max=2147483647):person_id>", methods=["GET", "POST"])
@roles_required("admin")
def person(person_id: int) -> Any:
    person = _person_or_404(person_id)
    form = _person_form(person)
    reauth = False
    if form.validate_on_submit():
        if person.erased_at is not None:
            form.form_errors.append("An erased record cannot be edited.")
        elif person.id == current_user.id and "admin" not in form.roles.data:
            form.roles.errors = [
                "You cannot remove your own administrator role. Ask another administrator."
            ]
        elif changes_how_they_sign_in(person, _data(form)) and not signed_in_recently():
            form.form_errors.append(
                "Changing an email address or roles needs a sign-in in the last ten minutes. "
                "Nothing was saved: sign out and in again below, then make the change again."
            )
            reauth = True
        else:
            try:
                update_person(db.session, person, _data(form), federation(), current_user.id)
            except PeopleError as exc:
                db.session.rollback()
                form.form_errors.append(str(exc))
            else:
                db.session.commit()
                flash("Changes saved.", "success")
                return redirect(url_for("admin.person", person_id=person.id))
    statuses = [
        (version, training_status(db.session, person, policy))
        for policy, version in published_policies(db.session)
    ]
    return render_template(
        "people/person_form.html", form=form, person=person, confirm=ConfirmForm(),
        statuses=statuses, reasons=REASON_TEXT, reauth=reauth,
    ), (400 if request.method == "POST" else 200)  # fmt: skip


@admin_bp.route("/people/<int(max=2147483647):person_id>/deactivate", methods=["GET", "POST"])
@roles_required("admin")
@fresh_sign_in_for_changes
def deactivate_person(person_id: int) -> Any:
    person = _person_or_404(person_id)
    if person.id == current_user.id:
        flash("You cannot deactivate yourself. Ask another administrator.", "error")
    elif request.method == "GET":
        if not person.active:
            return redirect(url_for("admin.person", person_id=person.id))
        return render_template("people/deactivate.html", person=person, form=ConfirmForm())
    else:
        deactivate(person, current_user.id)
        db.session.commit()
        flash(f"{person.name} is deactivated. Their records are kept.", "success")
    return redirect(url_for("admin.person", person_id=person.id))


@admin_bp.route(
    "/people/<int(max=2147483647):person_id>/sign-out-everywhere", methods=["GET", "POST"]
)
@roles_required("admin")
def sign_out_everywhere(person_id: int) -> Any:
    """End all of one person's sessions (a lost device, a suspected break-in): GET asks first."""
    person = _person_or_404(person_id)
    if person.id == current_user.id:
        flash("To end your own other sessions, use 'Sign out everywhere else' below.", "error")
        return redirect(url_for("auth.change_password"))
    if request.method == "GET":
        return render_template("people/sign_out_everywhere.html", person=person, form=ConfirmForm())
    end_sessions(db.session, person, current_user.id, keep_current=False)
    db.session.commit()
    flash(f"{person.name} is signed out everywhere.", "success")
    return redirect(url_for("admin.person", person_id=person.id))


@admin_bp.route("/people/<int(max=2147483647):person_id>/erase", methods=["GET", "POST"])
@roles_required("admin")
@fresh_sign_in_for_changes
def erase(person_id: int) -> Any:
    person = _person_or_404(person_id)
    days = retention_days(current_app.config)
    form = ConfirmForm()
    refusal = erasure_refusal(person, days)
    if refusal is None and form.validate_on_submit():
        try:
            erase_person(db.session, person.id, actor_id=current_user.id, retention_days=days)
        except ErasureRefused as exc:
            db.session.rollback()
            refusal = str(exc)
        else:
            db.session.commit()
            flash(f"Personal data erased. This record is now {person.name}.", "success")
            return redirect(url_for("admin.person", person_id=person.id))
    status = 409 if refusal else (400 if request.method == "POST" else 200)
    return render_template(
        "people/erase.html", person=person, form=form, refusal=refusal, days=days
    ), status


@admin_bp.route("/people/<int(max=2147483647):person_id>/reactivate", methods=["POST"])
@roles_required("admin")
@fresh_sign_in_for_changes
def reactivate_person(person_id: int) -> Any:
    person = _person_or_404(person_id)
    if person.erased_at is not None:
        flash("An erased record cannot be reactivated: add the person again instead.", "error")
        return redirect(url_for("admin.person", person_id=person.id))
    reactivate(person, current_user.id)
    db.session.commit()
    flash(f"{person.name} is active again.", "success")
    return redirect(url_for("admin.person", person_id=person.id))


@admin_bp.route("/people/<int(max=2147483647):person_id>/invite", methods=["POST"])
@roles_required("admin")
@fresh_sign_in_for_changes
def invite_person(person_id: int) -> Any:
    person = _person_or_404(person_id)
    if not person.active:
        flash("Reactivate this person before inviting them.", "error")
        return redirect(url_for("admin.person", person_id=person.id))
    return _issue_link_by_admin(person, INVITE)


@admin_bp.route("/people/import/template.csv")
@roles_required("admin")
def import_template() -> Any:
    schools = [s.code for s in federation().schools]
    lines = [
        ",".join(IMPORT_COLUMNS),
        f"Sam Example,sam.example@school.example,staff,{schools[0] if schools else ''}",
        f"Pat Example,pat.example@school.example,parent;volunteer,{';'.join(schools[:2])}",
        "Gwen Example,gwen.example@school.example,governor,",
    ]
    return current_app.response_class(
        "\r\n".join(lines) + "\r\n",
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="people-template.csv"'},
    )


@admin_bp.route("/people/import", methods=["GET", "POST"])
@roles_required("admin")
@fresh_sign_in_for_changes
def import_page() -> Any:
    form = ImportForm()
    errors: list[str] = []
    if form.validate_on_submit():
        raw = form.file.data.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            errors.append(
                "The file is not UTF-8 text. In your spreadsheet, save it as 'CSV UTF-8'."
            )
        else:
            try:
                result = import_people(db.session, text, federation(), current_user.id)
            except ImportFailed as exc:
                db.session.rollback()
                errors = [str(e) for e in exc.errors]
            else:
                db.session.commit()
                flash(
                    f"Imported: {len(result.created)} added, {len(result.updated)} updated, "
                    f"{len(result.unchanged)} unchanged.",
                    "success",
                )
                return redirect(url_for("admin.people"))
    status = 400 if request.method == "POST" else 200
    return render_template("people/import.html", form=form, errors=errors), status
