"""LTI 1.3 endpoints a platform calls (login, launch, key set) and the administrators' pages."""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_required, login_user
from sqlalchemy import func, select
from wtforms import BooleanField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length

from core.db import db, may_write, reads_only, writing
from core.forms import Form
from core.mail import send_mail_later, smtp_configured
from core.security_log import flag
from core.web import SESSION_FROM_LMS, external_url, federation
from lti import grades, keys
from lti.accounts import (
    Arrival,
    AskOwner,
    format_role_map,
    parse_role_map,
    person_for_launch,
    policy_for_launch,
    privileged_grants,
    record_launch,
    record_refusal,
    remember_grade_link,
)
from lti.embedding import embed_session
from lti.launch import (
    LaunchInfo,
    LaunchRefused,
    launch_info,
    origins_of,
    read_launch,
    start_login,
)
from lti.links import (
    LinkError,
    clean_pairing_code,
    confirm_link,
    confirm_request_mail,
    decline_all,
    link_notice,
    link_used,
    links_of,
    new_pairing_code,
    open_requests,
    remove_link,
    request_for_code,
    request_for_token,
    show_pairing_code,
)
from lti.models import LtiGradeLink, LtiIdentity, LtiPlatform
from lti.registry import PlatformData, PlatformError, data_of, register_platform, update_platform
from people.auth import roles_required
from people.models import Person

lti_bp = Blueprint("lti", __name__, template_folder="templates")
# Marks a session opened by a launch: it may not confirm links, which needs a direct sign-in.
LAUNCHED = SESSION_FROM_LMS


def _refused(exc: LaunchRefused, origins: list[str] | None = None) -> Any:
    current_app.logger.info("LTI refused: %s (%s)", exc.title, exc.detail)
    flag("lti_refused", exc.title)
    g.frame_origins = origins or []  # so the reason shows inside the platform's frame
    return render_template("lti/refused.html", refusal=exc), exc.status


def _params() -> dict[str, str]:
    source = request.args if request.method == "GET" else request.form
    params = {key: source.get(key, "") for key in source}
    if any("\x00" in key or "\x00" in value for key, value in params.items()):
        raise LaunchRefused(
            "This link did not come from an LMS",
            "The request holds characters no learning platform sends.",
            status=400,
        )
    return params


@lti_bp.route("/lti/login", methods=["GET", "POST"])
def login() -> Any:
    """OIDC login initiation: the platform sends the browser here first."""
    try:
        params = _params()
        response = start_login(
            db.session, params, external_url("lti.launch"), secure=request.is_secure,
            secret=current_app.config["SECRET_KEY"],
        )  # fmt: skip
        db.session.rollback()  # it only read: nothing to keep
        return response
    except LaunchRefused as exc:
        return _refused(exc)


@lti_bp.route("/lti/launch", methods=["POST"])
def launch() -> Any:
    """The signed launch: checked, then the person is signed in and lands on their training."""
    s = db.session
    reads_only()  # fetching the platform's keys must not hold the write lock
    platform: LtiPlatform | None = None
    signed: LaunchInfo | None = None  # a launch the platform signed, once checked
    can_email = smtp_configured(current_app.config)
    try:
        message = read_launch(
            s, _params(), secure=request.is_secure, secret=current_app.config["SECRET_KEY"]
        )
        platform = message.conf.platform
        info = launch_info(message.claims)
        s.commit()
        may_write()
        message.check_fresh()
        s.commit()  # the nonce is used up even if the person is then refused: one try per launch
        signed = info
        arrival = person_for_launch(s, platform, info, federation(), can_email=can_email)
        if arrival.pending is None:
            policy = policy_for_launch(s, info)
            if policy is not None:
                remember_grade_link(s, platform, arrival.person, policy, info)
            record_launch(s, platform, arrival)
        s.commit()
    except AskOwner as exc:
        # Answered as for an ordinary account; the precise reason goes only to the audit log.
        s.rollback()
        assert platform is not None and signed is not None
        with writing(s):
            record_refusal(s, platform, signed.subject, exc)
        return _confirmation_page(platform, new_pairing_code(), can_email)
    except LaunchRefused as exc:
        s.rollback()
        if signed is not None and platform is not None:
            # Only launches the platform signed are recorded: anyone can post unsigned ones.
            with writing(s):
                record_refusal(s, platform, signed.subject, exc)
        known = exc.platform or platform
        return _refused(exc, origins_of(known) if known is not None else None)
    if arrival.pending is not None:
        return _confirmation_needed(platform, arrival)
    if arrival.created and can_email:
        _send_link_notice(arrival.person, platform)
    session.clear()  # a fresh session, as at any sign-in
    session.permanent = True
    embed_session(origins_of(platform))
    session[LAUNCHED] = True
    login_user(arrival.person)
    with writing(db.session):  # the gradebook learns where they stand now
        grades.queue_for(db.session, [arrival.person.id])
    return redirect(url_for("training.dashboard"))


