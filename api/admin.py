"""Administrators' pages for API tokens (HTML; the API itself lives in api/views.py)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select
from wtforms import SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length

from api.models import ApiToken, Webhook
from api.tokens import (
    EXPIRES_SOON,
    LIFETIMES_DAYS,
    MAX_LIFETIME_DAYS,
    SCOPES,
    TokenError,
    create_token,
    revoke,
)
from api.webhooks import create_webhook
from api.webhooks import deliveries as recent_deliveries
from api.webhooks import stop_webhook as stop
from core.db import db, utcnow
from core.forms import Form
from core.web import fresh_sign_in_for_changes
from people.auth import roles_required
from people.forms import MultiCheckboxField

tokens_bp = Blueprint("tokens", __name__, url_prefix="/admin/tokens", template_folder="templates")


class TokenForm(Form):
    name = StringField(
        "Name",
        validators=[DataRequired("Say who will use the token."), Length(max=100)],
        description="Who or what uses it, e.g. 'Approvals workflow'.",
    )
    scopes = MultiCheckboxField(
        "What it may do",
        choices=[SelectChoice(code, label) for code, label in SCOPES.items()],
        validators=[DataRequired("Choose at least one scope.")],
    )
    days = SelectField(
        "Expires after",
        choices=[
            SelectChoice(str(d), f"{d} days" if d < 365 else "1 year") for d in LIFETIMES_DAYS
        ],
        default=str(MAX_LIFETIME_DAYS),
        description="The system using it needs a new token before then; the page warns a month "
        "ahead.",
    )


@tokens_bp.route("/", methods=["GET", "POST"])
@roles_required("admin")
@fresh_sign_in_for_changes
def tokens() -> Any:
    form = TokenForm()
    secret = None
    if form.validate_on_submit():
        try:
            new = create_token(
                db.session, form.name.data, form.scopes.data, current_user.id, int(form.days.data)
            )
        except TokenError as exc:
            form.form_errors.append(str(exc))
        else:
            db.session.commit()
            secret = new.secret
            form = TokenForm(formdata=None)
    rows = db.session.scalars(select(ApiToken).order_by(ApiToken.id.desc())).all()
    status = 400 if request.method == "POST" and secret is None else 200
    return render_template(
        "api/tokens.html", form=form, tokens=rows, secret=secret, scopes=SCOPES, now=utcnow(),
        soon=utcnow() + EXPIRES_SOON,
    ), status  # fmt: skip


@tokens_bp.route("/<int(max=2147483647):token_id>/revoke", methods=["POST"])
@roles_required("admin")
def revoke_token(token_id: int) -> Any:
    token = db.session.get(ApiToken, token_id)
    if token is None:
        abort(404)
    Form()  # CSRF is checked globally
    revoke(token, current_user.id)
    db.session.commit()
    flash(
        f"The token {token.name!r} is revoked; systems using it are refused from now on.", "success"
    )
    return redirect(url_for("tokens.tokens"))


webhooks_bp = Blueprint(
    "webhooks", __name__, url_prefix="/admin/webhooks", template_folder="templates"
)


class WebhookForm(Form):
    url = StringField(
        "Address that receives events",
        validators=[DataRequired("Give the address."), Length(max=500)],
        description="Countersign POSTs a signed JSON event here when someone's trained status changes.",
    )


@webhooks_bp.route("/", methods=["GET", "POST"])
@roles_required("admin")
def webhooks() -> Any:
    form = WebhookForm()
    created = None
    if form.validate_on_submit():
        try:
            created = create_webhook(db.session, form.url.data, current_user.id)
        except ValueError as exc:
            form.url.errors = [str(exc)]
        else:
            db.session.commit()
            form = WebhookForm(formdata=None)
    hooks = db.session.scalars(select(Webhook).order_by(Webhook.id.desc())).all()
    deliveries = recent_deliveries(db.session)
    status = 400 if request.method == "POST" and created is None else 200
    return render_template(
        "api/webhooks.html", form=form, hooks=hooks, deliveries=deliveries, created=created
    ), status


@webhooks_bp.route("/<int(max=2147483647):webhook_id>/stop", methods=["POST"])
@roles_required("admin")
def stop_webhook(webhook_id: int) -> Any:
    hook = db.session.get(Webhook, webhook_id)
    if hook is None:
        abort(404)
    Form()
    stop(db.session, hook, current_user.id)
    db.session.commit()
    flash("The webhook is stopped; no more events are sent to it.", "success")
    return redirect(url_for("webhooks.webhooks"))
