"""The administrators' page for xAPI: is it on, what has been sent, what is stuck and why."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, url_for

from core.db import db
from core.forms import Form
from people.auth import roles_required
from xapi.outbox import BACKOFF, Lrs, Statement, counts, retry_failed, statements
from xapi.statements import LANGUAGE, VERB_NAMES

xapi_bp = Blueprint("xapi", __name__, url_prefix="/admin/xapi", template_folder="templates")


def _describe(statement: Statement) -> dict[str, str]:
    payload = statement.payload or {}
    name = payload.get("object", {}).get("definition", {}).get("name", {})
    return {
        "what": VERB_NAMES.get(statement.verb, statement.verb),
        "who": payload.get("actor", {}).get("mbox", "").removeprefix("mailto:"),
        "on": name.get(LANGUAGE, ""),
    }


@xapi_bp.route("/", methods=["GET"])
@roles_required("admin")
def index() -> Any:
    waiting = statements(db.session, unsent=True, limit=50, newest_first=True)
    return render_template(
        "xapi/index.html",
        lrs=Lrs.from_config(current_app.config),
        counts=counts(db.session),
        waiting=[(s, _describe(s)) for s in waiting],
        form=Form(),
        retries=[int(b.total_seconds() // 60) for b in BACKOFF],
    )


@xapi_bp.route("/retry", methods=["POST"])
@roles_required("admin")
def retry() -> Any:
    Form()  # CSRF is checked globally
    count = retry_failed(db.session)  # due now: the worker sends them
    db.session.commit()
    if count:
        flash(f"{count} statements will be sent again now.", "success")
    else:
        flash("No failed statements to send again.", "info")
    return redirect(url_for("xapi.index"))