def _confirmation_needed(platform: LtiPlatform, arrival: Arrival) -> Any:
    """The launch found an existing account the LMS user is not yet linked to: nobody is signed
    in; the page shows this launch's pairing code, which the account's owner types after signing
    in, or after following the link emailed to them, to confirm that this launch was theirs."""
    pending = arrival.pending
    assert pending is not None
    if pending.token is not None:
        link = external_url("lti.connect_link", token=pending.token)
        waiting = len(open_requests(db.session, arrival.person.id))
        subject, body = confirm_request_mail(
            arrival.person, platform, link, federation().name, waiting
        )
        send_mail_later(current_app.config, arrival.person.email, subject, body)
    return _confirmation_page(platform, pending.code, smtp_configured(current_app.config))


def _confirmation_page(platform: LtiPlatform, code: str, can_email: bool) -> Any:
    """The same page whatever kind of account the email belongs to (re-review R9): whether it is
    emailed depends only on the site's settings, never on the account."""
    g.frame_origins = origins_of(platform)
    return render_template(
        "lti/confirm_needed.html", platform=platform, code=show_pairing_code(code),
        emailed=can_email, sign_in=url_for("auth.sign_in", next=url_for("lti.connect")),
    ), 403  # fmt: skip


def _send_link_notice(person: Person, platform: LtiPlatform) -> None:
    subject, body = link_notice(person, platform, federation().name)
    send_mail_later(current_app.config, person.email, subject, body)


# --- connecting an LMS account to an existing one -------------------------------------------------


class ConnectForm(Form):
    code = StringField(
        "Connection code",
        validators=[Length(max=20)],
        description="The 6 letters and digits the page in your course showed, e.g. ABC 234.",
    )
    action = SelectField(
        choices=[
            SelectChoice("confirm", "Connect"),
            SelectChoice("decline_all", "None of these were me"),
        ]
    )


@lti_bp.route("/lti/connect", methods=["GET", "POST"])
@login_required
def connect() -> Any:
    """The signed-in person's LMS accounts waiting to be connected: they connect the one whose
    code their own launch showed them, or decline them all. Only after signing in to
    Countersign itself: a session opened from a platform proves less."""
    s = db.session
    if session.get(LAUNCHED):
        return render_template("lti/connect.html", requests=[], launched=True, form=None)
    form = ConnectForm()
    status = 200
    if form.validate_on_submit():
        answered = _answer(form, current_user.id, "sign_in")
        if answered is not None:
            return answered
        status = 400
    elif request.method == "POST":
        status = 400
    requests = open_requests(s, current_user.id)
    return render_template("lti/connect.html", requests=requests, launched=False, form=form), status


@lti_bp.route("/lti/connect/<token>", methods=["GET", "POST"])
def connect_link(token: str) -> Any:
    """The single-use link emailed to the person: following it and typing the code from their
    own launch is their word. It never signs anyone in."""
    s = db.session
    found = request_for_token(s, token)
    if found is None:
        return render_template("lti/connect_link_error.html"), 400
    person_id = found.person_id
    form = ConnectForm(formdata=None if request.method == "GET" else request.form)
    if request.method == "POST" and form.validate_on_submit():
        answered = _answer(form, person_id, "email", token)
        if answered is not None:
            return answered
    person = s.get(Person, person_id)
    requests = open_requests(s, person_id)
    return render_template("lti/connect_link.html", person=person, requests=requests, form=form), (
        400 if request.method == "POST" else 200
    )


