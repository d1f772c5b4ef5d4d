"""Public verification, downloading a certificate, and a school's certificates as a ZIP."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, abort, render_template, stream_with_context
from flask_login import current_user, login_required

from audit.evidence import NotAsRecorded
from audit.log import record_separately
from certificates.downloads import (
    VIEWER_ROLES,
    may_download,
    pdf_filename,
    school_archive,
    school_summaries,
    unrendered_in_school,
    withdrawn,
)
from certificates.issuing import PdfNotAsDigested, render_missing, store_pdf
from certificates.verification import find_certificate, verify
from core.db import db, utcnow
from core.web import federation
from people.auth import roles_required

certificates_bp = Blueprint("certificates", __name__, template_folder="templates")
log = logging.getLogger("countersign.certificates")


@certificates_bp.errorhandler(PdfNotAsDigested)
@certificates_bp.errorhandler(NotAsRecorded)
def _not_as_recorded(error: Exception) -> Any:
    """Stored bytes or a row changed behind the application's back: never serve them. The
    failing function has logged which; the page says only that it is withheld."""
    db.session.rollback()
    log.error("certificate download refused: %s", error)
    page = render_template(
        "error.html",
        code=500,
        title="This certificate cannot be downloaded",
        message="Its stored record does not match the audit log, so it is withheld. Tell your "
        "administrator: the audit log check lists what was changed.",
    )
    return page, 500


@certificates_bp.route("/verify/<code>", endpoint="verify")
def verify_page(code: str) -> Any:
    """Open to anyone with the code, signed in or not: it is printed on the certificate."""
    result = verify(db.session, code)
    if result is None:
        return render_template("certificates/not_found.html"), 404
    response = Response(render_template("certificates/verify.html", result=result))
    response.headers["X-Robots-Tag"] = "noindex"  # a name on a public page: keep it off search
    return response


@certificates_bp.route("/certificates/<code>.pdf")
@login_required
def download(code: str) -> Any:
    certificate = find_certificate(db.session, code)
    # Someone else's certificate does not exist, as far as people without the role can tell.
    if (
        certificate is None
        or not may_download(current_user, certificate)
        or withdrawn(db.session, certificate)
    ):
        abort(404)
    pdf = store_pdf(db.session, certificate)  # the stored bytes; rendered only if never stored
    return Response(
        pdf,
        mimetype="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{pdf_filename(certificate)}"'},
    )


@certificates_bp.route("/certificates/")
@roles_required(*VIEWER_ROLES)
def index() -> Any:
    return render_template(
        "certificates/index.html", schools=school_summaries(db.session, federation())
    )


@certificates_bp.route("/certificates/schools/<school>.zip")
@roles_required(*VIEWER_ROLES)
def school_zip(school: str) -> Any:
    if school not in {s.code for s in federation().schools}:
        abort(404)
    missing = unrendered_in_school(db.session, school)
    if missing:
        render_missing(db.session, missing)
    archive = school_archive(db.session, school)
    record_separately(
        "export.certificates_zip", actor_id=current_user.id, subject_type="school",
        subject_id=school,
    )  # fmt: skip
    filename = f"certificates-{school}-{utcnow():%Y-%m-%d}.zip"
    response = Response(stream_with_context(iter(archive)), mimetype="application/zip")
    response.headers["Content-Length"] = str(len(archive))  # lets the browser show progress
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
