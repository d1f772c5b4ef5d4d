"""Pages for the second factor: the step after the password, the person's own methods, and an
administrator's reset."""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_required, login_user

from audit.log import record
from core.db import db
from core.mail import send_mail_later, smtp_configured
from core.security_log import flag
from core.web import (
    client_ip,
    external_url,
    federation,
    fresh_sign_in_for_changes,
    signed_in_recently,
)
from mfa.flow import CHALLENGE, TOTP_SECRET, pending_next, pending_person
from mfa.forms import CodeForm, PasskeyForm, RecoveryForm
from mfa.models import PASSKEY, TOTP, SecondFactor
from mfa.rules import (
    ENROL,
    SIGN_IN,
    SecondFactorError,
    authentication_options,
    enrol_passkey,
    enrol_totp,
    factors,
    keep_challenge,
    new_recovery_codes,
    new_totp_secret,
    qr_svg,
    recovery_codes_left,
    registration_options,
    relying_party,
    remove_factor,
    required_for,
    reset_factors,
    spend_challenge,
    totp_uri,
    use_passkey,
    use_recovery_code,
    use_totp,
)
from people.auth import ThrottlePolicy, lock_sign_in, record_attempt, retry_after, roles_required
from people.forms import ConfirmForm
from people.models import Person
from people.views import safe_next, trust_this_device, trusted_device

mfa_bp = Blueprint(
    "mfa", __name__, template_folder="templates", static_folder="static",
    static_url_path="/static/mfa",
)  # fmt: skip

EXPIRED = "Signing in took too long, or was started in another window. Sign in again."


def _rp() -> Any:
    return relying_party(current_app.config, federation().name)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def _issue(person: Person, purpose: str, challenge: bytes) -> None:
    """Show this browser a challenge and keep it on the server until it is answered."""
    keep_challenge(db.session, person.id, purpose, challenge)
    db.session.commit()
    session[CHALLENGE] = _b64(challenge)