def _answer(form: ConnectForm, person_id: int, how: str, token: str | None = None) -> Any | None:
    """Confirm the request the code was shown for, or decline them all; the page to go to, or
    None with the reason on the form."""
    s = db.session
    actor_id = current_user.id if how == "sign_in" else person_id
    if form.action.data == "decline_all":
        count = decline_all(s, person_id, actor_id)
        if token is not None:
            link_used(s, token)
        s.commit()
        flash(f"Nothing was connected, and {count} waiting request{'s were' if count != 1 else ' was'} "
              "declined. If you did not open the training from a learning platform, tell a "
              "Countersign administrator.", "success")  # fmt: skip
        return redirect(url_for("lti.connect") if how == "sign_in" else url_for("auth.sign_in"))
    code = clean_pairing_code(form.code.data)
    if not code:
        form.code.errors = ["Enter the code the page in your course showed you."]
        return None
    found = request_for_code(s, person_id, code)
    if found is None:
        form.code.errors = [
            "No waiting request has this code. Type the code your own launch showed (the newest, "
            "if you opened the training more than once), or open the training again for a new one."
        ]
        return None
    platform = found.platform
    try:
        identity = confirm_link(s, found, how)
    except LinkError as exc:
        s.rollback()
        form.form_errors.append(str(exc))
        return None
    if token is not None:
        link_used(s, token)
    person = s.get(Person, identity.person_id)
    s.commit()
    if smtp_configured(current_app.config):
        _send_link_notice(person, platform)
    return render_template("lti/connected.html", platform=platform)


@lti_bp.route("/lti/jwks.json")
def jwks() -> Any:
    """The tool's public keys, which platforms use to check its service requests."""
    response = jsonify(keys.jwks())
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


# --- administrators -------------------------------------------------------------------------------


class PlatformForm(Form):
    name = StringField(
        "Name",
        validators=[Length(max=200)],
        description="How administrators recognise it, e.g. 'Ladysmith Moodle'.",
    )
    issuer = StringField(
        "Platform ID (issuer)",
        validators=[Length(max=500)],
        description="In Moodle, the site's address, e.g. https://moodle.school.uk.",
    )
    client_id = StringField("Client ID", validators=[Length(max=255)])
    auth_login_url = StringField(
        "Authentication request URL",
        validators=[Length(max=500)],
        description="In Moodle: …/mod/lti/auth.php",
    )
    auth_token_url = StringField(
        "Access token URL",
        validators=[Length(max=500)],
        description="In Moodle: …/mod/lti/token.php",
    )
    key_set_url = StringField(
        "Public keyset URL",
        validators=[Length(max=500)],
        description="In Moodle: …/mod/lti/certs.php",
    )
    key_set = TextAreaField(
        "Or the platform's key set (JSON)",
        validators=[Length(max=20000)],
        description="Only for a platform that gives its keys rather than a URL.",
    )
    deployment_ids = TextAreaField(
        "Deployment IDs",
        validators=[Length(max=5000)],
        description="One per line; launches from others are refused.",
    )
    role_map = TextAreaField(
        "Roles for people added by a launch",
        validators=[Length(max=5000)],
        description="One 'LMS role = Countersign role' per line. A launch from someone Countersign "
        "does not know adds them with these roles; it never changes anyone's existing roles.",
    )
    school = SelectField("School of people added by a launch", choices=[])
    active = BooleanField("Accept launches from this platform", default=True)


def _form(platform: LtiPlatform | None = None) -> PlatformForm:
    if request.method == "GET":
        data = data_of(platform) if platform else PlatformData("", "", "", "", "")
        fields = vars(data) | {
            "deployment_ids": "\n".join(data.deployment_ids),
            "role_map": format_role_map(data.role_map),
        }
        form = PlatformForm(formdata=None, data=fields)
    else:
        form = PlatformForm()
    form.school.choices = [("", "None")] + [(s.code, s.name) for s in federation().schools]
    return form


def _data(form: PlatformForm) -> PlatformData:
    return PlatformData(
        name=form.name.data or "", issuer=form.issuer.data or "",
        client_id=form.client_id.data or "", auth_login_url=form.auth_login_url.data or "",
        auth_token_url=form.auth_token_url.data or "", key_set_url=form.key_set_url.data or "",
        key_set=form.key_set.data or "",
        deployment_ids=tuple((form.deployment_ids.data or "").splitlines()),
        role_map=parse_role_map(form.role_map.data or ""), school=form.school.data or "",
        active=bool(form.active.data),
    )  # fmt: skip


