"""The administrators' page for reminders: the settings, what is queued, sent and failed."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from audit.log import record
from core import outbox
from core.db import db
from core.forms import Form
from core.outbox import OutboxMessage
from people.auth import roles_required
from people.models import Person
from reminders.digest import READERS, set_digest, wants_digest
from reminders.forms import DigestForm, SettingsForm
from reminders.models import KINDS, Reminder
from reminders.rules import EMAIL, RUN, load_settings, save_settings
from reminders.sending import NOT_NEEDED

reminders_bp = Blueprint(
    "reminders", __name__, url_prefix="/admin/reminders", template_folder="templates"
)


def _page(form: SettingsForm, status: int = 200) -> Any:
    rows = db.session.execute(
        select(OutboxMessage, Reminder, Person.name)
        .join(Reminder, Reminder.id == OutboxMessage.payload["reminder_id"].as_integer())
        .join(Person, Person.id == Reminder.person_id)
        .where(OutboxMessage.topic == EMAIL)
        .order_by(OutboxMessage.id.desc())
        .limit(100)
    ).all()
    counts = outbox.backlog(db.session).get(
        EMAIL, {"queued": 0, "retrying": 0, "sent": 0, "failed": 0}
    )
    return render_template(
        "reminders/index.html", form=form, rows=rows, counts=counts, kinds=KINDS,
        not_needed=NOT_NEEDED, send_form=Form(),
    ), status  # fmt: skip


@reminders_bp.route("/", methods=["GET", "POST"])
@roles_required("admin")
def index() -> Any:
    settings = load_settings(db.session)
    if request.method == "GET":
        return _page(SettingsForm(obj=settings))
    form = SettingsForm()
    if not form.validate_on_submit():
        return _page(form, 400)
    save_settings(db.session, {name: form[name].data for name in SETTINGS_FIELDS})
    record(db.session, "reminders.settings_changed", actor_id=current_user.id)
    db.session.commit()
    flash("Reminder settings saved.", "success")
    return redirect(url_for("reminders.index"))


SETTINGS_FIELDS = (
    "first_after_days", "every_days", "max_times", "quiet_from", "quiet_until", "not_started_on",
    "expiring_on", "expired_on", "runners_on", "digest_on", "owner_on",
)  # fmt: skip


@reminders_bp.route("/send-now", methods=["POST"])
@roles_required("admin")
def send_now() -> Any:
    Form()  # CSRF is checked globally
    outbox.enqueue(db.session, RUN, {"by": current_user.id})
    record(db.session, "reminders.sent_now", actor_id=current_user.id)
    db.session.commit()
    outbox.wake()
    flash("The reminders due now are being queued; quiet hours still apply.", "success")
    return redirect(url_for("reminders.index"))


# An SLT member's or governor's own setting: the weekly digest, on or off.
account_bp = Blueprint("reminders_account", __name__, template_folder="templates")


@account_bp.route("/account/digest", methods=["GET", "POST"])
@roles_required(*READERS)
def digest() -> Any:
    if request.method == "GET":
        form = DigestForm(weekly_digest=wants_digest(db.session, current_user))
        return render_template("reminders/digest.html", form=form)
    form = DigestForm()
    if not form.validate_on_submit():
        return render_template("reminders/digest.html", form=form), 400
    set_digest(db.session, current_user, bool(form.weekly_digest.data))
    db.session.commit()
    flash("Weekly digest on." if form.weekly_digest.data else "Weekly digest off.", "success")
    return redirect(url_for("reminders_account.digest"))