def _challenge(person: Person, purpose: str) -> bytes | None:
    """The challenge of the ceremony this browser was shown, usable once.

    The cookie says which challenge; the server's row says it is still unused. Spending it is
    committed at once, so whatever the answer turns out to be, a copy of the old cookie cannot
    present the same answer again.
    """
    value = session.pop(CHALLENGE, None)
    try:
        challenge = base64.urlsafe_b64decode(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if challenge is None:
        return None
    spent = spend_challenge(db.session, person.id, purpose, challenge)
    db.session.commit()
    return challenge if spent else None


def _expired() -> Any:
    flash(EXPIRED, "info")
    return redirect(url_for("auth.sign_in"))


def _throttled(wait: int) -> str:
    minutes = max(1, round(wait / 60))
    return f"Too many attempts. Wait {minutes} minute{'s' if minutes != 1 else ''} and try again."


def _attempt(person: Person, method: str, check: Callable[[], bool]) -> int | bool:
    """Run one second-factor check as a sign-in attempt for the person's email.

    Throttled exactly like a password: a wrong code is a failed sign-in for that email, and once
    the limit is reached even a right code waits. Returns the seconds to wait (an int) when
    throttled, else whether the check passed.
    """
    s = db.session
    ip = client_ip()
    lock_sign_in(s, person.email)
    wait = retry_after(s, person.email, ip, ThrottlePolicy(), trusted_device=trusted_device(person))
    if wait:
        s.rollback()
        return wait
    ok = bool(check())  # a check that fails has changed nothing
    attempt = record_attempt(s, person.email, ip, ok)
    record(
        s, "sign_in.succeeded" if ok else "sign_in.failed", actor_id=person.id,
        subject_type="sign_in_attempt", subject_id=attempt.id, detail={"second_factor": method},
    )  # fmt: skip
    s.commit()
    if not ok:
        flag("second_factor_failed", method)
    return ok


def _signed_in(person: Person) -> str:
    """End the half-signed state and sign the person in, in a fresh session; where to go next."""
    target = safe_next(pending_next())
    session.clear()
    session.permanent = True
    login_user(person)
    trust_this_device(person)
    return target


def _too_many(template: str, wait: int, **context: Any) -> Any:
    response = current_app.make_response((render_template(template, **context), 429))
    response.headers["Retry-After"] = str(wait)
    return response


# --- the step after the password ------------------------------------------------------------------


def _verify_page(person: Person, status: int = 200, wait: int = 0, **forms: Any) -> Any:
    methods = {f.method for f in factors(db.session, person.id)}
    options = None
    if PASSKEY in methods:
        made = authentication_options(db.session, person, _rp())
        if made:
            options, challenge = made
            _issue(person, SIGN_IN, challenge)
    context = {
        "person": person, "methods": methods, "options": options,
        "code_form": forms.get("code_form") or CodeForm(formdata=None),
        "passkey_form": forms.get("passkey_form") or PasskeyForm(formdata=None),
        "recovery_form": forms.get("recovery_form") or RecoveryForm(formdata=None),
    }  # fmt: skip
    if wait:
        return _too_many("mfa/verify.html", wait, **context)
    return render_template("mfa/verify.html", **context), status


@mfa_bp.route("/sign-in/second-factor", methods=["GET", "POST"])
def verify() -> Any:
    person = pending_person(db.session)
    if person is None:
        return _expired()
    if not factors(db.session, person.id):
        return redirect(url_for("mfa.enrol"))
    form = CodeForm()
    if request.method == "GET" or not form.validate_on_submit():
        return _verify_page(person, 400 if request.method == "POST" else 200, code_form=form)
    result = _attempt(
        person, TOTP, lambda: use_totp(db.session, person, form.code.data) is not None
    )
    if result is True:
        return redirect(_signed_in(person))
    if result is False:
        form.code.errors = ["That code is not right, or it was already used. Enter the next one."]
        return _verify_page(person, 400, code_form=form)
    form.code.errors = [_throttled(result)]
    return _verify_page(person, wait=result, code_form=form)


@mfa_bp.route("/sign-in/second-factor/passkey", methods=["POST"])
def verify_passkey() -> Any:
    person = pending_person(db.session)
    if person is None:
        return _expired()
    form = PasskeyForm()
    challenge = _challenge(person, SIGN_IN)
    if not form.validate_on_submit():
        return _verify_page(person, 400, passkey_form=form)
    if challenge is None:
        form.credential.errors = ["The page was out of date. Try your passkey again."]
        return _verify_page(person, 400, passkey_form=form)
    result = _attempt(
        person, PASSKEY,
        lambda: use_passkey(db.session, person, form.credential.data, challenge, _rp()) is not None,
    )  # fmt: skip
    if result is True:
        return redirect(_signed_in(person))
    if result is False:
        form.credential.errors = ["That passkey is not one set up for your account."]
        return _verify_page(person, 400, passkey_form=form)
    form.credential.errors = [_throttled(result)]
    return _verify_page(person, wait=result, passkey_form=form)


@mfa_bp.route("/sign-in/second-factor/recovery", methods=["POST"])
def recover() -> Any:
    person = pending_person(db.session)
    if person is None:
        return _expired()
    form = RecoveryForm()
    if not form.validate_on_submit():
        return _verify_page(person, 400, recovery_form=form)
    left: list[int] = []

    def check() -> bool:
        count = use_recovery_code(db.session, person, form.recovery_code.data)
        if count is not None:
            left.append(count)
        return count is not None

    result = _attempt(person, "recovery_code", check)
    if result is True:
        target = _signed_in(person)
        flash(
            f"You used a recovery code; {left[0]} left. If you have lost your authenticator, set "
            "up a new method and remove the old one on your second factor page.",
            "info" if left[0] > 2 else "error",
        )
        return redirect(target if left[0] > 2 else url_for("mfa.account"))
    if result is False:
        form.recovery_code.errors = ["That recovery code is not right, or it was already used."]
        return _verify_page(person, 400, recovery_form=form)
    form.recovery_code.errors = [_throttled(result)]
    return _verify_page(person, wait=result, recovery_form=form)


# --- setting up a method ------------------------------------------------------------------------


def _setup_context(
    person: Person, code_form: Any = None, passkey_form: Any = None, only: str | None = None
) -> dict:
    """A fresh passkey challenge, and the authenticator app's secret kept while the page is used
    (``only`` one of them, for a page that offers one method)."""
    context: dict[str, Any] = {}
    if only != PASSKEY:
        secret = session.get(TOTP_SECRET)
        if not isinstance(secret, str) or len(secret) != 32:
            secret = new_totp_secret()
            session[TOTP_SECRET] = secret
        context["qr"] = qr_svg(totp_uri(secret, person.email, federation().name))
        context["spaced_secret"] = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    if only != TOTP:
        context["options"], challenge = registration_options(db.session, person, _rp())
        _issue(person, ENROL, challenge)
    return {
        **context, "person": person,
        "code_form": code_form or CodeForm(formdata=None),
        "passkey_form": passkey_form or PasskeyForm(formdata=None),
    }  # fmt: skip


def _first_codes(person: Person) -> list[str] | None:
    """Recovery codes come with a person's first method (once only, shown on the next page)."""
    if recovery_codes_left(db.session, person.id) or len(factors(db.session, person.id)) > 1:
        return None
    return new_recovery_codes(db.session, person)


def _enrol(person: Person, method: str, enrol: Callable[[], object], form: Any) -> Any:
    """Set up a first method while signing in: it also passes the second step."""
    codes: list[str] = []
    errors: list[str] = []

    def check() -> bool:
        try:
            enrol()
        except SecondFactorError as exc:
            errors.append(str(exc))
            return False
        codes.extend(_first_codes(person) or [])
        return True

    result = _attempt(person, method, check)
    if result is True:
        session.pop(TOTP_SECRET, None)
        target = _signed_in(person)
        return render_template("mfa/recovery_codes.html", codes=codes, next_url=target)
    field = form.code if method == TOTP else form.credential
    field.errors = errors or [_throttled(int(result))]
    forms = {"code_form" if method == TOTP else "passkey_form": form}
    if result is False:
        return render_template("mfa/enrol.html", **_setup_context(person, **forms)), 400
    return _too_many("mfa/enrol.html", int(result), **_setup_context(person, **forms))


@mfa_bp.route("/sign-in/second-factor/set-up", methods=["GET", "POST"])
def enrol() -> Any:
    person = pending_person(db.session)
    if person is None:
        return _expired()
    if factors(db.session, person.id):
        # Someone with only the password must never add a method to an account that has one.
        return redirect(url_for("mfa.verify"))
    form = CodeForm()
    if not form.validate_on_submit():
        status = 400 if request.method == "POST" else 200
        return render_template("mfa/enrol.html", **_setup_context(person, code_form=form)), status
    secret = session.get(TOTP_SECRET)
    if not isinstance(secret, str):
        form.code.errors = ["The page was out of date. Scan the new QR code and try again."]
        return render_template("mfa/enrol.html", **_setup_context(person, code_form=form)), 400
    return _enrol(
        person, TOTP, lambda: enrol_totp(db.session, person, secret, form.code.data), form
    )


@mfa_bp.route("/sign-in/second-factor/set-up/passkey", methods=["POST"])
def enrol_with_passkey() -> Any:
    person = pending_person(db.session)
    if person is None:
        return _expired()
    if factors(db.session, person.id):
        return redirect(url_for("mfa.verify"))
    form = PasskeyForm()
    challenge = _challenge(person, ENROL)
    if not form.validate_on_submit() or challenge is None:
        if challenge is None and not form.credential.errors:
            form.credential.errors = ["The page was out of date. Try again."]
        return render_template("mfa/enrol.html", **_setup_context(person, passkey_form=form)), 400
    return _enrol(
        person, PASSKEY,
        lambda: enrol_passkey(db.session, person, form.credential.data, challenge, _rp()), form,
    )  # fmt: skip


# --- the person's own methods -------------------------------------------------------------------


def recent_sign_in_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Changing how one signs in needs a full sign-in (password and second factor) in the last
    few minutes, so a session left open on a shared computer cannot swap in someone's phone."""

    @functools.wraps(view)
    @login_required
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if signed_in_recently():
            return view(*args, **kwargs)
        session.clear()  # this browser only: signed out, to sign in afresh
        flash("To change how you sign in, first sign in again.", "info")
        return redirect(url_for("auth.sign_in", next=url_for("mfa.account")))

    return wrapped


@mfa_bp.route("/account/second-factor")
@login_required
def account() -> Any:
    s = db.session
    return render_template(
        "mfa/account.html", factors=factors(s, current_user.id),
        codes_left=recovery_codes_left(s, current_user.id),
        required=required_for(current_user, current_app.config), form=ConfirmForm(),
    )  # fmt: skip


def _added(method_name: str) -> Any:
    codes = _first_codes(current_user)
    db.session.commit()
    session.pop(TOTP_SECRET, None)
    if codes:
        return render_template(
            "mfa/recovery_codes.html", codes=codes, next_url=url_for("mfa.account")
        )
    flash(f"{method_name} added.", "success")
    return redirect(url_for("mfa.account"))


@mfa_bp.route("/account/second-factor/authenticator", methods=["GET", "POST"])
@recent_sign_in_required
def add_totp() -> Any:
    form = CodeForm()
    secret = session.get(TOTP_SECRET)
    if form.validate_on_submit() and isinstance(secret, str):
        try:
            enrol_totp(db.session, current_user, secret, form.code.data)
        except SecondFactorError as exc:
            db.session.rollback()
            form.code.errors = [str(exc)]
        else:
            return _added("Authenticator app")
    elif request.method == "POST" and not form.code.errors:
        form.code.errors = ["The page was out of date. Scan the new QR code and try again."]
    context = _setup_context(current_user, code_form=form, only=TOTP)
    return render_template("mfa/add_totp.html", **context), 400 if request.method == "POST" else 200


@mfa_bp.route("/account/second-factor/passkey", methods=["GET", "POST"])
@recent_sign_in_required
def add_passkey() -> Any:
    form = PasskeyForm()
    if request.method == "POST":
        challenge = _challenge(current_user, ENROL)
        if form.validate_on_submit() and challenge is not None:
            try:
                enrol_passkey(db.session, current_user, form.credential.data, challenge, _rp())
            except SecondFactorError as exc:
                db.session.rollback()
                form.credential.errors = [str(exc)]
            else:
                return _added("Passkey")
        elif not form.credential.errors:
            form.credential.errors = ["The page was out of date. Try again."]
    context = _setup_context(current_user, passkey_form=form, only=PASSKEY)
    return render_template("mfa/add_passkey.html", **context), (
        400 if request.method == "POST" else 200
    )


@mfa_bp.route("/account/second-factor/<int(max=2147483647):factor_id>/remove", methods=["POST"])
@recent_sign_in_required
def remove(factor_id: int) -> Any:
    form = ConfirmForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        factor = remove_factor(db.session, current_user, factor_id, current_app.config)
    except SecondFactorError as exc:
        db.session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("mfa.account"))
    db.session.commit()
    flash(f"{factor.method_name} removed.", "success")
    return redirect(url_for("mfa.account"))