def _save(platform: LtiPlatform | None) -> Any:
    form = _form(platform)
    if form.validate_on_submit():
        try:
            data = _data(form)
            if platform is None:
                platform = register_platform(db.session, data, federation(), current_user.id)
                done = f"{platform.name} is registered; launches from it are accepted now."
            else:
                update_platform(db.session, platform, data, federation(), current_user.id)
                done = f"{platform.name} is saved."
        except (PlatformError, ValueError) as exc:
            db.session.rollback()
            form.form_errors.append(str(exc))
        else:
            db.session.commit()
            flash(done, "success")
            return redirect(url_for("lti.platforms"))
    status = 400 if request.method == "POST" else 200
    warnings = privileged_grants(_safe_map(form.role_map.data))
    return render_template(
        "lti/platform_form.html", form=form, platform=platform, warnings=warnings
    ), status


def _safe_map(text: str | None) -> dict[str, str]:
    try:
        return parse_role_map(text or "")
    except ValueError:
        return {}


def tool_urls() -> dict[str, str]:
    return {
        "Tool URL": external_url("lti.launch"),
        "Initiate login URL": external_url("lti.login"),
        "Redirection URI(s)": external_url("lti.launch"),
        "Public keyset URL": external_url("lti.jwks"),
    }


@lti_bp.route("/admin/lti/")
@roles_required("admin")
def platforms() -> Any:
    s = db.session
    rows = s.scalars(select(LtiPlatform).order_by(LtiPlatform.id)).all()
    people = dict(
        s.execute(
            select(LtiIdentity.platform_id, func.count()).group_by(LtiIdentity.platform_id)
        ).all()
    )
    recent = grades.recent(s)
    links = {
        link.id: (link.context_title, link.person_id)
        for link in s.scalars(
            select(LtiGradeLink).where(LtiGradeLink.id.in_({p.link_id for p in recent}))
        )
    }
    posts = [(p, *links.get(p.link_id, ("", None))) for p in recent]
    failing = grades.failing(s)
    return render_template(
        "lti/platforms.html", platforms=rows, people=people, posts=posts, failing=failing,
        urls=tool_urls(), replaced=grades.REPLACED,
    )  # fmt: skip


@lti_bp.route("/admin/lti/new", methods=["GET", "POST"])
@roles_required("admin")
def new_platform() -> Any:
    return _save(None)


@lti_bp.route("/admin/lti/<int(max=2147483647):platform_id>", methods=["GET", "POST"])
@roles_required("admin")
def edit_platform(platform_id: int) -> Any:
    platform = db.session.get(LtiPlatform, platform_id)
    if platform is None:
        abort(404)
    return _save(platform)


@lti_bp.route("/admin/lti/grades/retry", methods=["POST"])
@roles_required("admin")
def retry_grades() -> Any:
    Form()  # CSRF is checked globally
    count = grades.retry_failed(db.session)  # due now: the worker sends them
    db.session.commit()
    flash(f"{count} score{'s are' if count != 1 else ' is'} being sent again; reload this page "
          "to see how it went.", "success")  # fmt: skip
    return redirect(url_for("lti.platforms"))


@lti_bp.app_template_global()
def lti_links(person_id: int) -> list[tuple[LtiIdentity, str]]:
    """A person's LMS links, for the administrator's page about them."""
    return links_of(db.session, person_id)


@lti_bp.route(
    "/admin/people/<int(max=2147483647):person_id>/lti/<int(max=2147483647):identity_id>/remove",
    methods=["POST"],
)
@roles_required("admin")
def remove_identity(person_id: int, identity_id: int) -> Any:
    """An administrator removes an LMS link (e.g. the person says it wasn't them)."""
    Form()  # CSRF is checked globally
    identity = db.session.get(LtiIdentity, identity_id)
    if identity is None or identity.person_id != person_id:
        abort(404)
    remove_link(db.session, identity, current_user.id)
    db.session.commit()
    flash("The learning platform account is no longer connected. Its next launch is treated as "
          "a new one and must be confirmed.", "success")  # fmt: skip
    return redirect(url_for("admin.person", person_id=person_id))