@mfa_bp.route("/account/second-factor/recovery-codes", methods=["POST"])
@recent_sign_in_required
def renew_codes() -> Any:
    form = ConfirmForm()
    if not form.validate_on_submit():
        abort(400)
    if not factors(db.session, current_user.id):
        flash("Set up an authenticator app or a passkey first.", "error")
        return redirect(url_for("mfa.account"))
    codes = new_recovery_codes(db.session, current_user)
    record(db.session, "second_factor.codes_renewed", actor_id=current_user.id,
           subject_type="person", subject_id=current_user.id)  # fmt: skip
    db.session.commit()
    return render_template("mfa/recovery_codes.html", codes=codes, next_url=url_for("mfa.account"))


# --- an administrator's reset -------------------------------------------------------------------


def _reset_message(person: Person) -> tuple[str, str]:
    subject = f"Your {federation().name} training sign-in was reset"
    body = (
        f"Hello {person.name},\n\nAn administrator removed the second factor (authenticator app, "
        "passkeys and recovery codes) from your training account.\n"
        f"The next time you sign in at {external_url('auth.sign_in')} you will be asked to set "
        "up a new one.\n\nIf you did not ask for this, tell your school's administrator now.\n"
    )
    return subject, body


@mfa_bp.route(
    "/admin/people/<int(max=2147483647):person_id>/second-factor/reset", methods=["GET", "POST"]
)
@roles_required("admin")
@fresh_sign_in_for_changes
def admin_reset(person_id: int) -> Any:
    s = db.session
    person = s.get(Person, person_id)
    if person is None:
        abort(404)
    if person.id == current_user.id:
        flash("You cannot reset your own second factor. Ask another administrator.", "error")
        return redirect(url_for("admin.person", person_id=person.id))
    form = ConfirmForm()
    if request.method == "POST":
        if not form.validate_on_submit():
            abort(400)
        reset_factors(s, person, current_user)
        s.commit()
        if smtp_configured(current_app.config) and person.erased_at is None:
            subject, body = _reset_message(person)
            send_mail_later(current_app.config, person.email, subject, body)
        flash(
            f"{person.name}'s second factor is reset. They are signed out, and set up a new one "
            "at their next sign-in.",
            "success",
        )
        return redirect(url_for("admin.person", person_id=person.id))
    return render_template(
        "mfa/reset.html",
        person=person,
        form=form,
        methods=factors(s, person.id),
        emailed=smtp_configured(current_app.config),
    )


def methods_of(person_id: int) -> list[SecondFactor]:
    """For templates (the administrator's person page): the methods a person has set up."""
    return factors(db.session, person_id)
